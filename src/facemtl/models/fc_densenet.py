"""Fully convolutional DenseNet backbone of iFAN (section 4.1.2; Jegou et al.'s FC-DenseNet [11]).

Layout with the paper's settings (input 128, ``num_blocks=5``, 3 layers per block, growth 12)::

    7x7 conv (stem)                                             128
    down: [dense block -> keep as skip -> 2x2 average pool] x 5  128 -> 64 -> 32 -> 16 -> 8 -> 4
                   (``pool="max"``: 2x2 max pool, the default run's choice, see below)
    up:   [dense block -> sub-pixel up (PixelShuffle) + conv -> concat skip] x 5   4 -> 8 -> ... -> 128

Every dense layer is BN-ReLU-Conv3x3 (stride 1, ``growth_rate`` maps) and sees the
concatenation of the block input and all earlier layers' maps. As in FC-DenseNet, a down block
passes on ``[input, new maps]`` while an up block passes on only its new maps (keeps the up path
from growing quadratically). The sub-pixel layer of [20] is a 1x1 conv to ``4 * up_channels``
maps followed by ``PixelShuffle(2)``; the paper's "followed by a convolutional layer" is a 3x3
conv. Any input whose sides are divisible by ``2 ** num_blocks`` works.

Level ``i`` means resolution ``input / 2**i`` (level 0 = input size, level ``num_blocks`` = the
4x4 bottom). ``feedback[i]`` (the task integrator's maps, :mod:`facemtl.models.ifan`) is
concatenated to the (normalised) input of every dense layer of every block that runs at level
``i``: down block ``i`` and the up block at level ``i``. The feedback only conditions those
layers; it is not copied into the block output, so channel counts downstream do not grow with
the number of tasks.

All batch norms are :class:`SourceBatchNorm2d`; ``streams`` selects the source rows.

Pooling: the paper uses average pooling. ``pool="max"`` swaps in 2x2 max pooling on the down
path. Measured on the synthetic emotion task (studio style, 4096 training faces, 64 px, narrow
network growth 6, emotion only, Iter0, AdamW one-cycle, 800 updates of 32): average pooling 40.7% test accuracy, max pooling
68.6%. In a DenseNet every shallow map is pooled again at every level, and averaging
repeatedly dilutes the small, local cues (a lip corner moving by a pixel) that max pooling
keeps; a narrow network has too few deep channels to recover them.

CPU speed paths (:func:`use_speed_paths`, off when built): channels-last weights, one
feedback convolution per level and the compiled kernels of :mod:`facemtl.models.cpu_kernels`
(batch norm + ReLU with the dense layers' concatenations, max pooling with the skip); the same
numbers up to float rounding, and
``benchmarks/train_step_time.py --compare`` times them against the eager path.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from facemtl.models import cpu_kernels
from facemtl.models.norm import SourceBatchNorm2d, Streams

POOLS = ("avg", "max")


class BNReLUConv(nn.Module):
    """Pre-activation unit: per-source BN, ReLU, conv (no bias: the next BN has its own)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_sources: int):
        super().__init__()
        self.norm = SourceBatchNorm2d(in_channels, num_sources)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor, streams: Streams) -> torch.Tensor:
        return self.conv(self.norm.norm_relu(x, streams))


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 whose convolution also reads ``feedback_channels`` integrator maps.

    ``conv(cat(h, feedback))`` is computed as ``conv(h) + feedback_conv(feedback)`` (the same
    linear map with its weight split in two), and the feedback joins AFTER the batch norm:
    re-encoded maps are already non-negative features, and an all-zero (neutral) feedback then
    contributes exactly nothing, in training and eval alike (normalising zeros would give a
    bias that differs between batch and running statistics). ``feedback=None`` is neutral and
    skips ``feedback_conv``. ``feedback_term``: ``feedback_conv(feedback)`` computed beforehand
    (the backbone's batched feedback path, :meth:`FCDenseNet.feedback_terms`), used instead.
    """

    def __init__(self, in_channels: int, growth_rate: int, num_sources: int, feedback_channels: int = 0):
        super().__init__()
        self.norm = SourceBatchNorm2d(in_channels, num_sources)
        self.conv = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False)
        self.feedback_conv = (
            nn.Conv2d(feedback_channels, growth_rate, 3, padding=1, bias=False) if feedback_channels else None
        )

    def forward(self, x: torch.Tensor, streams: Streams, feedback: torch.Tensor | None = None,
                feedback_term: torch.Tensor | None = None) -> torch.Tensor:
        return self.convolve(self.norm.norm_relu(x, streams), feedback, feedback_term)

    def convolve(self, h: torch.Tensor, feedback: torch.Tensor | None = None,
                 feedback_term: torch.Tensor | None = None) -> torch.Tensor:
        """The layer after its batch norm and ReLU: ``conv(h)`` plus the feedback's term."""
        out = self.conv(h)
        if feedback_term is not None:
            out = out + feedback_term
        elif feedback is not None:
            out = out + self.feedback_conv(feedback)
        return out


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns the new maps (``num_layers * growth_rate``), or with
    ``with_input`` the input followed by them (the down path's ``cat(x, block(x))``, built by the
    layers' own concatenations instead of two more copies). Every layer also reads the block's
    feedback maps (if any), or gets its precomputed ``feedback_terms[i]`` (see :class:`DenseLayer`).
    ``x`` may be a pair ``(a, b)``: the input is ``cat(a, b)``, made by the first layer's
    :meth:`~facemtl.models.norm.SourceBatchNorm2d.cat_norm_relu` (the up path's skip join).
    ``joined=False`` (with ``with_input``): the output's two pieces, (input and all new maps but
    the last, the last), for the pooling kernel to concatenate (:meth:`FCDenseNet.pool_keeping_input`)."""

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int, num_sources: int, feedback_channels: int = 0):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, num_sources, feedback_channels)
            for i in range(num_layers)
        )
        self.out_channels = growth_rate * num_layers

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor], streams: Streams,
                feedback: torch.Tensor | None = None, feedback_terms: Sequence[torch.Tensor | None] | None = None,
                with_input: bool = False, joined: bool = True) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features, new = x, []  # features: what the next layer reads, cat(x, new maps so far)
        for i, layer in enumerate(self.layers):
            if i == 0 and not isinstance(x, tuple):
                h = layer.norm.norm_relu(features, streams)
            else:  # the concatenation and the batch norm that reads it: one kernel on the speed paths
                features, h = layer.norm.cat_norm_relu(*(x if i == 0 else (features, new[-1])), streams)
            new.append(layer.convolve(h, feedback, None if feedback_terms is None else feedback_terms[i]))
        if with_input:
            return torch.cat([features, new[-1]], 1) if joined else (features, new[-1])
        return torch.cat(new, 1)


class TransitionUp(nn.Module):
    """Sub-pixel upsampling by 2 [20] followed by a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_sources: int):
        super().__init__()
        self.subpixel = BNReLUConv(in_channels, 4 * out_channels, 1, num_sources)
        self.shuffle = nn.PixelShuffle(2)
        self.conv = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, streams: Streams) -> torch.Tensor:
        return self.conv(self.shuffle(self.subpixel(x, streams)))


