"""From a detector's box to the crop the model was trained on, and scenes to measure it with.

Training crops a face from its landmarks (:class:`facemtl.data.transforms.FaceCrop`): the face
square is centred on the landmarks' bounding box and, for the 5-point set, twice its longer side
(:func:`facemtl.data.transforms.face_box`). A face detector's box has a centre and scale of its
own (OpenCV's Haar box reaches from the brows to the chin; MediaPipe's is tighter), so cropping
it as if it were that square shows the model faces off-centre and at another zoom than it
learned.

:class:`Calibration` maps a detector box to the face square with three numbers fitted on
synthetic scenes (:func:`render_scene`) by ``benchmarks/detector_alignment.py --fit``, stored
per detector in :data:`CALIBRATIONS`. The predictor then crops the calibrated square and, by
default, crops a second time from the landmarks it predicted on the first crop, exactly as
training crops from landmarks (:func:`landmark_square`).

Scenes (:func:`render_scene`): one synthetic face (:func:`facemtl.data.synth.render_face`)
pasted at a random scale and place into a procedural 320-640 px background, with its 5
landmarks in scene pixels; deterministic for ``(seed, index, group)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facemtl.data.transforms import compose, face_box, face_crop_matrix, invert_affine
from facemtl.errors import FacemtlError

# ---------------------------------------------------------------------------------------
# calibration


@dataclass(frozen=True)
class Calibration:
    """Detector box -> training face square.

    With the box's centre ``(cx, cy)`` and side ``s = max(w, h)`` (the side
    :func:`~facemtl.data.transforms.face_crop_matrix` uses), the square has centre
    ``(cx + dx * s, cy + dy * s)`` and side ``scale * s``. The identity (0, 0, 1) crops the box
    as given.
    """

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    def apply(self, box) -> np.ndarray:
        """``[x0, y0, x1, y1]`` -> the calibrated square ``[x0, y0, x1, y1]`` (float64)."""
        b = np.asarray(box, np.float64).reshape(4)
        side = max(b[2] - b[0], b[3] - b[1])
        cx = (b[0] + b[2]) / 2 + self.dx * side
        cy = (b[1] + b[3]) / 2 + self.dy * side
        half = self.scale * side / 2
        return np.array([cx - half, cy - half, cx + half, cy + half])


IDENTITY = Calibration()

# OpenCV: fitted by `python benchmarks/detector_alignment.py --fit` (medians over the 252 faces it
# found in 600 synthetic scenes, seed 1000, 200 per group); rerun it after changing the detector's
# settings, the scenes or the synthetic faces' look, and paste the printed constants here. On real
# photos the Haar boxes sit the same way (`benchmarks/real_faces.py --fit`: dy 0.090, scale 0.850).
# MediaPipe: BlazeFace places its boxes differently on synthetic faces (there: dy 0.049, scale
# 0.962) than on photographs, so it is fitted on 10 real faces (`python benchmarks/real_faces.py
# --photos DIR --fit --detector mediapipe`); on the 7 held-out real faces it found, the landmark
# NME of the model bundled then fell from median 10.5 to 6.7% with it (the raw box: 7.4%). The Haar boxes sit higher than
# the landmark square (they include the brows and forehead); both detectors' boxes are larger.
CALIBRATIONS: dict[str, Calibration] = {
    "opencv": Calibration(dx=-0.002, dy=0.091, scale=0.845),
    "mediapipe": Calibration(dx=-0.010, dy=0.003, scale=0.890),
}


MAX_UPRIGHT_ROLL = 45.0  # degrees: a steeper eye line from a first pass is more likely a wrong guess


def eye_roll(landmarks) -> float:
    """Angle of the eye line (points 0 -> 1) in degrees, positive when the image-right eye is
    lower on screen (the image y axis points down); 0 for level eyes."""
    pts = np.asarray(landmarks, np.float64).reshape(-1, 2)
    dx, dy = pts[1] - pts[0]
    return float(np.degrees(np.arctan2(dy, dx)))


def upright_crop(landmarks, size: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(crop matrix, face square) of the training crop of these 5 points turned upright.

    The points are turned about their box's centre by the roll of the eye line (points 0 and 1,
    at most :data:`MAX_UPRIGHT_ROLL`) so that the eyes are level; the crop is the training crop
    (:func:`landmark_square`, ``margin``) of the turned points, taken from the image through
    the same turn. The face square returned is that square turned back, as an axis-aligned box
    with its centre and side (the crop itself is turned by the roll).
    """
    pts = np.asarray(landmarks, np.float64).reshape(-1, 2)
    square = landmark_square(pts)
    roll = upright_roll(pts)
    centre = (square[:2] + square[2:]) / 2
    turn = cv2.getRotationMatrix2D(tuple(centre), roll, 1.0)  # the eye line becomes level
    upright = landmark_square(pts @ turn[:, :2].T + turn[:, 2])  # float64: warp_points rounds to float32
    matrix = compose(face_crop_matrix(box=upright, size=size, margin=margin), turn)
    back = invert_affine(turn)
    mid = back[:, :2] @ ((upright[:2] + upright[2:]) / 2) + back[:, 2]
    half = (upright[2] - upright[0]) / 2
    return matrix, np.concatenate([mid - half, mid + half])


