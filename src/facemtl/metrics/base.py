"""The small protocol every facemtl meter keeps, and the one place its shared logic lives.

A meter accumulates COUNTS and SUMS (never a mean of per-batch means), so that the result
over a whole set does not depend on how it was split into batches or processes:

* ``update(...)`` adds one batch, ``compute()`` turns the totals into a result dict,
  ``reset()`` empties it;
* ``state()`` returns the totals as a dict of CPU tensors, ``merge(state)`` adds another
  meter's totals (or another meter) into this one;
* ``all_reduce(group=None)`` sums the totals over the processes of ``torch.distributed``
  (a no-op when it is not initialised). Call it ONCE, just before ``compute()``: every
  process then holds the totals of all of them (a second call would count twice).

State entries are summed, except those named in ``_concat``: 1-D per-item lists (e.g. the
per-image NME kept for the CED curve) that are concatenated instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from facemtl.errors import FacemtlError


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """Accept torch tensors and numpy arrays (or nested lists); metrics never need gradients."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (np.ndarray, list, tuple, int, float)):
        return torch.as_tensor(np.asarray(x))
    raise FacemtlError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")


class Meter:
    _concat: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.reset()

    def _empty_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def compute(self) -> dict:
        raise NotImplementedError

    def reset(self) -> None:
        self._state = self._empty_state()

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._state.items()}

    def _add(self, key: str, value: torch.Tensor) -> None:
        """Add one batch's contribution (any device) to the CPU totals."""
        value = value.detach().to("cpu", self._state[key].dtype)
        if key in self._concat:
            self._state[key] = torch.cat([self._state[key], value.reshape(-1)])
        else:
            self._state[key] += value

    def merge(self, other: "Meter | dict[str, torch.Tensor]") -> "Meter":
        state = other.state() if isinstance(other, Meter) else other
        if set(state) != set(self._state):
            raise FacemtlError(
                f"{type(self).__name__}.merge: state keys {sorted(state)} do not match {sorted(self._state)}"
            )
        for key, value in state.items():
            value = torch.as_tensor(value)
            if key not in self._concat and value.shape != self._state[key].shape:
                raise FacemtlError(
                    f"{type(self).__name__}.merge: {key!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(self._state[key].shape)} (meters built with different sizes?)"
                )
            self._add(key, value)
        return self

    def all_reduce(self, group=None) -> "Meter":
        if not (dist.is_available() and dist.is_initialized()):
            return self
        # NCCL only moves CUDA tensors; gloo (CPU training, tests) takes CPU tensors.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
        for key in sorted(self._state):  # same order on every process
            t = self._state[key].to(device)
            if key in self._concat:
                t = _all_gather_1d(t, group)
            else:
                dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
            self._state[key] = t.cpu()
        return self


def _all_gather_1d(t: torch.Tensor, group) -> torch.Tensor:
    """Concatenate 1-D tensors of different lengths from all processes (rank order)."""
    world = dist.get_world_size(group)
    size = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=t.dtype, device=t.device)
    padded[: t.numel()] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def require_data(meter: Meter, total: torch.Tensor) -> None:
    if int(total) == 0:
        raise FacemtlError(f"{type(meter).__name__}.compute: nothing accumulated yet (call update() with data first)")
