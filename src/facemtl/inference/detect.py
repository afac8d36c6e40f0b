"""Where the faces are: OpenCV's bundled Haar cascade, or boxes the user supplies.

A box is ``[x0, y0, x1, y1]`` in original-image pixels (float). The predictor crops every
box the way training crops (:func:`facemtl.data.transforms.face_crop_matrix` with the
checkpoint's margin), so the detector only has to say roughly where a face is.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from facemtl.errors import FacemtlError

DETECTORS = ("opencv", "none")
_CASCADE = "haarcascade_frontalface_default.xml"


class HaarFaceDetector:
    """Viola-Jones frontal-face cascade shipped with opencv-python (``cv2.data``).

    ``min_size`` is the smallest face side in pixels the cascade looks for; the faces come
    back largest first. The cascade sees frontal faces only (profiles are missed).
    """

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24, max_side: int = 1280):
        path = Path(getattr(cv2, "data").haarcascades) / _CASCADE
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise FacemtlError(
                f"could not load OpenCV's face cascade {path}; install opencv-python-headless < 5 "
                "(its 4.x wheels ship the cascades) or use --detector none / --boxes"
            )
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.max_side = max_side  # larger photos are searched at this size (the cascade is slow on huge images)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> (N, 4) float boxes ``[x0, y0, x1, y1]``, largest first."""
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.max_side / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = self.cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        if len(found) == 0:
            return np.zeros((0, 4), np.float32)
        xywh = np.asarray(found, np.float32).reshape(-1, 4) / scale
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return boxes[np.argsort(-(xywh[:, 2] * xywh[:, 3]), kind="stable")]


def parse_box(value, where: str) -> np.ndarray:
    """One ``[x0, y0, x1, y1]`` with x1 > x0 and y1 > y0, or a FacemtlError naming ``where``."""
    try:
        box = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        box = None
    if box is None or box.shape != (4,) or not np.all(np.isfinite(box)):
        raise FacemtlError(f"{where}: a box must be 4 numbers [x0, y0, x1, y1], got {value!r}")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise FacemtlError(f"{where}: box {value!r} is empty; expected x1 > x0 and y1 > y0")
    return box.astype(np.float32)


class BoxFile:
    """``--boxes BOXES.json``: ``{"<image path>": [[x0, y0, x1, y1], ...], ...}``.

    A key matches an image when it names the same file (relative keys are taken relative
    to the JSON file's folder, or to the current folder) or, failing that, when the key is a
    bare file name equal to the image's. ``lookup`` returns None for an image the file does not list.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FacemtlError(f"boxes file {self.path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise FacemtlError(f"cannot read boxes file {self.path}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FacemtlError(f"{self.path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise FacemtlError(f'{self.path}: expected an object {{"image path": [[x0, y0, x1, y1], ...]}}')
        self._by_file: dict[Path, np.ndarray] = {}
        self._by_name: dict[str, np.ndarray] = {}
        for key, value in data.items():
            if not isinstance(value, list):
                raise FacemtlError(f"{self.path}: {key!r}: expected a list of boxes, got {value!r}")
            boxes = np.stack([parse_box(v, f"{self.path}: {key!r}") for v in value]) if value else np.zeros((0, 4), np.float32)
            for base in (self.path.parent, Path.cwd()):
                self._by_file.setdefault(_resolved(base / key), boxes)
            if Path(key).name == key:  # a bare file name matches that name in any folder
                self._by_name[key] = boxes

    def lookup(self, image_path: str | Path) -> np.ndarray | None:
        image_path = Path(image_path)
        found = self._by_file.get(_resolved(image_path))
        if found is None:
            found = self._by_name.get(image_path.name)
        return found


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
