"""Compiled CPU kernels for training on channels-last tensors (the CPU speed paths).

* :func:`bn_relu`: a fused training-mode batch norm + ReLU. Why: with channels-last weights
  (:func:`facemtl.models.fc_densenet.use_speed_paths`) the convolutions run ~2x faster on a CPU,
  but PyTorch's channels-last batch norm is slow when the channel count is not a multiple of 16
  (18 of the default model's 25 layers: growth rate 6) and uses one thread; in the default run's
  updates it cost as much as the convolutions saved. Every batch norm of iFAN is followed by a
  ReLU, so one kernel does both: two passes over the batch forward, two backward reading only x
  and the gradient.
* :func:`cat_bn_relu`: the same for a dense layer's input ``cat(a, b)``, which the kernel writes
  while summing it; backward writes the two pieces' gradients with the concatenation's own
  gradient added (no slicing and adding by the autograd engine).
* :func:`max_pool_keeping_input`: 2x2 max pooling that keeps which input won in a byte (PyTorch
  keeps an int64 index) and whose backward writes the input's gradient in one pass, the skip
  connection's share included (PyTorch: zeros, a scatter, then the engine's add).
Measured on the default run's updates (2 idle cores, ``benchmarks/train_step_time.py
--compare`` with the speed paths with and without these last two, interleaved): x1.02 and x1.04
in two runs (x1.00-1.01 in two shorter ones), and ~3% less peak memory: the concatenations,
gradient adds and pooling they remove are memory-bound passes, and the batch-norm kernel takes
on part of that traffic.

The C source (``cpu_kernels.c``) is compiled with the system C compiler (``cc``, or ``$CC``) into
the user's cache (``$FACEMTL_CACHE`` or ``~/.cache/facemtl``), keyed by the source, the compiler
and the CPU, and loaded with ctypes; its OpenMP threads are PyTorch's own runtime (the same
``libgomp.so.1``). Without a compiler, or with ``FACEMTL_NATIVE=0``, :func:`available` is False
and callers use PyTorch's ops: the same numbers up to float rounding for batch norm, exactly the
same for max pooling (tests/test_cpu_kernels.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("cpu_kernels.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
_SMALL = 1 << 15  # elements below which one thread is faster than waking the second


def _cpuinfo() -> list[str] | None:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None


def _cpu_id() -> str:
    lines = _cpuinfo()
    if lines is None:
        return platform.processor()
    return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    names = [ln.split(":", 1)[1].strip() for ln in _cpuinfo() or [] if ln.startswith("model name") and ":" in ln]
    return names[0] if names else (platform.processor() or platform.machine())


def _compiler() -> tuple[str, str] | None:
    """(path, ``--version`` output) of the C compiler, or None where there is none."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    return None if compiler is None else (compiler, _compiler_version(compiler))


