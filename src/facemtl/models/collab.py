"""Deep Collaboration Network (Trottier et al., section 3): task-specific CNNs joined by
collaborative blocks after each block of the underlying network (Fig. 2)."""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from facemtl.models.backbones import search_width
from facemtl.models.heads import DEFAULT_TASKS, HEAD_HIDDEN, ColumnNetwork, count_on_meta
from facemtl.models.registry import register_model


def _conv_bn(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    # BN follows every conv, so the convs need no bias
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class CollaborativeBlock(nn.Module):
    """Eq. (1): ``z = H([x_1..x_T])``, ``y_t = ReLU(x_t + F_t([x_t, z]))``.

    H (Eq. 2): Conv1x1 (T*C -> T*C/4), BN, ReLU, Conv3x3, BN, ReLU -- the central aggregation.
    F_t (Eq. 3): Conv1x1 ([x_t, z] -> C), BN, ReLU, Conv3x3, BN -- merges z back into task t.

    Works on any CNN's feature maps: input and output are lists of T (B, C, H, W) tensors.
    ``dropped_tasks``: task indices whose features are zeroed before they enter H (the
    ablation of section 4.4); their own skip connection and F_t still see them.
    """

    def __init__(self, num_tasks: int, channels: int, reduction: int = 4):
        super().__init__()
        self.num_tasks = num_tasks
        central = max(num_tasks * channels // reduction, 1)
        self.central = nn.Sequential(
            *_conv_bn(num_tasks * channels, central, 1), nn.ReLU(inplace=True),
            *_conv_bn(central, central, 3), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.task_specific = nn.ModuleList(
            nn.Sequential(*_conv_bn(channels + central, channels, 1), nn.ReLU(inplace=True), *_conv_bn(channels, channels, 3))
            for _ in range(num_tasks)
        )
        self.dropped_tasks: set[int] = set()

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(xs) != self.num_tasks:
            raise ValueError(f"collaborative block built for {self.num_tasks} tasks got {len(xs)} feature maps")
        inputs = [torch.zeros_like(x) if t in self.dropped_tasks else x for t, x in enumerate(xs)]
        z = self.central(torch.cat(inputs, 1))
        return [F.relu(x + f(torch.cat([x, z], 1))) for x, f in zip(xs, self.task_specific)]


class DCNet(ColumnNetwork):
    """One column per task, a :class:`CollaborativeBlock` after every block of the columns.

    ``width``: channels of the columns' first block (default: the standard network).
    ``pretrained``: ImageNet safetensors file loaded into every column (see
    :mod:`facemtl.models.backbones` for converting torchvision files).
    """

    def __init__(self, tasks, backbone: str = "resnet18", input_size: int = 128, pretrained=None,
                 width: int | None = None, head_hidden: int = HEAD_HIDDEN):  # fmt: skip
        super().__init__(tasks, backbone, input_size, width, head_hidden, pretrained)

    def make_connector(self, num_tasks: int, channels: int) -> nn.Module:
        return CollaborativeBlock(num_tasks, channels)

    @property
    def collaborative_blocks(self) -> list[CollaborativeBlock]:
        return list(self.connectors)

    @property
    def ablation_blocks(self) -> int:
        return len(self.connectors)

    @contextlib.contextmanager
    def ablate(self, block: int, task: int) -> Iterator[None]:
        """Section 4.4: task ``task``'s features are zeroed at the input of block ``block``'s H."""
        connector = self.connectors[block]
        connector.dropped_tasks = {task}
        try:
            yield
        finally:
            connector.dropped_tasks = set()


@register_model("dcnet")
def dcnet(tasks=DEFAULT_TASKS, backbone="resnet18", input_size=128,
          pretrained=None, width=None, head_hidden=HEAD_HIDDEN) -> DCNet:  # fmt: skip
    return DCNet(tasks, backbone, input_size, pretrained, width, head_hidden)


@functools.lru_cache(maxsize=32)
def width_matching_dcnet(network, tasks, backbone: str, input_size: int, head_hidden: int,
                         dcnet_width: int | None = None) -> int:
    """First-block width at which ``network`` (a widened baseline class: hard sharing or
    Cross-Stitch) has the parameter count of DCNet with the same tasks and columns of
    ``dcnet_width`` (default: the backbone's standard width), within 5% (section 4.2)."""
    target = count_on_meta(lambda: DCNet(tasks, backbone, input_size, width=dcnet_width, head_hidden=head_hidden))
    return search_width(
        lambda w: count_on_meta(lambda: network(tasks, backbone, input_size, width=w, head_hidden=head_hidden)),
        target,
        start=dcnet_width or 64,
    )
