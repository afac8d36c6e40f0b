"""Face-crop transforms: raw sample (original image) -> raw sample at ``size x size``.

Format readers give the ORIGINAL image and labels (``docs/datasets.md``, "Loader contract");
every crop, resize and augmentation happens here, so training and inference crop the same way.

Conventions
-----------
* Pixel coordinates are 0-based with pixel CENTRES at integers (OpenCV's convention), so the
  horizontal mirror of ``x`` in an image of width ``W`` is ``W - 1 - x``.
* A crop is one 2x3 affine matrix ``M`` mapping original (x, y) to crop (x, y):
  ``[x', y'] = M @ [x, y, 1]``. Without augmentation it is a similarity (scale + shift);
  rotation jitter keeps it a similarity; a horizontal flip is folded into the same matrix (a
  reflection), so ``meta["crop_matrix"]`` always maps original pixels to the returned pixels.
* The face square: centre and side of the face box (or of the landmarks' bounding box) and
  ``side * (1 + 2 * margin)`` pixels of the original image become the ``size x size`` crop.
  Landmark boxes of 5-point sets only span eyes to mouth, so their side is first scaled by
  ``INNER_POINTS_SCALE`` (the eye-mouth box is roughly half of a face box).
* Warped images use bilinear interpolation and replicate nothing: pixels from outside the
  original image are black; parsing masks use nearest neighbour and pixels from outside the
  image are background (class 0), not "ignore", so a crop that pads a face still trains the
  background class (documented choice; set ``outside_label=255`` in :class:`FaceCrop` to ignore).

To score parsing at the original resolution (``docs/datasets.md``, "Parsing F1"), warp the crop
logits back with :func:`warp_logits_back` using the recorded ``meta["crop_matrix"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from facemtl.constants import DEFAULT_CROP_MARGIN
from facemtl.errors import FacemtlError
from facemtl.tasks import KNOWN_TASKS, POINT_SETS, STANDARD_TASKS, Task, get_task

INNER_POINTS_SCALE = 2.0  # 5-point boxes (eyes..mouth) -> face-sized boxes


def _as_affine(matrix) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise FacemtlError(f"an affine matrix must be 2x3, got shape {m.shape}")
    return m


def _to3(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def compose(second, first) -> np.ndarray:
    """Affine ``second o first`` (apply ``first``, then ``second``)."""
    return (_to3(_as_affine(second)) @ _to3(_as_affine(first)))[:2]


def invert_affine(matrix) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (raises FacemtlError when singular)."""
    m = _as_affine(matrix)
    a = m[:, :2]
    det = np.linalg.det(a)
    if abs(det) < 1e-12:
        raise FacemtlError("crop matrix is singular and cannot be inverted")
    inv_a = np.linalg.inv(a)
    return np.hstack([inv_a, -inv_a @ m[:, 2:]])


def warp_points(points, matrix) -> np.ndarray:
    """Apply a 2x3 affine matrix to (K, 2) points; returns float32 (K, 2)."""
    m = _as_affine(matrix)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)


def warp_image(image: np.ndarray, matrix, size, interpolation: int = cv2.INTER_LINEAR, border_value=0) -> np.ndarray:
    """Warp ``image`` (H, W[, C]) into a ``size`` (int or (w, h)) crop with ``matrix`` (original -> crop)."""
    w, h = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        _as_affine(matrix),
        (int(w), int(h)),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border_value,
    )


def face_box(box=None, landmarks=None, visibility=None) -> np.ndarray:
    """Square-free face box [x0, y0, x1, y1] from a box, else from the visible landmarks."""
    if box is not None:
        b = np.asarray(box, dtype=np.float64).reshape(4)
        if not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
            raise FacemtlError(f"face box must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {b.tolist()}")
        return b
    if landmarks is None:
        raise FacemtlError("face_crop_matrix needs a box or landmarks")
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if visibility is not None:
        pts = pts[np.asarray(visibility, dtype=bool)]
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) < 2:
        raise FacemtlError("face_crop_matrix needs at least 2 visible landmarks (or a box)")
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0, 1.0)
    if len(np.asarray(landmarks).reshape(-1, 2)) <= 5:
        side *= INNER_POINTS_SCALE
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def face_crop_matrix(box=None, landmarks=None, size: int = 128, margin: float = DEFAULT_CROP_MARGIN,
                     visibility=None) -> np.ndarray:
    """(2, 3) similarity mapping the face square (with ``margin`` per side) onto a ``size`` crop.

    The face square has the centre of the box (or landmark box) and side ``max(w, h)``; adding
    ``margin * side`` on each side gives ``side * (1 + 2 * margin)`` original pixels across the crop.
    """
    b = face_box(box, landmarks, visibility)
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    side = max(b[2] - b[0], b[3] - b[1]) * (1 + 2 * margin)
    s = size / side
    # Pixel centres: the square [cx - side/2, cx + side/2] maps to [-0.5, size - 0.5].
    c = (size - 1) / 2
    return np.array([[s, 0.0, c - s * cx], [0.0, s, c - s * cy]])