@lru_cache(maxsize=4)
def _compiler_version(compiler: str) -> str:
    """``compiler --version`` (asked once per compiler: the kernels' cache key and each run's
    platform record both need it)."""
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build_description() -> str | None:
    """The compiler and flags the loaded kernels were built with, or None where PyTorch's ops run
    instead. Recorded with a run (``model.json``'s ``platform``): ``-march=native`` code rounds
    differently on another processor or compiler."""
    if _library() is None:
        return None
    compiler, version = _compiler() or ("?", "")
    first = version.strip().splitlines()[0] if version.strip() else Path(compiler).name
    return f"{first}; {' '.join(_FLAGS)}"


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (with one warning saying why) where it cannot be built."""
    if os.environ.get("FACEMTL_NATIVE", "1") == "0" or platform.system() != "Linux":
        return None
    found = _compiler()
    if found is None:
        warnings.warn("facemtl: no C compiler (cc); the CPU speed paths use PyTorch's batch norm and pooling", stacklevel=3)
        return None
    compiler, version = found
    try:
        key = hashlib.sha256("\0".join([_SOURCE.read_text(), " ".join(_FLAGS), version, _cpu_id()]).encode())
        cache = Path(os.environ.get("FACEMTL_CACHE") or Path.home() / ".cache" / "facemtl") / "kernels"
        target = cache / f"cpu_kernels-{key.hexdigest()[:16]}.so"
        if not target.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:  # built aside, moved in whole
                built = Path(tmp) / target.name
                done = subprocess.run([compiler, *_FLAGS, "-o", str(built), str(_SOURCE), "-lm"],
                                      capture_output=True, text=True, timeout=120)
                if done.returncode != 0:
                    raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
                os.replace(built, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        warnings.warn(f"facemtl: the CPU kernels could not be built ({exc}); "
                      "the CPU speed paths use PyTorch's batch norm and pooling", stacklevel=3)
        return None
    p, i64, f64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    lib.bn_relu_forward.argtypes = [p, p, i64, i64, i64, p, p, p, p, f64, f64, p, p, p, p, i32, p, p, i64]
    lib.bn_relu_backward.argtypes = [p, p, p, i64, i64, i64, p, p, p, p, p, p, p, i32, p, i64, p, i64]
    lib.max_pool_forward.argtypes = [p, p, p, i64, i64, i64, i64, i32, p, p, i64]
    lib.max_pool_backward.argtypes = [p, p, p, i64, p, i64, i64, i64, i64, i32, p, i64]
    lib.bn_relu_forward.restype = lib.bn_relu_backward.restype = None
    lib.max_pool_forward.restype = lib.max_pool_backward.restype = None
    return lib


def available() -> bool:
    """Whether the kernel is (or can be) built on this machine."""
    return _library() is not None


def applies(x: torch.Tensor) -> bool:
    """Whether :func:`bn_relu` takes ``x``: a 4-d float32 channels-last CPU tensor, outside an
    ONNX export (which must see BatchNormalization nodes) and outside ``torch.compile`` (which
    cannot trace a ctypes call, and fuses the two ops itself)."""
    return (x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.onnx.is_in_onnx_export()
            and not torch.compiler.is_compiling() and available())


def bn_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor,
            running_var: torch.Tensor, momentum: float, eps: float) -> torch.Tensor:
    """``relu(batch_norm(x, ..., training=True))`` for ``x`` of ``chunks * b`` images where
    ``weight`` etc. are ``(chunks, C)``: chunk ``k`` (images ``k*b .. (k+1)*b - 1``) is normalised
    with its own batch statistics and row ``k`` (the grouped per-source batch norm of
    :class:`facemtl.models.norm.SourceBatchNorm2d`). The running statistics (contiguous rows, views
    into the module's buffers) are updated in place. Requires :func:`applies`."""
    return _BNReLU.apply(x, weight, bias, running_mean, running_var, momentum, eps)


def cat_bn_relu(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                running_mean: torch.Tensor, running_var: torch.Tensor, momentum: float,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, bn_relu(x, ...))`` with ``x = torch.cat([a, b], 1)``, in one kernel: the
    concatenation is written in the pass that sums it, and the backward pass writes the two
    pieces' gradients (plus ``x``'s own gradient from its other readers) directly instead of
    one gradient that the concatenation's backward slices and the autograd engine adds up.
    A dense layer's input is exactly this (:class:`facemtl.models.fc_densenet.DenseBlock`).
    Requires :func:`applies` for ``a`` and ``b``."""
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"cat_bn_relu: pieces {tuple(a.shape)} and {tuple(b.shape)} differ outside channels")
    return _CatBNReLU.apply(a, b, weight, bias, running_mean, running_var, momentum, eps)


def max_pool_keeping_input(x: torch.Tensor, b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, F.max_pool2d(x, 2))`` for ``x`` with even height and width, in one autograd node:
    the backward pass writes x's gradient once, the pooling's share plus that of x's other
    readers (an FC-DenseNet's skip connection), instead of zeros, a scatter and an add; the
    forward pass keeps which input won as one byte per output. Same numbers as PyTorch's max
    pooling, ties and NaNs included. With ``b``, the input is ``cat(x, b)`` along channels (a
    down block's output), written by the kernel as it pools, and the pieces get their own
    gradients. Requires :func:`applies` (for ``b`` too)."""
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"max_pool_keeping_input: height and width must be even, got {tuple(x.shape)}")
    if b is not None and (b.shape[0] != x.shape[0] or b.shape[2:] != x.shape[2:]):
        raise ValueError(f"max_pool_keeping_input: pieces {tuple(x.shape)} and {tuple(b.shape)} differ outside channels")
    return _MaxPoolKeepingInput.apply(x, b)


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _threads(x: torch.Tensor) -> int:
    return 1 if x.numel() < _SMALL else torch.get_num_threads()


def _forward(x, weight, bias, running_mean, running_var, momentum, eps, a=None, b=None):
    """The kernel's forward on ``x`` (written first as cat(a, b) when they are given); returns
    (y, the detached weight, the saved per-chunk statistics)."""
    chunks, c = weight.shape
    if not (running_mean.is_contiguous() and running_var.is_contiguous()
            and running_mean.shape == running_var.shape == weight.shape == bias.shape):
        raise ValueError("bn_relu: weight, bias and running statistics must be contiguous (chunks, C)")
    if x.shape[0] % chunks or x.shape[1] != c:
        raise ValueError(f"bn_relu: batch {tuple(x.shape)} is not {chunks} chunks of {c} channels")
    m = x.shape[0] // chunks * x.shape[2] * x.shape[3]
    w, bi = weight.detach().contiguous(), bias.detach().contiguous()
    y = torch.empty_like(x, memory_format=torch.channels_last)
    saved = torch.empty(4, chunks, c)  # mean, 1/std, scale and shift of each chunk's channels
    _library().bn_relu_forward(_ptr(x), _ptr(y), chunks, m, c, _ptr(w), _ptr(bi), _ptr(running_mean),
                               _ptr(running_var), float(momentum), float(eps), *(_ptr(t) for t in saved),
                               _threads(x), _ptr(a), _ptr(b), 0 if a is None else a.shape[1])
    return y, w, saved


