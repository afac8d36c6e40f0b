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


def draw_overlay(image: np.ndarray, faces: list[dict], tasks, alpha: float = 0.45) -> np.ndarray:
    """Copy of ``image`` (H x W x 3 uint8 RGB) with every face of ``faces`` drawn on it.

    ``faces`` are the predictor's per-face dicts (``box``, then one entry per task of
    ``tasks``: points (K, 2) array, class-id mask array, or ``{"label", "probs"}``).
    """
    from facemtl.kinds import kind_of

    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    scale = max(h, w) / 512.0
    thickness = max(1, round(2 * scale))
    for face in faces:  # layers first, so no face's marks are covered by another's layer
        for task in tasks:
            if face.get(task.name) is not None:
                kind_of(task).draw_layer(out, task, face[task.name], alpha)
    for face in faces:
        x0, y0, x1, y1 = (int(round(v)) for v in face["box"])
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX_COLOUR, thickness)
        lines = []
        for task in tasks:
            if face.get(task.name) is not None:
                lines += kind_of(task).draw(out, task, face[task.name], thickness)
        _draw_labels(out, lines, (x0, y1), scale)
    return out


def _draw_labels(out: np.ndarray, lines: list[str], anchor: tuple[int, int], scale: float) -> None:
    """Text lines under the box (above it when the box touches the bottom edge)."""
    if not lines:
        return
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.45 * max(scale, 0.5)
    step = int(cv2.getTextSize("Ag", font, size, 1)[0][1] * 1.8) + 2
    x, y = anchor
    if y + step * len(lines) > out.shape[0]:
        y = max(step, y - step * (len(lines) + 1))
    for i, line in enumerate(lines):
        org = (max(0, x), y + step * (i + 1))
        cv2.putText(out, line, org, font, size, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, line, org, font, size, (255, 255, 255), 1, cv2.LINE_AA)
