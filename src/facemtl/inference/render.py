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
    is a translucent layer (``alpha``) with a colour legend of the classes present (``legend``, in
    the corner that covers least of the faces); points are dots (with their names when
    ``point_names``); category labels are text on a tag in the box's colour touching the box
    (above it, else under, right or left of it), never over the face, and over no other face,
    tag or the legend where one of those places has room: in a group photo each label is
    attached to its own face. Boxes, points and tags are sized by their face (:func:`face_scale`),
    the legend like the largest face's tags.
    """
    from facemtl.kinds import kind_of

    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    image_scale = max(h, w) / 512.0
    present: dict[str, set[int]] = {}
    for face in faces:  # layers first, so no face's marks are covered by another's layer
        for task in tasks:
            value = face.get(task.name)
            if value is not None:
                kind_of(task).draw_layer(out, task, value, alpha)
                present.setdefault(task.name, set()).update(kind_of(task).legend_classes(task, value))
    boxes = [tuple(int(round(v)) for v in face["box"]) for face in faces]
    # marks and tags sized by their face: in a group photo a tag sized by the image is wider
    # than the face and covers its neighbours; the legend matches the largest face's tags
    scales = [face_scale(box, image_scale) for box in boxes]
    legend_scale = max(scales, default=image_scale)
    panels = []
    if legend:
        for task in tasks:
            if present.get(task.name):
                panels.append((task, sorted(present[task.name])))
    corner = _legend_corner(out.shape[:2], [_legend_size(t, c, legend_scale) for t, c in panels], boxes)
    # a label never covers another face, another face's label or the legend when it has room
    taken = [corner] if panels else []
    for i, (face, box, scale) in enumerate(zip(faces, boxes, scales)):
        thickness = max(1, round(2 * scale))
        cv2.rectangle(out, box[:2], box[2:], BOX_COLOUR, thickness)
        lines = []
        for task in tasks:
            if face.get(task.name) is not None:
                lines += kind_of(task).draw(out, task, face[task.name], thickness, names=point_names)
        placed = _draw_labels(out, lines, box, scale, taken + boxes[:i] + boxes[i + 1:])
        if placed is not None:
            taken.append(placed)
    x, y = corner[:2]
    for task, classes in panels:
        y = _draw_legend(out, task, classes, legend_scale, x, y)
    return out


FACE_SIDE_AT_SCALE_1 = 160  # px: a face this large gets the marks of a 512-px image


def face_scale(box: tuple[int, int, int, int], image_scale: float) -> float:
    """Size of one face's marks and tag: its box's longer side / 160 px, never more than the
    image's own scale (longer side / 512 px), so a face filling a small image is drawn as before.
    Text never goes below :func:`_text_size`'s floor (the font at scale 0.5)."""
    side = max(box[2] - box[0], box[3] - box[1])
    return min(image_scale, side / FACE_SIDE_AT_SCALE_1)


def _text_size(text: str, scale: float) -> tuple[int, int, float]:
    size = 0.45 * max(scale, 0.5)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)
    return tw, th, size


def put_text(out: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    """White text with a dark outline: readable on any background."""
    _, _, size = _text_size(text, scale)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, size, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), 1, cv2.LINE_AA)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Area shared by two (x0, y0, x1, y1) rectangles."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _label_rect(lines: list[str], box: tuple[int, int, int, int], scale: float, shape: tuple[int, int],
                avoid=()) -> tuple[int, int, int, int]:
    """Where the tag of ``lines`` goes: touching the box above it, else under, right of or left of
    it; the first of these that fits in the image (``shape``: height, width) and covers nothing
    of ``avoid`` (other faces, their tags, the legend), else the one that covers least."""
    x0, y0, x1, y1 = box
    step, pad = _line_step(scale), _tag_pad(scale)
    wide = max(_text_size(line, scale)[0] for line in lines) + 2 * pad
    tall = step * len(lines) + pad
    height, width = shape
    left = min(max(0, x0), max(0, width - wide))
    top = min(max(0, y0), max(0, height - tall))
    spots = [(left, y0 - tall), (left, y1), (x1, top), (x0 - wide, top)]
    rects = [(x, y, x + wide, y + tall) for x, y in spots]
    inside = [r for r in rects if r[0] >= 0 and r[1] >= 0 and r[2] <= width and r[3] <= height]
    if not inside:  # no side fits (a face filling the image): inside the box, at its top
        return left, top, left + wide, top + tall
    return min(inside, key=lambda r: sum(_overlap(r, a) for a in avoid))  # the first of the least covering


def _line_step(scale: float) -> int:
    return int(_text_size("Ag", scale)[1] * 1.8) + 2


def _tag_pad(scale: float) -> int:
    return max(2, int(3 * scale))


