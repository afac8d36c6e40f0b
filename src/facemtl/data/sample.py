"""Raw samples -> model-ready samples, and batching.

A *raw sample* follows the loader contract of ``docs/datasets.md``: ``image`` H x W x 3 uint8 RGB,
``landmarks`` float (K, 2) 0-based pixel (x, y), ``parsing`` H x W uint8 class ids,
category labels as 0-based ints, optional ``visibility`` (K,) bool, ``meta`` dict.

A *sample* (what a model trains on) is ``{"image": float (3, H, W) normalised,
"<task>": target, ..., "source": int, "meta": {...}}`` with targets as described in
:mod:`facemtl.tasks` (points normalised to [0, 1]). Labels a source does not provide
are missing keys, never fake values.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from facemtl.kinds import kind_of
from facemtl.tasks import Task

# Images are scaled to [-1, 1]; checkpoints record these so inference matches training.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> float (3, H, W) normalised with IMAGE_MEAN/IMAGE_STD."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    return t.sub_(mean).div_(std)


def to_sample(raw: dict, tasks: Iterable[Task], source: int = 0) -> dict:
    """Keep the labels of ``tasks`` that ``raw`` has and convert them to tensors."""
    image = raw["image"]
    h, w = image.shape[:2]
    sample = {"image": image_to_tensor(image), "source": int(source), "meta": dict(raw.get("meta", {}))}
    for task in tasks:
        if raw.get(task.name) is not None:
            kind_of(task).add_target(sample, task, raw, w, h)
    return sample


def collate(samples: Sequence[dict]) -> dict:
    """Stack a list of samples into a batch; keys must agree across the list."""
    keys = samples[0].keys()
    batch: dict = {}
    for key in keys:
        if key == "meta":
            batch["meta"] = [s["meta"] for s in samples]
        elif key == "source":
            batch["source"] = torch.tensor([s["source"] for s in samples], dtype=torch.long)
        else:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


def to_device(batch: dict, device) -> dict:
    """The batch with its tensors on ``device`` (``meta`` and other non-tensors as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