def upright_roll(landmarks) -> float:
    """The turn (degrees, ``cv2.getRotationMatrix2D``'s sense) that levels these points' eyes:
    :func:`eye_roll`, at most :data:`MAX_UPRIGHT_ROLL` either way."""
    return float(np.clip(eye_roll(landmarks), -MAX_UPRIGHT_ROLL, MAX_UPRIGHT_ROLL))


def turned_crop(box, degrees: float, size: int, margin: float) -> np.ndarray:
    """Crop matrix of ``box`` (cropped as :func:`~facemtl.data.transforms.face_crop_matrix`
    crops a box) turned about its centre by ``degrees`` (``cv2.getRotationMatrix2D``'s sense):
    the box keeps its place and size. With :func:`upright_roll` of a face's points it undoes the
    face's roll only; :func:`upright_crop` also moves and scales the crop to the points.
    """
    b = np.asarray(box, np.float64).reshape(4)
    turn = cv2.getRotationMatrix2D(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2), float(degrees), 1.0)
    return compose(face_crop_matrix(box=b, size=size, margin=margin), turn)


def landmark_square(landmarks) -> np.ndarray:
    """The face square training crops from these landmarks (``[x0, y0, x1, y1]``).

    Same function as :class:`~facemtl.data.transforms.FaceCrop` uses, so a crop of this
    square with the checkpoint's margin is the training crop.
    """
    return face_box(landmarks=landmarks)


def square_of(box) -> np.ndarray:
    """The square a box is cropped as: same centre, side ``max(w, h)``."""
    b = np.asarray(box, np.float64).reshape(4)
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    half = max(b[2] - b[0], b[3] - b[1]) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def box_offsets(boxes, squares) -> np.ndarray:
    """(N, 3): per pair, the square's centre offset from the box's centre in box sides (x, y)
    and the log of the square's side over the box's side."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    q = np.asarray(squares, np.float64).reshape(-1, 4)
    if len(b) != len(q):
        raise FacemtlError(f"{len(b)} boxes but {len(q)} squares")
    side_b = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    side_q = np.maximum(q[:, 2] - q[:, 0], q[:, 3] - q[:, 1])
    if np.any(side_b <= 0) or np.any(side_q <= 0):
        raise FacemtlError("boxes and squares must have positive size")
    dx = ((q[:, 0] + q[:, 2]) - (b[:, 0] + b[:, 2])) / 2 / side_b
    dy = ((q[:, 1] + q[:, 3]) - (b[:, 1] + b[:, 3])) / 2 / side_b
    return np.stack([dx, dy, np.log(side_q / side_b)], axis=1)


def fit_calibration(boxes, squares) -> Calibration:
    """The calibration taking ``boxes`` to ``squares`` (pairs of one face each).

    Medians, not means: a few detections that lock onto a part of a face (or a turned face's
    hair) would pull a least-squares fit away from the bulk of faces.
    """
    rel = box_offsets(boxes, squares)
    if len(rel) == 0:
        raise FacemtlError("cannot fit a calibration without any matched face")
    dx, dy, log_scale = np.median(rel, axis=0)
    return Calibration(float(dx), float(dy), float(np.exp(log_scale)))


def matches(box, square, max_scale: float = 3.0) -> bool:
    """Whether a detection is the face of ``square`` (its training square): the detection's
    centre lies inside the square and the sides are within ``max_scale`` of each other."""
    b = np.asarray(box, np.float64).reshape(4)
    q = np.asarray(square, np.float64).reshape(4)
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    side_b = max(b[2] - b[0], b[3] - b[1])
    side_q = max(q[2] - q[0], q[3] - q[1])
    inside = q[0] <= cx <= q[2] and q[1] <= cy <= q[3]
    return bool(inside and side_b > 0 and 1 / max_scale <= side_b / side_q <= max_scale)


def largest(boxes) -> int | None:
    """Index of the largest box by area, or None for no box: the face of a photo that holds one
    labelled face and says nowhere where it is (an emotion folder's image)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))) if len(b) else None


def find_match(boxes, square) -> int | None:
    """Index of the first (largest) detection matching the face, or None (a miss)."""
    for i, box in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
        if matches(box, square):
            return i
    return None


# ---------------------------------------------------------------------------------------
# synthetic scenes

# group -> synthetic style, range of the pasted patch's side (fraction of the scene's shorter
# side, or pixels for "small") and the smallest |yaw| accepted.
SCENE_GROUPS: dict[str, dict] = {
    "frontal": dict(style="studio", patch=(0.3, 0.75), pixels=False, min_yaw=0.0),
    "turned": dict(style="wild", patch=(0.3, 0.75), pixels=False, min_yaw=30.0),
    "small": dict(style="snapshot", patch=(40, 72), pixels=True, min_yaw=0.0),
}
SCENE_SIDES = (320, 640)  # scene width and height are drawn from this range
_GROUP_IDS = {name: i for i, name in enumerate(SCENE_GROUPS)}
_TRIES = 64  # renders tried for a face of the group's yaw (a turned wild face: ~1 in 2)


def render_scene(seed: int, index: int, group: str = "frontal") -> dict:
    """One synthetic face pasted into a procedural scene.

    Returns ``image`` (H x W x 3 uint8 RGB, H and W in 320..640), ``landmarks`` (5, 2) float32
    scene pixels of the pasted face (the rendered face's, scaled and shifted), ``square`` (its
    training face square, :func:`landmark_square`), ``patch`` ``[x0, y0, side]`` where the face
    render was pasted, ``group``, and ``meta`` (the face's style, index, yaw). Deterministic for
    ``(seed, index, group)``.

    Groups (:data:`SCENE_GROUPS`): ``frontal`` studio faces, ``turned`` wild faces with
    ``|yaw| >= 30`` degrees, ``small`` snapshot faces pasted as 40-72 px patches (eyes about
    10-20 px apart). The face render is blended in with a soft border, so its own backdrop
    becomes part of the scene.
    """
    from facemtl.data.synth import render_face

    if group not in SCENE_GROUPS:
        raise FacemtlError(f"unknown scene group {group!r}; expected one of {', '.join(SCENE_GROUPS)}")
    if int(seed) < 0 or int(index) < 0:
        raise FacemtlError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    spec = SCENE_GROUPS[group]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index), _GROUP_IDS[group], 7])))
    w, h = (int(v) for v in rng.integers(SCENE_SIDES[0], SCENE_SIDES[1] + 1, 2))
    lo, hi = spec["patch"]
    side = round(rng.uniform(lo, hi) * (1 if spec["pixels"] else min(w, h)))
    render_size = max(side, 128)  # small patches are rendered larger and shrunk (anti-aliased)
    for face_index in range(int(index) * _TRIES, (int(index) + 1) * _TRIES):
        raw = render_face(seed, face_index, spec["style"], render_size)
        if abs(raw["meta"]["yaw"]) >= spec["min_yaw"]:
            break
    patch, pts = raw["image"], raw["landmarks"].astype(np.float64)
    if render_size != side:
        patch = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
        pts = (pts + 0.5) * (side / render_size) - 0.5  # pixel centres at integers
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    scene = _scene_background(rng, h, w)
    alpha = _soft_square(side)[:, :, None]
    region = scene[y0 : y0 + side, x0 : x0 + side].astype(np.float32)
    scene[y0 : y0 + side, x0 : x0 + side] = np.clip(alpha * patch + (1 - alpha) * region + 0.5, 0, 255).astype(np.uint8)
    # One JPEG pass over the whole scene, so the face patch and backdrop share the same artefacts.
    ok, enc = cv2.imencode(".jpg", scene, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))])
    if ok:
        scene = cv2.imdecode(enc, cv2.IMREAD_COLOR)
    landmarks = (pts + [x0, y0]).astype(np.float32)
    return {
        "image": np.ascontiguousarray(scene),
        "landmarks": landmarks,
        "square": landmark_square(landmarks),
        "patch": [x0, y0, side],
        "group": group,
        "meta": {"style": spec["style"], "seed": int(seed), "index": int(index), "face_index": face_index,
                 "yaw": raw["meta"]["yaw"]},
    }


