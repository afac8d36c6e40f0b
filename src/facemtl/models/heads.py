"""Task heads and the classification training framework of Deep Collaboration (section 4.1),
shared by every model of that paper's comparison set (DCNet, single-task, hard sharing and
Cross-Stitch networks), so that the baselines differ from DCNet only in how columns connect.

Every task is treated as a classification problem:

* ``category`` tasks (gender, smile, glasses, pose): plain logits ``(B, N)``.
* ``points`` tasks (landmarks): x and y of each point are each classified over 1-pixel-wide
  bins of the input width / height. Raw output: logits ``(B, K, 2, input_size)``. The loss
  is cross entropy against the bin holding the real-valued target, ``floor(x * size)``
  clamped to ``[0, size - 1]``; :func:`decode_bins` maps the winning bin back to the
  normalised coordinate of its centre, ``(b + 0.5) / size``, so the binning error is part of
  the score when predictions are compared with the original real-valued coordinates.
* Head pose: MTFL-style sources (and :mod:`facemtl.data.synth`) already give 5 pose bins.
  For sources that give angles (AFLW: roll, pitch, yaw), the paper divides each angle into
  30-degree-wide bins; :func:`angle_to_bin` does that, one category task per angle.

A head is: global average pooling, FC, BN, ReLU, FC (the task-specific FC block of Fig. 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from facemtl.errors import FacemtlError
from facemtl.models.base import FaceModel, ParameterGroups
from facemtl.tasks import Task

DEFAULT_TASKS = ("landmarks", "gender", "smile", "glasses", "pose")  # MTFL: main task first
HEAD_HIDDEN = 256  # width of the head's hidden FC layer (the paper does not give it)


def head_outputs(task: Task, input_size: int) -> int:
    """Number of logits a head needs for ``task``."""
    if task.kind == "points":
        return task.num_outputs * 2 * input_size
    if task.kind == "category":
        return task.num_outputs
    raise FacemtlError(
        f"task {task.name!r} has kind {task.kind!r}; Deep Collaboration models classify "
        "'points' and 'category' tasks only"
    )


class TaskHead(nn.Module):
    """Global average pooling, FC, BN, ReLU, FC; points logits reshaped to (B, K, 2, size)."""

    def __init__(self, task: Task, in_channels: int, input_size: int, hidden: int = HEAD_HIDDEN):
        super().__init__()
        self.task = task
        self.input_size = input_size
        self.fc1 = nn.Linear(in_channels, hidden, bias=False)  # BN follows: a bias would be redundant
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, head_outputs(task, input_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(features, 1).flatten(1)
        x = self.fc2(F.relu(self.bn(self.fc1(x))))
        if self.task.kind == "points":
            return x.view(x.shape[0], self.task.num_outputs, 2, self.input_size)
        return x


def make_heads(tasks: tuple[Task, ...], in_channels: int, input_size: int, hidden: int = HEAD_HIDDEN) -> nn.ModuleDict:
    return nn.ModuleDict({t.name: TaskHead(t, in_channels, input_size, hidden) for t in tasks})


def coordinate_bins(target: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised coordinates in [0, 1] -> 1-pixel bin indices ``floor(x * size)`` in [0, size - 1]."""
    return torch.floor(target * size).long().clamp_(0, size - 1)


