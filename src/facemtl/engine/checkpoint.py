"""Checkpoints: self-describing model files and exact-resume training state.

A run directory holds

* ``model.safetensors`` + ``model.json``: the weights and everything needed to rebuild and
  use the model (``create_model`` name and kwargs, tasks with class names and flip
  permutations, the source of each task, input size, normalisation, landmark order);
* ``train_state.safetensors`` + ``train_state.json``: optimiser state tensors, the step,
  stage and sampler positions, and the torch RNG state, so ``--resume`` continues with the
  same next losses as an uninterrupted run.

Only safetensors and JSON are read: nothing is ever unpickled. Every file is written to a
temporary name, fsynced and moved into place with ``os.replace``, so a crash leaves either
the old or the new file, never half of one. ``train_state.safetensors`` carries its own copy
of the weights (and buffers), so the state resumed from is always self-consistent even if a
crash fell between writing the model files and the state files.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from facemtl import __version__
from facemtl.errors import FacemtlError
from facemtl.tasks import Task

FORMAT = "facemtl-checkpoint"
FORMAT_VERSION = 1
STATE_FORMAT = "facemtl-train-state"
MODEL_WEIGHTS, MODEL_JSON = "model.safetensors", "model.json"
STATE_WEIGHTS, STATE_JSON = "train_state.safetensors", "train_state.json"


# ---------------------------------------------------------------------------------------
# atomic files


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def _tensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    # safetensors refuses shared storage; independent contiguous CPU copies are always fine.
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FacemtlError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FacemtlError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FacemtlError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes())
    except FileNotFoundError:
        raise FacemtlError(f"{what} not found: {path}") from None
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FacemtlError(f"{path}: not a readable safetensors file ({exc})") from None


# ---------------------------------------------------------------------------------------
# model checkpoints


def task_to_json(task: Task) -> dict:
    return {
        "name": task.name,
        "kind": task.kind,
        "num_outputs": task.num_outputs,
        "class_names": list(task.class_names),
        "flip_permutation": list(task.flip_permutation),
    }


def task_from_json(d: dict) -> Task:
    return Task(d["name"], d["kind"], int(d["num_outputs"]), tuple(d.get("class_names", ())),
                tuple(int(i) for i in d.get("flip_permutation", ())))


def model_info(model, info: dict) -> dict:
    """The full ``model.json`` content: ``info`` completed with what the model itself knows."""
    from facemtl.data.sample import IMAGE_MEAN, IMAGE_STD

    if "model" not in info or "name" not in info["model"]:
        raise FacemtlError("save_checkpoint: info needs 'model': {'name': ..., 'config': {...}}")
    tasks = [task_to_json(t) for t in model.tasks]
    landmark_order: list[str] = []
    for t in model.tasks:
        if t.kind == "points":
            landmark_order = list(t.class_names)
            break
    config = dict(info["model"].get("config", {}))
    if "tasks" in config:
        config["tasks"] = [t.name if isinstance(t, Task) else t for t in config["tasks"]]
    out = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "facemtl_version": __version__,
        "model": {"name": info["model"]["name"], "config": config},
        "tasks": tasks,
        "task_sources": list(info.get("task_sources", [0] * len(tasks))),
        "sources": list(info.get("sources", [])),
        "input_size": int(info.get("input_size", getattr(model, "input_size", 128))),
        "normalization": {"mean": list(IMAGE_MEAN), "std": list(IMAGE_STD)},
        "landmark_order": landmark_order,
    }
    for key, value in info.items():  # extra keys (e.g. "training") are kept
        out.setdefault(key, value)
    return out


def save_checkpoint(run_dir, model, info: dict) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``run_dir`` (atomically, weights first)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = model_info(model, info)
    atomic_write_bytes(run_dir / MODEL_WEIGHTS, _tensors_bytes(model.state_dict()))
    atomic_write_json(run_dir / MODEL_JSON, meta)


def _resolve(path) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        return p / MODEL_JSON, p / MODEL_WEIGHTS
    if p.name.endswith(".safetensors"):
        return p.with_suffix(".json"), p
    if p.suffix == ".json":
        return p, p.with_suffix(".safetensors")
    if not p.exists():
        raise FacemtlError(f"checkpoint not found: {p} (expected a run folder, model.safetensors or model.json)")
    raise FacemtlError(f"not a checkpoint: {p} (expected a run folder, model.safetensors or model.json)")


def read_model_info(path) -> dict:
    """Read and check ``model.json`` (run dir, .json or .safetensors path)."""
    json_path, _ = _resolve(path)
    info = _read_json(json_path, "checkpoint description")
    if info.get("format") != FORMAT:
        raise FacemtlError(f"{json_path}: not a facemtl checkpoint (format {info.get('format')!r}, expected {FORMAT!r})")
    if info.get("format_version") != FORMAT_VERSION:
        raise FacemtlError(
            f"{json_path}: checkpoint format_version {info.get('format_version')!r} is not supported "
            f"(this facemtl reads version {FORMAT_VERSION})"
        )
    model = info.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not isinstance(model.get("config", {}), dict):
        raise FacemtlError(f"{json_path}: 'model' must be {{'name': str, 'config': {{...}}}}")
    if not isinstance(info.get("tasks"), list) or not info["tasks"]:
        raise FacemtlError(f"{json_path}: 'tasks' must be a non-empty list")
    return info


def build_model(info: dict):
    """``create_model`` from a checkpoint description (tasks rebuilt from their JSON)."""
    from facemtl.models.registry import create_model

    config = dict(info["model"].get("config", {}))
    try:
        tasks = {t["name"]: task_from_json(t) for t in info["tasks"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise FacemtlError(f"checkpoint 'tasks' entry is malformed ({exc})") from None
    if "tasks" in config:
        config["tasks"] = tuple(tasks.get(n, n) if isinstance(n, str) else n for n in config["tasks"])
    try:
        return create_model(info["model"]["name"], **config)
    except TypeError as exc:
        raise FacemtlError(f"checkpoint model config does not fit model {info['model']['name']!r}: {exc}") from None


def load_model(path):
    """Rebuild a model from a run dir, ``model.safetensors`` or ``model.json``.

    Returns ``(model, info)`` with the model in eval mode and ``info`` the JSON description.
    Raises :class:`FacemtlError` for a missing path, a malformed or incompatible description,
    or weights that do not match the model.
    """
    json_path, weights_path = _resolve(path)
    if not json_path.exists() and not weights_path.exists():
        raise FacemtlError(f"checkpoint not found: {path}")
    info = read_model_info(json_path)
    model = build_model(info)
    state = _read_tensors(weights_path, "checkpoint weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise FacemtlError(f"{weights_path}: weights do not match model {info['model']['name']!r}: {detail[:400]}") from None
    model.eval()
    return model, info


# ---------------------------------------------------------------------------------------
# training state


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
    atomic_write_bytes(run_dir / STATE_WEIGHTS, _tensors_bytes(tensors))
    atomic_write_json(run_dir / STATE_JSON, {"format": STATE_FORMAT, "format_version": FORMAT_VERSION, **meta})


def load_train_state(run_dir) -> tuple[dict[str, torch.Tensor], dict]:
    run_dir = Path(run_dir)
    if not (run_dir / STATE_JSON).exists():
        raise FacemtlError(f"nothing to resume in {run_dir}: no {STATE_JSON} (train without --resume to start)")
    meta = _read_json(run_dir / STATE_JSON, "training state")
    if meta.get("format") != STATE_FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise FacemtlError(f"{run_dir / STATE_JSON}: not a facemtl training state of version {FORMAT_VERSION}")
    tensors = _read_tensors(run_dir / STATE_WEIGHTS, "training state tensors")
    return tensors, meta
