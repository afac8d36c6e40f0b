"""ONNX export: a graph from a batch of normalised face crops to every task's output.

The graph is the ``source=None`` inference path (iFAN: each task read from its own source's
batch-norm stream, the assembled predictions fed back into every stream) unrolled for a fixed
number of refinement iterations, and reports the LAST iteration, decoded
(``model.decode``): points ``(B, K, 2)`` normalised to [0, 1] in the crop, segmentation
logits ``(B, C, S, S)``, category logits ``(B, N)``. One input ``images`` (B, 3, S, S),
normalised like training (mean/std in the metadata); one output per task, named after it;
the batch axis is dynamic. The checkpoint's JSON description is stored in the model's
metadata under ``facemtl_info`` so the file is self-describing. :func:`onnx_model` can keep only
some tasks' outputs (``tasks``), whose streams alone then run at the last iteration.

For an iFAN with several batch-norm streams the graph runs the streams one at a time
(:mod:`facemtl.models.streamwise`: plain batch norms with constant parameters, no up path for
streams whose tasks do not read it, shared work done once); :class:`ExportWrapper` (the model's
own forward) stays the reference that :func:`compare_with_torch` checks it against.
:func:`onnx_model` builds the graph in memory, which the onnxruntime prediction backend
(:class:`facemtl.inference.predictor.OnnxRuntimeBackend`) runs without writing a file.

A point refiner (:mod:`facemtl.models.refiner`) exports to graphs of its own, one per stage
(:func:`refiner_onnx_model`): a face's five uint8 patches to the five points' offsets, its mirror
average inside; the metadata says how to cut the patches and read the offsets, which is all a
deployment without facemtl needs. ``facemtl export`` writes them beside the face model's graph.

onnx and onnxruntime are an optional extra (``pip install facemtl[onnx]``); they are imported
only here, with a clear error when missing. The exporter is PyTorch's TorchScript-based one
(``dynamo=False``): it needs no onnxscript.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from facemtl.constants import MAX_OPSET, MIN_OPSET, OPSET
from facemtl.errors import FacemtlError
from facemtl.files import atomic_write_bytes

_ADAPTIVE_AVG = "aten::adaptive_avg_pool2d"


def check_opset(opset) -> int:
    """An opset this exporter writes, or one line with the supported range."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise FacemtlError(f"--opset {opset!r}: facemtl exports ONNX opsets {MIN_OPSET} to {MAX_OPSET} "
                           f"(default {OPSET})")
    return opset


