"""Overlays: a predicted face drawn over the original photo.

Each face gets its box, its points, a translucent coloured layer per segmentation task
(class 0, background, is left clear) and one text line per category task.
"""

from __future__ import annotations

import cv2
import numpy as np

# Distinct colours (RGB) for segmentation classes; index 0 (background) is never drawn.
PALETTE = np.array(
    [
        (0, 0, 0),
        (255, 204, 153),  # skin
        (102, 51, 0),  # left brow
        (153, 76, 0),  # right brow
        (0, 102, 255),  # left eye
        (0, 204, 255),  # right eye
        (255, 128, 0),  # nose
        (255, 0, 102),  # upper lip
        (128, 0, 64),  # inner mouth
        (204, 0, 153),  # lower lip
        (64, 64, 64),  # hair
        (0, 255, 0),
        (255, 255, 0),
        (0, 255, 255),
        (255, 0, 255),
        (128, 128, 255),
    ],
    np.uint8,
)
BOX_COLOUR = (0, 255, 0)
POINT_COLOUR = (255, 32, 32)


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """H x W class ids -> H x W x 3 RGB colours (classes beyond the palette wrap around)."""
    return PALETTE[np.asarray(mask, np.int64) % len(PALETTE)]


def draw_overlay(image: np.ndarray, faces: list[dict], tasks, alpha: float = 0.45, point_names: bool = False,
                 legend: bool = True) -> np.ndarray:
    """Copy of ``image`` (H x W x 3 uint8 RGB) with every face of ``faces`` drawn on it.

    ``faces`` are the predictor's per-face dicts (``box``, then one entry per task of
    ``tasks``: points (K, 2) array, class-id mask array, or ``{"label", "probs"}``). Segmentation
    is a translucent layer (``alpha``) with a colour legend of the classes present (``legend``);
    points are dots (with their names when ``point_names``); category labels are text placed
    beside the face box (right of it, else left, else below), never over the face.
    """
    from facemtl.kinds import kind_of

    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    scale = max(h, w) / 512.0
    thickness = max(1, round(2 * scale))
    present: dict[str, set[int]] = {}
    for face in faces:  # layers first, so no face's marks are covered by another's layer
        for task in tasks:
            value = face.get(task.name)
            if value is not None:
                kind_of(task).draw_layer(out, task, value, alpha)
                present.setdefault(task.name, set()).update(kind_of(task).legend_classes(task, value))
    for face in faces:
        x0, y0, x1, y1 = (int(round(v)) for v in face["box"])
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX_COLOUR, thickness)
        lines = []
        for task in tasks:
            if face.get(task.name) is not None:
                lines += kind_of(task).draw(out, task, face[task.name], thickness, names=point_names)
        _draw_labels(out, lines, (x0, y0, x1, y1), scale)
    if legend:
        for task in tasks:
            if present.get(task.name):
                _draw_legend(out, task, sorted(present[task.name]), scale)
    return out


def _text_size(text: str, scale: float) -> tuple[int, int, float]:
    size = 0.45 * max(scale, 0.5)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)
    return tw, th, size


def put_text(out: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    """White text with a dark outline: readable on any background."""
    _, _, size = _text_size(text, scale)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, size, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), 1, cv2.LINE_AA)


def _draw_labels(out: np.ndarray, lines: list[str], box: tuple[int, int, int, int], scale: float) -> None:
    """Text lines beside the box: to its right when they fit, else to its left, else under it
    (above it when the box touches the bottom edge)."""
    if not lines:
        return
    x0, y0, x1, y1 = box
    widest = max(_text_size(line, scale)[0] for line in lines)
    step = int(_text_size("Ag", scale)[1] * 1.8) + 2
    pad = max(3, int(4 * scale))
    height, width = out.shape[:2]
    if x1 + pad + widest <= width:
        x, y = x1 + pad, max(0, y0)
    elif x0 - pad - widest >= 0:
        x, y = x0 - pad - widest, max(0, y0)
    else:
        x, y = max(0, x0), y1
        if y + step * len(lines) > height:
            y = max(0, y0 - step * (len(lines) + 1))
    for i, line in enumerate(lines):
        put_text(out, line, (x, y + step * (i + 1)), scale)


def _draw_legend(out: np.ndarray, task, classes: list[int], scale: float) -> None:
    """Colour swatches and names of the classes present, on a light panel in the top-left corner."""
    names = [task.class_names[c] if c < len(task.class_names) else str(c) for c in classes]
    step = int(_text_size("Ag", scale)[1] * 1.8) + 2
    swatch = step - 4
    widest = max(_text_size(n, scale)[0] for n in names)
    panel_w, panel_h = swatch + widest + 12, step * len(names) + 6
    region = out[:panel_h, :panel_w]
    region[:] = (0.35 * region + 0.65 * 255).astype(np.uint8)  # light, still see-through
    for i, (c, name) in enumerate(zip(classes, names)):
        y = 3 + i * step
        colour = tuple(int(v) for v in colour_mask(np.array([c]))[0])
        cv2.rectangle(out, (4, y + 2), (4 + swatch, y + 2 + swatch), colour, -1)
        cv2.putText(out, name, (8 + swatch, y + swatch), cv2.FONT_HERSHEY_SIMPLEX, _text_size(name, scale)[2],
                    (0, 0, 0), 1, cv2.LINE_AA)
