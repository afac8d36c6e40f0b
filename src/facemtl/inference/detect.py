"""Where the faces are: a face detector, or boxes the user supplies.

A box is ``[x0, y0, x1, y1]`` in original-image pixels (float). A :class:`Detector` is any
callable from an RGB image to such boxes, largest first. Two are built in:

* ``"opencv"`` (default): OpenCV's bundled Haar frontal-face cascade (:class:`HaarFaceDetector`);
  nothing to install, but it misses turned faces;
* ``"mediapipe"``: MediaPipe's BlazeFace full-range model (:class:`MediaPipeFaceDetector`),
  whose weights ship inside the ``mediapipe`` wheel (optional extra ``facemtl[detect]``;
  nothing is downloaded at run time).

Each detector carries a :class:`~facemtl.inference.alignment.Calibration` (``.calibration``):
how its boxes relate to the face square training crops from landmarks. The predictor crops the
calibrated square, then (two passes) re-crops from its own landmark prediction; see
:mod:`facemtl.inference.alignment`. A detector that also knows how each face is tilted
offers ``boxes_and_turns(image) -> (boxes, turns)`` (degrees, ``cv2.getRotationMatrix2D``'s
sense): the predictor then turns each first crop by its face's turn about the box centre, so a
tilted head reaches the model about level (both built-in detectors do; a plain callable's faces
are cropped level). A detector that scores its faces offers ``detections(image) -> (boxes, turns,
scores)``; the predictor reports each face's score as ``detection_score`` (the Haar detector: its
cascade's last-stage score, see :class:`HaarFaceDetector`; MediaPipe: BlazeFace's confidence).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from facemtl.data.transforms import invert_affine, warp_points
from facemtl.errors import FacemtlError
from facemtl.inference.alignment import CALIBRATIONS, Calibration, upright_roll

DETECTORS = ("opencv", "mediapipe", "none")
_CASCADE = "haarcascade_frontalface_default.xml"
# mediapipe 0.10.30 dropped the legacy solutions (and the face models inside the wheel) that
# MediaPipeFaceDetector runs; keep in step with pyproject's `detect` extra.
MEDIAPIPE_VERSIONS = ">=0.10.14,<0.10.30"
MEDIAPIPE_INSTALL = "pip install 'facemtl[detect]'"
# A face that fills the photo (a tight crop, as face datasets and ID photos are cut) leaves a
# detector's window no margin, and both built-in detectors miss it: when a search finds no face
# it runs again on the photo padded by this fraction of its longer side (edges repeated). Faces
# found of the 71 of benchmarks/real_faces.py: Haar 50 -> 60, MediaPipe 61 -> 68 (2026-12-02).
FRAME_PAD = 0.25
# When the Haar search finds faces, it also looks on the padded photo for faces whose side is at
# least this share of the photo's shorter side; where found boxes lie inside one, the higher cascade
# score wins (false faces on the cheek or nose of a face that fills the photo; 2026-12-02: 1 of the
# 71 faces of real_faces.py found more, one cropped from a false box no longer).
FILLING_FACE = 0.5
# The Haar cascade's last-stage score below which a window is not taken for a face
# (HaarFaceDetector.min_weight). Chosen 2026-12-02 by a rule written beforehand: the largest of
# 1.5, 2, 2.5, 3 that keeps the faces found of the 71 of benchmarks/real_faces.py (60) and costs at
# most one more miss per group of 100 synthetic scenes (detector_alignment.py's). 1.5: windows that
# are not a labelled face 24 -> 17 there, scene misses 17/83/50 -> 17/84/51; 2.0 cost 2 turned faces.
MIN_WEIGHT = 1.5
# MediaPipe gives its faces' eyes: a face whose eye line tilts by this many degrees or more is
# cropped turned by it (MediaPipeFaceDetector.min_turn).
MIN_TURN = 10.0


@runtime_checkable
class Detector(Protocol):
    """H x W x 3 uint8 RGB image -> (N, 4) float boxes ``[x0, y0, x1, y1]``, largest first.

    ``calibration`` (optional attribute): the detector's box-to-training-square mapping; a
    detector without one is cropped as its boxes are (the identity). ``boxes_and_turns`` (optional
    method): the same boxes and each face's turn in degrees (see the module docstring).
    """

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


def find_faces(detector, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 4) boxes, (N,) turns (degrees) and (N,) scores of any detector: its ``detections`` or
    ``boxes_and_turns`` when it has one, else its boxes with turn 0 (cropped level); scores NaN
    where the detector gives none."""
    scores = None
    if hasattr(detector, "detections"):
        boxes, turns, scores = detector.detections(image)
    elif hasattr(detector, "boxes_and_turns"):
        boxes, turns = detector.boxes_and_turns(image)
    else:
        boxes = detector(image)
        turns = np.zeros(len(boxes), np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.full(len(boxes), np.nan, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
    return boxes, np.asarray(turns, np.float32).reshape(-1), scores


def make_detector(name: str):
    """A built-in detector by name (:data:`DETECTORS`); ``"none"`` gives None (no detection)."""
    if name == "opencv":
        return HaarFaceDetector()
    if name == "mediapipe":
        return MediaPipeFaceDetector()
    if name == "none":
        return None
    raise FacemtlError(f"unknown detector {name!r}; expected one of {', '.join(DETECTORS)}")


def check_detector(detector) -> None:
    """Fail early (before a model is loaded) when a named detector cannot run here."""
    if detector == "mediapipe":
        _import_mediapipe()
    elif isinstance(detector, str) and detector not in DETECTORS:
        raise FacemtlError(f"unknown detector {detector!r}; expected one of {', '.join(DETECTORS)}")


class HaarFaceDetector:
    """Viola-Jones frontal-face cascade shipped with opencv-python (``cv2.data``).

    ``min_size`` is the smallest face side in pixels the cascade looks for; the faces come
    back largest first. The cascade sees frontal, upright faces of moderate contrast only
    (profiles are missed, and heads tilted by more than about 20 degrees or washed out by
    over-exposure). When it finds no face it searches again, until one search finds faces:
    the image padded by ``pad`` of its longer side (a face that fills the photo, :data:`FRAME_PAD`),
    the histogram-equalised image (``equalize``; with ``equalize_min_neighbors``), then the image
    turned by each angle of ``tilts`` (degrees; with ``tilt_min_neighbors``), whose faces come
    back as the upright boxes with the same centres and sides, with their turn
    (:meth:`boxes_and_turns`: the predictor's first crop is turned by it, its upright second crop
    then levels the face). These searches run on images where the first found nothing, often
    images without a face, so the equalised and turned ones ask for more overlapping hits than
    ``min_neighbors`` (a lenient search there adds false faces), and such an image costs five
    searches. When the first search finds faces, the turned searches run too (``tilt_always``; a
    tilted head beside upright ones, as in group photos), for faces from half the smallest to
    twice the largest side found, and add the faces that overlap none found; and one more search
    on the padded image looks only for faces at least :data:`FILLING_FACE` of the photo's shorter
    side, and the boxes found inside such a face give way to it when it scores higher (a false
    face on its cheek or nose; faces do not nest), else it goes. ``pad=0, equalize=False,
    tilts=()`` searches only the image as it is.

    ``min_weight``: every search drops the windows whose score from the cascade's last stage
    (OpenCV's level weight; :meth:`detections` gives it per face) is below it (:data:`MIN_WEIGHT`).
    Window blinds, stripes and folds of cloth pass the cascade with low scores (2026-12-02, first
    search on the photos of ``benchmarks/real_faces.py`` with no threshold: labelled faces 2.2-11.4,
    the other windows -0.6-9.9, 17 of 25 below 3.5); None keeps every window.
    """

    calibration: Calibration = CALIBRATIONS["opencv"]

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24, max_side: int = 1280,
                 pad: float = FRAME_PAD, equalize: bool = True, equalize_min_neighbors: int = 8,
                 tilts: tuple[float, ...] = (25.0, -25.0), tilt_min_neighbors: int = 12,
                 tilt_always: bool = True, min_weight: float | None = MIN_WEIGHT):
        fix = "install opencv-python-headless < 5 (its 4.x wheels ship the cascades) or use --detector none / --boxes"
        # OpenCV 5.0.0 (seen on a GPU machine's image) has no CascadeClassifier; 5.x wheels ship no cascades
        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
            raise FacemtlError(f"OpenCV {cv2.__version__} has no Haar face cascades; {fix}")
        path = Path(cv2.data.haarcascades) / _CASCADE
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise FacemtlError(f"could not load OpenCV's face cascade {path}; {fix}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.max_side = max_side  # larger photos are searched at this size (the cascade is slow on huge images)
        self.pad = pad
        self.equalize, self.equalize_min_neighbors = equalize, equalize_min_neighbors
        self.tilts = tuple(float(a) for a in tilts)
        self.tilt_min_neighbors = tilt_min_neighbors
        self.tilt_always = tilt_always
        self.min_weight = min_weight

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> (N, 4) float boxes ``[x0, y0, x1, y1]``, largest first."""
        return self.boxes_and_turns(image)[0]

    def boxes_and_turns(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes as :meth:`__call__` gives them, (N,) turns in degrees): the angle by which the
        image was turned (``cv2.getRotationMatrix2D``'s sense, about the box centre) for the
        cascade to see each face upright; 0 for faces found in the image as it is. The predictor
        crops a face through its turn, so a head tilted beyond the model's training poses reaches
        it about level."""
        return self.detections(image)[:2]

    def detections(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes, turns) as :meth:`boxes_and_turns` gives them and (N,) scores: the cascade's
        last-stage score of each face (at least ``min_weight``; on the 42 photos of
        ``benchmarks/real_faces.py``, 2026-12-06, the boxes on labelled faces scored 1.7-11.5, 4
        of 69 under 3.5, the other 13 boxes 2.0-9.9, 7 under 3.5: a filter against false faces,
        not a probability)."""
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.max_side / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        xywh = self._search(gray)
        if len(xywh) == 0 and self.pad > 0:  # a face that fills the photo
            xywh = padded_search(self._search, gray, self.pad, sizes=True)
        elif self.pad > 0:  # what it found may be false faces inside one that fills the photo
            xywh = _prefer_filling_faces(xywh, self._filling_faces(gray))
        if len(xywh) == 0 and self.equalize:  # an over-exposed or flat face
            xywh = self._search(cv2.equalizeHist(gray), self.equalize_min_neighbors)
        xywh = np.concatenate([xywh, np.zeros((len(xywh), 1), np.float32)], 1)  # turn 0: found as it is
        if len(xywh) == 0:  # a tilted head: the first turned search that finds faces
            for angle in self.tilts:
                xywh = self._turned_search(gray, angle)
                if len(xywh):
                    break
        elif self.tilt_always:  # a tilted head beside upright ones (group photos), about their size
            sides = (int(xywh[:, 2].min() / 2), int(np.ceil(xywh[:, 2].max() * 2)))
            for angle in self.tilts:
                xywh = _join(xywh, self._turned_search(gray, angle, sides))
        if len(xywh) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
        scores, turns = xywh[:, 4], xywh[:, 5]  # the rows carry the cascade's score in column 4, the turn in 5
        xywh = xywh[:, :4] / scale
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        order = np.argsort(-(xywh[:, 2] * xywh[:, 3]), kind="stable")
        return boxes[order], turns[order], scores[order]

    def _turned_search(self, gray: np.ndarray, angle: float, sides: tuple[int, int] | None = None) -> np.ndarray:
        """``[x, y, w, h, score, angle]`` rows of the faces found in the image turned by ``angle``
        degrees (on a canvas that holds all of it), as upright boxes with the same centres and sides.
        ``sides``: the smallest and largest face side to look for (default: any); the canvas is
        then shrunk until the smallest is 1.5 times the cascade's least window (the cost of a
        search grows with the pixels it scans)."""
        h, w = gray.shape
        f = 1.0 if sides is None else min(1.0, 1.5 * self.min_size / max(sides[0], 1))
        turn = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, f)
        cos, sin = abs(turn[0, 0]), abs(turn[0, 1])
        tw, th = int(np.ceil(w * cos + h * sin)), int(np.ceil(w * sin + h * cos))
        turn[:, 2] += ((tw - 1) / 2 - (w - 1) / 2, (th - 1) / 2 - (h - 1) / 2)
        limits = (None, None) if sides is None else (int(sides[0] * f), int(np.ceil(sides[1] * f)))
        xywh = self._search(cv2.warpAffine(gray, turn, (tw, th), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REPLICATE), self.tilt_min_neighbors, *limits)
        centres = xywh[:, :2] + (xywh[:, 2:4] - 1) / 2  # pixel centres, turned canvas
        xywh[:, 2:4] /= f
        xywh[:, :2] = warp_points(centres, invert_affine(turn)) - (xywh[:, 2:4] - 1) / 2
        return np.concatenate([xywh, np.full((len(xywh), 1), angle, np.float32)], 1)

    def _filling_faces(self, gray: np.ndarray) -> np.ndarray:
        """``[x, y, w, h, score]`` rows of the faces at least :data:`FILLING_FACE` of the photo's
        shorter side, searched on the padded photo, each kept only where the same search at half
        the resolution finds one that overlaps it (intersection over union above 0.5). A face that
        fills the photo is found at both; a false "face" around a real one comes and goes with the
        sampling (the astronaut photo enlarged to 1,280 px: a 1,049-px box around the head, scoring
        6.0 against the face's 5.0, found at 1,280 px and not at 640, which used to replace the face)."""
        least = int(FILLING_FACE * min(gray.shape))
        filling = padded_search(lambda g: self._search(g, min_size=least), gray, self.pad, sizes=True)
        if len(filling) == 0:
            return filling
        half = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        coarse = padded_search(lambda g: self._search(g, min_size=least // 2), half, self.pad, sizes=True)
        coarse[:, :4] *= 2
        return filling[[len(coarse) > 0 and _iou(coarse, row).max() > 0.5 for row in filling]]

    def _search(self, gray: np.ndarray, min_neighbors: int | None = None, min_size: int | None = None,
                max_size: int | None = None) -> np.ndarray:
        """(N, 5) float32 ``[x, y, w, h, score]`` of the cascade's faces in one grey image (score:
        the last stage's level weight), with sides from ``min_size`` (at least the detector's own)
        to ``max_size`` (default: any)."""
        side = self.min_size if min_size is None else max(self.min_size, min_size)
        found, _, weights = self.cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors if min_neighbors is None else min_neighbors,
            minSize=(side, side),
            maxSize=(max_size, max_size) if max_size else (0, 0),  # (0, 0): no limit
            outputRejectLevels=True,  # for the weights; the windows are detectMultiScale's
        )
        weights = np.asarray(weights, np.float64).reshape(-1)
        found = np.concatenate([np.asarray(found, np.float32).reshape(-1, 4), weights[:, None]], 1).astype(np.float32)
        if self.min_weight is None:
            return found
        return found[weights >= self.min_weight]


class MediaPipeFaceDetector:
    """MediaPipe's BlazeFace detector (legacy ``mediapipe.solutions.face_detection``).

    ``model``: ``"full"`` (full-range model, 192 px input: faces up to about 5 m from the
    camera, the better choice for photos with small faces) or ``"short"`` (128 px, faces close
    to the camera). ``min_confidence``: the detector's score threshold. ``pad``: when it finds no
    face, it looks again on the photo padded by this fraction of its longer side (a face that
    fills the photo, :data:`FRAME_PAD`; 0: no second look). ``min_turn``: a face whose eye line
    (the detector's two eye keypoints) tilts by this many degrees or more comes with that turn
    (:meth:`boxes_and_turns`; at most :data:`~facemtl.inference.alignment.MAX_UPRIGHT_ROLL`), so its first
    crop is about level; None: no turns. Its tflite weights ship inside the ``mediapipe`` wheel.
    Needs ``pip install 'facemtl[detect]'``.
    """

    calibration: Calibration = CALIBRATIONS["mediapipe"]

    def __init__(self, model: str = "full", min_confidence: float = 0.5, pad: float = FRAME_PAD,
                 min_turn: float | None = MIN_TURN):
        if model not in ("full", "short"):
            raise FacemtlError(f"unknown MediaPipe face model {model!r}; expected full or short")
        face_detection = _import_mediapipe()
        # The graph logs its start-up (TFLite delegate, feedback manager) on stderr at the first
        # image: run that image here, silenced, so a command's stderr keeps only its own lines.
        with _quiet_stderr():
            self._graph = face_detection.FaceDetection(model_selection=1 if model == "full" else 0,
                                                       min_detection_confidence=min_confidence)
            self._graph.process(np.zeros((64, 64, 3), np.uint8))
        self.pad = pad
        self.min_turn = min_turn

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 RGB -> (N, 4) float boxes ``[x0, y0, x1, y1]``, largest first."""
        return self.boxes_and_turns(image)[0]

    def boxes_and_turns(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes as :meth:`__call__` gives them, (N,) turns in degrees: the eye line's roll
        where it reaches ``min_turn``, else 0; see :meth:`HaarFaceDetector.boxes_and_turns`)."""
        return self.detections(image)[:2]

    def detections(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes, turns) as :meth:`boxes_and_turns` gives them and (N,) scores: BlazeFace's
        confidence of each face (0-1, at least ``min_confidence``)."""
        rows = self._search(image)
        if len(rows) == 0 and self.pad > 0:  # a face that fills the photo
            rows = padded_search(self._search, image, self.pad)
        turns = rows[:, 4]
        if self.min_turn is None:
            turns = np.zeros_like(turns)
        else:
            turns = np.where(np.abs(turns) >= self.min_turn, turns, 0.0).astype(np.float32)
        return rows[:, :4], turns, rows[:, 5]

    def _search(self, image: np.ndarray) -> np.ndarray:
        """``[x0, y0, x1, y1, roll, score]`` rows of one run of the graph, largest first (roll: the
        eye line's, :func:`~facemtl.inference.alignment.eye_roll`, clipped to +-MAX_UPRIGHT_ROLL)."""
        h, w = image.shape[:2]
        result = self._graph.process(np.ascontiguousarray(image))
        rows = []
        for det in result.detections or ():
            rel = det.location_data.relative_bounding_box
            # relative 0..1 spans pixel edges; pixel centres are at integers, edges at -0.5
            x0, y0 = rel.xmin * w - 0.5, rel.ymin * h - 0.5
            # keypoints 0 and 1: the subject's right and left eye (image-left, image-right when upright)
            eyes = [(k.x * w - 0.5, k.y * h - 0.5) for k in det.location_data.relative_keypoints[:2]]
            roll = upright_roll(eyes) if len(eyes) == 2 else 0.0
            rows.append([x0, y0, x0 + rel.width * w, y0 + rel.height * h, roll, det.score[0] if det.score else np.nan])
        if not rows:
            return np.zeros((0, 6), np.float32)
        boxes = np.asarray(rows, np.float32)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[np.argsort(-area, kind="stable")]

    def close(self) -> None:
        self._graph.close()


def _prefer_filling_faces(found: np.ndarray, filling: np.ndarray) -> np.ndarray:
    """Merge ``[x, y, w, h, score]`` rows of a search (``found``) with the faces of a search for
    faces that fill the photo (``filling``). Faces do not nest: where found boxes are centred
    inside a filling face and smaller than 0.6 of its side, the higher score wins (a false face on
    the cheek or nose of a face that fills the photo goes; a false "face" around a real one, as
    in a dark photo, does). A filling face with no box inside joins unless it overlaps a kept box
    (intersection over union above 0.3: the same face)."""
    centres = found[:, :2] + found[:, 2:4] / 2
    gone = np.zeros(len(found), bool)
    joining = []
    for x, y, w, h, score in filling:
        inner = ((centres[:, 0] >= x) & (centres[:, 0] <= x + w) & (centres[:, 1] >= y) & (centres[:, 1] <= y + h)
                 & (found[:, 2] < 0.6 * w))
        if not inner.any() or score > found[inner, 4].max():
            gone |= inner
            joining.append([x, y, w, h, score])
    return _join(found[~gone], np.asarray(joining, np.float32).reshape(-1, found.shape[1]))


def _join(found: np.ndarray, more: np.ndarray) -> np.ndarray:
    """``found`` and each ``[x, y, w, h, ...]`` row of ``more`` that overlaps none of the rows so far
    (intersection over union at most 0.3; above it, the same face found twice)."""
    for row in more:
        if not len(found) or _iou(found, row).max() <= 0.3:
            found = np.concatenate([found, row[None].astype(np.float32)])
    return found


def _iou(rows: np.ndarray, one: np.ndarray) -> np.ndarray:
    """Intersection over union of each ``[x, y, w, h, ...]`` row with ``one``."""
    ix = np.clip(np.minimum(rows[:, 0] + rows[:, 2], one[0] + one[2]) - np.maximum(rows[:, 0], one[0]), 0, None)
    iy = np.clip(np.minimum(rows[:, 1] + rows[:, 3], one[1] + one[3]) - np.maximum(rows[:, 1], one[1]), 0, None)
    inter = ix * iy
    return inter / (rows[:, 2] * rows[:, 3] + one[2] * one[3] - inter)


def padded_search(search, image: np.ndarray, pad: float, sizes: bool = False) -> np.ndarray:
    """``search``'s boxes on ``image`` padded by ``pad`` of its longer side on every edge (edge
    pixels repeated), moved back into ``image``'s coordinates; they may reach past its edges (the
    face is larger than the photo shows). ``sizes``: the rows are ``[x, y, w, h]`` (only x and y
    move), else ``[x0, y0, x1, y1, ...]``."""
    k = int(round(pad * max(image.shape[:2])))
    boxes = np.array(search(cv2.copyMakeBorder(image, k, k, k, k, cv2.BORDER_REPLICATE)), np.float32)
    boxes[:, :2] -= k
    if not sizes:
        boxes[:, 2:4] -= k
    return boxes


def _import_mediapipe():
    """``mediapipe.solutions.face_detection``, or a FacemtlError naming the pip command."""
    try:
        with _quiet_stderr():  # its C++ side prints a harmless protobuf complaint on import
            from mediapipe.python.solutions import face_detection
    except ImportError as exc:
        version = _installed_version("mediapipe")
        if version is not None:  # 0.10.30 and later ship neither the legacy solutions nor their weights
            raise FacemtlError(f"the mediapipe detector needs mediapipe {MEDIAPIPE_VERSIONS} (the releases that ship "
                               f"BlazeFace's face_detection solution and its weights); mediapipe {version} is "
                               f"installed and its face_detection does not import ({exc}); install a release that "
                               f"has it with: {MEDIAPIPE_INSTALL}  (or use --detector opencv)") from None
        if sys.version_info >= (3, 13):  # checked 2026-12-06: the last release with it has no 3.13 wheel
            raise FacemtlError(f"the mediapipe detector needs mediapipe {MEDIAPIPE_VERSIONS}, which has no "
                               f"release for Python {'.'.join(map(str, sys.version_info[:2]))}; use "
                               f"--detector opencv (or Python 3.10-3.12 with {MEDIAPIPE_INSTALL})") from None
        raise FacemtlError(f"the mediapipe detector needs the optional package mediapipe ({exc}); install it "
                           f"with: {MEDIAPIPE_INSTALL}  (or use --detector opencv)") from None
    _protobuf_compat()
    return face_detection


def _installed_version(package: str) -> str | None:
    """The installed distribution's version, None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _protobuf_compat() -> None:
    """mediapipe 0.10.x reads its results with ``SymbolDatabase.GetPrototype``, which protobuf 5
    removed; the replacement (``message_factory.GetMessageClass``) does the same thing. Adding the
    old name back lets mediapipe run beside the protobuf that onnx and tensorboard want."""
    from google.protobuf import message_factory, symbol_database

    cls = type(symbol_database.Default())
    if not hasattr(cls, "GetPrototype") and hasattr(message_factory, "GetMessageClass"):
        cls.GetPrototype = lambda self, descriptor: message_factory.GetMessageClass(descriptor)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C++ logging) for the block; Python exceptions still propagate."""
    sys.stderr.flush()  # what Python already wrote goes out before the redirection
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (e.g. some embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


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