def _draw_labels(out: np.ndarray, lines: list[str], box: tuple[int, int, int, int], scale: float,
                 avoid=()) -> tuple[int, int, int, int] | None:
    """Text lines on a tag in the box's colour placed by :func:`_label_rect`; returns its rectangle."""
    if not lines:
        return None
    rect = _label_rect(lines, box, scale, out.shape[:2], avoid)
    step, pad = _line_step(scale), _tag_pad(scale)
    cv2.rectangle(out, rect[:2], (rect[2] - 1, rect[3] - 1), BOX_COLOUR, -1)
    for i, line in enumerate(lines):
        cv2.putText(out, line, (rect[0] + pad, rect[1] + step * (i + 1) - pad // 2), cv2.FONT_HERSHEY_SIMPLEX,
                    _text_size(line, scale)[2], (0, 0, 0), 1, cv2.LINE_AA)
    return rect


def _class_names(task, classes: list[int]) -> list[str]:
    return [task.class_names[c] if c < len(task.class_names) else str(c) for c in classes]


def _legend_size(task, classes: list[int], scale: float) -> tuple[int, int]:
    """(width, height) of one task's legend panel."""
    names = _class_names(task, classes)
    step = _line_step(scale)
    return step - 4 + max(_text_size(n, scale)[0] for n in names) + 12, step * len(names) + 6


def _legend_corner(shape: tuple[int, int], sizes: list[tuple[int, int]],
                   boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The rectangle of the stacked legend panels in the image corner that covers least of the
    faces (top-left when none is covered, or on a tie)."""
    height, width = shape
    w = max((s[0] for s in sizes), default=0)
    h = sum(s[1] for s in sizes)
    corners = [(0, 0), (max(0, width - w), 0), (0, max(0, height - h)), (max(0, width - w), max(0, height - h))]
    rects = [(x, y, x + w, y + h) for x, y in corners]
    return min(rects, key=lambda r: sum(_overlap(r, b) for b in boxes))


def _draw_legend(out: np.ndarray, task, classes: list[int], scale: float, x: int = 0, y: int = 0) -> int:
    """Colour swatches and names of the classes present, on a light panel with its top-left corner
    at (x, y). Returns the y below the panel."""
    names = _class_names(task, classes)
    step = _line_step(scale)
    swatch = step - 4
    panel_w, panel_h = _legend_size(task, classes, scale)
    region = out[y:y + panel_h, x:x + panel_w]
    region[:] = (0.35 * region + 0.65 * 255).astype(np.uint8)  # light, still see-through
    for i, (c, name) in enumerate(zip(classes, names)):
        top = y + 3 + i * step
        colour = tuple(int(v) for v in colour_mask(np.array([c]))[0])
        cv2.rectangle(out, (x + 4, top + 2), (x + 4 + swatch, top + 2 + swatch), colour, -1)
        cv2.putText(out, name, (x + 8 + swatch, top + swatch), cv2.FONT_HERSHEY_SIMPLEX, _text_size(name, scale)[2],
                    (0, 0, 0), 1, cv2.LINE_AA)
    return y + panel_h


LABEL_COLOUR = (32, 224, 32)  # a labelled point, beside POINT_COLOUR's prediction


def draw_scored_face(image: np.ndarray, row: dict, side: int = 256, context: float = 0.3) -> np.ndarray:
    """One face of ``facemtl score`` (a row of :func:`facemtl.inference.score.score_faces`) as a
    ``side`` x ``side`` RGB tile: the image around the square the face came in (else its labelled
    square, else the whole image), widened by ``context`` of its side on every side, with each
    labelled point (:data:`LABEL_COLOUR`) joined to its prediction (:data:`POINT_COLOUR`), and
    the face's NME and emotion (labelled -> read) written on it."""
    from facemtl.inference.alignment import landmark_square

    h, w = image.shape[:2]
    square = row.get("square")
    if square is None and row.get("points") is not None:
        square = landmark_square(row["points"])
    q = np.array([0.0, 0.0, w, h]) if square is None else np.asarray(square, np.float64)
    pad = context * max(q[2] - q[0], q[3] - q[1])
    x0, y0, x1, y1 = q[0] - pad, q[1] - pad, q[2] + pad, q[3] + pad
    scale = side / max(x1 - x0, y1 - y0)
    matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
    out = cv2.warpAffine(np.ascontiguousarray(image, np.uint8), matrix, (side, side), flags=cv2.INTER_AREA
                         if scale < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def at(p) -> tuple[int, int]:
        return int(round(p[0] * scale - x0 * scale)), int(round(p[1] * scale - y0 * scale))

    truth, predicted = row.get("points"), row.get("predicted_points")
    if truth is not None and predicted is not None:
        for t, p in zip(np.asarray(truth), np.asarray(predicted)):
            cv2.line(out, at(t), at(p), (255, 255, 255), 1, cv2.LINE_AA)
    for points, colour in ((truth, LABEL_COLOUR), (predicted, POINT_COLOUR)):
        for p in [] if points is None else np.asarray(points):
            cv2.circle(out, at(p), 3, colour, -1, cv2.LINE_AA)
    lines = [f"#{row.get('index', '')}" + ("" if row.get("found") else " missed")]
    if row.get("nme") is not None:
        lines.append(f"NME {100 * row['nme']:.1f}%")
    if row.get("emotion") is not None:
        lines.append(f"{row['emotion']} -> {row.get('predicted_emotion') or '-'}")
    for k, text in enumerate(lines):
        put_text(out, text, (4, 16 + 16 * k), 1.0)
    return out
