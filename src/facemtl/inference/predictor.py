"""Predict on photos: detect, crop like training, run the model, map back to original pixels.

Pipeline for one image:

1. faces: boxes from a detector (:mod:`facemtl.inference.detect`: OpenCV's Haar cascade by
   default, MediaPipe's BlazeFace as the extra ``facemtl[detect]``, or any callable image ->
   boxes), from the caller, or the whole image (``detector="none"``: the image already is a
   face crop, cropped with margin 0 exactly like an emotion folder at training time);
2. each box is cropped with :func:`facemtl.data.transforms.face_crop_matrix` at the
   checkpoint's input size and margin (``info["crop"]["margin"]`` when the run recorded one,
   else :data:`~facemtl.data.transforms.DEFAULT_CROP_MARGIN`, the training default) and
   normalised with the checkpoint's mean/std (after :func:`reduce_detail` when the predictor's
   ``detail`` or the checkpoint's ``crop.detail`` asks for it). A DETECTED box is first moved
   and scaled by its detector's calibration (:mod:`facemtl.inference.alignment`) to the face
   square training crops from landmarks, and turned about its centre by the face's turn when the detector
   gives one (``boxes_and_turns``: the angle the Haar cascade found the face upright at, MediaPipe's eye
   line when it tilts by 10 degrees or more), so a tilted head reaches the model about level;
   boxes the caller gives are cropped as given;
2a. a given box (default ``passes`` and ``upright``) whose first pass's eyes tilt by
   :data:`UPRIGHT_MIN_DEGREES` or more is cropped again, the same box turned about its centre so
   that the predicted eyes are level (:func:`~facemtl.inference.alignment.turned_crop`; turned
   again like an upright crop below): the caller's box keeps its place and size, only the head's
   roll is undone (on the 71 real faces of ``benchmarks/real_faces.py``, labels' squares, this
   did better than the re-crop from the predicted landmarks below, which also moves the square:
   docs/evidence.md, "Faces in photos"); with ``recrop="turn"`` a detected face's calibrated box is
   cropped again the same way (opt-in; through the Haar detector 9 of 10 models read the real
   faces better, by 0.32 points on average, short of the rule set for making it the default:
   docs/evidence.md, "Turning the detector's box instead of re-placing it");
2b. two passes (``passes=2``; by default detected faces get a second pass only when the first
   pass's eyes tilt by :data:`UPRIGHT_MIN_DEGREES` or more (always with ``upright=False``), given
   boxes as in 2a, ``detector="none"`` never): the landmarks predicted on the first crop give a second crop made
   as training crops from landmarks (:func:`~facemtl.inference.alignment.landmark_square`),
   turned so that the predicted eyes are level (``upright``, default True:
   :func:`~facemtl.inference.alignment.upright_crop`; False: the axis-aligned training crop),
   and every task is reported from that second crop; an upright crop whose own points still
   tilt the eyes by :data:`UPRIGHT_RETURN_DEGREES` or more is turned again (up to
   :data:`UPRIGHT_MAX_CROPS` crops in all), and the face reported from the last crop. It needs a model with a ``landmarks``
   task; when the predicted points give no usable crop (not finite, or a square more than
   :data:`MAX_RECROP_CHANGE` times larger or smaller than the first, or centred outside it) the
   first crop's results are kept;
3. the crops of several faces (and images) go through the model together; all refinement
   iterations run and the LAST one is reported (iFAN section 3.2: IterN refines Iter0);
   with ``source=None`` each task comes from its own source's batch-norm stream;
3a. test-time flip (``flip=True``, the default): each batch runs together with its mirror image;
   the mirror's outputs are mirrored back (left/right points and classes swapped,
   :meth:`TaskKind.unflip`) and averaged with the crop's own (points, logits), at twice the
   model's cost. Why the default: on the project's 71 real faces (benchmarks/real_faces.py) it
   lowered the mean landmark NME of all four 128-px models checked (by 0.2-0.6 points in the
   labels' squares) and cost no emotion or parsing (docs/evidence.md,
   "Faces in photos"); ``flip=False`` for the single pass;
3b. ``tasks`` (names; None: every task of the model) are the tasks reported. The model is asked
   for only those at the last iteration (iFAN then runs only their streams and decoders there,
   and the up path only for a segmentation task; earlier iterations run every task, which the
   integrator reads). A first pass of two also asks for ``landmarks``, which the re-crop needs,
   but reports only ``tasks`` when it is a face's final crop;
4. ``model.decode`` turns raw outputs into standard forms, which are mapped back with the
   inverse crop matrix: points to original pixels; segmentation logits warped back bilinearly
   (:func:`~facemtl.data.transforms.warp_logits_back`) and argmaxed at full resolution (as
   ``docs/datasets.md``, "Parsing F1", scores them), pixels outside the face crop set to
   class 0 (background); category logits to softmax probabilities.
4a. with a point refiner (``refiner``; by default the one saved beside the checkpoint, as the
   bundled model's is: :mod:`facemtl.models.refiner`), the five landmarks reported are moved by
   it: each point to where a small network finds it in a patch of the PHOTO around it (turned so
   the eyes are level, mirrored and averaged like 3a), then again by the refiner's second stage,
   trained on nearer guesses, from the first stage's points. Only the reported points change; the
   re-crop of 2b and every other task read the face model's own points. Why: on the 71 real faces
   the two stages bring the bundled model's mean NME from 7.9 to 5.2% (labels' squares) and from
   8.7 to 5.6% (Haar) (docs/evidence.md, "A local point refiner"). Points that are not all finite
   are reported as the face model gave them. The onnxruntime backend runs each stage's ONNX graph
   (:class:`~facemtl.inference.export.OnnxRefiner`, built in memory), torch the stages themselves.

An ensemble (a list of checkpoints, or a folder whose ``ensemble.json`` lists its member
checkpoints, :func:`facemtl.models.checkpoint.ensemble_members`) runs every member on the same
crops and averages each task's outputs before anything else reads them (the re-crop, the flip,
the mapping back): points as their mean, classes as the mean of the members' probabilities
(:meth:`TaskKind.average`), at the members' summed cost. Models of one recipe trained from
different seeds disagree on faces unlike their training images; on the project's real faces,
cropped from their labels, two three-seed ensembles gave a lower mean landmark error than each of
their single models, while a gain on posed expressions in one did not replicate in the other
(docs/evidence.md, "An ensemble of seeds").

Backends (``backend=``, ``facemtl predict --backend``): ``"torch"`` runs the model eagerly
(``model(crops)``, any torch device); ``"onnxruntime"`` exports the model once, in memory (no
file is written), to the graph of :mod:`facemtl.inference.export` (for iFAN the per-source
streams one at a time, :mod:`facemtl.models.streamwise`) and runs it in an onnxruntime CPU
session with ``threads`` intra-op threads (default ``torch.get_num_threads()``). Building the
session costs one export (seconds for the paper's model); both give the same results up to
float rounding (tests/test_backends.py). onnxruntime is the optional extra ``facemtl[onnx]``.
With ``tasks`` the graph's outputs are those tasks (plus ``landmarks`` when a face may get a
second pass: one graph serves both passes), so it too runs only their streams at the last
iteration.

Per face the result is ``{"box": [x0, y0, x1, y1] (the face box the reported outputs were
cropped from, before the margin: the caller's box as given; for a detected face its calibrated
or landmark square, for an upright crop that square's centre and side), "detection_box": [x0, y0, x1, y1] (the box the face came with: the
detector's, or the caller's), "detection_score": float (the detector's score of the face, when it
gives one: the Haar detector's cascade score, MediaPipe's confidence; absent for given boxes and whole images), <points
task>: float32 (K, 2) array of
(x, y) original pixels, <segmentation task>: uint8 (H, W) class-id array, <category task>:
{"label": name, "probs": {name: p}}}``, with only the requested tasks. Coordinates are
continuous pixel coordinates with pixel centres at integers (the transforms' convention).

Limits: the margin is a finite number from 0 to ``MAX_CROP_MARGIN`` (5, models/checkpoint.py);
a face whose box is not finite with positive size, lies outside the photo or is more than
:data:`MAX_BOX_FACTOR` times its longer side is left out and listed in the image's
``face_errors`` (the other faces go on); images above the pixel limit of
:mod:`facemtl.data.image_header` (100 megapixels) are refused from their header.
"""

