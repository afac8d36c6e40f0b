"""Per-source batch normalisation: iFAN's "task dependent batch normalization" (section 3.3, 4.3.3).

Each source dataset (domain) gets its own affine parameters and running statistics while the
convolution weights around the layer are shared. Images from different datasets differ in
quality, illumination and framing; separate statistics stop one dataset's feature
distribution from being normalised with another's.

A layer is called with ``streams``:

* an ``int`` ``s``: the whole batch belongs to source ``s``; only row ``s`` of the running
  statistics is read (eval) or updated (train);
* a tuple of source indices ``(s0, s1, ...)``: the batch is that many equal-sized chunks stacked
  along dim 0, chunk ``k`` belonging to source ``s_k``. In evaluation every chunk's
  normalisation is the affine map of its row's running statistics, applied to all chunks in one
  broadcast multiply-add (layout kept). In training the chunks are normalised in one call by
  folding them into channels (``(S*B, C, H, W) -> (B, S*C, H, W)``), i.e. a grouped batch norm;
  that is allowed only when the tuple is ``range(num_sources)`` (each chunk then updates only
  its own row).

Statistics sets: ``statistics_sets=n`` keeps ``n`` sets of running statistics per source (rows
``set * num_sources + source``) and the layer reads / updates set ``active_set`` (which the
owning model sets; affine parameters stay one per source). iFAN gives every refinement
iteration its own set: Iter0 runs with all-zero feedback and later iterations with re-encoded
predictions, so their activations differ, and one shared running average would normalise each
iteration at inference with a mixture of both (measured: 16 faces fitted to 0.95 pixel accuracy
in train mode scored 0.71 at Iter0 in eval mode; with Iter0's own statistics 0.95).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from facemtl.models import cpu_kernels

Streams = Union[int, Sequence[int]]


class SourceBatchNorm2d(nn.Module):
    """``BatchNorm2d`` with one set of (weight, bias, running_mean, running_var) per source.

    Parameters and buffers have shape ``(num_sources, num_features)``; ``num_sources=1`` is an
    ordinary shared batch norm.
    """

    def __init__(self, num_features: int, num_sources: int = 1, eps: float = 1e-5, momentum: float = 0.1,
                 statistics_sets: int = 1):
        super().__init__()
        self.num_features = num_features
        self.num_sources = num_sources
        self.statistics_sets = statistics_sets
        self.active_set = 0
        self.eps = eps
        self.momentum = momentum
        self.fused = False  # norm_relu's fused kernel (the CPU speed paths switch it on)
        self.weight = nn.Parameter(torch.ones(num_sources, num_features))
        self.bias = nn.Parameter(torch.zeros(num_sources, num_features))
        self.register_buffer("running_mean", torch.zeros(statistics_sets * num_sources, num_features))
        self.register_buffer("running_var", torch.ones(statistics_sets * num_sources, num_features))

    def extra_repr(self) -> str:
        sets = f", statistics_sets={self.statistics_sets}" if self.statistics_sets > 1 else ""
        return f"{self.num_features}, num_sources={self.num_sources}{sets}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x: torch.Tensor, streams: Streams = 0) -> torch.Tensor:
        if isinstance(streams, int):
            self._check_source(streams)
            # Evaluation takes the stacked chunks' arithmetic (the same numbers either way); an ONNX
            # export keeps a BatchNormalization node, which onnxruntime folds into the convolution.
            if not self.training and not torch.onnx.is_in_onnx_export():
                return self._stacked_eval(x, (streams,), self.active_set * self.num_sources, 1, x.shape[0],
                                          x.shape[1], x.shape[2:])
            # Row views share storage with the buffers, so training updates land in row s only.
            row = self.active_set * self.num_sources + streams
            return F.batch_norm(
                x,
                self.running_mean[row],
                self.running_var[row],
                self.weight[streams],
                self.bias[streams],
                self.training,
                self.momentum,
                self.eps,
            )
        streams = tuple(int(s) for s in streams)
        if len(streams) == 1:
            return self.forward(x, streams[0])
        n = len(streams)
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} is not {n} equal source chunks")
        first = self.active_set * self.num_sources
        b, c = x.shape[0] // n, x.shape[1]
        rest = x.shape[2:]
        if not self.training:
            return self._stacked_eval(x, streams, first, n, b, c, rest)
        self._training_sources(streams)
        # a contiguous slice: a view, so training updates land in this set's rows
        mean = self.running_mean[first:first + self.num_sources].view(-1)
        var = self.running_var[first:first + self.num_sources].view(-1)
        weight, bias = self.weight.reshape(-1), self.bias.reshape(-1)
        folded = x.reshape(n, b, c, *rest).transpose(0, 1).reshape(b, n * c, *rest)
        out = F.batch_norm(folded, mean, var, weight, bias, self.training, self.momentum, self.eps)
        return out.reshape(b, n, c, *rest).transpose(0, 1).reshape(n * b, c, *rest)

    def norm_relu(self, x: torch.Tensor, streams: Streams = 0) -> torch.Tensor:
        """``relu(self(x, streams))``. With ``fused`` set (:func:`facemtl.models.fc_densenet.use_speed_paths`),
        in training, on a float32 channels-last CPU batch, one kernel does both
        (:mod:`facemtl.models.cpu_kernels`); otherwise the two ops."""
        if not (self.fused and self.training and cpu_kernels.applies(x)):
            return F.relu(self(x, streams))
        return cpu_kernels.bn_relu(x, *self._kernel_rows(streams), self.momentum, self.eps)

    def cat_norm_relu(self, a: torch.Tensor, b: torch.Tensor, streams: Streams = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, self.norm_relu(x, streams))`` with ``x = torch.cat([a, b], 1)``: a dense layer's
        input and what its convolution reads. Where :meth:`norm_relu` takes the fused kernel, one
        kernel also makes the concatenation (:func:`facemtl.models.cpu_kernels.cat_bn_relu`)."""
        if not (self.fused and self.training and cpu_kernels.applies(a) and cpu_kernels.applies(b)):
            x = torch.cat([a, b], 1)
            return x, self.norm_relu(x, streams)
        return cpu_kernels.cat_bn_relu(a, b, *self._kernel_rows(streams), self.momentum, self.eps)

    def _kernel_rows(self, streams: Streams) -> tuple[torch.Tensor, ...]:
        """(weight, bias, running mean, running var) rows of a training call's sources, for the
        kernels: contiguous row slices, i.e. views, so the statistics updates land in the buffers."""
        first, n = self._training_sources(streams)
        row = self.active_set * self.num_sources + first
        return (self.weight[first:first + n], self.bias[first:first + n], self.running_mean[row:row + n],
                self.running_var[row:row + n])

    def _check_source(self, s: int) -> None:
        if not 0 <= s < self.num_sources:
            raise IndexError(f"source {s} out of range 0..{self.num_sources - 1}")

    def _training_sources(self, streams: Streams) -> tuple[int, int]:
        """(first source, count) of a training call: one source in range, or every source stacked
        in order (a subset would lose the other rows' statistics update)."""
        if isinstance(streams, int) or len(streams) == 1:
            s = streams if isinstance(streams, int) else int(streams[0])
            self._check_source(s)
            return s, 1
        if tuple(int(s) for s in streams) != tuple(range(self.num_sources)):
            raise RuntimeError("training on a subset of stacked sources would lose the statistics update")
        return 0, len(streams)

    def _stacked_eval(self, x, streams, first, n, b, c, rest):
        """Evaluation (also of a single stream): each chunk's batch norm is an affine map from its row's
        running statistics, so all chunks take one broadcast multiply-add on the batch as it is
        (a view, any memory layout kept). Folding the chunks into channels instead copies the
        batch in and out and returns it NCHW: measured 3-7x slower on a CPU for channels-last
        inputs, and the next convolution then converts the layout back."""
        rows = tuple(first + s for s in streams)
        scale = _rows(self.weight, streams) * torch.rsqrt(_rows(self.running_var, rows) + self.eps)
        shift = _rows(self.bias, streams) - _rows(self.running_mean, rows) * scale
        shape = (n, 1, c) + (1,) * len(rest)
        out = torch.addcmul(shift.view(shape).to(x.dtype), x.reshape(n, b, c, *rest), scale.view(shape).to(x.dtype))
        return out.reshape(n * b, c, *rest)