def _hflip_matrix(width: int) -> np.ndarray:
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0]])


def _permute_points(points: np.ndarray, perm) -> np.ndarray:
    """Point ``i`` becomes point ``perm[i]`` (tasks.py convention)."""
    out = np.empty_like(points)
    out[np.asarray(perm)] = points
    return out


def hflip(raw: dict, flip_permutations: dict[str, tuple]) -> dict:
    """Mirror a raw sample horizontally.

    Image and masks are mirrored; for every key in ``flip_permutations`` the labels are
    relabelled: point arrays get x -> W - 1 - x and index ``i`` moves to ``perm[i]`` (left eye
    becomes right eye); masks map class ``i`` to ``perm[i]`` (left brow <-> right brow);
    categories map ``i`` to ``perm[i]`` (left pose <-> right pose). A key missing from
    ``flip_permutations`` takes the flip of the known task of that name (facemtl.tasks
    KNOWN_TASKS, e.g. ``parsing19``). A points key's visibility (:func:`visibility_key`)
    follows its points; ``landmarks`` whose length does not match falls back to the flip of
    the reader's ``meta["point_set"]`` (facemtl.tasks.POINT_SETS). Point arrays without a
    permutation are an error (a mirrored left eye labelled "left" would be a wrong label).
    """
    image = raw["image"]
    w = image.shape[1]
    flip_permutations = _resolve_points({**_KNOWN_FLIPS, **flip_permutations}, raw)
    out = dict(raw)
    out["image"] = np.ascontiguousarray(image[:, ::-1])
    out["meta"] = dict(raw.get("meta", {}))
    out["meta"]["flipped"] = not out["meta"].get("flipped", False)
    for key, value in raw.items():
        if key in ("image", "meta") or _is_visibility(key, raw) or value is None:
            continue
        perm = flip_permutations.get(key)
        if key == "box":
            b = np.asarray(value, dtype=np.float32)
            out["box"] = np.array([w - 1 - b[2], b[1], w - 1 - b[0], b[3]], dtype=np.float32)
            continue
        arr = np.asarray(value)
        if arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[:2] != image.shape[:2]:  # points
            if perm is None or len(perm) != len(arr):
                raise FacemtlError(
                    f"cannot flip {key!r} with {len(arr)} points: no flip permutation of that length given"
                )
            pts = arr.astype(np.float32).copy()
            pts[:, 0] = w - 1 - pts[:, 0]
            out[key] = _permute_points(pts, perm)
            vis = visibility_key(key)
            if raw.get(vis) is not None:
                out[vis] = _permute_points(np.asarray(raw[vis], dtype=bool), perm)
        elif arr.ndim == 2 and arr.shape == image.shape[:2]:  # mask
            mask = np.ascontiguousarray(arr[:, ::-1])
            if perm is not None:
                lut = np.arange(256, dtype=np.uint8)
                lut[: len(perm)] = np.asarray(perm, dtype=np.uint8)
                mask = lut[mask]
            out[key] = mask
        elif arr.ndim == 0 and perm is not None:  # category
            out[key] = int(perm[int(arr)])
    return out