from __future__ import annotations

import collections
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from facemtl.constants import RECROPS
from facemtl.data.sample import IMAGE_MEAN, IMAGE_STD
from facemtl.data.images import read_image
from facemtl.data.transforms import (
    DEFAULT_CROP_MARGIN,
    face_crop_matrix,
    invert_affine,
    warp_image,
    warp_logits_back,
    warp_points,
)
from facemtl.errors import FacemtlError
from facemtl.kinds import kind_of
from facemtl.inference.alignment import IDENTITY, eye_roll, landmark_square, turned_crop, upright_crop, upright_roll
from facemtl.inference.detect import DETECTORS, check_detector, find_faces, make_detector, parse_box
from facemtl.models.refiner import (FIVE_POINTS, as_cascade, has_refiner, load_refiner, predicts_five_points,
                                    refine_points)

BACKENDS = ("torch", "onnxruntime")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2")
# A face box may exceed the photo (a face cut by the border) but not by more than this factor of
# the photo's longer side: beyond it the crop is almost all padding and cannot be mapped back.
MAX_BOX_FACTOR = 10
# The second pass keeps the first crop when the predicted landmarks' square is this many times
# larger or smaller than the first crop's square (or centred outside it): not a face's points.
MAX_RECROP_CHANGE = 3.0
# An upright crop whose own points still tilt the eyes by this many degrees or more is turned
# again, up to UPRIGHT_MAX_CROPS crops in all: the model's roll estimate on a steeply tilted
# crop falls short of the true roll (about 15 of 27 degrees on the astronaut turned by 30).
UPRIGHT_RETURN_DEGREES = 3.0
UPRIGHT_MAX_CROPS = 4
# By default (passes=None) a detected face is re-cropped only when the first pass's eyes tilt by
# this many degrees or more: on real photos the re-crop of a level face moved the points more
# than it mended them (benchmarks/real_faces.py, median NME with every face re-cropped / with only
# tilted ones: the 64-px model bundled until 2026-12-01 11.2 / 9.0% on 13 faces, the 128-px model
# bundled 2026-12-01 to 02 8.6 / 7.9% on 21), while tilted heads need the upright crop.
UPRIGHT_MIN_DEGREES = 5.0
# Face crops per forward pass by default. On the CPU small batches are both faster and lighter:
# every crop runs 6 times (3 per-source streams, the flip), and large batches pay for fresh memory
# in system time (bundled model, 2 cores, `facemtl predict` on 16 photos, 2026-12-06: batch 2
# 8.6-8.9 s and 0.58 GB peak, batch 16 11.9-12.0 s and 2.0 GB; 16 photos of 4,000 px: 38 s, 0.88 GB,
# 5 s system time against 47 s, 2.5 GB, 23 s). A GPU wants full batches (not re-measured: the earlier default).
CPU_BATCH_SIZE = 2
ACCELERATOR_BATCH_SIZE = 16


# ---------------------------------------------------------------------------------------
# images in


def as_rgb(image: Any) -> np.ndarray:
    """A path, an H x W x 3 uint8 RGB array (H x W gray and RGBA accepted) or a PIL image -> RGB array."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if type(image).__module__.startswith("PIL."):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise FacemtlError(f"image arrays must be uint8 RGB (0..255), got dtype {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        elif image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise FacemtlError(f"image arrays must be H x W x 3 (RGB), got shape {image.shape}")
        return np.ascontiguousarray(image)
    raise FacemtlError(f"cannot predict on {type(image).__name__}: expected a path, a numpy RGB array or a PIL image")


def find_images(folder: Path, problems: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively, by extension, following symbolic links), sorted.

    A symbolic link that leads nowhere (broken, or a loop) is appended to ``problems`` as
    ``(path, reason)`` when its name has an image extension or no extension at all (it may
    have been a folder); other names are not images and are ignored like regular files.
    """
    found: list[Path] = []
    bad: list[tuple[Path, str]] = []
    _walk(Path(folder), found, bad, ancestors=())
    if problems is not None:
        problems.extend(sorted(bad))
    return sorted(found)


