"""Training state for exact resume: ``train_state.safetensors`` + ``train_state.json``.

Optimiser state tensors, the step, stage and the torch RNG state, so ``--resume`` continues
with the same next losses as an uninterrupted run. ``train_state.safetensors`` carries its own
copy of the weights (and buffers), so the state resumed from is self-consistent even if a crash
fell between writing the model files (:mod:`facemtl.models.checkpoint`) and the state files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from facemtl.errors import FacemtlError
from facemtl.files import atomic_write_bytes, atomic_write_json, read_json, read_tensors, tensors_bytes

FORMAT_VERSION = 1
STATE_FORMAT = "facemtl-train-state"
STATE_WEIGHTS, STATE_JSON = "train_state.safetensors", "train_state.json"


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimiser state dict -> (tensors named ``prefix.<param>.<key>``, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    head = prefix + "."
    for name, value in tensors.items():
        if name.startswith(head):
            pid, key = name[len(head):].split(".", 1)
            state.setdefault(int(pid), {})[key] = value
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as exc:
        raise FacemtlError(f"training state does not fit this model/optimiser ({exc})") from None


def save_train_state(run_dir, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``train_state.safetensors`` + ``train_state.json`` (``meta`` must include ``step``)."""
    run_dir = Path(run_dir)
    atomic_write_bytes(run_dir / STATE_WEIGHTS, tensors_bytes(tensors))
    atomic_write_json(run_dir / STATE_JSON, {"format": STATE_FORMAT, "format_version": FORMAT_VERSION, **meta})


def load_train_state(run_dir) -> tuple[dict[str, torch.Tensor], dict]:
    run_dir = Path(run_dir)
    if not (run_dir / STATE_JSON).exists():
        raise FacemtlError(f"nothing to resume in {run_dir}: no {STATE_JSON} (train without --resume to start)")
    meta = read_json(run_dir / STATE_JSON, "training state")
    if meta.get("format") != STATE_FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise FacemtlError(f"{run_dir / STATE_JSON}: not a facemtl training state of version {FORMAT_VERSION}")
    tensors = read_tensors(run_dir / STATE_WEIGHTS, "training state tensors")
    return tensors, meta