def require_onnx(what: str = "ONNX export"):
    """Import onnx and onnxruntime, or say (naming ``what`` needs them) how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise FacemtlError(
            f"{what} needs the optional packages onnx and onnxruntime ({exc.name} is missing): "
            "pip install 'facemtl[onnx]'"
        ) from None
    return onnx, onnxruntime


class ExportWrapper(nn.Module):
    """``images -> tuple of decoded last-iteration outputs`` in ``model.tasks`` order
    (``tasks``: only these names' outputs, still in model order; None = every task)."""

    def __init__(self, model: nn.Module, iterations: int | None = None, tasks=None):
        super().__init__()
        self.model = model
        self.names = [t.name for t in model.tasks if tasks is None or t.name in tasks]
        if tasks is not None and (not self.names or set(tasks) - set(self.names)):
            raise FacemtlError(f"tasks must name some of {[t.name for t in model.tasks]}, got {list(tasks)}")
        if iterations is not None:
            model.check_iterations(iterations)
        self.kwargs = {} if iterations is None else {"iterations": int(iterations)}
        if tasks is not None and len(self.names) < len(model.tasks):  # all tasks: the plain call
            self.kwargs["tasks"] = list(self.names)

    def forward(self, images: torch.Tensor):
        last = self.model(images, source=None, **self.kwargs)[-1]
        return tuple(self.model.decode(n, last[n]) for n in self.names)


def _adaptive_avg_pool2d(g, x, output_size):
    """ONNX for ``adaptive_avg_pool2d`` incl. integer UPSAMPLING, which the stock exporter refuses.

    iFAN's points decoder pools its features to the fixed grid of the reference size (8x8 at
    128); at a smaller input (64: 4x4 features) that is an upsampling, where every output bin
    covers exactly one input pixel, i.e. a nearest-neighbour repeat. Downsampling by an integer
    factor is an AveragePool, output 1x1 a GlobalAveragePool, as PyTorch's own exporter does.
    """
    from torch.onnx import symbolic_helper as sh

    out_hw = sh._parse_arg(output_size, "is")
    sizes = sh._get_tensor_sizes(x)
    if out_hw == [1, 1]:
        return g.op("GlobalAveragePool", x)
    in_hw = None if sizes is None else sizes[2:]
    if in_hw is None or any(v is None for v in in_hw):
        raise FacemtlError("ONNX export: adaptive pooling of an input whose spatial size is unknown")
    if all(i % o == 0 for i, o in zip(in_hw, out_hw)):
        k = [i // o for i, o in zip(in_hw, out_hw)]
        return g.op("AveragePool", x, kernel_shape_i=k, strides_i=k)
    if all(o % i == 0 for i, o in zip(in_hw, out_hw)):
        roi = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        scales = g.op("Constant", value_t=torch.tensor([1.0, 1.0] + [o / i for i, o in zip(in_hw, out_hw)]))
        return g.op("Resize", x, roi, scales, mode_s="nearest", coordinate_transformation_mode_s="asymmetric",
                    nearest_mode_s="floor")
    raise FacemtlError(f"ONNX export: adaptive pooling from {in_hw} to {out_hw} is not an integer factor")


def export_onnx(model: nn.Module, info: dict, out_path: str | Path, iterations: int | None = None,
                opset: int = OPSET, batch: int = 2) -> Path:
    """Write ``model`` (eval mode, CPU) as ONNX to ``out_path``; returns the path.

    ``iterations``: refinement iterations to unroll (None: all the model was built with).
    The graph is built in memory and the file written atomically: a failed or interrupted
    export leaves the previous file as it was.
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise FacemtlError(f"--onnx output must end in .onnx, got {out_path}")
    proto = onnx_model(model, info, iterations, opset, batch)
    atomic_write_bytes(out_path, proto.SerializeToString())
    return out_path


def onnx_model(model: nn.Module, info: dict, iterations: int | None = None, opset: int = OPSET, batch: int = 2,
               tasks=None):
    """The checked ONNX ``ModelProto`` of ``model`` (moved to the CPU, eval mode), in memory.

    ``batch`` is the traced example's batch size (the batch axis is dynamic in the graph); the
    trace runs the model once on it, the larger part of an export's time. ``tasks`` (names,
    None = all): the graph's outputs; the last iteration then runs only their streams and
    decoders (earlier iterations still run every task, which the integrator reads).
    """
    from facemtl.models.streamwise import inference_module

    require_onnx()
    check_opset(opset)
    model = model.cpu().eval()
    reference = ExportWrapper(model, iterations, tasks).eval()  # checks iterations with the model's own message
    # eval(): the exporter puts the module back in the mode it found it in, submodules included
    graph = (inference_module(model, iterations, tasks) or reference).eval()
    size = int(info.get("input_size", 128))
    names = reference.names
    meta = {"facemtl_info": json.dumps(info), "iterations": str(iterations if iterations is not None else "all"),
            "outputs": json.dumps(names), "crop": crop_description(info)}
    torch.onnx.register_custom_op_symbolic(_ADAPTIVE_AVG, _adaptive_avg_pool2d, opset)
    try:
        return _traced_onnx(graph, torch.zeros(batch, 3, size, size), "images", names, opset, meta)
    finally:
        torch.onnx.unregister_custom_op_symbolic(_ADAPTIVE_AVG, opset)


CROP_DESCRIPTION = (
    "How facemtl's predictor makes the input 'images' from a photo and reads the outputs back (S = {size}, "
    "margin m = {margin}). A face square has centre c and side s; its crop turned by t degrees is "
    "crop = cv2.warpAffine(photo, M, (S, S), INTER_LINEAR, BORDER_CONSTANT, 0) of the RGB uint8 photo with "
    "M = A T, A = [k I | (S - 1) / 2 - k c], k = S / (s (1 + 2 m)), T = cv2.getRotationMatrix2D(c, t, 1) as a "
    "3x3 affine (t = 0: T = I). Input: (crop / 255 - mean) / std per RGB channel, channels first, float32, "
    "mean = {mean}, std = {std}. Outputs: points (B, K, 2) u, in crop pixels S u, in the photo M^-1 (S u); "
    "segmentation logits (B, C, S, S) over the crop's pixels; category logits (B, N); names and the flip "
    "permutation f of each task in facemtl_info's 'tasks'. Test-time flip (the predictor's default): run the "
    "mirrored crop crop[:, ::-1] too; of its outputs take index f[i] as index i (points, classes, categories; "
    "f empty: none swapped), points x -> (S - 1) / S - x, segmentation logits mirrored along x; average them "
    "with the crop's own (points, logits) before anything else. Face square of five points p_0..p_4 (MTFL "
    "order): centred on their bounding box, side {inner} times its longer side. First crop: from a detector's "
    "box with centre b and longer side w, the square of centre b + (dx, dy) w and side scale w; (dx, dy, scale) "
    "= {calibrations}; any other detector: its box as the square (or its own fit); a turn the detector "
    "gives (the Haar detector's turned searches) turns the first crop too. Second crop (for detected "
    "faces when the first crop's eyes tilt by {min_tilt} degrees or more in the crop, always with passes=2): "
    "from the first crop's points p, t = the eye line's angle atan2(d_y, d_x) in degrees, d = p_1 - p_0, "
    "clipped to +-{max_roll}, T = cv2.getRotationMatrix2D(c_p, t, 1) with c_p the centre of p's square; the "
    "crop's square is the square of the points T p, its turn T (M = A T, A of that square; kept when that "
    "square's side is within 1/{change:g} to {change:g} times the first's and its centre inside the first "
    "square); every output is read from the last crop. The predictor turns a crop whose own eyes still tilt "
    "by {again} degrees or more again the same way, up to {crops} crops; a box the caller gives keeps its "
    "square and is only turned by t."
)


def crop_description(info: dict) -> str:
    """The text of the face model's ONNX metadata key ``crop`` (:data:`CROP_DESCRIPTION`): how the predictor cuts
    and normalises a face's crops and maps the outputs back, for a deployment without facemtl; its numbers
    are ``info``'s (the checkpoint's crop margin, input size and normalisation)."""
    from facemtl.data.sample import IMAGE_MEAN, IMAGE_STD
    from facemtl.constants import DEFAULT_CROP_MARGIN
    from facemtl.data.transforms import INNER_POINTS_SCALE
    from facemtl.inference.alignment import CALIBRATIONS, MAX_UPRIGHT_ROLL
    from facemtl.inference.predictor import (MAX_RECROP_CHANGE, UPRIGHT_MAX_CROPS, UPRIGHT_MIN_DEGREES,
                                             UPRIGHT_RETURN_DEGREES)

    crop = info.get("crop") if isinstance(info.get("crop"), dict) else {}
    norm = info.get("normalization") or {}
    calibrations = "; ".join(f"{name} ({c.dx:g}, {c.dy:g}, {c.scale:g})" for name, c in CALIBRATIONS.items())
    return CROP_DESCRIPTION.format(
        size=int(info.get("input_size", 128)), margin=f"{crop.get('margin', DEFAULT_CROP_MARGIN):g}",
        mean=list(norm.get("mean", IMAGE_MEAN)), std=list(norm.get("std", IMAGE_STD)), inner=f"{INNER_POINTS_SCALE:g}",
        calibrations=calibrations, min_tilt=f"{UPRIGHT_MIN_DEGREES:g}", max_roll=f"{MAX_UPRIGHT_ROLL:g}",
        again=f"{UPRIGHT_RETURN_DEGREES:g}", crops=UPRIGHT_MAX_CROPS, change=MAX_RECROP_CHANGE)


def _traced_onnx(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list, opset: int,
                 meta: dict):
    """The checked ``ModelProto`` of ``module`` traced on ``example`` (batch axis dynamic in the one
    input and every output), with ``meta`` (str -> str) in its metadata."""
    onnx, _ = require_onnx()
    buffer = io.BytesIO()
    axes = {n: {0: "batch"} for n in [input_name, *output_names]}
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is legacy and that traced shapes are constants.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, input_names=[input_name], output_names=output_names,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    proto = onnx.load_model_from_string(buffer.getvalue())
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto


# -- the point refiner --------------------------------------------------------------------------

REFINER_GEOMETRY = (
    "Input 'patches' (B, 5, {patch}, {patch}, 3) uint8 RGB: for each face, one patch per point in MTFL order "
    "(left eye, right eye, nose, left mouth corner, right mouth corner; the face model's points p_0..p_4). With "
    "d = p_1 - p_0, angle = atan2(d_y, d_x) and side = max({side} * |d|, 4) "
    "pixels, patch k is cv2.warpAffine(photo, M_k, ({patch}, {patch}), INTER_LINEAR, BORDER_REPLICATE) with "
    "M_k = [s R(-angle) | c - s R(-angle) p_k], s = {patch} / side, c = ({patch} - 1) / 2, p_k the point, "
    "R(a) = [[cos a, -sin a], [sin a, cos a]]; when side / {patch} > {alias}, the photo is first blurred "
    "with a Gaussian of sigma 0.5 * side / {patch}. Output 'offsets' (B, 5, 2) float32 o_k, in patch sides "
    "along the patch axes: the refined point is p_k + side * R(angle) o_k. This is stage {stage} of {stages}: "
    "{order}."
)


class _FaceOffsets(nn.Module):
    """What the refiner's graph traces: :meth:`PointRefiner.face_offsets` as ``forward``."""

    def __init__(self, refiner):
        super().__init__()
        self.refiner = refiner

    def forward(self, patches):
        return self.refiner.face_offsets(patches)


