"""Cross-Stitch networks (Misra et al., CVPR 2016), the XS / XSx baselines of Deep
Collaboration (section 4.2): task columns whose feature maps are linearly mixed after
every block of the underlying network (the same places DCNet puts collaborative blocks)."""

from __future__ import annotations

import torch
import torch.nn as nn

from facemtl.models.heads import DEFAULT_TASKS, HEAD_HIDDEN, ColumnNetwork, check_config
from facemtl.models.registry import register_model


class CrossStitchUnit(nn.Module):
    """``y_t = sum_s alpha[t, s] x_s`` with a learned (T, T) mixing matrix.

    Initialised near identity: ``self_weight`` (0.9) on the diagonal, the rest (0.1) split
    evenly over the other tasks, so each column starts mostly as itself.
    """

    def __init__(self, num_tasks: int, self_weight: float = 0.9):
        super().__init__()
        if num_tasks == 1:
            self_weight = 1.0
        other = (1.0 - self_weight) / max(num_tasks - 1, 1)
        alpha = torch.full((num_tasks, num_tasks), other)
        alpha.fill_diagonal_(self_weight)
        self.alpha = nn.Parameter(alpha)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        mixed = torch.einsum("ts,sbchw->tbchw", self.alpha, torch.stack(xs))
        return list(mixed.unbind(0))


class CrossStitchNet(ColumnNetwork):
    """One column per task with a :class:`CrossStitchUnit` after each block (XS)."""

    def __init__(self, tasks, backbone: str = "resnet18", input_size: int = 128, pretrained=None,
                 width: int | None = None, head_hidden: int = HEAD_HIDDEN):  # fmt: skip
        super().__init__(tasks, backbone, input_size, width, head_hidden, pretrained)

    def make_connector(self, num_tasks: int, channels: int) -> nn.Module:
        return CrossStitchUnit(num_tasks)


@register_model("cross-stitch")
def cross_stitch(tasks=DEFAULT_TASKS, backbone="resnet18", input_size=128, pretrained=None, width=None,
                 head_hidden=HEAD_HIDDEN) -> CrossStitchNet:  # fmt: skip
    return CrossStitchNet(tasks, backbone, input_size, pretrained, width, head_hidden)


@register_model("cross-stitch-wide")
def cross_stitch_wide(tasks=DEFAULT_TASKS, backbone="resnet18", input_size=128, pretrained=None, width=None,
                      head_hidden=HEAD_HIDDEN, match_width=None) -> CrossStitchNet:  # fmt: skip
    """XSx: columns widened until the parameter count is within 5% of DCNet's with the same
    tasks (``width`` found by :func:`search_width` unless given; ``match_width``: the width of the
    DCNet columns to match, default the backbone's standard)."""
    if width is None:
        from facemtl.models.collab import width_matching_dcnet

        width = width_matching_dcnet(CrossStitchNet, check_config(tasks, backbone, input_size), backbone, input_size, head_hidden,
                                     match_width)
    return CrossStitchNet(tasks, backbone, input_size, pretrained, width, head_hidden)
