"""Deep Collaboration experiments (Trottier et al., section 4) as runnable recipes.

All of them train with the team's engine (:func:`facemtl.engine.loop.train`, JOINT mode:
one source labelling landmarks + the related tasks, loss weight 1 for landmarks and
``related_weight`` (lambda) for the others, section 4.1) and score landmarks with
:mod:`facemtl.metrics` (failure rate: NME > 10% of the inter-ocular distance; NME).

* :func:`compare` -- section 4.2 / Fig. 3: single-task, hard sharing, widened hard sharing,
  Cross-Stitch (and widened) and DCNet with equal training budgets (same schedule).
* :func:`block_ablation` -- section 4.4 / Fig. 6: on a trained DCNet, zero task t's features
  at block b before they enter the central aggregation H; the relative change of the
  landmark failure rate, as a task x block table and a heat map.
* :func:`scarcity` -- section 4.3 / Table 1: train on the first r of a pool of faces and test
  on the rest, for r in ``ratios``, ``repeats`` times per ratio with differently shuffled
  pools (the paper: three times on AFLW), reporting the mean and the spread. The pool is the
  synthetic source's ``n_train + n_test`` faces, or a real source whose reader splits by a
  ratio (AFLW: ``options.ratio`` and ``options.seed``, repeat k using seed + k).
* :func:`task_weights` -- section 4.3 / Fig. 5: ``trials`` runs with related-task weights
  lambda = exp(U(log low, log high)) (one draw per related task), the same weights for two
  models; the improvement is the difference of failure rates in percentage points
  (positive: the second model fails less), as the paper reports it.

An experiment file is YAML with two sections: ``train`` (a :class:`facemtl.config.TrainConfig`,
the shared recipe: model kwargs such as ``backbone``/``pretrained``, the synthetic or MTFL
source, the schedule; or the name of a training config file beside the experiment file) and
``experiment`` (:class:`DCNetExperiment`). Results are written as
JSON + markdown (+ PNG figures) under the output folder; finished runs found there (same
config) are reused, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from facemtl.config import TrainConfig, apply_overrides, config_from_dict, config_path, read_yaml, to_dict
from facemtl.errors import FacemtlError


def _no_grad(fn):
    # torch.no_grad() as a decorator would import torch when `facemtl --help` builds the parser.
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


MAIN_TASK = "landmarks"


@dataclass(frozen=True)
class DCNetExperiment:
    """The ``experiment`` section of a Deep Collaboration experiment file."""

    related_weight: float = 1.0  # lambda of every related task (main task: 1)
    compare_models: tuple[str, ...] = ("single", "hps", "hps-wide", "cross-stitch", "cross-stitch-wide", "dcnet")
    ablation_model: str = "dcnet"
    scarcity_models: tuple[str, ...] = ("single", "hps", "cross-stitch", "dcnet")
    ratios: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    repeats: int = 1  # splits drawn per ratio (the paper, section 4.3: 3 on AFLW); results are their mean
    trial_models: tuple[str, ...] = ("cross-stitch", "dcnet")  # improvement = first - second
    trials: int = 100
    trial_ratio: float = 0.5
    weight_low: float = 1e-4
    weight_high: float = 1.0
    seed: int = 0  # task-weight draws


def _check_experiment(data, path: str, lines: dict[str, int]) -> DCNetExperiment:
    from facemtl.models.registry import list_models

    def where(key: str) -> str:
        line = lines.get(f"experiment.{key}")
        return f"{path}:{line}: " if line else f"{path}: "

    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise FacemtlError(f"{path}: 'experiment' must be a mapping, got {data!r}")
    defaults = DCNetExperiment()
    names = [f.name for f in dataclasses.fields(DCNetExperiment)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise FacemtlError(f"{where(key)}unknown key 'experiment.{key}' (expected one of: {', '.join(names)})")
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            item = type(default[0])
            ok = isinstance(value, list) and value and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) if item is float else isinstance(v, item) for v in value
            )
            if not ok:
                raise FacemtlError(f"{where(key)}bad value for 'experiment.{key}': expected a non-empty list of "
                                   f"{'numbers' if item is float else 'names'}, got {value!r}")
            value = tuple(float(v) for v in value) if item is float else tuple(value)
        elif isinstance(default, float):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise FacemtlError(f"{where(key)}bad value for 'experiment.{key}': expected a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, type(default)) or isinstance(value, bool):
            raise FacemtlError(f"{where(key)}bad value for 'experiment.{key}': expected a {type(default).__name__}, got {value!r}")
        kwargs[key] = value
    exp = DCNetExperiment(**kwargs)
    known = set(list_models())
    for key in ("compare_models", "scarcity_models", "trial_models"):
        for m in getattr(exp, key):
            if m not in known:
                raise FacemtlError(f"{where(key)}unknown model {m!r} in 'experiment.{key}'; available: {', '.join(sorted(known))}")
    if exp.ablation_model not in known:
        raise FacemtlError(f"{where('ablation_model')}unknown model {exp.ablation_model!r}")
    if len(exp.trial_models) != 2:
        raise FacemtlError(f"{where('trial_models')}'experiment.trial_models' needs exactly two models, got {list(exp.trial_models)}")
    for key in ("ratios",):
        for r in getattr(exp, key):
            if not 0 < r < 1:
                raise FacemtlError(f"{where(key)}bad value for 'experiment.{key}': train ratios must lie in (0, 1), got {r}")
    if not 0 < exp.trial_ratio < 1:
        raise FacemtlError(f"{where('trial_ratio')}bad value for 'experiment.trial_ratio': expected a ratio in (0, 1), got {exp.trial_ratio}")
    if exp.repeats < 1:
        raise FacemtlError(f"{where('repeats')}bad value for 'experiment.repeats': expected an integer >= 1, got {exp.repeats}")
    if exp.trials < 1:
        raise FacemtlError(f"{where('trials')}bad value for 'experiment.trials': expected an integer >= 1, got {exp.trials}")
    if not 0 < exp.weight_low <= exp.weight_high:
        raise FacemtlError(f"{where('weight_low')}task weights need 0 < weight_low <= weight_high, got "
                           f"{exp.weight_low} and {exp.weight_high}")
    if exp.related_weight < 0:
        raise FacemtlError(f"{where('related_weight')}bad value for 'experiment.related_weight': expected a number >= 0")
    return exp


def load_experiment(path, overrides: Sequence[str] = ()) -> tuple[TrainConfig, DCNetExperiment]:
    """Read an experiment file; ``overrides`` like ``train.schedule.epochs=2`` or ``experiment.trials=5``."""
    path = config_path(path)  # a shipped experiment by name too (dcnet_aflw_scarcity)
    data, lines = read_yaml(path)
    train_ref = data.get("train") if isinstance(data, dict) and isinstance(data.get("train"), str) else None
    # `train: dcnet_aflw.yaml` names a training config file beside this one; train.* overrides go to it
    train_overrides = [o.partition("train.")[2] for o in overrides if train_ref and o.strip().startswith("train.")]
    own = [o for o in overrides if not (train_ref and o.strip().startswith("train."))]
    if own:
        data = apply_overrides(data, own)
        for item in own:
            lines.pop(item.partition("=")[0].strip(), None)
    extra = set(data) - {"train", "experiment"}
    if extra:
        key = sorted(extra)[0]
        raise FacemtlError(f"{path}:{lines.get(key, 1)}: unknown section '{key}' (expected 'train' and 'experiment')")
    train_lines = {k[len("train."):]: v for k, v in lines.items() if k.startswith("train.")}
    train_path, train_data = str(path), data.get("train") or {}
    if train_ref is not None:
        ref = Path(path).parent / train_ref
        if not ref.is_file():
            raise FacemtlError(f"{path}:{lines.get('train', 1)}: 'train' names {ref}, which is not a file")
        train_data, train_lines = read_yaml(ref)
        train_path = str(ref)
        if train_overrides:
            train_data = apply_overrides(train_data, train_overrides)
            for item in train_overrides:
                train_lines.pop(item.partition("=")[0].strip(), None)
    config = config_from_dict(train_data, path=train_path, lines=train_lines)
    if config.schedule.mode != "joint" or len(config.data) != 1 or MAIN_TASK not in config.data[0].tasks:
        raise FacemtlError(
            f"{path}: Deep Collaboration experiments need 'train.schedule.mode: joint' and one source "
            f"labelling '{MAIN_TASK}' and the related tasks"
        )
    return config, _check_experiment(data.get("experiment"), str(path), lines)


# ---------------------------------------------------------------------------------------
# one training run


def variant(base: TrainConfig, model: str, related_weight: float, weights: Mapping[str, float] | None = None) -> TrainConfig:
    """``base`` with another model; ``single`` learns the main task only. Loss weights: 1 for
    the main task, ``weights[t]`` (default ``related_weight``) for related task t."""
    src = base.data[0]
    tasks = (MAIN_TASK,) if model == "single" else src.tasks
    lw = {t: 1.0 if t == MAIN_TASK else float((weights or {}).get(t, related_weight)) for t in tasks}
    # the heads bin coordinates over the image size: build them for the size the data has
    kwargs = {"input_size": base.input_size, **base.model.kwargs}
    if model.endswith("-wide") and kwargs.get("width") is not None:
        # narrow columns (a small budget): the widened baselines match DCNet at that width
        kwargs["match_width"] = kwargs.pop("width")
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, name=model, kwargs=types.MappingProxyType(kwargs)),
        data=(dataclasses.replace(src, tasks=tasks),),
        schedule=dataclasses.replace(base.schedule, mode="joint", loss_weights=types.MappingProxyType(lw)),
    )


def run(config: TrainConfig, out_dir: Path, *, datasets=None, keep_weights: bool = False, verbose: bool = False) -> dict:
    """Train ``config`` into ``out_dir`` (or reuse a finished run with the same config) and
    return its test metrics (``metrics.json`` of the engine)."""
    from facemtl.engine.loop import train

    out_dir = Path(out_dir)
    done = out_dir / "metrics.json"
    saved = out_dir / "config.json"
    if done.exists() and saved.exists() and json.loads(saved.read_text()) == json.loads(json.dumps(to_dict(config))):
        if not keep_weights or (out_dir / "model.safetensors").exists():
            return json.loads(done.read_text())
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a stale or unfinished run of ours
    train(config, out_dir, datasets=datasets, quiet=not verbose)
    for name in ("train_state.safetensors", "train_state.json") + (() if keep_weights else ("model.safetensors",)):
        (out_dir / name).unlink(missing_ok=True)  # large; the experiment needs only the metrics
    return json.loads(done.read_text())


def landmark_result(metrics: dict) -> dict:
    """Landmark failure rate and NME (%) of a run, with the trivial baseline of its test set (the
    mean shape's NME): a model that does not beat it has learned nothing."""
    r = metrics["iterations"]["0"][MAIN_TASK]
    baseline = metrics.get("baselines", {}).get(MAIN_TASK, {}).get("mean_shape_nme")
    return {"failure_rate": r["failure_rate"], "nme": r["nme"], "mean_shape_nme": baseline}


def parameter_count(config: TrainConfig) -> int:
    from facemtl.engine.loop import model_kwargs
    from facemtl.models.heads import count_on_meta
    from facemtl.models.registry import create_model

    kwargs = {k: v for k, v in model_kwargs(config).items() if k != "pretrained"}
    return count_on_meta(lambda: create_model(config.model.name, **kwargs))


def _split(base: TrainConfig, ratio: float, repeat: int = 0) -> tuple[TrainConfig, list | None]:
    """``(config, datasets)`` of a train/test split at ``ratio`` (its ``repeat``-th draw).

    Synthetic source: the first ``ratio`` of a pool of n_train + n_test faces and the rest;
    repeat 0 keeps the pool's order, repeat k > 0 shuffles it with seed (source seed, k).
    Real source: its reader's own ratio split (``options.ratio``, ``options.seed`` + k)."""
    import numpy as np

    src = base.data[0]
    if src.name != "synth":
        from facemtl.data import loader_options

        if not {"ratio", "seed"} <= set(loader_options(src.name)):
            raise FacemtlError(f"the data-scarcity and task-weight experiments need a pool to split: a synthetic "
                               f"source, or a reader with ratio and seed options (aflw); {src.name!r} has neither")
        options = {**src.options, "ratio": float(ratio), "seed": int(src.options.get("seed", 0)) + repeat}
        data = (dataclasses.replace(src, options=types.MappingProxyType(options), train_split="train",
                                    test_split="test"),)
        return dataclasses.replace(base, data=data), None
    from facemtl.data.mixing import render_options
    from facemtl.data.synth import SyntheticFaces

    pool = SyntheticFaces(src.n_train + src.n_test, style=src.style, seed=src.seed, size=base.input_size,
                          **render_options(src))
    cut = int(round(ratio * len(pool)))
    if cut < 1 or cut >= len(pool):
        raise FacemtlError(f"train ratio {ratio} leaves an empty split of {len(pool)} faces; raise n_train + n_test")
    order = np.arange(len(pool)) if repeat == 0 else np.random.default_rng([src.seed, repeat]).permutation(len(pool))
    return base, [(_Subset(pool, order[:cut]), _Subset(pool, order[cut:]))]


class _Subset(Sequence):
    def __init__(self, data, indices):
        self.data, self.indices = data, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.data[self.indices[i]]


def _progress(items, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, dynamic_ncols=True, unit="run")


def _markdown(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _write(out: Path, stem: str, result: dict, table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(table + "\n")


# ---------------------------------------------------------------------------------------
# section 4.2: comparison


def compare(base: TrainConfig, exp: DCNetExperiment, out_dir, *, verbose: bool = False) -> dict:
    """Train every model of ``exp.compare_models`` with the same schedule; landmark failure
    rate, NME and parameter count per model. Keeps the ablation model's weights."""
    out = Path(out_dir)
    rows, result = [], {}
    for name in _progress(exp.compare_models, "compare"):
        cfg = variant(base, name, exp.related_weight)
        m = run(cfg, out / name, keep_weights=name == exp.ablation_model, verbose=verbose)
        result[name] = {**landmark_result(m), "parameters": parameter_count(cfg)}
        rows.append([name, result[name]["failure_rate"], result[name]["nme"], f"{result[name]['parameters'] / 1e6:.2f}M"])
    table = _markdown(["model", "failure rate %", "NME %", "parameters"], rows)
    _write(out, "compare", {"models": result, "budget": _budget(base)}, table)
    return result


def _budget(base: TrainConfig) -> dict:
    src = base.data[0]
    return {"n_train": src.n_train, "n_test": src.n_test, "batch_size": src.batch_size, "epochs": base.schedule.epochs,
            "rounds": base.schedule.rounds, "input_size": base.input_size, "lr": base.schedule.lr,
            "optimiser": base.optimiser.name, "backbone": dict(base.model.kwargs).get("backbone", "resnet18")}


# ---------------------------------------------------------------------------------------
# section 4.4: block ablation


@_no_grad
def landmark_scores(model, samples: Sequence, batch_size: int = 32) -> dict:
    """Landmark failure rate and NME (%) of ``model`` on raw ``samples``.

    A landmarks-only scorer (facemtl.engine.evaluate scores every task, 5x the work per
    ablated cell); it uses the same meter and ``model.decode`` as the engine's evaluation.
    """
    from facemtl.data.sample import collate, to_sample
    from facemtl.metrics.landmarks import LandmarkMeter

    task = model.task(MAIN_TASK)
    meter = LandmarkMeter(task.num_outputs, eye_indices=(0, 1))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(samples), batch_size):
            batch = collate([to_sample(samples[i], (task,)) for i in range(start, min(start + batch_size, len(samples)))])
            out = model(batch["image"])[0][MAIN_TASK]
            meter.update(model.decode(MAIN_TASK, out).float(), batch[MAIN_TASK], batch.get(f"{MAIN_TASK}_visible"))
    finally:
        model.train(was_training)
    r = meter.compute()
    return {"failure_rate": r["failure_rate"], "nme": r["nme"]}


def block_ablation(model, samples: Sequence, batch_size: int = 32) -> dict:
    """Section 4.4: for each task t and block b, zero task t's features at the input of block
    b's central aggregation H, score landmarks, restore. Relative change of the failure rate
    ``100 * (fr - fr_base) / fr_base`` (positive = worse; None when fr_base is 0), and the same
    for the NME (informative where the failure rate saturates at 0 or 100%)."""
    blocks = model.ablation_blocks
    if not blocks:
        raise FacemtlError(f"block ablation needs a model with collaborative blocks (dcnet), got {type(model).__name__}")
    base = landmark_scores(model, samples, batch_size)
    cells: dict[str, list[dict]] = {}
    from tqdm import tqdm

    bar = tqdm(total=len(model.tasks) * blocks, desc="ablation", dynamic_ncols=True, unit="cell")
    try:
        for t, task in enumerate(model.tasks):
            cells[task.name] = []
            for b in range(blocks):
                with model.ablate(b, t):
                    s = landmark_scores(model, samples, batch_size)
                fr0 = base["failure_rate"]
                s["relative_change"] = 100.0 * (s["failure_rate"] - fr0) / fr0 if fr0 > 0 else None
                s["nme_relative_change"] = 100.0 * (s["nme"] - base["nme"]) / base["nme"]
                cells[task.name].append(s)
                bar.update(1)
    finally:
        bar.close()
    return {"base": base, "cells": cells, "blocks": blocks}


def ablation_table(result: dict) -> str:
    header = ["task \\ block"] + [f"block {b + 1}" for b in range(result["blocks"])]

    def rows(key):
        return [[task] + [("n/a" if c[key] is None else f"{c[key]:+.1f}%") for c in cells]
                for task, cells in result["cells"].items()]

    b = result["base"]
    return (f"Relative change of the landmark failure rate when a task's features are zeroed before H "
            f"(base: failure rate {b['failure_rate']:.2f}%, NME {b['nme']:.2f}%; positive = worse)\n\n"
            + _markdown(header, rows("relative_change"))
            + "\n\nRelative change of the landmark NME, same ablation\n\n" + _markdown(header, rows("nme_relative_change")))


def ablation_heatmap(result: dict, path) -> None:
    """Fig. 6-style heat map: rows tasks (main task first), columns blocks."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["cells"])
    key = "relative_change"
    if all(c[key] in (None, 0.0) for cells in result["cells"].values() for c in cells):
        key = "nme_relative_change"  # failure rate saturated (0 or 100%): show the NME instead
    values = np.array([[np.nan if c[key] is None else c[key] for c in result["cells"][t]] for t in tasks])
    fig, ax = plt.subplots(figsize=(1.4 * result["blocks"] + 2, 0.6 * len(tasks) + 1.5))
    # at least +-1%: an all-zero ablation (no effect) reads as a neutral map, not a +-1e-6 colour scale
    lim = max(np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0, 1.0)
    im = ax.imshow(values, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(result["blocks"]), [f"Block {b + 1}" for b in range(result["blocks"])])
    ax.set_yticks(range(len(tasks)), tasks)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "n/a" if np.isnan(v) else f"{v:+.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=f"relative change of {'failure rate' if key == 'relative_change' else 'NME'} (%)")
    ax.set_title("Block ablation (zeroed before H)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ablation(base: TrainConfig, exp: DCNetExperiment, out_dir, *, checkpoint=None, verbose: bool = False) -> dict:
    """Train the ablation model (or load ``checkpoint``) and ablate it on the source's test split."""
    from facemtl.data.mixing import build_sources
    from facemtl.models.checkpoint import load_model
    from facemtl.tasks import get_tasks

    out = Path(out_dir)
    cfg = variant(base, exp.ablation_model, exp.related_weight)
    run_dir = Path(checkpoint) if checkpoint else out / exp.ablation_model
    if not checkpoint:
        run(cfg, run_dir, keep_weights=True, verbose=verbose)
    model, info = load_model(run_dir)
    sources = info.get("sources") or []
    if sources and sources[0].get("name") == "synth" and sources[0] != build_sources(cfg, get_tasks(cfg.task_names))[0].description:
        raise FacemtlError(f"{run_dir} was trained on another source than the experiment config describes")
    test = build_sources(cfg, get_tasks(cfg.task_names))[0].test
    result = block_ablation(model, test)
    result["checkpoint"] = str(run_dir)
    _write(out, "ablation", result, ablation_table(result))
    ablation_heatmap(result, out / "ablation.png")
    return result


# ---------------------------------------------------------------------------------------
# section 4.3: data scarcity and random task weights


def scarcity(base: TrainConfig, exp: DCNetExperiment, out_dir, *, verbose: bool = False) -> dict:
    """Table 1: failure rate per train/test ratio (rows) and model (columns)."""
    import numpy as np

    out = Path(out_dir)
    runs: dict = {}
    jobs = [(r, k, m) for r in exp.ratios for k in range(exp.repeats) for m in exp.scarcity_models]
    for ratio, k, name in _progress(jobs, "scarcity"):
        split_cfg, datasets = _split(base, ratio, k)
        folder = out / f"ratio_{ratio:g}" / (f"repeat_{k}" if exp.repeats > 1 else "") / name
        m = run(variant(split_cfg, name, exp.related_weight), folder, datasets=datasets, verbose=verbose)
        runs.setdefault(f"{ratio:g}", {}).setdefault(name, []).append(landmark_result(m))
    result: dict = {}
    for r, models in runs.items():
        for name, reps in models.items():
            fr = np.array([x["failure_rate"] for x in reps])
            result.setdefault(r, {})[name] = {
                "failure_rate": float(fr.mean()), "nme": float(np.mean([x["nme"] for x in reps])),
                "failure_rate_sd": float(fr.std(ddof=1)) if len(fr) > 1 else 0.0, "repeats": reps}

    def cell(x: dict) -> str:
        return f"{x['failure_rate']:.2f} +- {x['failure_rate_sd']:.2f}" if exp.repeats > 1 else f"{x['failure_rate']:.2f}"

    rows = [[f"{float(r):g} / {1 - float(r):.2g}"] + [cell(result[r][m]) for m in exp.scarcity_models] for r in result]
    table = (f"failure rate %, mean +- sd over {exp.repeats} splits per ratio\n\n" if exp.repeats > 1 else "") + \
        _markdown(["train / test", *exp.scarcity_models], rows)
    src = base.data[0]
    pool = src.n_train + src.n_test if src.name == "synth" else f"{src.name} at {src.root}"
    _write(out, "scarcity", {"failure_rate": result, "pool": pool, "repeats": exp.repeats}, table)
    return result


def sample_task_weights(related: Sequence[str], trials: int, low: float, high: float, seed: int) -> list[dict]:
    """lambda = exp(gamma), gamma ~ U(log low, log high), one draw per related task and trial."""
    import numpy as np

    rng = np.random.default_rng(np.random.SeedSequence([seed, 4_3]))
    gamma = rng.uniform(math.log(low), math.log(high), size=(trials, len(related)))
    return [{t: float(math.exp(g)) for t, g in zip(related, row)} for row in gamma]


def task_weights(base: TrainConfig, exp: DCNetExperiment, out_dir, *, verbose: bool = False) -> dict:
    """Fig. 5: per trial, both ``trial_models`` trained with the same random weights."""
    import numpy as np

    out = Path(out_dir)
    related = [t for t in base.data[0].tasks if t != MAIN_TASK]
    draws = sample_task_weights(related, exp.trials, exp.weight_low, exp.weight_high, exp.seed)
    split_cfg, data = _split(base, exp.trial_ratio)
    first, second = exp.trial_models
    trials = []
    for i, w in enumerate(_progress(draws, "task weights")):
        fr = {}
        for name in (first, second):
            m = run(variant(split_cfg, name, exp.related_weight, w), out / f"trial_{i:03d}" / name, datasets=data,
                    verbose=verbose)
            fr[name] = landmark_result(m)["failure_rate"]
        trials.append({"weights": w, "failure_rate": fr, "improvement": fr[first] - fr[second]})
    imp = np.array([t["improvement"] for t in trials])
    summary = {"trials": len(trials), "wins": int((imp > 0).sum()), "mean": float(imp.mean()),
               "median": float(np.median(imp)), "max": float(imp.max()), "min": float(imp.min())}
    result = {"models": [first, second], "summary": summary, "trials": trials}
    table = (f"{second} vs {first}: failure-rate improvement (percentage points, positive = {second} better) over "
             f"{summary['trials']} random task weightings: {second} better in {summary['wins']}; mean "
             f"{summary['mean']:.2f}, median {summary['median']:.2f}, max {summary['max']:.2f}, min {summary['min']:.2f}\n\n"
             + _markdown(["trial", *[f"log10 w_{t}" for t in related], f"{first} FR %", f"{second} FR %", "improvement"],
                         [[i, *[f"{math.log10(t['weights'][r]):.2f}" for r in related], t["failure_rate"][first],
                           t["failure_rate"][second], t["improvement"]] for i, t in enumerate(trials)]))
    _write(out, "task_weights", result, table)
    task_weights_figure(result, related, out / "task_weights.png")
    return result


def task_weights_figure(result: dict, related: Sequence[str], path) -> None:
    """Fig. 5 layout: improvement histogram (left), per-trial improvement (top right) and the
    log task weights of each trial (bottom right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = result["trials"]
    imp = [t["improvement"] for t in trials]
    fig = plt.figure(figsize=(10, 4.5))
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 1.6))
    ax = fig.add_subplot(grid[:, 0])
    ax.hist(imp, bins=max(5, min(30, len(imp) // 3 or 1)), color="tab:blue", edgecolor="white")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("failure-rate improvement (points)")
    ax.set_ylabel("trials")
    top = fig.add_subplot(grid[0, 1])
    top.bar(range(len(imp)), imp, color=["tab:green" if v > 0 else "tab:red" for v in imp])
    top.axhline(0, color="black", lw=0.8)
    top.set_ylabel("improvement")
    bottom = fig.add_subplot(grid[1, 1], sharex=top)
    for task in related:
        bottom.plot(range(len(trials)), [math.log10(t["weights"][task]) for t in trials], ".", label=task)
    bottom.set_xlabel("trial")
    bottom.set_ylabel("log10 weight")
    bottom.legend(fontsize=7, ncol=len(related))
    a, b = result["models"]
    fig.suptitle(f"{b} vs {a}: {result['summary']['wins']}/{result['summary']['trials']} trials better")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# command line: facemtl experiment dcnet {compare,ablation,scarcity,task-weights}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dcnet",
        help="Deep Collaboration experiments (comparison, block ablation, data scarcity, random task weights)",
        description="Deep Collaboration experiments (Trottier et al., section 4) on one source that labels "
        "landmarks and related tasks, trained with the joint engine. See configs/dcnet_synth*.yaml.",
    )
    sub = p.add_subparsers(dest="dcnet_experiment", metavar="EXPERIMENT", required=True)
    helps = {
        "compare": "section 4.2: single / hps / hps-wide / cross-stitch / dcnet with equal budgets",
        "ablation": "section 4.4: zero each task's features before H, per block (table + heat map)",
        "scarcity": "section 4.3: failure rate per train/test ratio (Table 1)",
        "task-weights": "section 4.3: random related-task weights, two models (Fig. 5)",
    }
    for name, text in helps.items():
        e = sub.add_parser(name, help=text, description=text)
        e.add_argument("config", help="experiment YAML file (sections 'train' and 'experiment') or the name "
                       "of one shipped with facemtl (e.g. dcnet_aflw_scarcity)")
        e.add_argument("--out", required=True, metavar="DIR", help="output folder (finished runs in it are reused)")
        e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. train.schedule.epochs=2 or experiment.trials=5")
        e.add_argument("--verbose", action="store_true", help="show each training run's progress and summary")
        if name == "ablation":
            e.add_argument("--checkpoint", metavar="RUN_DIR",
                           help="ablate this trained dcnet run (e.g. OUT/dcnet of 'compare') instead of training one")
        e.set_defaults(func=_main, experiment_name=name)


def _main(args) -> int:
    base, exp = load_experiment(args.config, args.overrides)
    out = Path(args.out)
    if args.experiment_name == "compare":
        compare(base, exp, out, verbose=args.verbose)
        print((out / "compare.md").read_text())
    elif args.experiment_name == "ablation":
        ablation(base, exp, out, checkpoint=args.checkpoint, verbose=args.verbose)
        print((out / "ablation.md").read_text() + f"\nheat map: {out / 'ablation.png'}")
    elif args.experiment_name == "scarcity":
        scarcity(base, exp, out, verbose=args.verbose)
        print((out / "scarcity.md").read_text())
    else:
        task_weights(base, exp, out, verbose=args.verbose)
        print((out / "task_weights.md").read_text().split("\n\n")[0] + f"\nfigure: {out / 'task_weights.png'}")
    return 0