def warp_logits_back(logits, matrix, out_hw):
    """Warp crop logits (C, h, w) back to the original image (C, H, W), bilinear.

    ``matrix`` maps original -> crop (``meta["crop_matrix"]``); returns the same type as
    ``logits`` (numpy array or torch tensor). Pixels of the original image outside the crop get
    the value of the nearest crop border pixel (so argmax stays defined there).
    """
    H, W = int(out_hw[0]), int(out_hw[1])
    m = _as_affine(matrix)
    is_torch = isinstance(logits, torch.Tensor)
    t = logits if is_torch else torch.as_tensor(np.asarray(logits))
    t = t.float()
    if t.ndim != 3:
        raise FacemtlError(f"warp_logits_back expects (C, h, w) logits, got shape {tuple(t.shape)}")
    c, h, w = t.shape
    # For each original pixel centre (x, y) find its crop coordinates, then sample bilinearly.
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    mt = torch.as_tensor(m, dtype=torch.float64)
    cx = mt[0, 0] * xs + mt[0, 1] * ys + mt[0, 2]
    cy = mt[1, 0] * xs + mt[1, 1] * ys + mt[1, 2]
    # align_corners=True: -1 and +1 are the centres of the first and last pixels.
    gx = 2 * cx / max(w - 1, 1) - 1
    gy = 2 * cy / max(h - 1, 1) - 1
    grid = torch.stack([gx, gy], -1).to(t.dtype).unsqueeze(0)
    out = F.grid_sample(t.unsqueeze(0), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    if is_torch:
        return out.to(logits.dtype)
    return out.numpy().astype(np.asarray(logits).dtype, copy=False)


# Flips of every task the toolkit defines (standard and dataset schemas), by raw key.
_KNOWN_FLIPS: dict[str, tuple[int, ...]] = {t.name: tuple(t.flip) for t in KNOWN_TASKS.values()}


def visibility_key(key: str) -> str:
    """The raw key of a points key's visibility: ``visibility`` for ``landmarks`` (the loader
    contract), ``<key>_visibility`` for other point sets (e.g. ``aflw21_visibility``)."""
    return "visibility" if key == "landmarks" else f"{key}_visibility"


def _is_visibility(key: str, raw: dict) -> bool:
    return key == "visibility" or (key.endswith("_visibility") and key[: -len("_visibility")] in raw)


def _flip_permutations(tasks, raw: dict) -> dict[str, tuple]:
    """Flip permutations per raw key: every known task (facemtl.tasks.KNOWN_TASKS), overridden
    by ``tasks`` (the tasks being trained, users' own included), then the reader's point set
    (``meta["point_set"]``) when ``landmarks`` is not the 5-point set.

    Every known task is included even when not trained, so no label left in the raw sample
    (e.g. ``pose``) keeps its unflipped value."""
    perms = dict(_KNOWN_FLIPS)
    for task in tasks:
        perms[task.name] = tuple(task.flip)
    return _resolve_points(perms, raw)


def _resolve_points(perms: dict[str, tuple], raw: dict) -> dict[str, tuple]:
    perms = dict(perms)
    pts = raw.get("landmarks")
    if pts is not None:
        k = len(pts)
        if len(perms.get("landmarks", ())) != k:
            name = raw.get("meta", {}).get("point_set")
            perm = POINT_SETS[name].flip if name in POINT_SETS else None
            if perm is not None and len(perm) == k:
                perms["landmarks"] = perm
            else:
                perms.pop("landmarks", None)
    return perms


@dataclass
class FaceCrop:
    """Crop the face, warp to ``size x size`` and (optionally) augment; records the crop.

    ``raw -> raw`` at the crop size with ``meta["crop_matrix"]`` (original -> crop, including
    any flip) and ``meta["crop"] = {"size", "margin"}`` so inference can crop identically.
    The face square comes from ``box`` if the sample has one, else from the visible
    ``landmarks``, else from the parsing mask's face classes (1..9), else the whole image.

    Augmentation (training, ``augment=True``): rotation uniform in +-``max_rotation`` degrees,
    scale factor uniform in ``1 +- scale_jitter``, shift uniform in +-``shift_jitter`` of the
    crop size, horizontal flip with probability 0.5 (labels relabelled with the tasks' flip
    permutations, :func:`hflip`), photometric jitter (brightness, contrast, saturation,
    Gaussian blur).
    """

    size: int = 128
    margin: float = DEFAULT_CROP_MARGIN
    augment: bool = False
    max_rotation: float = 15.0
    scale_jitter: float = 0.1
    shift_jitter: float = 0.05
    flip: bool | None = None
    photometric: bool | None = None
    tasks: tuple | None = None
    outside_label: int = 0
    _tasks: tuple[Task, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.flip is None:
            self.flip = self.augment
        if self.photometric is None:
            self.photometric = self.augment
        if self.size < 8:
            raise FacemtlError(f"crop size must be at least 8 pixels, got {self.size}")
        if self.margin < 0:
            raise FacemtlError(f"crop margin must be >= 0, got {self.margin}")
        names = self.tasks if self.tasks is not None else tuple(STANDARD_TASKS)
        self._tasks = tuple(get_task(t) for t in names)

    def config(self) -> dict:
        """What inference needs to crop the same way."""
        return {"size": int(self.size), "margin": float(self.margin)}

    def base_matrix(self, raw: dict) -> np.ndarray:
        image = raw["image"]
        h, w = image.shape[:2]
        if raw.get("box") is not None:
            return face_crop_matrix(box=raw["box"], size=self.size, margin=self.margin)
        if raw.get("landmarks") is not None:
            vis = raw.get("visibility")
            if vis is None or np.asarray(vis, dtype=bool).sum() >= 2:
                return face_crop_matrix(landmarks=raw["landmarks"], size=self.size, margin=self.margin, visibility=vis)
        if raw.get("parsing") is not None:
            m = np.asarray(raw["parsing"])
            ys, xs = np.nonzero((m >= 1) & (m <= 9))
            if len(xs) >= 2:
                box = [xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5]
                return face_crop_matrix(box=box, size=self.size, margin=self.margin)
        # Already a face crop (emotion sets): the whole image, no margin.
        return face_crop_matrix(box=[-0.5, -0.5, w - 0.5, h - 0.5], size=self.size, margin=0.0)

    def __call__(self, raw: dict, rng: np.random.Generator | None = None) -> dict:
        if raw.get("image") is None:
            raise FacemtlError("FaceCrop needs a raw sample with an 'image'")
        rng = rng if rng is not None else np.random.default_rng()
        matrix = self.base_matrix(raw)
        flipped = False
        if self.augment:
            c = (self.size - 1) / 2
            angle = rng.uniform(-self.max_rotation, self.max_rotation)
            scale = rng.uniform(1 - self.scale_jitter, 1 + self.scale_jitter)
            shift = rng.uniform(-self.shift_jitter, self.shift_jitter, size=2) * self.size
            jitter = cv2.getRotationMatrix2D((c, c), angle, scale)
            jitter[:, 2] += shift
            matrix = compose(jitter, matrix)
        if self.flip and rng.random() < 0.5:
            matrix = compose(_hflip_matrix(self.size), matrix)
            flipped = True
        out = self.apply_matrix(raw, matrix, flipped)
        if self.photometric:
            out["image"] = photometric_jitter(out["image"], rng)
        return out

    def apply_matrix(self, raw: dict, matrix: np.ndarray, flipped: bool = False) -> dict:
        """Warp every label of ``raw`` with ``matrix``; relabel left/right when ``flipped``."""
        image = raw["image"]
        out: dict = {}
        meta = dict(raw.get("meta", {}))
        meta["crop_matrix"] = np.asarray(matrix, dtype=np.float64)
        meta["crop"] = self.config()
        meta["original_hw"] = tuple(int(v) for v in image.shape[:2])
        meta["flipped"] = flipped
        out["meta"] = meta
        out["image"] = warp_image(image, matrix, self.size)
        perms = _flip_permutations(self._tasks, raw) if flipped else {}
        for key, value in raw.items():
            if key in ("image", "meta") or _is_visibility(key, raw) or value is None:
                continue
            arr = np.asarray(value)
            if key == "box":
                corners = warp_points([[arr[0], arr[1]], [arr[2], arr[1]], [arr[0], arr[3]], [arr[2], arr[3]]], matrix)
                out["box"] = np.concatenate([corners.min(0), corners.max(0)]).astype(np.float32)
            elif arr.ndim == 2 and arr.shape == image.shape[:2]:  # mask, nearest neighbour
                mask = warp_image(arr.astype(np.uint8), matrix, self.size, cv2.INTER_NEAREST, self.outside_label)
                if flipped and key in perms:
                    lut = np.arange(256, dtype=np.uint8)
                    lut[: len(perms[key])] = np.asarray(perms[key], dtype=np.uint8)
                    mask = lut[mask]
                out[key] = mask
            elif arr.ndim == 2 and arr.shape[-1] == 2:  # points
                pts = warp_points(arr, matrix)
                if flipped:
                    if key not in perms or len(perms[key]) != len(pts):
                        raise FacemtlError(
                            f"cannot flip {key!r} with {len(pts)} points: no flip permutation of that length "
                            "(pass the task in FaceCrop(tasks=...) or use flip=False)"
                        )
                    pts = _permute_points(pts, perms[key])
                    vis = visibility_key(key)
                    if raw.get(vis) is not None:
                        out[vis] = _permute_points(np.asarray(raw[vis], dtype=bool), perms[key])
                out[key] = pts
            elif arr.ndim == 0 and flipped and key in perms:
                out[key] = int(perms[key][int(arr)])
            else:
                out[key] = value
        for key, value in raw.items():  # visibility not permuted above (no flip) is kept as is
            if _is_visibility(key, raw) and key not in out and value is not None:
                out[key] = np.asarray(value, dtype=bool).copy()
        return out


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.2, contrast: float = 0.2,
                       saturation: float = 0.2, blur_prob: float = 0.2) -> np.ndarray:
    """Random brightness/contrast/saturation (factors in 1 +- x) and an occasional Gaussian blur."""
    img = image.astype(np.float32)
    img *= rng.uniform(1 - brightness, 1 + brightness)
    mean = img.mean()
    img = (img - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    gray = img.mean(axis=2, keepdims=True)
    img = (img - gray) * rng.uniform(1 - saturation, 1 + saturation) + gray
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < blur_prob:
        sigma = rng.uniform(0.3, 1.2)
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    return out


def random_detail_loss(images: torch.Tensor, share: float, generator: torch.Generator,
                       smallest: float = 0.3) -> torch.Tensor:
    """Each image of an (N, C, S, S) batch, with probability ``share``, shrunk to a side drawn
    uniformly from ``smallest`` to 1 times S (area average) and enlarged back (bilinear): what a
    smaller or softer face shows. Geometry is unchanged, so every label still holds. The
    training side of the predictor's ``detail`` (:func:`facemtl.inference.predictor.reduce_detail`);
    draws come from ``generator`` only."""
    out = images.clone()
    size = images.shape[-1]
    for i in range(images.shape[0]):
        if float(torch.rand((), generator=generator)) >= share:
            continue
        side = max(1, round(size * (smallest + (1 - smallest) * float(torch.rand((), generator=generator)))))
        if side >= size:
            continue
        x = F.interpolate(images[i : i + 1].float(), size=(side, side), mode="area")
        out[i] = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0].to(images.dtype)
    return out


def random_convolution(images: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """RandConv (Xu et al., ICLR 2021, "Robust and generalizable visual representation learning
    via random convolutions"): each image of an (N, C, H, W) batch, with probability ``share``,
    is mixed with itself seen through a random k x k convolution (k drawn from 1, 3, 5, 7; weights
    N(0, 1 / (C k^2)), zero padding): ``alpha * x + (1 - alpha) * conv(x)``, alpha ~ U(0, 1), the
    convolved image first brought to ``x``'s own per-channel mean and standard deviation. Colour
    and texture change, shapes stay where they are, so every label still holds. Draws come from
    ``generator`` only (a run resumes with the same images)."""
    out = images.clone()
    c = images.shape[1]
    for i in range(images.shape[0]):
        if float(torch.rand((), generator=generator)) >= share:
            continue
        k = 2 * int(torch.randint(0, 4, (), generator=generator)) + 1
        weight = torch.randn((c, c, k, k), generator=generator) / (c * k * k) ** 0.5
        alpha = float(torch.rand((), generator=generator))
        x = images[i : i + 1].float()
        y = F.conv2d(x, weight.to(x.device), padding=k // 2)
        mean, std = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
        y = (y - y.mean((2, 3), keepdim=True)) / (y.std((2, 3), keepdim=True) + 1e-5) * std + mean
        out[i] = (alpha * x + (1 - alpha) * y)[0].to(images.dtype)
    return out
