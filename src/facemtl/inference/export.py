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

onnx and onnxruntime are an optional extra (``pip install facemtl[onnx]``); they are imported
only here, with a clear error when missing. The exporter is PyTorch's TorchScript-based one
(``dynamo=False``): it needs no onnxscript.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

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

    onnx, _ = require_onnx()
    check_opset(opset)
    model = model.cpu().eval()
    reference = ExportWrapper(model, iterations, tasks).eval()  # checks iterations with the model's own message
    # eval(): the exporter puts the module back in the mode it found it in, submodules included
    graph = (inference_module(model, iterations, tasks) or reference).eval()
    size = int(info.get("input_size", 128))
    example = torch.zeros(batch, 3, size, size)
    names = reference.names
    axes = {"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    buffer = io.BytesIO()
    torch.onnx.register_custom_op_symbolic(_ADAPTIVE_AVG, _adaptive_avg_pool2d, opset)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it is legacy and that traced shapes are constants.
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), buffer, input_names=["images"], output_names=names,
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    finally:
        torch.onnx.unregister_custom_op_symbolic(_ADAPTIVE_AVG, opset)
    proto = onnx.load_model_from_string(buffer.getvalue())
    meta = {"facemtl_info": json.dumps(info), "iterations": str(iterations if iterations is not None else "all"),
            "outputs": json.dumps(names)}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto


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