def _soft_square(side: int) -> np.ndarray:
    """(side, side) float32 alpha: 1 inside, a smooth ramp to 0 over the outer 15% per edge."""
    t = (np.arange(side) + 0.5) / side
    ramp = np.clip(np.minimum(t, 1 - t) / 0.15, 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep: no visible seam at the ramp's ends
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def _scene_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A procedural backdrop: a tilted colour gradient, random shapes, a light blur and noise."""
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xs / w + np.sin(angle) * ys / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    scene = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.uint8)
    for _ in range(int(rng.integers(6, 20))):
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = int(rng.integers(4))
        a = (int(rng.uniform(-0.1, 1.1) * w), int(rng.uniform(-0.1, 1.1) * h))
        b = (int(rng.uniform(-0.1, 1.1) * w), int(rng.uniform(-0.1, 1.1) * h))
        if kind == 0:
            cv2.rectangle(scene, a, b, colour, -1)
        elif kind == 1:
            cv2.circle(scene, a, int(rng.uniform(0.02, 0.2) * min(w, h)), colour, -1)
        elif kind == 2:
            cv2.line(scene, a, b, colour, int(rng.integers(1, max(2, min(w, h) // 25))))
        else:
            axes = (int(rng.uniform(0.02, 0.25) * w), int(rng.uniform(0.02, 0.25) * h))
            cv2.ellipse(scene, a, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    scene = cv2.GaussianBlur(scene, (0, 0), float(rng.uniform(0.5, 1.5)))
    noise = rng.normal(0, rng.uniform(1, 5), scene.shape).astype(np.float32)
    return np.clip(scene + noise, 0, 255).astype(np.uint8)