class FCDenseNet(nn.Module):
    """The shared backbone; ``forward`` returns the feature maps the decoders read.

    ``feedback_channels`` is the number of integrator channels concatenated at each level
    (0: a plain FC-DenseNet, ``feedback`` must then be None).

    ``batched_feedback`` (off when built; :func:`use_speed_paths` turns it on): the feedback
    convolutions of all dense layers at a level read the same map, so they run as ONE
    convolution with their weights stacked (:meth:`feedback_terms`) instead of one
    ``growth_rate``-map convolution per layer. The same products and sums; on a CPU a
    convolution with 6 output maps leaves most of a vector register idle. Measured on 1 core
    (channels-last, default run's shapes, forward + backward): 4 layers at 32x32 8.1 -> 5.2 ms,
    2 layers at 64x64 18.7 -> 12.5 ms.
    """

    def __init__(
        self,
        in_channels: int = 3,
        stem_channels: int = 48,
        stem_kernel: int = 7,
        growth_rate: int = 12,
        layers_per_block: int = 3,
        num_blocks: int = 5,
        up_channels: int = 24,
        num_sources: int = 1,
        feedback_channels: Sequence[int] | int = 0,
        pool: str = "avg",
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool = F.avg_pool2d if pool == "avg" else F.max_pool2d
        self.num_blocks = num_blocks
        if isinstance(feedback_channels, int):
            feedback_channels = [feedback_channels] * (num_blocks + 1)
        self.feedback_channels = tuple(feedback_channels)
        fb = self.feedback_channels
        self.stem = nn.Conv2d(in_channels, stem_channels, stem_kernel, padding=stem_kernel // 2, bias=False)

        self.down = nn.ModuleList()
        self.down_channels: list[int] = []  # skip channels at level i
        c = stem_channels
        for i in range(num_blocks):
            block = DenseBlock(c, growth_rate, layers_per_block, num_sources, fb[i])
            self.down.append(block)
            c = c + block.out_channels
            self.down_channels.append(c)
        self.bottom_channels = c

        self.up = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for j in range(num_blocks):
            level = num_blocks - j
            block = DenseBlock(c, growth_rate, layers_per_block, num_sources, fb[level])
            self.up.append(block)
            self.transitions.append(TransitionUp(block.out_channels, up_channels, num_sources))
            c = up_channels + self.down_channels[level - 1]
        self.out_channels = c
        self.batched_feedback = False
        self.fused_pool = False  # pool_keeping_input's kernel (use_speed_paths switches it on)

    def pool_keeping_input(self, a: torch.Tensor, b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, pool(h))`` with ``h = a``, or ``cat(a, b)``: the down path's skip and the next
        level's input. With ``fused_pool``, in training, max pooling of a float32 channels-last
        CPU batch is one kernel that also makes the concatenation, and whose backward adds the
        skip's gradient in the same pass (:func:`facemtl.models.cpu_kernels.max_pool_keeping_input`)."""
        if (self.fused_pool and self.training and self.pool is F.max_pool2d and a.shape[2] % 2 == 0
                and a.shape[3] % 2 == 0 and cpu_kernels.applies(a) and (b is None or cpu_kernels.applies(b))):
            return cpu_kernels.max_pool_keeping_input(a, b)
        h = a if b is None else torch.cat([a, b], 1)
        return h, self.pool(h, 2)

    def level_layers(self, level: int) -> list[DenseLayer]:
        """The dense layers that run at ``level`` (down block ``level``, then the up block there)."""
        layers = list(self.down[level].layers) if level < self.num_blocks else []
        if level >= 1:
            layers += list(self.up[self.num_blocks - level].layers)
        return layers

    def feedback_terms(self, feedback: Sequence[torch.Tensor]) -> dict[DenseLayer, torch.Tensor]:
        """``layer.feedback_conv(feedback[level])`` for every dense layer with feedback, computed
        as one convolution per level (the layers' weights concatenated, the result split)."""
        terms: dict[DenseLayer, torch.Tensor] = {}
        for level, maps in enumerate(feedback):
            layers = [layer for layer in self.level_layers(level) if layer.feedback_conv is not None]
            if not layers:
                continue
            first = layers[0].feedback_conv
            weight = torch.cat([layer.feedback_conv.weight for layer in layers])
            out = F.conv2d(maps, weight, None, first.stride, first.padding)
            for layer, term in zip(layers, out.split([layer.feedback_conv.out_channels for layer in layers], 1)):
                terms[layer] = term
        return terms

    def forward(
        self, x: torch.Tensor, streams: Streams = 0, feedback: Sequence[torch.Tensor] | None = None, up: bool = True
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``{"down": [skip at level 0..n-1], "bottom": level n, "out": level 0 end of the up path}``.

        ``feedback``: one map per level, or None for neutral (all-zero) feedback. ``up=False``
        stops at the bottom (no ``"out"``): for readers of the down path only.
        """
        if feedback is not None and sum(self.feedback_channels) == 0:
            raise ValueError("this backbone was built without feedback inputs")

        h = self.stem(x)
        if feedback is not None and is_channels_last(h):
            # Every dense layer of a level reads its feedback map; converting it once here
            # replaces one layout copy per feedback convolution (see use_channels_last).
            feedback = [f.contiguous(memory_format=torch.channels_last) for f in feedback]

        terms = self.feedback_terms(feedback) if feedback is not None and self.batched_feedback else None

        def run(block: DenseBlock, h, level: int, with_input: bool = False, joined: bool = True):
            if terms is not None:
                return block(h, streams, None, [terms.get(layer) for layer in block.layers], with_input, joined)
            return block(h, streams, None if feedback is None else feedback[level], None, with_input, joined)

        skips = []
        for i, block in enumerate(self.down):
            # cat(h, new maps), pooled; the pooling makes the concatenation
            skip, h = self.pool_keeping_input(*run(block, h, i, with_input=True, joined=False))
            skips.append(skip)
        bottom = h
        if not up:
            return {"down": skips, "bottom": bottom}
        for j, (block, transition) in enumerate(zip(self.up, self.transitions)):
            level = self.num_blocks - j
            # joined with the skip by the next block's first layer, or below for the decoders
            h = (transition(run(block, h, level), streams), skips[level - 1])
        return {"down": skips, "bottom": bottom, "out": torch.cat(h, 1) if isinstance(h, tuple) else h}


def is_channels_last(x: torch.Tensor) -> bool:
    # a (B, 1, H, W) or (B, C, 1, 1) map is contiguous in both layouts: count it as NCHW
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def use_channels_last(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Store ``model``'s 4-d weights channels-last (NHWC; ``enabled=False``: back to NCHW), in
    place; returns ``model``. Only the memory layout changes, not the numbers.

    Why: oneDNN runs an NCHW convolution on a CPU by reordering its input, output and
    gradients to a blocked layout and back on every call, which for the narrow layers of the
    default run (6 to 100 channels) costs about as much as the convolution itself;
    channels-last tensors go straight to its NHWC kernels (1 core, 24x24x64x64 -> 6 maps,
    forward + backward: 19.8 -> 9.8 ms). A convolution with a channels-last weight gives a
    channels-last output, so the layout runs from the stem through the whole network (the
    images need no conversion) and the backbone converts the feedback maps once per pass.
    """
    fmt = torch.channels_last if enabled else torch.contiguous_format
    return model.to(memory_format=fmt)


def use_speed_paths(model: nn.Module, enabled: bool = True) -> nn.Module:
    """The CPU training speed paths, in place (``enabled=False`` turns them off again, back to
    the reference eager path); returns ``model``: channels-last weights
    (:func:`use_channels_last`), the fused batch norm + ReLU kernel in every
    :class:`SourceBatchNorm2d` (``fused``, :mod:`facemtl.models.cpu_kernels`) and, in every
    :class:`FCDenseNet` inside ``model``, one feedback convolution per level
    (``batched_feedback``) and the pooling kernel (``fused_pool``). Same losses and gradients up to float rounding
    (tests/test_speed_paths.py, tests/test_cpu_kernels.py). Call it after building the model and moving
    it to its device, before making the optimiser; checkpoints are unaffected (weights are
    saved contiguous and load into either layout). ``benchmarks/train_step_time.py --compare``
    times it against the eager path (measured on iFAN; other models only get the layout).
    """
    use_channels_last(model, enabled)
    for module in model.modules():
        if isinstance(module, FCDenseNet):
            module.batched_feedback = enabled
            module.fused_pool = enabled
        if isinstance(module, SourceBatchNorm2d):
            module.fused = enabled
    return model
