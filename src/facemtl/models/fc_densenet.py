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
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from facemtl.models.norm import SourceBatchNorm2d, Streams

POOLS = ("avg", "max")


class BNReLUConv(nn.Module):
    """Pre-activation unit: per-source BN, ReLU, conv (no bias: the next BN has its own)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_sources: int):
        super().__init__()
        self.norm = SourceBatchNorm2d(in_channels, num_sources)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor, streams: Streams) -> torch.Tensor:
        return self.conv(F.relu(self.norm(x, streams)))


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 whose convolution also reads ``feedback_channels`` integrator maps.

    ``conv(cat(h, feedback))`` is computed as ``conv(h) + feedback_conv(feedback)`` (the same
    linear map with its weight split in two), and the feedback joins AFTER the batch norm:
    re-encoded maps are already non-negative features, and an all-zero (neutral) feedback then
    contributes exactly nothing, in training and eval alike (normalising zeros would give a
    bias that differs between batch and running statistics). ``feedback=None`` is neutral and
    skips ``feedback_conv``.
    """

    def __init__(self, in_channels: int, growth_rate: int, num_sources: int, feedback_channels: int = 0):
        super().__init__()
        self.norm = SourceBatchNorm2d(in_channels, num_sources)
        self.conv = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False)
        self.feedback_conv = (
            nn.Conv2d(feedback_channels, growth_rate, 3, padding=1, bias=False) if feedback_channels else None
        )

    def forward(self, x: torch.Tensor, streams: Streams, feedback: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(F.relu(self.norm(x, streams)))
        if feedback is not None:
            out = out + self.feedback_conv(feedback)
        return out


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns only the new maps (``num_layers * growth_rate``).
    Every layer also reads the block's feedback maps (if any)."""

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int, num_sources: int, feedback_channels: int = 0):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, num_sources, feedback_channels)
            for i in range(num_layers)
        )
        self.out_channels = growth_rate * num_layers

    def forward(self, x: torch.Tensor, streams: Streams, feedback: torch.Tensor | None = None) -> torch.Tensor:
        new = []
        for layer in self.layers:
            new.append(layer(torch.cat([x, *new], 1), streams, feedback))
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

    def forward(
        self, x: torch.Tensor, streams: Streams = 0, feedback: Sequence[torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``{"down": [skip at level 0..n-1], "bottom": level n, "out": level 0 end of the up path}``.

        ``feedback``: one map per level, or None for neutral (all-zero) feedback.
        """
        if feedback is not None and sum(self.feedback_channels) == 0:
            raise ValueError("this backbone was built without feedback inputs")

        def fb(level: int) -> torch.Tensor | None:
            return None if feedback is None else feedback[level]

        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = torch.cat([h, block(h, streams, fb(i))], 1)
            skips.append(h)
            h = self.pool(h, 2)
        bottom = h
        for j, (block, up) in enumerate(zip(self.up, self.transitions)):
            level = self.num_blocks - j
            h = up(block(h, streams, fb(level)), streams)
            h = torch.cat([h, skips[level - 1]], 1)
        return {"down": skips, "bottom": bottom, "out": h}
