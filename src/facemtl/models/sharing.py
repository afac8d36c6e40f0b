"""The non-collaborative baselines of Deep Collaboration (section 4.2), with the same heads
as DCNet: single-task networks (RN-S / AN-S), hard parameter sharing (RN / AN: one shared
trunk, one head per task) and hard sharing widened to DCNet's parameter count (RNx / ANx)."""

from __future__ import annotations

import torch

from facemtl.errors import FacemtlError
from facemtl.models.backbones import build_backbone, load_pretrained, read_weights
from facemtl.models.heads import (
    DEFAULT_TASKS,
    HEAD_HIDDEN,
    BinnedFaceModel,
    ComparisonConfig,
    check_config,
    make_heads,
)
from facemtl.models.registry import register_model


class HardSharingNet(BinnedFaceModel):
    """One shared trunk (the underlying network, ``width`` first-block channels) feeding every
    task's head. With a single task it is the single-task baseline."""

    def __init__(self, tasks, backbone: str = "resnet18", input_size: int = 128, pretrained=None,
                 width: int | None = None, head_hidden: int = HEAD_HIDDEN):  # fmt: skip
        super().__init__()
        self.tasks = check_config(tasks, backbone, input_size)
        self.input_size = input_size
        self.trunk = build_backbone(backbone, width)
        self.heads = make_heads(self.tasks, self.trunk.block_channels[-1], input_size, head_hidden)
        self.config = ComparisonConfig(tuple(t.name for t in self.tasks), backbone, input_size,
                                       self.trunk.block_channels[0], head_hidden)
        if pretrained:
            load_pretrained(self.trunk, read_weights(pretrained), str(pretrained))

    def forward(self, images: torch.Tensor, source=None, iterations=None, tasks=None) -> list[dict[str, torch.Tensor]]:
        self.check_iterations(iterations)
        features = self.trunk.forward_features(images)
        return [{t.name: self.heads[t.name](features) for t in self.tasks}]


@register_model("single")
def single(tasks=("landmarks",), backbone="resnet18", input_size=128, pretrained=None, width=None,
           head_hidden=HEAD_HIDDEN) -> HardSharingNet:  # fmt: skip
    if isinstance(tasks, str):
        tasks = (tasks,)
    if len(tasks) != 1:
        raise FacemtlError(f"model 'single' trains exactly one task, got {len(tasks)}: {list(tasks)}")
    return HardSharingNet(tasks, backbone, input_size, pretrained, width, head_hidden)


@register_model("hps")
def hps(tasks=DEFAULT_TASKS, backbone="resnet18", input_size=128, pretrained=None, width=None,
        head_hidden=HEAD_HIDDEN) -> HardSharingNet:  # fmt: skip
    return HardSharingNet(tasks, backbone, input_size, pretrained, width, head_hidden)


@register_model("hps-wide")
def hps_wide(tasks=DEFAULT_TASKS, backbone="resnet18", input_size=128, pretrained=None, width=None,
             head_hidden=HEAD_HIDDEN, match_width=None) -> HardSharingNet:  # fmt: skip
    """RNx / ANx: the shared trunk widened until the parameter count is within 5% of DCNet's
    with the same tasks (``width`` found by :func:`search_width` unless given; ``match_width``:
    the width of the DCNet columns to match, default the backbone's standard)."""
    if width is None:
        from facemtl.models.collab import width_matching_dcnet

        width = width_matching_dcnet(HardSharingNet, check_config(tasks, backbone, input_size), backbone, input_size, head_hidden,
                                     match_width)
    return HardSharingNet(tasks, backbone, input_size, pretrained, width, head_hidden)
