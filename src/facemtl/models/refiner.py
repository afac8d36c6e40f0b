"""Point refiner: a second, local stage for the five landmarks, after the face model.

The face model reads the whole 128-px crop; on real photographs its five points sit 6-10% of the
inter-ocular distance off, mostly because whole synthetic faces differ from real ones. Each point's
own neighbourhood (an eye, a nose tip, a mouth corner) differs less, so a small network that sees
only a patch around each predicted point and says where in it the point lies moves the points
closer on real faces (docs/evidence.md, "A local point refiner"). Trained on synthetic faces only
(:mod:`facemtl.engine.refiner`).

Geometry: a point's patch is :data:`PATCH` pixels a side, covers the refiner's ``patch_side``
(:data:`PATCH_SIDE` by default) of the inter-ocular distance of the points given, is centred on
the point and turned so that the given eyes are level. The network reads the patch and the point's
index and returns the true point's offset from the patch centre, in patch sides along the patch's
axes (:func:`offsets_to_points`).

Stages (:class:`RefinerCascade`): a refiner's folder holds stage 1 (``refiner.safetensors`` +
``refiner.json``) and may hold further stages (``refiner.stage2.*``), each a :class:`PointRefiner`
trained on guesses as near as the stage before leaves them and applied to that stage's points
(cascaded regression; docs/evidence.md, "A second refiner stage").
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from facemtl.constants import REFINER_PATCH_SIDE, REFINER_PATCH_SIDES
from facemtl.errors import FacemtlError
from facemtl.tasks import STANDARD_TASKS

PATCH = 48
PATCH_SIDE, PATCH_SIDE_RANGE = REFINER_PATCH_SIDE, REFINER_PATCH_SIDES
REFINER_WEIGHTS, REFINER_JSON = "refiner.safetensors", "refiner.json"  # stage 1; stage k: refiner.stage{k}.*
MAX_STAGES = 9
REFINER_FORMAT = "facemtl-point-refiner"
FIVE_POINTS = STANDARD_TASKS["landmarks"]  # MTFL order: eyes, nose, mouth corners
ANTI_ALIAS_FROM = 1.5  # shrinking a photo by more than this: blur first, as the crop would


class PointRefiner(nn.Module):
    """(N, 3, PATCH, PATCH) uint8-range patches and (N,) point indices -> (N, 2) offsets in patch
    sides. Seven 3x3 conv + batch norm + ReLU layers with three poolings (48 -> 6 px), then two
    linear layers that keep where things are in the patch (no global pooling: the answer is a place)."""

    def __init__(self, width: int = 24, points: int = 5, patch_side: float = PATCH_SIDE):
        super().__init__()
        self.patch_side = float(patch_side)

        def conv(a, b):
            return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]

        w = width
        self.width, self.points = width, points
        self.features = nn.Sequential(
            *conv(3, w), *conv(w, w), nn.MaxPool2d(2),
            *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),
            *conv(2 * w, 4 * w), *conv(4 * w, 4 * w), nn.MaxPool2d(2),
            *conv(4 * w, 4 * w),
        )
        cells = (PATCH // 8) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * cells, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, 2 * points))

    def forward(self, patches: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        out = self.every_point(patches)
        return out[torch.arange(len(index), device=out.device), index]

    def every_point(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, 3, PATCH, PATCH) patches -> (N, points, 2): each patch read as each point."""
        x = (patches.float() / 255 - 0.5) / 0.25
        return self.head(self.features(x)).view(-1, self.points, 2)

    def face_offsets(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, points, PATCH, PATCH, 3) RGB uint8 patches of B faces in MTFL order (:func:`cut_patches`)
        -> (B, points, 2) offsets: the mean of each patch's answer and its mirror image's. The mirrored
        patch of point k shows point ``flip[k]`` (left eye <-> right eye, mouth corners swapped); its x
        offset is mirrored back. The answers are picked by 0/1 matrices, not by indexing, so the ONNX
        graph of this method (:func:`facemtl.inference.export.refiner_onnx_model`) has no batch-sized
        constants."""
        k = self.points
        x = patches.reshape(-1, PATCH, PATCH, 3).permute(0, 3, 1, 2)
        # (own | mirrored, face, patch, point read as, xy)
        out = self.every_point(torch.cat([x, x.flip(-1)])).view(2, -1, k, k, 2)
        own = torch.eye(k, device=out.device)
        shown = own[list(FIVE_POINTS.flip)]  # row k: the point the mirrored patch k shows
        back = (out[1] * shown[:, :, None]).sum(2) * torch.tensor([-1.0, 1.0], device=out.device)
        return ((out[0] * own[:, :, None]).sum(2) + back) / 2

    def offsets(self, patches: np.ndarray) -> np.ndarray:
        """:meth:`face_offsets` of a numpy array of patches, without gradients, on the refiner's device."""
        with torch.no_grad():
            device = next(self.parameters()).device
            return self.face_offsets(torch.from_numpy(patches).to(device)).cpu().numpy()