def refiner_onnx_model(refiner: nn.Module, opset: int = OPSET, stage: int = 1, stages: int = 1):
    """The checked ONNX ``ModelProto`` of one point refiner stage's
    :meth:`~facemtl.models.refiner.PointRefiner.face_offsets` (the patch and its mirror image, averaged):
    uint8 patches ``(B, 5, PATCH, PATCH, 3)`` -> offsets ``(B, 5, 2)``, the batch axis dynamic. The
    metadata holds ``geometry`` (how to cut the patches and read the offsets, :data:`REFINER_GEOMETRY`, and
    which stage of how many it is) and ``facemtl_refiner`` (the stage's JSON description, its ``info`` when
    loaded from files)."""
    from facemtl.models.refiner import ANTI_ALIAS_FROM, PATCH

    check_opset(opset)
    refiner = refiner.cpu().eval()
    if stage == 1:
        order = "p_k are the face model's points" + ("; stage 2 starts from the points it gives" if stages > 1 else "")
    else:
        order = f"p_k are the points stage {stage - 1} gives"
    geometry = REFINER_GEOMETRY.format(patch=PATCH, side=f"{refiner.patch_side:g}", alias=ANTI_ALIAS_FROM,
                                       stage=stage, stages=stages, order=order)
    meta = {"geometry": geometry, "facemtl_refiner": json.dumps(getattr(refiner, "info", {}))}
    example = torch.zeros(2, 5, PATCH, PATCH, 3, dtype=torch.uint8)
    return _traced_onnx(_FaceOffsets(refiner).eval(), example, "patches", ["offsets"], opset, meta)


