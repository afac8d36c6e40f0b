"""Tasks: named predictions with a kind, a loss and a flip permutation.

A task's kind decides everything model- and metric-side: models build their heads
from ``task.kind``, never from ``task.name``.

Kinds and target conventions (the ``Sample`` dict a model is trained on):

* ``points``: target ``float (K, 2)`` of (x, y) NORMALISED to [0, 1] by the sample
  image's width and height; model output ``(B, K, 2)`` in the same units.
  Loss: Euclidean (mean squared point distance), iFAN section 3.2.
* ``segmentation``: target ``long (H, W)`` class ids (255 = ignore); model output
  logits ``(B, C, H, W)``. Loss: per-pixel cross entropy.
* ``category``: target ``long ()``; model output logits ``(B, N)``. Loss: cross entropy.

``flip_permutation[i]`` is the index that point/class ``i`` becomes after a horizontal
flip (left eye <-> right eye, left brow class <-> right brow class, left pose <-> right).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from facemtl.errors import FacemtlError

Kind = Literal["points", "segmentation", "category"]
KINDS: tuple[str, ...] = ("points", "segmentation", "category")
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    num_outputs: int  # K points, C segmentation classes or N categories
    class_names: tuple[str, ...] = ()  # point names for points, class names otherwise
    flip_permutation: tuple[int, ...] = ()  # empty = identity

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FacemtlError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.class_names and len(self.class_names) != self.num_outputs:
            raise FacemtlError(f"task {self.name!r}: {len(self.class_names)} names for {self.num_outputs} outputs")
        if self.flip_permutation and sorted(self.flip_permutation) != list(range(self.num_outputs)):
            raise FacemtlError(f"task {self.name!r}: flip_permutation is not a permutation of 0..{self.num_outputs - 1}")

    @property
    def flip(self) -> tuple[int, ...]:
        return self.flip_permutation or tuple(range(self.num_outputs))

    def loss(self, output: torch.Tensor, target: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss of a batch; ``visible`` (B, K) masks missing points."""
        if self.kind == "points":
            sq = (output - target.to(output.dtype)).pow(2).sum(-1)  # (B, K)
            if visible is None:
                return sq.mean()
            w = visible.to(sq.dtype)
            return (sq * w).sum() / w.sum().clamp_min(1.0)
        if self.kind == "segmentation":
            return F.cross_entropy(output, target.long(), ignore_index=IGNORE_INDEX)
        return F.cross_entropy(output, target.long())

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """Raw output -> prediction: points (B, K, 2), class-id mask (B, H, W) or class ids (B,)."""
        if self.kind == "points":
            return output
        return output.argmax(1)


STANDARD_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "landmarks",
            "points",
            5,
            ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right"),
            (1, 0, 2, 4, 3),
        ),
        Task(
            "parsing",
            "segmentation",
            11,
            (
                "background",
                "skin",
                "left_brow",
                "right_brow",
                "left_eye",
                "right_eye",
                "nose",
                "upper_lip",
                "inner_mouth",
                "lower_lip",
                "hair",
            ),
            (0, 1, 3, 2, 5, 4, 6, 7, 8, 9, 10),
        ),
        # FER2013 names and order.
        Task("emotion", "category", 7, ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")),
        # MTFL attributes, 0-based (MTFL's files are 1-based).
        Task("gender", "category", 2, ("male", "female")),
        Task("smile", "category", 2, ("smiling", "not_smiling")),
        Task("glasses", "category", 2, ("glasses", "no_glasses")),
        Task("pose", "category", 5, ("left_profile", "left", "frontal", "right", "right_profile"), (4, 3, 2, 1, 0)),
    )
}


def get_task(name: str | Task) -> Task:
    if isinstance(name, Task):
        return name
    try:
        return STANDARD_TASKS[name]
    except KeyError:
        raise FacemtlError(f"unknown task {name!r}; standard tasks: {', '.join(STANDARD_TASKS)}") from None


def get_tasks(names) -> tuple[Task, ...]:
    tasks = tuple(get_task(n) for n in names)
    if not tasks:
        raise FacemtlError("at least one task is needed")
    seen = [t.name for t in tasks]
    if len(set(seen)) != len(seen):
        raise FacemtlError(f"task listed twice in {seen}")
    return tasks
