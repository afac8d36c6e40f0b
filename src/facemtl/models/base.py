"""The contract every facemtl model keeps: what the engine, evaluation, prediction, export and
the experiments may ask of a model. Nothing outside ``facemtl.models`` reaches past it (no
``model.decoders``, ``model.config`` or signature inspection), and nothing switches on model names.

* ``model.tasks``: tuple of :class:`facemtl.tasks.Task` the model predicts.
* ``model(images, source=None, iterations=None)`` -> list of dicts ``task name -> raw output``,
  one dict per refinement step (iFAN: ``iterations + 1``, Iter0 first; single-pass models: one).
  ``source`` is an int or a ``(B,)`` long tensor of source (domain) indices, used by models with
  per-source normalisation and ignored by the others; ``None`` at inference means "each task
  through the source that trained it" (:attr:`task_sources`). ``iterations`` (0..
  :attr:`refinement_iterations`, None = all) is checked by :meth:`check_iterations`.
  ``tasks`` (names, None = all): the tasks whose outputs the caller reads at the LAST step; a
  model may then skip work no requested output depends on (iFAN: the other tasks' decoders,
  their batch-norm streams and, without a segmentation task, the backbone's up path), so the
  last dict may hold only those tasks. Earlier steps always hold every task.
* ``model.task_loss(name, output, target, visible=None)``: the training loss of one raw output.
* ``model.decode(name, output)``: raw output -> the task's standard form (points ``(B, K, 2)``
  normalised to [0, 1], segmentation logits ``(B, C, H, W)``, category logits ``(B, N)``).
* ``model.parameter_groups()``: Algorithm 1's parameter roles (iFAN section 3.3): shared
  theta_S, each task's decoder theta_t, interaction theta_e. Models that cannot say raise, and
  then train only jointly.
* ``model.ablation_blocks`` / ``model.ablate(block, task)``: the block ablation of Deep
  Collaboration section 4.4 (models without collaborative blocks have none).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

from facemtl.errors import FacemtlError
from facemtl.tasks import Task


@dataclass
class ParameterGroups:
    """Algorithm 1's roles: ``shared`` theta_S, ``decoders[t]`` theta_t (model.tasks order),
    ``interaction`` theta_e (re-encoders and task integrator)."""

    shared: list[nn.Parameter]
    decoders: list[list[nn.Parameter]]
    interaction: list[nn.Parameter]

    @classmethod
    def split(cls, model: nn.Module, decoders: list[nn.Module], interaction: nn.Module | None = None) -> "ParameterGroups":
        """Groups from the decoder modules (one per task) and the interaction module; the rest is shared."""
        per_task = [list(d.parameters()) for d in decoders]
        inter = list(interaction.parameters()) if interaction is not None else []
        taken = {id(p) for ps in per_task for p in ps} | {id(p) for p in inter}
        return cls([p for p in model.parameters() if id(p) not in taken], per_task, inter)

    def trainable(self, stage: int, task: int) -> set[int]:
        """ids of the parameters Delta^t_I may change: stage 1 (I = 0) theta_S and theta_t;
        stage 2 also every theta_e (Algorithm 1 lines 5 and 13)."""
        ids = {id(p) for p in self.shared} | {id(p) for p in self.decoders[task]}
        if stage == 2:
            ids |= {id(p) for p in self.interaction}
        return ids


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

    def builder_config(self) -> dict:
        """JSON-ready ``create_model`` kwargs that rebuild this model (``model.json``'s
        ``model.config``): the fields of ``self.config`` when the model keeps a dataclass there."""
        import dataclasses
        import json

        cfg = getattr(self, "config", None)
        if not dataclasses.is_dataclass(cfg):
            raise FacemtlError(f"{type(self).__name__} keeps no config dataclass to save; override builder_config()")
        out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        out["tasks"] = [t.name for t in self.tasks]  # the tasks themselves are saved whole beside it
        return json.loads(json.dumps(out, default=list))

    # -- refinement and sources -------------------------------------------------------------

    @property
    def refinement_iterations(self) -> int:
        """N of Iter0..IterN: the largest ``iterations`` ``forward`` accepts (0: single pass)."""
        return 0

    @property
    def task_sources(self) -> tuple[int, ...]:
        """The source (batch-norm stream) that predicts each task at inference (``source=None``)."""
        return (0,) * len(self.tasks)

    def check_iterations(self, iterations) -> int:
        """``iterations`` (None = all) as an int in 0..refinement_iterations, or one clear error."""
        n = self.refinement_iterations
        if iterations is None:
            return n
        if isinstance(iterations, bool) or not isinstance(iterations, int) or not 0 <= iterations <= n:
            what = f"an integer in 0..{n}" if n else "0 or None (this model has no refinement iterations)"
            raise FacemtlError(f"{type(self).__name__}: iterations must be {what}, got {iterations!r}")
        return iterations

    # -- Algorithm 1 ------------------------------------------------------------------------

    def parameter_groups(self) -> ParameterGroups:
        raise FacemtlError(
            f"hybrid training needs a model that names each task's decoder ({type(self).__name__} does not); "
            "train it with schedule.mode: joint"
        )

    # -- ablation (Deep Collaboration section 4.4) ------------------------------------------

    @property
    def ablation_blocks(self) -> int:
        """Blocks whose cross-task input can be ablated (0: none)."""
        return 0

    @contextlib.contextmanager
    def ablate(self, block: int, task: int) -> Iterator[None]:
        """Within the block: task ``task``'s features are withheld from block ``block``'s
        aggregation. Models without collaborative blocks raise."""
        raise FacemtlError(f"block ablation needs a model with collaborative blocks (dcnet), got {type(self).__name__}")
        yield  # pragma: no cover