def bin_loss(logits: torch.Tensor, target: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Cross entropy of (B, K, 2, S) bin logits against real-valued (B, K, 2) targets in [0, 1].

    Averaged over points and both coordinates; ``visible`` (B, K) masks missing points.
    """
    size = logits.shape[-1]
    bins = coordinate_bins(target.to(logits.dtype), size)
    ce = F.cross_entropy(logits.reshape(-1, size), bins.reshape(-1), reduction="none").view(bins.shape)
    if visible is None:
        return ce.mean()
    w = visible.to(ce.dtype).unsqueeze(-1).expand_as(ce)
    return (ce * w).sum() / w.sum().clamp_min(1.0)


def decode_bins(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, 2, S) bin logits -> (B, K, 2) normalised coordinates at the winning bin's centre."""
    size = logits.shape[-1]
    return (logits.argmax(-1).to(torch.float32) + 0.5) / size


def angle_to_bin(angle_degrees: float, width: float = 30.0, low: float = -90.0, high: float = 90.0) -> int:
    """Section 4.3: a head-pose angle -> the index of its ``width``-degree bin over [low, high).

    Angles outside the range fall into the first / last bin. These are Deep Collaboration's
    angle classes (one category task per angle, as many classes as bins), not the 5-class
    ``pose`` task, whose classes come from :func:`facemtl.tasks.pose_from_yaw`.
    """
    count = math.ceil((high - low) / width)
    return min(max(int(math.floor((angle_degrees - low) / width)), 0), count - 1)


@dataclass(frozen=True)
class ComparisonConfig:
    """Resolved ``create_model`` kwargs of a comparison-set model, for self-describing
    checkpoints: ``width`` is the width actually built (no re-search when reloading) and
    ``pretrained`` is dropped (the ImageNet weights are already in the checkpoint)."""

    tasks: tuple[str, ...]
    backbone: str
    input_size: int
    width: int
    head_hidden: int
    pretrained: None = None


class BinnedFaceModel(FaceModel):
    """FaceModel whose points tasks are classified over pixel bins (section 4.1).

    Subclasses set ``self.tasks``, ``self.input_size`` and ``self.heads``.
    """

    input_size: int

    def task_loss(self, name: str, output: torch.Tensor, target: torch.Tensor, visible=None) -> torch.Tensor:
        if self.task(name).kind == "points":
            return bin_loss(output, target, visible)
        return super().task_loss(name, output, target, visible)

    def decode(self, name: str, output: torch.Tensor) -> torch.Tensor:
        if self.task(name).kind == "points":
            return decode_bins(output)
        return output

    def parameter_groups(self) -> ParameterGroups:
        """theta_t = task t's head (and its column, in column networks); no interaction parameters."""
        columns = getattr(self, "columns", None)
        decoders = [nn.ModuleList([self.heads[t.name]] + ([columns[i]] if columns is not None else []))
                    for i, t in enumerate(self.tasks)]
        return ParameterGroups.split(self, decoders)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_config(tasks, backbone: str, input_size: int) -> tuple[Task, ...]:
    """Validate the arguments every Deep Collaboration comparison model shares."""
    from facemtl.models.backbones import BACKBONES
    from facemtl.tasks import get_tasks

    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = get_tasks(tasks)
    if backbone not in BACKBONES:
        raise FacemtlError(f"unknown backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")
    if not isinstance(input_size, int) or input_size < 64:
        raise FacemtlError(f"input_size must be an integer >= 64, got {input_size!r}")
    for t in tasks:
        head_outputs(t, input_size)  # rejects segmentation tasks with a clear message
    return tasks


class ColumnNetwork(BinnedFaceModel):
    """T task-specific columns (same underlying network) with a connector after each block.

    ``connectors[b]`` maps the list of T block-``b`` feature maps to T new ones: a
    collaborative block (DCNet) or a cross-stitch unit. Column t feeds task t's head.
    """

    def __init__(self, tasks, backbone: str, input_size: int, width: int | None, head_hidden: int, pretrained=None):
        super().__init__()
        from facemtl.models.backbones import build_backbone, load_pretrained, read_weights

        self.tasks = check_config(tasks, backbone, input_size)
        self.input_size = input_size
        self.columns = nn.ModuleList(build_backbone(backbone, width) for _ in self.tasks)
        self.connectors = nn.ModuleList(
            self.make_connector(len(self.tasks), c) for c in self.columns[0].block_channels
        )
        self.heads = make_heads(self.tasks, self.columns[0].block_channels[-1], input_size, head_hidden)
        self.config = ComparisonConfig(tuple(t.name for t in self.tasks), backbone, input_size,
                                       self.columns[0].block_channels[0], head_hidden)
        if pretrained:
            weights = read_weights(pretrained)
            for column in self.columns:
                load_pretrained(column, weights, str(pretrained))

    def make_connector(self, num_tasks: int, channels: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, source=None, iterations=None, tasks=None) -> list[dict[str, torch.Tensor]]:
        self.check_iterations(iterations)
        xs = [images] * len(self.tasks)
        for b, connector in enumerate(self.connectors):
            xs = connector([column.forward_block(b, x) for column, x in zip(self.columns, xs)])
        return [{t.name: self.heads[t.name](x) for t, x in zip(self.tasks, xs)}]


def count_on_meta(build) -> int:
    """Parameter count of ``build()`` without allocating memory (built on the meta device)."""
    with torch.device("meta"):
        return num_parameters(build())