class RefinerCascade(nn.Module):
    """Refiner stages (:class:`PointRefiner`) applied in turn, each from the points the one before gave
    (:func:`refine_points`); a stage loaded from files has its JSON description as ``info``."""

    def __init__(self, stages):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        if not len(self.stages):
            raise FacemtlError("a point refiner needs at least one stage")


def as_cascade(refiner) -> RefinerCascade | None:
    """``refiner`` as a :class:`RefinerCascade` (one :class:`PointRefiner`: a cascade of that stage), None as
    None; anything else one clear error."""
    if refiner is None or isinstance(refiner, RefinerCascade):
        return refiner
    if isinstance(refiner, PointRefiner):
        return RefinerCascade([refiner])
    raise FacemtlError(f"refiner must be a PointRefiner, a RefinerCascade or None, got {type(refiner).__name__} "
                       "(Predictor.from_checkpoint and --refiner also take 'auto', 'none' or a refiner's folder)")


def patch_frame(points: np.ndarray, patch_side: float = PATCH_SIDE) -> tuple[float, float]:
    """(angle in radians of the eye line, patch side in pixels) of (5, 2) points; ``patch_side``: in
    inter-ocular distances."""
    eyes = np.asarray(points[1], np.float64) - np.asarray(points[0], np.float64)
    return float(np.arctan2(eyes[1], eyes[0])), max(patch_side * float(np.hypot(*eyes)), 4.0)


