"""The unit of every training plan: one gradient :class:`Update`, and the learning rate it uses.

A plan (:class:`facemtl.engine.hybrid.HybridPlan`, :class:`facemtl.engine.joint.JointPlan`) maps
a global step ``k`` to its update by arithmetic alone, so a resumed run needs only ``k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Update:
    """One gradient update of the schedule."""

    step: int  # global index, 0-based
    stage: int  # 1 pre-training, 2 fine-tuning (Algorithm 1); 0 joint training
    task: int  # index of the task whose loss drives it (-1: all, joint)
    epoch: int  # epoch within the stage (stage 1: within the task)
    iteration: int  # I of Delta^t_I (-1: the model's own, joint)
    stream: int  # batch stream id
    draw: int  # batch number within the stream
    lr: float
    epoch_end: bool
    round: int  # stage-2 round (stage 1: batch index within the task's stage)


def lr_at(i: int, n: int, lr: float, lr_end: float, decay: str, warmup: int = 0) -> float:
    """Learning rate of update/round ``i`` of ``n``: a linear warm-up over the first ``warmup``
    (``lr / (warmup + 1)`` up to ``lr``), then ``lr`` decaying to ``lr_end`` at the last."""
    warmup = min(warmup, max(n - 1, 0))
    if i < warmup:
        return lr * (i + 1) / (warmup + 1)
    i, n = i - warmup, n - warmup
    if decay == "constant" or n <= 1:
        return lr
    f = i / (n - 1)
    if decay == "linear":
        return lr + (lr_end - lr) * f
    if decay == "cosine":
        return lr_end + (lr - lr_end) * 0.5 * (1.0 + math.cos(math.pi * f))
    return lr * (lr_end / lr) ** f