def refiner_onnx_path(onnx_path: str | Path, stage: int = 1) -> Path:
    """Where ``facemtl export`` writes refiner stage ``stage``'s graph beside ``OUT.onnx``: ``OUT.refiner.onnx``,
    ``OUT.refiner.stage2.onnx``, ..."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + (".refiner.onnx" if stage == 1 else f".refiner.stage{stage}.onnx"))


class OnnxRefiner:
    """A point refiner stage's graph (:func:`refiner_onnx_model`, built in memory) in an onnxruntime CPU
    session: a stage of the onnxruntime backend's refiner, used by :func:`facemtl.models.refiner.refine_points`
    as the stage itself (its ``patch_side``; ``offsets`` of uint8 patches ``(B, 5, PATCH, PATCH, 3)``)."""

    def __init__(self, refiner: nn.Module, threads: int | None = None):
        self.patch_side = refiner.patch_side
        self.session = onnx_session(refiner_onnx_model(refiner).SerializeToString(), threads=threads)

    def offsets(self, patches: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"patches": np.ascontiguousarray(patches, dtype=np.uint8)})[0]


def onnx_session(model: str | Path | bytes, threads: int | None = None, optimized_path: str | Path | None = None):
    """An onnxruntime CPU session for an exported file or serialised graph (``bytes``).

    ``threads``: intra-op threads (None: onnxruntime's default, one per core). Graph optimisation
    is at level ALL (constant folding, Conv+BN and Conv+activation fusions, the NCHWc layout);
    ``optimized_path`` saves the optimised graph there (to inspect which nodes remain).
    """
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        options.log_severity_level = 3  # the optimised graph's "hardware specific" warning
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def compare_with_torch(model: nn.Module, path: str | Path, iterations: int | None = None, size: int = 128,
                       batch: int = 3, seed: int = 0) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| per output on random crops (batch differs from the export's)."""
    session = onnx_session(path)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = ExportWrapper(model.cpu().eval(), iterations)(images)
    got = session.run(None, {"images": images.numpy()})
    names = [o.name for o in session.get_outputs()]
    return {n: float(abs(g - e.numpy()).max()) for n, g, e in zip(names, got, expected)}


def compare_refiner_with_torch(refiner: nn.Module, path: str | Path, batch: int = 3, seed: int = 0) -> float:
    """Largest |onnxruntime - PyTorch| offset (in patch sides) of a refiner's exported graph on random
    patches (batch differs from the export's)."""
    from facemtl.models.refiner import PATCH

    session = onnx_session(path)
    patches = torch.randint(0, 256, (batch, 5, PATCH, PATCH, 3), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = refiner.cpu().eval().face_offsets(patches).numpy()
    return float(abs(session.run(None, {"patches": patches.numpy()})[0] - expected).max())