def rotation_2d(angle: float) -> np.ndarray:
    """2x2 matrix turning (x right, y down) image vectors by ``angle`` radians (clockwise on screen)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def patch_matrix(centre, angle: float, side: float) -> np.ndarray:
    """2x3 affine from image pixels to patch pixels: ``centre`` at the patch's centre, the image
    turned by ``-angle`` (the eye line level), ``side`` image pixels onto :data:`PATCH`."""
    rot = rotation_2d(-angle) * (PATCH / side)
    shift = (PATCH - 1) / 2 - rot @ np.asarray(centre, np.float64)
    return np.hstack([rot, shift[:, None]])


def cut_patches(image: np.ndarray, points: np.ndarray,
                patch_side: float = PATCH_SIDE) -> tuple[np.ndarray, float, float]:
    """(5, PATCH, PATCH, 3) patches of an RGB uint8 ``image`` around ``points``, with their frame
    (:func:`patch_frame`); edges repeat the image's border."""
    angle, side = patch_frame(points, patch_side)
    points = np.asarray(points, np.float64)
    scale = side / PATCH
    origin = np.zeros(2)
    if scale > ANTI_ALIAS_FROM:  # a large face: smooth before sampling every few pixels
        sigma = 0.5 * scale
        # only the part of the photo the patches read (their corners, the bilinear neighbour and the kernel's
        # reach, about 3 sigma; at least the kernel's reach inside an edge that patches past it repeat): the
        # same patches as blurring the whole photo, which took most of the refiner's time on a large photo
        # (67 ms a stage at 3,072 px)
        kernel, corner, size = int(np.ceil(4 * sigma)) + 2, side / np.sqrt(2), np.array(image.shape[1::-1])
        low = np.clip(np.floor(points.min(0) - corner).astype(int) - kernel, 0, np.maximum(size - kernel, 0))
        high = np.clip(np.ceil(points.max(0) + corner).astype(int) + kernel + 1, np.minimum(kernel, size), size)
        image = cv2.GaussianBlur(image[low[1]:high[1], low[0]:high[0]], (0, 0), sigma)
        origin = low.astype(np.float64)
    patches = np.stack([cv2.warpAffine(image, patch_matrix(p - origin, angle, side), (PATCH, PATCH),
                                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for p in points])
    return patches, angle, side


def points_to_offsets(truth: np.ndarray, points: np.ndarray, angle: float, side: float) -> np.ndarray:
    """Where ``truth`` lies from ``points``, in patch sides along the patch axes (the target)."""
    return (np.asarray(truth, np.float64) - points) @ rotation_2d(-angle).T / side


def offsets_to_points(offsets: np.ndarray, points: np.ndarray, angle: float, side: float) -> np.ndarray:
    """Inverse of :func:`points_to_offsets`: the refined points in image pixels."""
    return np.asarray(points, np.float64) + (np.asarray(offsets, np.float64) * side) @ rotation_2d(angle).T


def refine_points(refiner, image: np.ndarray, points) -> np.ndarray:
    """The five ``points`` (image pixels, MTFL order) of a face in the RGB uint8 ``image``, each
    moved to where ``refiner`` finds it in its patch; the mean of the patch's answer and its mirror
    image's (:meth:`PointRefiner.face_offsets`, as the predictor's test-time flip). ``refiner``: a
    :class:`RefinerCascade` (its stages in turn), a :class:`PointRefiner` (one stage), or a list of
    stages: anything with a ``patch_side`` and an ``offsets`` method giving :meth:`PointRefiner.offsets`'
    answer (the onnxruntime backend's :class:`facemtl.inference.export.OnnxRefiner`)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if points.shape != (FIVE_POINTS.num_outputs, 2) or not np.all(np.isfinite(points)):
        raise FacemtlError(f"the point refiner needs five finite points (MTFL order), got shape {points.shape}")
    stages = refiner.stages if isinstance(refiner, RefinerCascade) else [refiner] if hasattr(refiner, "offsets") \
        else refiner
    for stage in stages:
        patches, angle, side = cut_patches(image, points, stage.patch_side)
        points = offsets_to_points(stage.offsets(patches[None])[0], points, angle, side)
    return points


def stage_files(folder, stage: int) -> tuple[Path, Path]:
    """(weights, JSON) of refiner stage ``stage`` (1, 2, ...) in ``folder``."""
    stem = "refiner" if stage == 1 else f"refiner.stage{stage}"
    return Path(folder) / f"{stem}.safetensors", Path(folder) / f"{stem}.json"


def refiner_files(path) -> list[tuple[Path, Path]]:
    """(weights, JSON) of each stage of a refiner given as its folder (stage 1 and every further stage
    saved beside it, in order), or of the one stage given as its .safetensors or .json."""
    p = Path(path)
    if p.is_dir():
        found = [stage_files(p, 1)]
        while len(found) < MAX_STAGES and stage_files(p, len(found) + 1)[1].is_file():
            found.append(stage_files(p, len(found) + 1))
        return found
    if p.suffix in (".json", ".safetensors"):
        return [(p.with_suffix(".safetensors"), p.with_suffix(".json"))]
    raise FacemtlError(f"not a point refiner: {p} (expected a folder with {REFINER_JSON}, or that file)")


def has_refiner(folder) -> bool:
    return folder is not None and Path(folder).is_dir() and (Path(folder) / REFINER_JSON).is_file()


def predicts_five_points(model) -> bool:
    """Whether ``model`` predicts the five points (MTFL order) a point refiner moves."""
    return any(t.name == FIVE_POINTS.name and t.kind == "points" and t.num_outputs == FIVE_POINTS.num_outputs
               for t in model.tasks)


def carry_refiner(checkpoint, run_dir, model) -> Path | None:
    """Copy the point refiner saved beside ``checkpoint`` (a folder or a model file in one; every stage)
    into ``run_dir`` when ``model`` predicts the five points; the folder it came from, or None. A run
    started from a checkpoint (``model.init``) keeps its refiner this way: the refiner reads the
    photo around the points, not the face model, and it lowered the real-face error of models
    fine-tuned from the bundled one too (README, "Fine-tuning the bundled model")."""
    from facemtl.files import atomic_write_files

    folder = Path(checkpoint)
    folder = folder if folder.is_dir() else folder.parent
    if not has_refiner(folder) or not predicts_five_points(model):
        return None
    load_refiner(folder)  # a readable refiner, or one clear error before anything is copied
    atomic_write_files([(Path(run_dir) / f.name, f.read_bytes()) for pair in refiner_files(folder) for f in pair])
    return folder


def stage_bytes(folder, refiner: PointRefiner, info: dict, stage: int = 1) -> list[tuple[Path, bytes]]:
    """The two files of refiner stage ``stage`` in ``folder``, as (path, bytes): the weights, and the JSON
    (``info``: provenance; the geometry and the weights' SHA-256 added)."""
    from facemtl.files import json_bytes, sha256_hex, tensors_bytes

    weights = tensors_bytes(refiner.state_dict())
    meta = {"format": REFINER_FORMAT, "width": refiner.width, "patch": PATCH, "patch_side": refiner.patch_side,
            "points": list(FIVE_POINTS.class_names), **info, "weights_sha256": sha256_hex(weights)}
    if stage != 1:
        meta["stage"] = stage
    weights_path, json_path = stage_files(folder, stage)
    return [(weights_path, weights), (json_path, json_bytes(meta))]


def save_refiner(folder, refiner: PointRefiner, info: dict, stage: int = 1) -> None:
    """Write refiner stage ``stage`` (:func:`stage_bytes`) into ``folder``, both files at once."""
    from facemtl.files import atomic_write_files

    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_files(stage_bytes(folder, refiner, info, stage))


def load_refiner(path) -> RefinerCascade:
    """A saved refiner, ready for :func:`refine_points` (eval mode): a folder gives every stage saved in
    it, a stage's .safetensors or .json that stage alone; each stage's JSON description is its ``info``."""
    from facemtl.files import read_json, read_tensors

    stages = []
    for weights, meta_path in refiner_files(path):
        meta = read_json(meta_path, "point refiner description")
        if meta.get("format") != REFINER_FORMAT:
            raise FacemtlError(f"{meta_path}: not a point refiner description (format {meta.get('format')!r}, "
                               f"expected {REFINER_FORMAT!r})")
        side = meta.get("patch_side")
        low, high = PATCH_SIDE_RANGE
        if meta.get("patch") != PATCH or isinstance(side, bool) or not isinstance(side, (int, float)) \
                or not low <= side <= high:
            raise FacemtlError(f"{meta_path}: patches of {meta.get('patch')} px over {side!r} inter-ocular "
                               f"distances; this facemtl cuts {PATCH} px over {low:g} to {high:g}")
        refiner = PointRefiner(int(meta.get("width", 24)), patch_side=side)
        state = read_tensors(weights, "point refiner weights", meta.get("weights_sha256"), meta_path)
        try:
            refiner.load_state_dict(state)
        except RuntimeError as exc:
            raise FacemtlError(f"{weights}: weights do not fit a width-{refiner.width} point refiner "
                               f"({exc})") from None
        refiner.info = meta  # its description, carried into an ONNX export's metadata
        stages.append(refiner)
    return RefinerCascade(stages).eval()