def _backward(x, w, saved, grad_y, grad_x_add=None, split: int | None = None):
    """The kernel's backward: (grad of x, or of its two pieces when ``split`` = the first
    piece's channels; grad weight; grad bias). ``grad_x_add``: x's gradient from its other readers."""
    chunks, c = w.shape
    grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    if grad_x_add is not None and not _rows_of_pixels(grad_x_add):
        grad_x_add = grad_x_add.contiguous(memory_format=torch.channels_last)
    m = x.shape[0] // chunks * x.shape[2] * x.shape[3]
    n, h, wd = x.shape[0], x.shape[2], x.shape[3]
    if split is None:
        grads = (torch.empty_like(x, memory_format=torch.channels_last),)
    else:
        grads = tuple(torch.empty(n, k, h, wd, memory_format=torch.channels_last) for k in (split, c - split))
    grad_w, grad_b = torch.empty(chunks, c), torch.empty(chunks, c)
    _library().bn_relu_backward(_ptr(x), _ptr(grad_y), _ptr(grads[0]), chunks, m, c, _ptr(w),
                                *(_ptr(t) for t in saved), _ptr(grad_w), _ptr(grad_b), _threads(x),
                                _ptr(grad_x_add), 0 if grad_x_add is None else grad_x_add.stride(3),
                                _ptr(grads[1]) if split is not None else None,
                                c if split is None else split)
    return grads, grad_w, grad_b


def _cat_buffer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """An empty channels-last ``cat([a, b], 1)`` for a kernel to write."""
    return torch.empty(a.shape[0], a.shape[1] + b.shape[1], *a.shape[2:], memory_format=torch.channels_last)


def _rows_of_pixels(t: torch.Tensor) -> bool:
    """Whether ``t``'s pixels are rows of its channels, evenly spaced (channels-last, or a slice of
    the first channels of a wider channels-last tensor: the gradient a concatenation's backward
    hands on), so the kernel can read it without a copy."""
    n, c, h, w = t.shape
    row = t.stride(3)
    return t.stride(1) == 1 and row >= c and t.stride(2) == row * w and (n == 1 or t.stride(0) == row * h * w)


class _BNReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, w, saved = _forward(x, weight, bias, running_mean, running_var, momentum, eps)
        ctx.save_for_backward(x, w, saved)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        (grad_x,), grad_w, grad_b = _backward(*ctx.saved_tensors, grad_y)
        return grad_x, grad_w, grad_b, None, None, None, None


class _CatBNReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, weight, bias, running_mean, running_var, momentum, eps):
        x = _cat_buffer(a, b)
        y, w, saved = _forward(x, weight, bias, running_mean, running_var, momentum, eps, a, b)
        ctx.save_for_backward(x, w, saved)
        ctx.split = a.shape[1]
        ctx.set_materialize_grads(False)  # x may have no other reader (its gradient is then None)
        return x, y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_x, grad_y):
        x, w, saved = ctx.saved_tensors
        if grad_y is None:  # y unused: only the concatenation's gradient, split
            return (*grad_x.split([ctx.split, x.shape[1] - ctx.split], 1), None, None, None, None, None, None)
        (grad_a, grad_b), grad_w, grad_bias = _backward(x, w, saved, grad_y, grad_x, ctx.split)
        return grad_a, grad_b, grad_w, grad_bias, None, None, None, None


class _MaxPoolKeepingInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        x = a if b is None else _cat_buffer(a, b)
        n, c, h, w = x.shape
        out = torch.empty(n, c, h // 2, w // 2, memory_format=torch.channels_last)
        won = torch.empty(n, h // 2, w // 2, c, dtype=torch.uint8)  # NHWC, as out's memory
        _library().max_pool_forward(_ptr(x), _ptr(out), _ptr(won), n, h, w, c, _threads(x),
                                    _ptr(None if b is None else a), _ptr(b), 0 if b is None else a.shape[1])
        ctx.save_for_backward(won)
        ctx.split = None if b is None else a.shape[1]
        ctx.set_materialize_grads(False)
        return x, out  # without b, x itself: autograd returns it as a view whose gradient comes back here

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_x, grad_out):
        (won,) = ctx.saved_tensors
        n, ho, wo, c = won.shape
        if grad_out is None:
            return (grad_x, None) if ctx.split is None else tuple(grad_x.split([ctx.split, c - ctx.split], 1))
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        if grad_x is not None and not _rows_of_pixels(grad_x):
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        widths = (c,) if ctx.split is None else (ctx.split, c - ctx.split)
        grads = [torch.empty(n, k, 2 * ho, 2 * wo, memory_format=torch.channels_last) for k in widths]
        _library().max_pool_backward(_ptr(grad_out), _ptr(won), _ptr(grad_x),
                                     0 if grad_x is None else grad_x.stride(3), _ptr(grads[0]), n, 2 * ho, 2 * wo, c,
                                     _threads(grads[0]), _ptr(grads[1]) if ctx.split else None, ctx.split or c)
        return (grads[0], None) if ctx.split is None else tuple(grads)
