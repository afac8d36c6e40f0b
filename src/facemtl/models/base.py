"""The contract every facemtl model keeps, so the engine, evaluation, prediction and
export never switch on model names.

* ``model.tasks``: tuple of :class:`facemtl.tasks.Task` the model predicts.
* ``model(images, source=None)`` -> list of dicts ``task name -> raw output``, one
  dict per refinement step (iFAN: ``iterations + 1``, Iter0 first; single-pass models:
  one). ``source`` is an int or a ``(B,)`` long tensor of source (domain) indices,
  used by models with per-source normalisation and ignored by the others.
* ``model.task_loss(name, output, target, visible=None)``: the training loss of one
  raw output. Default: the task's own loss.
* ``model.decode(name, output)``: raw output -> the task's standard output form
  (points ``(B, K, 2)`` normalised to [0, 1], segmentation logits ``(B, C, H, W)``,
  category logits ``(B, N)``). Default: identity. Models whose heads differ (Deep
  Collaboration classifies coordinates over pixel bins) override both.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from facemtl.tasks import Task


class FaceModel(nn.Module):
    tasks: tuple[Task, ...]

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    def task_loss(self, name: str, output: torch.Tensor, target: torch.Tensor, visible=None) -> torch.Tensor:
        return self.task(name).loss(output, target, visible)

    def decode(self, name: str, output: torch.Tensor) -> torch.Tensor:
        return output
