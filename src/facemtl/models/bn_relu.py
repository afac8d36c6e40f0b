"""A fused batch norm + ReLU for training on channels-last CPU tensors (the CPU speed paths).

Why: with channels-last weights (:func:`facemtl.models.fc_densenet.use_speed_paths`) the
convolutions run ~2x faster on a CPU, but PyTorch's channels-last batch norm is slow when the
channel count is not a multiple of 16 (18 of the default model's 25 layers: growth rate 6) and
uses one thread; in the default run's updates it cost as much as the convolutions saved. Every
batch norm of iFAN is followed by a ReLU, so one kernel does both: two passes over the batch
forward, two backward reading only x and the gradient (``bn_relu.c``, C compiled here on first use).

The kernel is compiled with the system C compiler (``cc``, or ``$CC``) into the user's cache
(``$FACEMTL_CACHE`` or ``~/.cache/facemtl``), keyed by the source, the compiler and the CPU, and
loaded with ctypes; its OpenMP threads are PyTorch's own runtime (the same ``libgomp.so.1``).
Without a compiler, or with ``FACEMTL_NATIVE=0``, :func:`available` is False and callers use
``F.relu(batch_norm(x))``: same numbers up to float rounding (tests/test_bn_relu.py).
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

_SOURCE = Path(__file__).with_name("bn_relu.c")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
_SMALL = 1 << 15  # elements below which one thread is faster than waking the second


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (with one warning saying why) where it cannot be built."""
    if os.environ.get("FACEMTL_NATIVE", "1") == "0" or platform.system() != "Linux":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn("facemtl: no C compiler (cc); the CPU speed paths use PyTorch's batch norm", stacklevel=3)
        return None
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256("\0".join([_SOURCE.read_text(), " ".join(_FLAGS), version, _cpu_id()]).encode())
        cache = Path(os.environ.get("FACEMTL_CACHE") or Path.home() / ".cache" / "facemtl") / "kernels"
        target = cache / f"bn_relu-{key.hexdigest()[:16]}.so"
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
        warnings.warn(f"facemtl: the fused batch-norm kernel could not be built ({exc}); "
                      "the CPU speed paths use PyTorch's batch norm", stacklevel=3)
        return None
    p, i64, f64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    lib.bn_relu_forward.argtypes = [p, p, i64, i64, i64, p, p, p, p, f64, f64, p, p, p, p, i32]
    lib.bn_relu_backward.argtypes = [p, p, p, i64, i64, i64, p, p, p, p, p, p, p, i32]
    lib.bn_relu_forward.restype = lib.bn_relu_backward.restype = None
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


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _threads(x: torch.Tensor) -> int:
    return 1 if x.numel() < _SMALL else torch.get_num_threads()


class _BNReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        chunks, c = weight.shape
        if not (running_mean.is_contiguous() and running_var.is_contiguous()
                and running_mean.shape == running_var.shape == weight.shape == bias.shape):
            raise ValueError("bn_relu: weight, bias and running statistics must be contiguous (chunks, C)")
        if x.shape[0] % chunks or x.shape[1] != c:
            raise ValueError(f"bn_relu: batch {tuple(x.shape)} is not {chunks} chunks of {c} channels")
        m = x.shape[0] // chunks * x.shape[2] * x.shape[3]
        w, b = weight.detach().contiguous(), bias.detach().contiguous()
        y = torch.empty_like(x, memory_format=torch.channels_last)
        saved = torch.empty(4, chunks, c)  # mean, 1/std, scale and shift of each chunk's channels
        _library().bn_relu_forward(_ptr(x), _ptr(y), chunks, m, c, _ptr(w), _ptr(b), _ptr(running_mean),
                                   _ptr(running_var), float(momentum), float(eps), *(_ptr(t) for t in saved),
                                   _threads(x))
        ctx.save_for_backward(x, w, saved)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, w, saved = ctx.saved_tensors
        chunks, c = w.shape
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        m = x.shape[0] // chunks * x.shape[2] * x.shape[3]
        grad_x = torch.empty_like(x, memory_format=torch.channels_last)
        grad_w, grad_b = torch.empty(chunks, c), torch.empty(chunks, c)
        _library().bn_relu_backward(_ptr(x), _ptr(grad_y), _ptr(grad_x), chunks, m, c, _ptr(w),
                                    *(_ptr(t) for t in saved), _ptr(grad_w), _ptr(grad_b), _threads(x))
        return grad_x, grad_w, grad_b, None, None, None, None
