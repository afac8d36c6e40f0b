"""Training state for exact resume: ``train_state.safetensors`` + ``train_state.json``.

Optimiser state tensors, the step, stage and the torch RNG state, so ``--resume`` continues
with the same next losses as an uninterrupted run. ``train_state.safetensors`` carries its own
copy of the weights (and buffers), so the state resumed from is self-consistent even if a crash
fell between writing the model files (:mod:`facemtl.models.checkpoint`) and the state files.

The pair is one unit: ``train_state.json`` records the SHA-256 of the tensors file written
with it, and loading refuses a pair from two saves (a kill between the two renames, a file
copied over from elsewhere). Format version 1 (before the hash) is still read, unchecked.
"""

from __future__ import annotations

from pathlib import Path

import torch

from facemtl.errors import FacemtlError
from facemtl.files import atomic_write_files, json_bytes, read_json, read_tensors, sha256_hex, tensors_bytes

FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # 1: no tensors_sha256
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
    try:
        for name, value in tensors.items():
            if name.startswith(head):
                pid, key = name[len(head):].split(".", 1)
                state.setdefault(int(pid), {})[key] = value
        for pid, st in meta.get("scalars", {}).items():
            state.setdefault(int(pid), {}).update(st)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError) as exc:
        raise FacemtlError(f"training state does not fit this model/optimiser ({exc})") from None
    # State is stored contiguous; a fused optimiser step walks memory as flat and would pair a
    # channels-last weight's elements with the wrong moments: give each state tensor its
    # parameter's layout (the values are unchanged).
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for key, value in st.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    st[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def train_state_files(tensors: dict[str, torch.Tensor], meta: dict) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of a training state, tensors first, the JSON (with their SHA-256)
    last: written with :func:`facemtl.files.atomic_write_files`, the JSON marks the state complete."""
    data = tensors_bytes(tensors)
    head = {"format": STATE_FORMAT, "format_version": FORMAT_VERSION, "tensors_sha256": sha256_hex(data)}
    return [(STATE_WEIGHTS, data), (STATE_JSON, json_bytes({**head, **meta}))]


def save_train_state(run_dir, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``train_state.safetensors`` + ``train_state.json`` (``meta`` must include ``step``)."""
    run_dir = Path(run_dir)
    atomic_write_files([(run_dir / name, data) for name, data in train_state_files(tensors, meta)])


def load_train_state(run_dir) -> tuple[dict[str, torch.Tensor], dict]:
    """The saved tensors and JSON, checked: a pair from one save, a step that is a count of
    updates (within ``total_steps``), an optimiser section."""
    run_dir = Path(run_dir)
    path = run_dir / STATE_JSON
    if not path.exists():
        raise FacemtlError(f"nothing to resume in {run_dir}: no {STATE_JSON} (train without --resume to start)")
    meta = read_json(path, "training state")
    if meta.get("format") != STATE_FORMAT or meta.get("format_version") not in READ_VERSIONS:
        raise FacemtlError(f"{path}: not a facemtl training state of version {FORMAT_VERSION}")

    def need(key: str, ok, expected: str):
        if key not in meta:
            raise FacemtlError(f"{path}: missing key '{key}' ({expected})")
        if not ok(meta[key]):
            raise FacemtlError(f"{path}: '{key}' must be {expected}, got {meta[key]!r}")

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    need("step", count, "the number of updates done, an integer >= 0")
    need("total_steps", count, "the number of updates the run plans, an integer >= 0")
    if meta["step"] > meta["total_steps"]:
        raise FacemtlError(f"{path}: 'step' {meta['step']} is beyond the run's 'total_steps' {meta['total_steps']}")
    need("optimizer", lambda v: isinstance(v, dict) and isinstance(v.get("param_groups"), list),
         "the optimiser's state, a mapping with 'param_groups'")
    if meta["format_version"] >= 2:
        need("tensors_sha256", lambda v: isinstance(v, str) and len(v) == 64, "the SHA-256 of "
             f"{STATE_WEIGHTS}, 64 hex digits")
    tensors = read_tensors(run_dir / STATE_WEIGHTS, "training state tensors", sha256=meta.get("tensors_sha256"),
                           recorded_in=path)
    return tensors, meta