def _rows(tensor: torch.Tensor, indices: tuple[int, ...]) -> torch.Tensor:
    """``tensor[indices]``: a slice when the indices are consecutive (no index tensor to build,
    on a GPU no host-to-device copy)."""
    if indices == tuple(range(indices[0], indices[0] + len(indices))):
        return tensor[indices[0]:indices[0] + len(indices)]
    return tensor[torch.tensor(indices, device=tensor.device)]


def use_statistics_sets(module: nn.Module, sets: int) -> list[SourceBatchNorm2d]:
    """Give every SourceBatchNorm2d in ``module`` ``sets`` fresh sets of running statistics
    (called once, right after building); returns those layers for :func:`select_statistics`."""
    norms = [m for m in module.modules() if isinstance(m, SourceBatchNorm2d)]
    for norm in norms:
        rows = sets * norm.num_sources
        norm.statistics_sets = sets
        norm.running_mean = torch.zeros(rows, norm.num_features, device=norm.weight.device)
        norm.running_var = torch.ones(rows, norm.num_features, device=norm.weight.device)
    return norms


def select_statistics(norms: Sequence[SourceBatchNorm2d], index: int) -> None:
    """Make ``norms`` read (and in training update) statistics set ``index``."""
    for norm in norms:
        norm.active_set = index


@torch.no_grad()
def randomise_norms(model: nn.Module, spread: float = 0.2) -> nn.Module:
    """Give every :class:`SourceBatchNorm2d` row its own random running statistics and affine
    parameters. A freshly built model has identical rows (mean 0, var 1, weight 1, bias 0), under
    which per-source streams, batch-norm folding and the sources' order cannot be told apart; tests
    and benchmarks of those paths call this first. Uses the global torch generator."""
    for module in model.modules():
        if isinstance(module, SourceBatchNorm2d):
            module.running_mean.normal_(0.0, spread)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.uniform_(1.0 - 1.5 * spread, 1.0 + 1.5 * spread)
            module.bias.normal_(0.0, spread)
    return model
