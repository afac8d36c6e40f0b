"""Model files: ``model.safetensors`` + ``model.json``, self-describing, beside the models.

``model.json`` holds everything needed to rebuild and use the model without the trainer: the
``create_model`` name and kwargs, the tasks (every field, so users' own tasks come back as they
were defined), the source whose batch norm predicts each task, the input size, the image
normalisation and the crop that inference should reproduce. Only safetensors and JSON are read;
every file is written atomically (:mod:`facemtl.files`). The training state (optimiser, step,
RNG) stays with the engine (:mod:`facemtl.engine.checkpoint`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from facemtl import __version__
from facemtl.errors import FacemtlError
from facemtl.files import atomic_write_bytes, atomic_write_json, read_json, read_tensors, tensors_bytes
from facemtl.tasks import Task

FORMAT = "facemtl-checkpoint"
FORMAT_VERSION = 1
MODEL_WEIGHTS, MODEL_JSON = "model.safetensors", "model.json"


def task_to_json(task: Task) -> dict:
    """Every field of a task (tuples as lists), so any task, standard or the user's, round-trips."""
    return {f.name: list(v) if isinstance(v, tuple) else v
            for f in dataclasses.fields(task) for v in [getattr(task, f.name)]}


def task_from_json(d: dict) -> Task:
    known = {f.name for f in dataclasses.fields(Task)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise FacemtlError(f"task entry {d.get('name')!r} has unknown field(s) {unknown}")
    return Task(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def model_info(model, info: dict) -> dict:
    """The full ``model.json`` content: what the model knows about itself (name and builder
    config come from ``info["model"]``, tasks and task sources from the model) plus ``info``'s
    other keys (sources, input size, crop, training)."""
    from facemtl.data.sample import IMAGE_MEAN, IMAGE_STD

    if "model" not in info or "name" not in info["model"]:
        raise FacemtlError("save_checkpoint: info needs 'model': {'name': ..., 'config': {...}}")
    config = dict(info["model"].get("config", {}))
    if "tasks" in config:  # the tasks themselves are stored whole under "tasks"
        config["tasks"] = [t.name if isinstance(t, Task) else t for t in config["tasks"]]
    out = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "facemtl_version": __version__,
        "model": {"name": info["model"]["name"], "config": config},
        "tasks": [task_to_json(t) for t in model.tasks],
        "task_sources": list(model.task_sources),
        "sources": list(info.get("sources", [])),
        "input_size": int(info.get("input_size", getattr(model, "input_size", 128))),
        "normalization": {"mean": list(IMAGE_MEAN), "std": list(IMAGE_STD)},
    }
    for key, value in info.items():  # extra keys (e.g. "training", "crop") are kept
        out.setdefault(key, value)
    return out


def save_checkpoint(run_dir, model, info: dict) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``run_dir`` (atomically, weights first)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = model_info(model, info)
    atomic_write_bytes(run_dir / MODEL_WEIGHTS, tensors_bytes(model.state_dict()))
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
    info = read_json(json_path, "checkpoint description")
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
    state = read_tensors(weights_path, "checkpoint weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise FacemtlError(f"{weights_path}: weights do not match model {info['model']['name']!r}: {detail[:400]}") from None
    model.eval()
    return model, info
