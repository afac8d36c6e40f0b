"""mixup for category labels (Zhang et al., ICLR 2018, "mixup: Beyond empirical risk
minimization"): a training batch becomes ``lam * x + (1 - lam) * x[perm]`` with one
``lam ~ Beta(alpha, alpha)`` per batch, and each category loss ``lam * l(y) + (1 - lam) *
l(y[perm])``. Only sources whose tasks are all category tasks may use it (``data.N.mixup``,
checked with the config): blended images have no single landmark set or parsing map.
"""

from __future__ import annotations

import numpy as np
import torch

MIXUP_KEY = "mixup"  # batch entry (perm, lam) of a mixed batch


def mix_batch(batch: dict, alpha: float, generator: torch.Generator) -> dict:
    """Blend ``batch["image"]`` with a permutation of itself in place; records ``(perm, lam)``
    under :data:`MIXUP_KEY` for :func:`task_loss`. Draws come from ``generator`` only."""
    images = batch["image"]
    perm = torch.randperm(images.shape[0], generator=generator)
    lam = float(np.random.default_rng(int(torch.randint(2**31, (), generator=generator))).beta(alpha, alpha))
    batch["image"] = lam * images + (1 - lam) * images[perm.to(images.device)]
    batch[MIXUP_KEY] = (perm, lam)
    return batch


def task_loss(model, name: str, output: torch.Tensor, batch: dict, visible=None) -> torch.Tensor:
    """``model.task_loss`` against ``batch[name]``; for a mixed batch the blend of the losses
    against both images' labels, weighted as the images were."""
    loss = model.task_loss(name, output, batch[name], visible)
    if MIXUP_KEY in batch:
        perm, lam = batch[MIXUP_KEY]
        target = batch[name]
        loss = lam * loss + (1 - lam) * model.task_loss(name, output, target[perm.to(target.device)], visible)
    return loss