def _walk(folder: Path, found: list, bad: list, ancestors: tuple) -> None:
    try:
        real = folder.resolve(strict=True)
        entries = sorted(folder.iterdir())
    except (OSError, RuntimeError) as exc:  # RuntimeError: pathlib's own symlink-loop report
        bad.append((folder, f"cannot list the folder ({getattr(exc, 'strerror', None) or exc})"))
        return
    ancestors = ancestors + (real,)
    for path in entries:
        suffix = path.suffix.lower()
        if path.is_symlink():
            problem = link_problem(path)
            if problem is not None:
                if suffix in IMAGE_EXTENSIONS or suffix == "":
                    bad.append((path, problem))
                continue
        if path.is_dir():
            if path.resolve() in ancestors:  # a link back up the tree would recurse forever
                bad.append((path, f"symbolic link loop: leads back to {path.resolve()}"))
            else:
                _walk(path, found, bad, ancestors)
        elif suffix in IMAGE_EXTENSIONS and path.is_file():
            found.append(path)


def link_problem(path: Path) -> str | None:
    """Why a symbolic link cannot be followed, or None when it leads to a file or folder."""
    try:
        path.stat()
        return None
    except FileNotFoundError:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"broken symbolic link: its target {target} does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop: following it never reaches a file"
        return f"symbolic link cannot be followed ({exc.strerror or exc})"


