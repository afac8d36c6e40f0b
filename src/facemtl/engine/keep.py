"""Keeping the initial model's predictions while fine-tuning (``data.N.keep``): Learning without
Forgetting (Li & Hoiem, ECCV 2016) inside iFAN's Algorithm 1.

A run that starts from a checkpoint (``model.init``) on a source that labels some tasks moves the
shared backbone towards them, and the tasks that source does not label can lose what they knew
about images like its own: the bundled model fine-tuned on real 5-point faces read 2-7 fewer of
35 posed expressions (docs/evidence.md). ``data.N.keep: {task: weight}`` adds to every update on
source N ``weight * d(model's prediction, initial model's prediction)`` for each kept task, on
the update's own images; ``d`` is the task kind's ``keep_loss`` (:mod:`facemtl.kinds`: KL of
softened class probabilities, squared point distance). Both models read the images in eval mode
(running statistics) at the last refinement iteration, through one batch-norm stream: that of
the source that trains the task. Inference differs in one point: there every task's prediction
fed back comes from its own source's stream; here all come from that one stream (one stream's
cost instead of one per source). The initial model is frozen. The term's gradient reaches
only what the update trains (Eq. 6's set for the source's task: shared backbone, interaction
parameters, that task's decoder), so the kept task's decoder stays as its own data trains it.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from facemtl.engine.precision import autocast, to_float32
from facemtl.kinds import kind_of


class KeptPredictions:
    """The keep term of a run. ``initial``: the checkpoint's model (frozen here);
    ``keep[s]``: source s's ``{task: weight}``; ``task_sources``: the run's task -> source map."""

    def __init__(self, initial, keep: list[Mapping[str, float]], task_sources, precision: str = "fp32"):
        self.initial = initial.eval().requires_grad_(False)
        self.keep = keep
        self.precision = precision
        self._tasks = {t.name: t for t in initial.tasks}
        names = list(self._tasks)
        self._initial_sources = {n: initial.task_sources[i] for i, n in enumerate(names)}
        self._sources = {n: task_sources[i] for i, n in enumerate(names)}
        self._reference: tuple | None = None  # (images, {task: initial output}): a batch serves ITER updates
        self.last = math.nan  # the term's value in the last update with one (log column keep_loss)

    def _read(self, model, images: torch.Tensor, task: str, source: int) -> torch.Tensor:
        with autocast(images.device, self.precision):
            out = model(images, source=source, iterations=model.refinement_iterations, tasks=(task,))
        return to_float32(out[-1][task])

    def loss(self, model, images: torch.Tensor, source: int) -> torch.Tensor | None:
        """The term for an update on ``source`` with ``images`` (None: that source keeps nothing).
        ``model`` is left in training mode."""
        self.last = math.nan
        kept = {t: w for t, w in self.keep[source].items() if w > 0}
        if not kept:
            return None
        if self._reference is None or self._reference[0] is not images:
            with torch.no_grad():
                self._reference = (images, {t: self._read(self.initial, images, t, self._initial_sources[t])
                                            for t in kept})
        model.eval()
        try:
            total = 0.0
            for t, w in kept.items():
                task = self._tasks[t]
                out = self._read(model, images, t, self._sources[t])
                total = total + w * kind_of(task).keep_loss(task, out, self._reference[1][t])
        finally:
            model.train()
        self.last = float(total.detach())
        return total
