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
import math
import numbers
from pathlib import Path

from facemtl import __version__
from facemtl.constants import MAX_CROP_MARGIN
from facemtl.errors import FacemtlError
from facemtl.files import read_json, read_tensors, tensors_bytes
from facemtl.tasks import Task

FORMAT = "facemtl-checkpoint"
FORMAT_VERSION = 1
MODEL_WEIGHTS, MODEL_JSON = "model.safetensors", "model.json"
# An ensemble: a folder with ENSEMBLE_JSON ({"format": ENSEMBLE_FORMAT, "members": [sub-folder names],
# optional "provenance"}) and one checkpoint folder per member; the predictor averages their outputs.
ENSEMBLE_JSON, ENSEMBLE_FORMAT = "ensemble.json", "facemtl-ensemble"
# What every member of an ensemble must share: the predictor crops, normalises and reads them alike.
ENSEMBLE_SHARED = ("tasks", "input_size", "normalization", "crop")


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


def save_checkpoint(run_dir, model, info: dict, also=()) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``run_dir`` (atomically, weights first).

    ``model.json`` records the SHA-256 of the weights (``weights_sha256``), so a pair from two
    saves can be told. ``also``: more ``(file name, bytes)`` written in the same set after the
    model files (the trainer's state): nothing is replaced until every file is written, so a
    failed write (a full disk) leaves the previous checkpoint whole."""
    from facemtl.files import atomic_write_files, json_bytes, sha256_hex

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = model_info(model, info)
    weights = tensors_bytes(model.state_dict())
    meta["weights_sha256"] = sha256_hex(weights)
    atomic_write_files([(run_dir / MODEL_WEIGHTS, weights), (run_dir / MODEL_JSON, json_bytes(meta)),
                        *((run_dir / name, data) for name, data in also)])


def bundled_model() -> Path:
    """The folder of the model shipped inside the package (``facemtl/assets/default_model``:
    trained on synthetic faces only, its provenance in its model.json), used when no
    checkpoint is given."""
    from importlib import resources

    folder = Path(str(resources.files("facemtl") / "assets" / "default_model"))
    if not (folder / MODEL_JSON).is_file() and not (folder / ENSEMBLE_JSON).is_file():
        raise FacemtlError(f"this installation has no bundled model ({folder} is missing); pass a checkpoint")
    return folder


def ensemble_members(path) -> list[Path]:
    """The checkpoints ``path`` names: each of a list or tuple, the members an ensemble folder's
    ``ensemble.json`` lists (sub-folders of it), else ``[path]``."""
    if isinstance(path, (list, tuple)):
        if not path:
            raise FacemtlError("an ensemble needs at least one checkpoint; got an empty list")
        return [q for p in path for q in ensemble_members(p)]
    folder = Path(path)
    manifest = folder / ENSEMBLE_JSON
    if not (folder.is_dir() and manifest.is_file()):
        return [folder]
    info = read_json(manifest, "ensemble description")
    if not isinstance(info, dict) or info.get("format") != ENSEMBLE_FORMAT:
        found = info.get("format") if isinstance(info, dict) else info
        raise FacemtlError(f"{manifest}: not a facemtl ensemble (format {_show(found)}, expected {ENSEMBLE_FORMAT!r})")
    members = info.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members):
        raise FacemtlError(f"{manifest}: 'members' must be a non-empty list of sub-folder names, got {_show(members)}")
    paths = []
    for name in members:
        member = (folder / name).resolve()
        if folder.resolve() not in member.parents:
            raise FacemtlError(f"{manifest}: member {name!r} is not a sub-folder of the ensemble")
        if not (member / MODEL_JSON).is_file():
            raise FacemtlError(f"{manifest}: member {name!r} has no {MODEL_JSON} ({member})")
        paths.append(member)
    return paths


def load_models(path) -> tuple[list, dict]:
    """``([model, ...], info)``: :func:`load_model` of every checkpoint :func:`ensemble_members`
    finds in ``path`` (one for a plain checkpoint), ``info`` the first one's. Members must agree
    on :data:`ENSEMBLE_SHARED` (the predictor crops, normalises and reads them alike)."""
    members = ensemble_members(path)
    if len(members) > 1:  # descriptions compared before any weights are read: a mismatch fails at once
        first = read_model_info(members[0])
        for member in members[1:]:
            info = read_model_info(member)
            for key in ENSEMBLE_SHARED:
                if info.get(key) != first.get(key):
                    raise FacemtlError(f"ensemble members differ in {key!r}: {member} has {_show(info.get(key))}, "
                                       f"{members[0]} {_show(first.get(key))}; members must share "
                                       f"{', '.join(ENSEMBLE_SHARED)}")
    loaded = [load_model(m) for m in members]
    return [model for model, _ in loaded], loaded[0][1]


def _resolve(path) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir() and (p / ENSEMBLE_JSON).is_file():
        raise FacemtlError(f"{p} is an ensemble ({ENSEMBLE_JSON}); this command takes one model: give one of its "
                           f"members ({', '.join(str(m) for m in ensemble_members(p))})")
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
    for i, task in enumerate(info["tasks"]):
        if not isinstance(task, dict) or not isinstance(task.get("name"), str) or not task["name"]:
            raise FacemtlError(f"{json_path}: 'tasks.{i}' is {_show(task)}; expected an object with a 'name' string")
    _check_fields(info, json_path)
    return info


# Bounds of the fields inference relies on; a description outside them is refused on reading.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 1024  # face crop side in pixels (the papers use 64 to 224)
# (MAX_CROP_MARGIN is in facemtl.constants: the CLI parser shows it)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_crop_margin(value, where: str) -> float:
    """A crop margin: a finite number from 0 to :data:`MAX_CROP_MARGIN`, else one line naming ``where``."""
    if not _is_number(value) or not 0 <= value <= MAX_CROP_MARGIN:
        raise FacemtlError(f"{where} is {_show(value)}; expected a number from 0 to {MAX_CROP_MARGIN:g} "
                           "(a fraction of the face box added on each side)")
    return float(value)


def check_crop_detail(value, where: str, input_size: int) -> int:
    """A crop detail (:class:`facemtl.inference.predictor.Predictor`'s ``detail``): 0 (the crop
    as cut) or a side in pixels from :data:`MIN_INPUT_SIZE` to ``input_size``, else one line
    naming ``where``."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or not (value == 0 or MIN_INPUT_SIZE <= value <= input_size)):
        raise FacemtlError(f"{where} is {_show(value)}; expected 0 (the crop as cut) or a side in pixels from "
                           f"{MIN_INPUT_SIZE} to the model's input size {input_size} (each crop shrunk to it and "
                           "enlarged back before the network)")
    return int(value)


def _check_fields(info: dict, json_path: Path) -> None:
    """Every optional field that prediction, evaluation and export read, with file, key and what is expected."""
    n_tasks = len(info["tasks"])
    if "input_size" in info:
        size = info["input_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
            raise FacemtlError(f"{json_path}: 'input_size' is {_show(size)}; expected an integer number of pixels "
                               f"from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}")
    if "crop" in info:
        crop = info["crop"]
        if not isinstance(crop, dict):
            raise FacemtlError(f"{json_path}: 'crop' is {_show(crop)}; expected an object {{'margin': number}}")
        if "margin" in crop:
            check_crop_margin(crop["margin"], f"{json_path}: 'crop.margin'")
        if "detail" in crop:
            check_crop_detail(crop["detail"], f"{json_path}: 'crop.detail'", info.get("input_size", 128))  # checked above
    if "normalization" in info:
        norm = info["normalization"]
        if not isinstance(norm, dict):
            raise FacemtlError(f"{json_path}: 'normalization' is {_show(norm)}; expected an object "
                               "{'mean': [r, g, b], 'std': [r, g, b]}")
        for key in ("mean", "std"):
            if key not in norm:
                continue
            values = norm[key]
            if not isinstance(values, list) or len(values) != 3 or not all(_is_number(v) for v in values):
                raise FacemtlError(f"{json_path}: 'normalization.{key}' is {_show(values)}; expected 3 finite numbers "
                                   "(red, green, blue)")
            if key == "std" and not all(v > 0 for v in values):
                raise FacemtlError(f"{json_path}: 'normalization.std' is {_show(values)}; expected 3 numbers above 0")
    if "task_sources" in info:
        ts = info["task_sources"]
        if (not isinstance(ts, list) or len(ts) != n_tasks
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in ts)):
            raise FacemtlError(f"{json_path}: 'task_sources' is {_show(ts)}; expected {n_tasks} source indices "
                               "(integers >= 0), one per task")
    if "weights_sha256" in info:
        digest = info["weights_sha256"]
        if not isinstance(digest, str) or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise FacemtlError(f"{json_path}: 'weights_sha256' is {_show(digest)}; expected 64 lowercase hex digits")
    if "sources" in info:
        sources = info["sources"]
        if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
            raise FacemtlError(f"{json_path}: 'sources' is {_show(sources)}; expected a list of objects")


def build_model(info: dict, where="checkpoint"):
    """``create_model`` from a checkpoint description (tasks rebuilt from their JSON); ``where``
    (the model.json path) prefixes the errors."""
    from facemtl.models.registry import create_model

    config = dict(info["model"].get("config", {}))
    try:
        tasks = {t["name"]: task_from_json(t) for t in info["tasks"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise FacemtlError(f"{where}: 'tasks' entry is malformed ({exc})") from None
    if "tasks" in config:
        config["tasks"] = tuple(tasks.get(n, n) if isinstance(n, str) else n for n in config["tasks"])
    try:
        return create_model(info["model"]["name"], **config)
    except FacemtlError as exc:  # the builder's own check: say which file holds the value
        raise FacemtlError(f"{where}: 'model': {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a width of "abc" or -4 reaching torch
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FacemtlError(f"{where}: 'model.config' does not fit model {info['model']['name']!r}: "
                           f"{detail[:300]}") from None


def _weights_shapes(weights_path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the safetensors header, without reading the data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights_path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except FileNotFoundError:
        raise FacemtlError(f"checkpoint weights not found: {weights_path}") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise FacemtlError(f"{weights_path}: not a readable safetensors file ({exc})") from None


def _check_weights_fit(info: dict, json_path: Path, weights_path: Path) -> None:
    """Build the described model on the meta device (no memory) and compare its tensors with the
    file's header, so a model.json asking for a far larger network than its weights is refused
    before anything is allocated."""
    import torch

    shapes = _weights_shapes(weights_path)
    try:
        with torch.device("meta"):
            skeleton = build_model(info, json_path)
    except FacemtlError:
        raise
    except Exception:  # a builder that cannot run on the meta device: load_state_dict still checks
        return
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    other = [k for k in expected if k in shapes and expected[k] != shapes[k]]
    if not (missing or unexpected or other):
        return
    n_model = sum(math.prod(s) for s in expected.values())
    n_file = sum(math.prod(s) for s in shapes.values())
    parts = [f"{json_path.name} describes {n_model:,} values in {len(expected)} tensors, "
             f"the file holds {n_file:,} in {len(shapes)}"]
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
    if other:
        k = other[0]
        parts.append(f"{len(other)} of another shape (e.g. {k!r}: file {list(shapes[k])}, model {list(expected[k])})")
    raise FacemtlError(f"{weights_path}: weights do not match model {info['model']['name']!r}: " + "; ".join(parts))


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
    _check_weights_fit(info, json_path, weights_path)  # before building for real: nothing allocated yet
    model = build_model(info, json_path)
    # A model.json written by save_checkpoint records its weights' hash: a pair from two saves is refused.
    state = read_tensors(weights_path, "checkpoint weights", sha256=info.get("weights_sha256"), recorded_in=json_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise FacemtlError(f"{weights_path}: weights do not match model {info['model']['name']!r}: {detail[:400]}") from None
    model.eval()
    return model, info



def load_initial(path, name: str, kwargs: dict, input_size: int) -> tuple:
    """Read the checkpoint a run starts from (``model.init``: run folder, model file or
    ``"bundled"``) and the builder kwargs of the run's model: the checkpoint's, since a
    fine-tuned model keeps its architecture. ``kwargs`` (the config's ``model.kwargs``) and
    ``input_size`` may only repeat them. Returns ``(trained model, info, path, kwargs)``."""
    where = "model.init"
    path = bundled_model() if str(path) == "bundled" else Path(path)
    if len(ensemble_members(path)) > 1:
        raise FacemtlError(f"{where}: {path} is an ensemble; start from one of its members")
    try:
        trained, info = load_model(path)
    except FacemtlError as exc:
        raise FacemtlError(f"{where}: {exc}") from None
    if info["model"]["name"] != name:
        raise FacemtlError(f"{where}: {path} is model {info['model']['name']!r}, the config's model.name {name!r}")
    built = {k: v for k, v in info["model"]["config"].items() if k not in ("tasks", "num_sources", "task_sources")}
    clash = sorted(k for k, v in kwargs.items() if k in built and built[k] != v)
    if clash:
        shown = ", ".join(f"{k}={built[k]!r} (config: {kwargs[k]!r})" for k in clash[:6])
        raise FacemtlError(f"{where}: {path} was built with {shown}; a run started from a checkpoint keeps its "
                           "model: leave these out of model.kwargs (a config without a model section has the "
                           "default run's; a YAML 'model: {init: PATH}' has none)")
    if info["input_size"] != input_size:
        raise FacemtlError(f"{where}: {path} reads {info['input_size']}-px faces; set input_size: {info['input_size']} "
                           f"(--set input_size={info['input_size']}), the config has {input_size}")
    return trained, info, path, {**kwargs, **built}


def initialise_from(model, trained, info: dict, path, source_tasks) -> dict:
    """Copy the weights of ``trained`` (from :func:`load_initial`) into a new run's ``model``
    before its first update: fine-tuning, e.g. the bundled synthetic model on labelled photos.

    The tasks must be the checkpoint's, in its order; the sources may differ. iFAN's per-source
    batch norm (section 3.3) is matched by task: the run's source ``s`` starts from the
    checkpoint's source that predicted the first task ``s`` labels (``source_tasks[s]``), so a
    real landmark set in place of the synthetic one keeps the landmarks' normalisation.
    Returns the provenance for ``model.json``: path, weights hash, that source map."""
    import torch

    from facemtl.models.norm import SourceBatchNorm2d

    where = "model.init"
    tasks = [t.name for t in model.tasks]
    trained_tasks = [t["name"] for t in info["tasks"]]
    if trained_tasks != tasks:
        raise FacemtlError(f"{where}: {path} predicts {trained_tasks}, the run trains {tasks}; a run started from a "
                           "checkpoint trains its tasks, in its order (a source can label any of them: synthetic "
                           "faces can fill in the tasks your data lacks)")
    source_of = dict(zip(trained_tasks, info["task_sources"]))
    sources = [source_of[t[0]] for t in source_tasks]
    state, before, now = trained.state_dict(), dict(trained.named_modules()), dict(model.named_modules())
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            prefix = key.rpartition(".")[0]
            old = state.get(key)
            if old is None:
                raise FacemtlError(f"{where}: {path} has no tensor {key!r}")
            if isinstance(now.get(prefix), SourceBatchNorm2d) and before[prefix].num_sources > 1:
                rows = before[prefix].num_sources  # parameters: one row per source; statistics: per set too
                old = old[[k * rows + s for k in range(old.shape[0] // rows) for s in sources]]
            if old.shape != tensor.shape:
                raise FacemtlError(f"{where}: {key} is {list(old.shape)} in {path}, "
                                   f"{list(tensor.shape)} in the run's model")
            tensor.copy_(old)
    return {"checkpoint": str(path), "weights_sha256": info.get("weights_sha256"), "sources": sources}