def resolve_device(device, what: str = "device") -> torch.device:
    """A torch device this machine has, or one line (naming ``what``) saying what is missing."""
    expected = "expected cpu, cuda, cuda:N or mps"
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FacemtlError(f"{what} {device!r}: not a torch device; {expected}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FacemtlError(f"{what} {device!r}: CUDA is not available (torch {torch.__version__} "
                               f"{'has no CUDA support' if torch.version.cuda is None else 'finds no GPU'}); "
                               "use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise FacemtlError(f"{what} {device!r}: there are {count} CUDA device(s), numbered 0 to {count - 1}")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise FacemtlError(f"{what} {device!r}: Apple MPS is not available here; use --device cpu")
        return dev
    backend = getattr(torch, dev.type, None)  # e.g. torch.xpu
    if callable(getattr(backend, "is_available", None)) and backend.is_available():
        return dev
    raise FacemtlError(f"{what} {device!r}: not available on this machine; {expected}")


# ---------------------------------------------------------------------------------------
# backends: normalised crops (B, 3, S, S) -> decoded last-iteration outputs per task


class TorchBackend:
    """The model run eagerly by PyTorch on ``device`` (``source=None``: each task from its own stream)."""

    name = "torch"

    def __init__(self, model, iterations: int | None, device: torch.device):
        self.model, self.device = model, device
        self.kwargs = {} if iterations is None else {"iterations": iterations}
        self.all = tuple(t.name for t in model.tasks)

    def __call__(self, crops: torch.Tensor, tasks=None) -> dict[str, torch.Tensor]:
        """Decoded last-iteration outputs of ``tasks`` (names; None: every task)."""
        names = self.all if tasks is None else tuple(tasks)
        kwargs = dict(self.kwargs)
        if set(names) != set(self.all):  # every task: the plain call, as before ``tasks`` existed
            kwargs["tasks"] = list(names)
        with torch.inference_mode():
            outputs = self.model(crops.to(self.device), source=None, **kwargs)[-1]
            return {n: self.model.decode(n, outputs[n]).float().cpu() for n in names}


class OnnxRuntimeBackend:
    """The model's ONNX graph (exported once, in memory) in an onnxruntime CPU session.

    When a call asks for outputs the graph lacks (the landmarks of a given box's first pass,
    when the graph was built for other tasks only), a graph with those outputs too is built
    once and kept beside the first: the lean graph stays for the calls it serves."""

    name = "onnxruntime"

    def __init__(self, model, info: dict, iterations: int | None, threads: int, tasks=None):
        from facemtl.inference.export import require_onnx

        require_onnx("the onnxruntime backend")
        self.model, self.info, self.iterations, self.threads = model, info, iterations, threads
        self.session, self.names = self._build(tasks)
        self.wider: tuple | None = None  # (session, names) of the graph with more outputs, once built

    def _build(self, tasks) -> tuple:
        from facemtl.inference.export import onnx_model, onnx_session

        # one image: the cheapest trace; ``tasks`` (None: all) are the graph's only outputs
        graph = onnx_model(self.model, self.info, self.iterations, batch=1, tasks=tasks).SerializeToString()
        session = onnx_session(graph, threads=self.threads)
        return session, [o.name for o in session.get_outputs()]

    def __call__(self, crops: torch.Tensor, tasks=None) -> dict[str, torch.Tensor]:
        """Decoded last-iteration outputs of ``tasks`` (None: every output of the graph). A
        graph's outputs are fixed when it is built, so it computes them all either way."""
        session, names = self.session, self.names
        if any(n not in names for n in tasks or ()):
            if self.wider is None or any(n not in self.wider[1] for n in tasks):
                self.wider = self._build(sorted(set(tasks) | set(names), key=[t.name for t in self.model.tasks].index))
            session, names = self.wider
        # normalise() keeps the uint8 crops' channels-last strides; onnxruntime wants C order.
        images = np.ascontiguousarray(crops.detach().cpu().numpy(), dtype=np.float32)
        outputs = session.run(None, {"images": images})
        return {name: torch.from_numpy(value) for name, value in zip(names, outputs)
                if tasks is None or name in tasks}


class EnsembleBackend:
    """Several models' backends on the same crops, each task's decoded outputs averaged over them
    (:meth:`facemtl.kinds.TaskKind.average`)."""

    def __init__(self, backends: list, tasks: dict):
        self.backends, self.tasks = backends, tasks  # tasks: name -> Task
        self.name = backends[0].name

    def __call__(self, crops: torch.Tensor, tasks=None) -> dict[str, torch.Tensor]:
        outputs = [backend(crops, tasks) for backend in self.backends]
        return {name: kind_of(self.tasks[name]).average(self.tasks[name], [out[name] for out in outputs])
                for name in outputs[0]}


def check_backend(backend, device: torch.device | None = None, threads=None) -> str:
    """``backend`` if it is known and fits ``device`` and ``threads``, else one line saying why not."""
    if backend not in BACKENDS:
        raise FacemtlError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise FacemtlError(f"threads must be a positive integer, got {threads!r}")
        if backend == "torch":
            raise FacemtlError("threads sets the onnxruntime session's threads; the torch backend uses "
                               "torch's process-wide setting (torch.set_num_threads)")
    if backend == "onnxruntime":
        if device is not None and device.type != "cpu":
            raise FacemtlError(f"the onnxruntime backend runs on the CPU, not on {device}; "
                               "use device cpu or the torch backend")
        from facemtl.inference.export import require_onnx

        require_onnx("the onnxruntime backend")
    return backend


# ---------------------------------------------------------------------------------------
# the predictor


@dataclass
class ImageResult:
    """One image of :meth:`Predictor.stream`: its faces, or the error that stopped it."""

    key: Any
    width: int = 0
    height: int = 0
    faces: list = field(default_factory=list)
    error: str | None = None
    image: np.ndarray | None = None  # kept only with ``keep_images=True``
    # Faces left out because their crop is degenerate: {"box": [x0, y0, x1, y1] or the value given, "error"}.
    face_errors: list = field(default_factory=list)
    _remaining: int = 0


class Predictor:
    """A loaded model ready for photos. ``predictor(image)`` -> list of per-face dicts.

    ``detector``: ``"opencv"`` (Haar cascade), ``"mediapipe"`` (BlazeFace; needs
    ``pip install 'facemtl[detect]'``), ``"none"`` or None (each image is one face crop) or a
    :class:`~facemtl.inference.detect.Detector` (a callable image -> boxes, largest first, with an
    optional ``calibration``). ``passes``: 1 or 2 crops per face (None: when the model has a
    ``landmarks`` task, for detected faces a second crop only when the first pass's eyes tilt by
    :data:`UPRIGHT_MIN_DEGREES` or more with ``upright``, always without; for given boxes with
    ``upright`` the same box turned level when they tilt that much; else 1; see the module
    docstring). ``calibrate``: crop a
    detected box as its detector's calibrated face square (False: as the raw box).
    ``upright``: turn the second crop so the first pass's eyes are level (see the module docstring).
    ``recrop``: how a detected face's second crop is made with the default ``passes`` and
    ``upright``: ``"points"`` (default) from the first pass's landmarks, ``"turn"`` its calibrated
    box turned so the predicted eyes are level, as a given box (see the module docstring).
    ``batch_size``: face crops per forward pass (across images; None: :data:`CPU_BATCH_SIZE` on
    the CPU, :data:`ACCELERATOR_BATCH_SIZE` on a GPU). ``iterations``: refinement
    iterations to run (None: all the model was built with). ``margin``: crop margin
    overriding the checkpoint's. ``device``: torch device for the model. ``backend``:
    ``"torch"`` or ``"onnxruntime"`` (CPU; see the module docstring); ``threads``: the
    onnxruntime session's intra-op threads (None: ``torch.get_num_threads()``). ``tasks``: names
    of the tasks to report (None: all the model has); only they run at the last iteration.
    ``flip``: average each crop's outputs with its mirror image's (default; see the module docstring).
    ``detail``: shrink every crop to this side in pixels and enlarge it back before the network
    (:func:`reduce_detail`; its real-face evidence: docs/evidence.md, "Fine detail"); None: the
    checkpoint's ``crop.detail``, absent there the crop as cut; 0: the crop as cut.
    ``refiner``: a :class:`~facemtl.models.refiner.RefinerCascade` (or one stage, a
    :class:`~facemtl.models.refiner.PointRefiner`) that moves the five reported
    landmarks (step 4a of the module docstring; needs a model with the 5-point ``landmarks`` task),
    or None; :meth:`from_checkpoint` finds the checkpoint's own by default.
    ``model``: one model, or a list of models with the same tasks (an ensemble: their outputs
    averaged, see the module docstring); ``info`` describes the first and holds for all.
    """

    def __init__(self, model, info: dict, *, detector: str = "opencv", batch_size: int | None = None,
                 iterations: int | None = None, margin: float | None = None, device: str | torch.device = "cpu",
                 backend: str = "torch", threads: int | None = None, passes: int | None = None,
                 calibrate: bool = True, tasks=None, upright: bool = True, flip: bool = True,
                 detail: int | None = None, recrop: str = "points", refiner=None):
        if detector is None:
            detector = "none"  # Python's own word for "no detector"
        if isinstance(detector, str):
            if detector not in DETECTORS:
                raise FacemtlError(f"unknown detector {detector!r}; expected one of {', '.join(DETECTORS)}")
        elif not callable(detector):
            raise FacemtlError(f"detector must be one of {', '.join(DETECTORS)} or a callable image -> boxes, "
                               f"got {type(detector).__name__}")
        if passes is not None and (isinstance(passes, bool) or passes not in (1, 2)):
            raise FacemtlError(f"passes must be 1 or 2 (or None: a second crop for tilted faces), got {passes!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise FacemtlError(f"batch size must be a positive integer (or None: by device), got {batch_size!r}")
        from facemtl.models.checkpoint import check_crop_detail, check_crop_margin

        crop = info.get("crop") if isinstance(info.get("crop"), dict) else {}
        if margin is not None:
            self.margin = check_crop_margin(margin, "crop margin")
        else:
            self.margin = check_crop_margin(crop.get("margin", DEFAULT_CROP_MARGIN), "checkpoint 'crop.margin'")
        self.device = resolve_device(device)
        check_backend(backend, self.device, threads)
        self.models = [m.to(self.device).eval() for m in (model if isinstance(model, (list, tuple)) else [model])]
        if not self.models:
            raise FacemtlError("an ensemble needs at least one model; got an empty list")
        model = self.model = self.models[0]  # the tasks, the re-crop task and the flip's unflip come from it
        for i, member in enumerate(self.models[1:], 1):
            if list(member.tasks) != list(model.tasks):
                raise FacemtlError(f"ensemble member {i} has other tasks than member 0 "
                                   f"({', '.join(t.name for t in member.tasks)} against "
                                   f"{', '.join(t.name for t in model.tasks)}); members must share their tasks")
        self.info = info
        self.tasks = select_tasks(model.tasks, tasks)  # the tasks reported, in the model's order
        self.input_size = int(info.get("input_size", 128))
        where = "detail"
        if detail is None:
            detail, where = crop.get("detail", 0), "checkpoint 'crop.detail'"
        self.detail = check_crop_detail(detail, where, self.input_size)
        norm = info.get("normalization") or {}
        self.mean = torch.tensor(norm.get("mean", IMAGE_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(norm.get("std", IMAGE_STD), dtype=torch.float32).view(1, 3, 1, 1)
        # The task whose prediction the second pass crops from: training crops from "landmarks".
        self.recrop_task = next((t for t in model.tasks if t.name == "landmarks" and t.kind == "points"), None)
        if passes == 2 and self.recrop_task is None:
            raise FacemtlError("passes=2 re-crops each face from its predicted landmarks, but this model has no "
                               "'landmarks' task; use passes=1")
        self.passes = passes
        self.upright = bool(upright)
        if recrop not in RECROPS:
            raise FacemtlError(f"recrop must be one of {', '.join(RECROPS)}, got {recrop!r}")
        self.recrop = recrop
        if not isinstance(flip, bool):
            raise FacemtlError(f"flip must be True or False, got {flip!r}")
        self.flip = flip
        self.refiner = self._check_refiner(refiner)
        self.detector_name = detector if isinstance(detector, str) else type(detector).__name__
        self.detector = make_detector(detector) if isinstance(detector, str) else detector
        found = getattr(self.detector, "calibration", None)
        self.calibration = found if calibrate and found is not None else IDENTITY
        self.batch_size = batch_size or (CPU_BATCH_SIZE if self.device.type == "cpu" else ACCELERATOR_BATCH_SIZE)
        if iterations is not None:
            for member in self.models:
                member.check_iterations(iterations)
        self.iterations = iterations
        # What the model is asked for: a final crop needs only the reported tasks; a first crop of
        # two also needs the landmarks it is re-cropped from.
        self.task_names = tuple(t.name for t in self.tasks)
        self.first_pass_names = tuple(t.name for t in model.tasks if t.name in self.task_names
                                      or t is self.recrop_task)
        if backend == "onnxruntime":
            # One graph serves both passes: it keeps the landmarks when a face may be re-cropped.
            # (a given box's first pass, when it may be turned, gets a graph with them when it needs one)
            recrop = self.recrop_task is not None and (passes == 2 or (passes is None and self.detector is not None))
            outputs = None if tasks is None else self.first_pass_names if recrop else self.task_names
            backends = [OnnxRuntimeBackend(m, info, iterations, threads if threads is not None else torch.get_num_threads(),
                                           outputs) for m in self.models]
        else:
            backends = [TorchBackend(m, iterations, self.device) for m in self.models]
        self.backend = backends[0] if len(backends) == 1 else EnsembleBackend(backends, {t.name: t for t in model.tasks})
        self.refine_with = self.refiner  # what step 4a runs: the refiner in torch, or its graph in onnxruntime
        if backend == "onnxruntime" and self.refiner is not None:
            from facemtl.inference.export import OnnxRefiner

            threads = threads if threads is not None else torch.get_num_threads()
            self.refine_with = [OnnxRefiner(stage, threads) for stage in self.refiner.stages]

    @classmethod
    def from_checkpoint(cls, path, refiner="auto", **kwargs) -> "Predictor":
        """Load a run folder, ``model.safetensors`` or ``model.json`` (safetensors + JSON only), or
        an ensemble: a list of those, or a folder with ``ensemble.json``. ``refiner``: ``"auto"``
        (default: the point refiner saved in the checkpoint's folder, when it has one and the model
        predicts the five landmarks), ``"none"`` or None (no refiner), a refiner's folder (every stage
        in it) or one stage's file, or a :class:`~facemtl.models.refiner.RefinerCascade` or
        :class:`~facemtl.models.refiner.PointRefiner`."""
        from facemtl.models.checkpoint import load_models

        # a missing onnxruntime or a bad backend option is reported before the model is loaded
        check_backend(kwargs.get("backend", "torch"), resolve_device(kwargs.get("device", "cpu")), kwargs.get("threads"))
        check_detector(kwargs.get("detector", "opencv"))  # e.g. mediapipe missing: say so before loading
        models, info = load_models(path)
        kwargs["refiner"] = resolve_refiner(refiner, path, models[0])
        return cls(models if len(models) > 1 else models[0], info, **kwargs)

    # -- public API --------------------------------------------------------------------------

    def __call__(self, image, boxes=None) -> list[dict]:
        """Faces of one image (path, RGB uint8 array or PIL image); ``boxes`` skip detection.

        A degenerate face box raises here (a list of faces has no room to report it);
        :meth:`predict_image` and :meth:`stream` return the other faces and list it in ``face_errors``.
        """
        result = self.predict_image(image, boxes)
        if result.face_errors:
            raise FacemtlError(result.face_errors[0]["error"])
        return result.faces

    def predict_image(self, image, boxes=None) -> ImageResult:
        items = [(image, image)]
        result = next(self.stream(items, boxes_for=(lambda _key: boxes) if boxes is not None else None))
        if result.error:
            raise FacemtlError(result.error)
        return result

    def stream(self, items: Iterable[tuple[Any, Any]], boxes_for: Callable[[Any], Any] | None = None,
               keep_images: bool = False) -> Iterator[ImageResult]:
        """Predict on ``(key, image)`` pairs, yielding one :class:`ImageResult` per pair, in order.

        Images are read lazily and their face crops batched across images, at most
        ``batch_size`` crops per forward pass, so a folder of thousands of images runs in
        bounded memory. An image that cannot be read yields a result with ``error`` set.
        ``boxes_for(key)`` may supply boxes (None: use the detector).
        """
        pending: collections.deque[ImageResult] = collections.deque()
        queue: list[_Crop] = []
        for key, source in items:
            rec = ImageResult(key)
            pending.append(rec)
            try:
                image = as_rgb(source)
                rec.height, rec.width = image.shape[:2]
                given = boxes_for(key) if boxes_for is not None else None
                boxes, turns, scores, margin, origin = self._faces(image, given)
                passes = self._passes(origin)
                crops = []
                for box, turn, score in zip(boxes, turns, scores):
                    try:  # one degenerate face is reported; the image's other faces go on
                        box, crop_box, matrix = self._crop(box, margin, rec.height, rec.width, origin == "detected", turn)
                    except FacemtlError as exc:
                        rec.face_errors.append({"box": _box_json(box), "error": str(exc)})
                        continue
                    pixels = warp_image(image, matrix, self.input_size)
                    crops.append(_Crop(rec, len(crops), box, crop_box, matrix, pixels, image if passes > 1 else None,
                                       turn_only=self._turn_only(origin), score=score,
                                       photo=image if self.refiner is not None else None))
            except FacemtlError as exc:
                rec.error = str(exc)
            else:
                rec.faces = [None] * len(crops)
                rec._remaining = len(crops)
                queue.extend(crops)
                if keep_images:
                    rec.image = image
            while len(queue) >= self.batch_size:
                batch = queue[: self.batch_size]
                del queue[: self.batch_size]
                queue.extend(self._run(batch) or ())  # second-pass crops join the queue
            while pending and pending[0]._remaining == 0:
                yield _done(pending.popleft())
        while queue:
            batch = queue[: self.batch_size]
            del queue[: self.batch_size]
            queue.extend(self._run(batch) or ())
        while pending:
            yield _done(pending.popleft())

    # -- internals ---------------------------------------------------------------------------

    def _faces(self, image: np.ndarray, boxes) -> tuple[list, list, list, float, str]:
        """(boxes, turns, scores, margin, origin) for one image, ``origin`` "given", "whole" (the
        image is the crop) or "detected"; given boxes are checked one by one in
        :meth:`_crop`. ``turns``: per box the angle its first crop is turned by (degrees): a
        detector's ``boxes_and_turns`` gives them (the Haar detector's turned searches), else 0.
        ``scores``: the detector's score per box (:func:`~facemtl.inference.detect.find_faces`),
        None where there is none."""
        h, w = image.shape[:2]
        if boxes is not None:
            rows = list(boxes)
            if len(rows) == 4 and all(np.isscalar(v) for v in rows):  # one box given flat
                rows = [rows]
            return rows, [0.0] * len(rows), [None] * len(rows), self.margin, "given"
        if self.detector is None:
            # The whole image is the crop, as training crops a face-crop dataset (margin 0).
            return [np.array([-0.5, -0.5, w - 0.5, h - 0.5])], [0.0], [None], 0.0, "whole"
        found, turns, scores = find_faces(self.detector, image)
        return (list(found), [float(t) for t in turns], [None if np.isnan(v) else float(v) for v in scores],
                self.margin, "detected")

    def _check_refiner(self, refiner):
        """``refiner`` moved to the predictor's device, after checking the model has what it refines."""
        refiner = as_cascade(refiner)
        if refiner is None:
            return None
        check_refiner_fits(self.model)
        return refiner.to(self.device).eval()

    def _passes(self, origin: str) -> int:
        """Most crops per face: ``passes`` when set, else (when the model predicts landmarks to
        re-crop from; :meth:`_recrop` decides) two for detected faces and, with ``upright``, for
        the caller's boxes; one for whole images."""
        if self.passes is not None:
            return self.passes
        if self.recrop_task is None:
            return 1
        return 2 if origin == "detected" or (origin == "given" and self.upright) else 1

    def _turn_only(self, origin: str) -> bool:
        """Whether a face's later crops keep its first crop's box and only turn it (2a of the
        module docstring): given boxes, and detected ones with ``recrop="turn"``, under the
        default ``passes``; a detected face without ``upright`` is re-cropped from its points."""
        if self.passes is not None:
            return False
        return origin == "given" or (origin == "detected" and self.recrop == "turn" and self.upright)

    def _crop(self, value, margin: float, height: int, width: int,
              detected: bool = False, turn: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(box, crop box, crop matrix) of one face, or a FacemtlError when its crop is
        degenerate: a box that is not finite with positive size, lies outside the image, or is so
        large against the image that the crop cannot be mapped back (:data:`MAX_BOX_FACTOR`).
        A detected box is cropped as its calibrated square (:attr:`calibration`), turned by
        ``turn`` degrees about its centre (the angle the detector found the face upright at)."""
        box = parse_box(value, "face box")
        shown = _box_json(box)
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 <= -0.5 or y1 <= -0.5 or x0 >= width - 0.5 or y0 >= height - 0.5:
            raise FacemtlError(f"face box {shown} lies outside the {width} x {height} image")
        side = max(x1 - x0, y1 - y0)
        if side > MAX_BOX_FACTOR * max(width, height):
            raise FacemtlError(f"face box {shown} is {side:.4g} pixels across, more than {MAX_BOX_FACTOR} times "
                               f"the {width} x {height} image; expected a box around one face")
        # A given (or uncalibrated) box is cropped from the box itself: bit for bit the crop it always gave.
        crop_box = self.calibration.apply(box) if detected and self.calibration != IDENTITY else box
        if turn:
            matrix = turned_crop(crop_box, turn, self.input_size, margin)
        else:
            matrix = face_crop_matrix(box=crop_box, size=self.input_size, margin=margin)
        if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
            raise FacemtlError(f"face box {shown} with margin {margin:g} gives a degenerate crop (scale "
                               f"{matrix[0, 0]:.3g}); expected a box of finite, positive size")
        return box, crop_box, matrix

    def _recrop(self, item: _Crop, points: np.ndarray) -> _Crop | None:
        """The next crop of a face: the training crop from its predicted landmarks
        (:func:`~facemtl.inference.alignment.landmark_square` with the checkpoint's margin,
        turned upright with :attr:`upright`), for a ``turn_only`` crop (a given box by default, a
        detected one with ``recrop="turn"``)
        its box turned so the predicted eyes are level
        (:func:`~facemtl.inference.alignment.turned_crop`), or None when the points give no plausible face
        square (:data:`MAX_RECROP_CHANGE`) or, for an upright crop, when they are level within
        :data:`UPRIGHT_RETURN_DEGREES` in it (the face is done), or, for the first crop with the
        default ``passes`` and ``upright``, when they tilt by less than :data:`UPRIGHT_MIN_DEGREES`."""
        tilt = abs(eye_roll(warp_points(np.asarray(points, np.float64)[:2], item.matrix)))  # in this crop
        if item.stage >= 2 and tilt < UPRIGHT_RETURN_DEGREES:
            return None
        if item.stage == 1 and self.passes is None and self.upright and tilt < UPRIGHT_MIN_DEGREES:
            return None
        try:
            square = landmark_square(points)
        except FacemtlError:  # fewer than two finite points
            return None
        first = np.asarray(item.crop_box, np.float64)
        ratio = (square[2] - square[0]) / max(first[2] - first[0], first[3] - first[1])
        centre = (square[:2] + square[2:]) / 2
        if not (np.all(np.isfinite(square)) and 1 / MAX_RECROP_CHANGE <= ratio <= MAX_RECROP_CHANGE
                and np.all(centre >= first[:2]) and np.all(centre <= first[2:])):
            return None
        if item.turn_only:
            square = first
            matrix = turned_crop(square, upright_roll(points), self.input_size, self.margin)
        elif self.upright:
            matrix, square = upright_crop(points, self.input_size, self.margin)
        else:
            matrix = face_crop_matrix(box=square, size=self.input_size, margin=self.margin)
        pixels = warp_image(item.image, matrix, self.input_size)
        again = self.upright and item.stage + 1 < UPRIGHT_MAX_CROPS  # it may be turned again
        return _Crop(item.rec, item.index, item.box, square, matrix, pixels, item.image if again else None,
                     item.stage + 1, item.turn_only, item.score, item.photo)

    def forward(self, crops: torch.Tensor, tasks=None) -> dict[str, torch.Tensor]:
        """Normalised crops (B, 3, S, S) -> decoded outputs of the last iteration, per task (CPU
        float), for ``tasks`` (names; None: the predictor's :attr:`tasks`); with :attr:`flip`,
        the mean of each crop's and its mirror image's (the mirror's mapped back)."""
        names = self.task_names if tasks is None else tuple(tasks)
        if not self.flip:
            return self.backend(crops, names)
        n = crops.shape[0]
        both = self.backend(torch.cat([crops, crops.flip(-1)]), names)
        out = {}
        for name, value in both.items():
            task = self.model.task(name)
            out[name] = (value[:n] + kind_of(task).unflip(task, value[n:], self.input_size)) / 2
        return out

    def normalise(self, crops: np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) uint8 RGB -> (B, 3, S, S) float with the checkpoint's mean/std, each crop
        first through :func:`reduce_detail` when :attr:`detail` asks for it."""
        if self.detail and self.detail < self.input_size:
            crops = np.stack([reduce_detail(c, self.detail) for c in crops])
        t = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
        return (t - self.mean) / self.std

    def _run(self, batch: list[_Crop]) -> list[_Crop]:
        """Run one batch of crops; fills the faces of final crops and returns the second-pass
        crops of faces that have one (their results are reported from that crop instead)."""
        first = any(item.image is not None for item in batch)  # a first pass needs the landmarks too
        out = self.forward(self.normalise(np.stack([item.pixels for item in batch])),
                           self.first_pass_names if first else self.task_names)
        again: list[_Crop] = []
        for j, item in enumerate(batch):
            rec, box, matrix = item.rec, item.box, item.matrix
            if item.image is not None:  # a crop that may be followed: its landmarks decide
                task = self.recrop_task
                try:
                    points = self._map_back(task, out[task.name][j], matrix, rec.height, rec.width)
                except FacemtlError:
                    points = None
                follow = self._recrop(item, points) if points is not None else None
                if follow is not None:
                    again.append(follow)
                    continue  # the face is finished by its second crop
            face: dict = {"box": [float(v) for v in item.crop_box], "detection_box": [float(v) for v in box]}
            if item.score is not None:
                face["detection_score"] = item.score
            try:
                for task in self.tasks:
                    face[task.name] = self._map_back(task, out[task.name][j], matrix, rec.height, rec.width)
                points = face.get(FIVE_POINTS.name)
                if item.photo is not None and points is not None and np.all(np.isfinite(points)):
                    face[FIVE_POINTS.name] = refine_points(self.refine_with, item.photo, points)
            except FacemtlError as exc:  # e.g. a crop too small to invert: this face only
                rec.face_errors.append({"box": _box_json(box), "error": str(exc)})
            else:
                rec.faces[item.index] = face
            rec._remaining -= 1
        return again

    def _map_back(self, task, value: torch.Tensor, matrix: np.ndarray, height: int, width: int):
        return kind_of(task).to_image(task, value, matrix, self.input_size, height, width)


@dataclass
class _Crop:
    """One face crop waiting for the model."""

    rec: ImageResult
    index: int  # the face's place in rec.faces
    box: np.ndarray  # the detector's or caller's box (reported as "detection_box")
    crop_box: np.ndarray  # the box this crop was made from (reported as "box")
    matrix: np.ndarray  # original -> crop
    pixels: np.ndarray  # (S, S, 3) uint8
    image: np.ndarray | None  # the photo, kept while a next pass may re-crop from it
    stage: int = 1  # 1: the first crop, 2: the second, 3 and 4: an upright crop turned again
    turn_only: bool = False  # a given box by default: later crops keep the box and only turn it
    score: float | None = None  # the detector's score of the face (reported as "detection_score")
    photo: np.ndarray | None = None  # the photo, kept for the point refiner (step 4a)


def check_refiner_fits(model) -> None:
    """One clear error unless ``model`` predicts the five points a point refiner moves."""
    if not predicts_five_points(model):
        raise FacemtlError(f"a point refiner moves the five {FIVE_POINTS.name!r} points, and this model has no "
                           "such task; pass refiner=None (--refiner none)")


def resolve_refiner(refiner, path, model):
    """:meth:`Predictor.from_checkpoint`'s ``refiner`` argument (also ``facemtl export --refiner``'s)
    as a :class:`~facemtl.models.refiner.RefinerCascade` or None; ``"auto"``: the one saved in ``path``'s folder,
    if any."""
    if not isinstance(refiner, (str, Path)):
        return as_cascade(refiner)
    if str(refiner) == "none":
        return None
    if str(refiner) != "auto":
        return load_refiner(refiner)
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    if len(paths) != 1 or not predicts_five_points(model):
        return None  # an ensemble of several checkpoints names no one folder
    folder = Path(paths[0])
    folder = folder if folder.is_dir() else folder.parent
    return load_refiner(folder) if has_refiner(folder) else None


def reduce_detail(crop: np.ndarray, side: int) -> np.ndarray:
    """A square (S, S, 3) uint8 crop shrunk to ``side`` pixels (area average) and enlarged back
    (bilinear): what it shows at ``side`` px. At 48 px it lifted the bundled recipe's reading of
    real posed lab frames and cost it real everyday smiles (docs/evidence.md, "Fine detail"), so
    no model asks for it by default."""
    import cv2

    size = crop.shape[0]
    small = cv2.resize(np.ascontiguousarray(crop), (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def select_tasks(model_tasks, tasks) -> tuple:
    """The tasks of ``model_tasks`` that ``tasks`` names (None: all), in the model's order, or
    one line listing the model's tasks."""
    names = [t.name for t in model_tasks]
    if tasks is None:
        return tuple(model_tasks)
    listed = ", ".join(names)
    if isinstance(tasks, str) or not isinstance(tasks, Iterable):  # a str would be read letter by letter
        raise FacemtlError(f"tasks must be a list of task names (this model's: {listed}), got {tasks!r}")
    asked = list(tasks)
    unknown = [t for t in asked if t not in names]
    if unknown:
        raise FacemtlError(f"unknown task(s) {', '.join(repr(t) for t in unknown)}; this model's tasks are {listed}")
    if not asked:
        raise FacemtlError(f"tasks names no task; name some of this model's tasks ({listed}) or pass None for all")
    return tuple(t for t in model_tasks if t.name in asked)


def _box_json(box) -> Any:
    """A box for an error record: 4 numbers (non-finite ones as None), else the value as given."""
    try:
        values = np.asarray(box, np.float64).reshape(-1)
    except (TypeError, ValueError):
        return repr(box)
    return [round(float(v), 2) if np.isfinite(v) else None for v in values]


def _done(rec: ImageResult) -> ImageResult:
    rec.faces = [f for f in rec.faces if f is not None]  # faces that failed are in face_errors
    return rec


def logits_to_mask(logits: torch.Tensor, matrix: np.ndarray, crop_size: int, height: int, width: int) -> np.ndarray:
    """Crop logits (C, h, w) -> (height, width) uint8 class ids in the original image.

    Only the crop's footprint is warped (memory stays proportional to the face, not the
    photo); pixels whose centres fall outside the crop are background (0).
    """
    c, h, w = logits.shape
    m = np.asarray(matrix, np.float64)
    if (h, w) != (crop_size, crop_size):  # logits at another resolution than the crop
        sx, sy = w / crop_size, h / crop_size
        m = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]]) @ np.vstack([m, [0, 0, 1]])
    inv = invert_affine(m)
    corners = warp_points([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]], inv)
    x0, y0 = np.maximum(np.ceil(corners.min(0)), 0).astype(int)
    x1, y1 = np.minimum(np.floor(corners.max(0)), [width - 1, height - 1]).astype(int)
    mask = np.zeros((height, width), np.uint8)
    if x1 < x0 or y1 < y0:
        return mask
    local = m.copy()
    local[:, 2] += m[:, :2] @ [x0, y0]  # footprint pixel (u, v) is original (x0 + u, y0 + v)
    fh, fw = y1 - y0 + 1, x1 - x0 + 1
    labels = warp_logits_back(logits.float(), local, (fh, fw)).argmax(0).numpy().astype(np.uint8)
    # Footprint pixels outside the (possibly rotated) crop stay background.
    vs, us = np.mgrid[0:fh, 0:fw]
    cx = local[0, 0] * us + local[0, 1] * vs + local[0, 2]
    cy = local[1, 0] * us + local[1, 1] * vs + local[1, 2]
    inside = (cx >= -0.5) & (cx <= w - 0.5) & (cy >= -0.5) & (cy <= h - 0.5)
    mask[y0 : y1 + 1, x0 : x1 + 1] = np.where(inside, labels, 0)
    return mask
