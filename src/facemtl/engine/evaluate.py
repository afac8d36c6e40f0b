"""Evaluation on each task's own test split, per refinement iteration (iFAN Tables 1-3).

``evaluate(model, info, datasets)`` runs the inference path, ``model(images, source=None)``
(each task predicted from its own source's batch-norm stream, iFAN section 3.3), over the test
split of the source that labels each task, and scores every iteration's decoded output:

* ``points``: NME (% of the inter-ocular distance), failure rate (NME > 10%), per-point NME;
* ``segmentation``: per-class F1 and the groups (eyes, brows, Mouth-All, Overall) with counts accumulated over the whole
  test set; crops of real images (``meta["crop_matrix"]``) are scored at the original
  resolution through ``warp_logits_back`` (section 4.1.2), synthetic images as they are;
* ``category``: accuracy, mean per-class accuracy and the confusion matrix.

Next to them, ``result["baselines"][task]`` holds what TRIVIAL predictors score on the same
test split (so a reader sees how far above trivial a model is), gathered from the targets of
the same batches, without another pass over the data:

* ``points``: the test set's own mean shape (mean of the visible normalised points of each
  landmark) predicted for every face: ``mean_shape_nme``, ``mean_shape_failure_rate``,
  ``mean_shape_nme_per_point``;
* ``segmentation``: every pixel background (class 0) / skin (class "skin", else 1), scored at
  the resolution the model is scored at: ``all_background`` and ``all_skin``, each shaped like
  the model's result (``f1``, ``mouth_all``, ``overall``);
* ``category``: the most frequent class predicted for every sample: ``majority_class``,
  ``majority_accuracy``, ``majority_mean_class_accuracy``.

Losses and metrics always go through ``model.decode`` so models with other head types
(Deep Collaboration's coordinate bins) are scored the same way; what each kind scores, its
baselines and its table rows come from the task-kind table (:mod:`facemtl.kinds`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from facemtl.data.mixing import Source, eval_batches
from facemtl.engine.precision import autocast, to_float32
from facemtl.errors import FacemtlError
from facemtl.kinds import kind_of
from facemtl.tasks import Task


def _sources_from(info: dict, tasks: Sequence[Task], datasets) -> list[Source]:
    """Wrap ``datasets`` (one test sequence, or a ``Source``, per entry of ``info["sources"]``)."""
    if datasets and all(isinstance(d, Source) for d in datasets):
        return list(datasets)
    described = info.get("sources") or [{"name": "data", "tasks": [t.name for t in tasks]}]
    if len(datasets) != len(described):
        raise FacemtlError(f"evaluate: {len(datasets)} datasets given for {len(described)} sources in the checkpoint")
    by_name = {t.name: t for t in tasks}
    out = []
    for i, (d, desc) in enumerate(zip(datasets, described)):
        src_tasks = tuple(by_name[n] for n in desc.get("tasks", []) if n in by_name)
        out.append(Source(i, desc.get("name", "data"), src_tasks, train=d, test=d, batch_size=1))
    return out


@torch.no_grad()
def evaluate(model, info: dict, datasets, *, batch_size: int = 32, progress: bool = False,
             rank: int = 0, world_size: int = 1, precision: str = "fp32") -> dict:
    """Score ``model`` on each task's source test split, per iteration (percent values).

    ``datasets``: for each source of ``info["sources"]`` (same order), its test split as a
    sequence of raw samples at the model's input size (or :class:`Source` objects, whose
    ``eval_transform`` crops real images); ``precision``: forward passes in fp32 or under bf16
    autocast (:mod:`facemtl.engine.precision`). Returns
    ``{"iterations": {"0": {task: {...}}, "1": ...}, "baselines": {task: {...}}}``; see the
    module docstring. Metric totals are all-reduced when torch.distributed is initialised.
    """
    from tqdm import tqdm

    tasks = tuple(model.tasks)
    sources = _sources_from(info, tasks, datasets)
    task_sources = list(info.get("task_sources") or [0] * len(tasks))
    was_training = model.training
    device = next(model.parameters()).device  # evaluate where the model lives; meters count on the CPU
    model.eval()
    meters: dict[int, dict[str, object]] = {}
    baselines: dict = {}
    skipped: dict[str, str] = {}
    try:
        for t, task in enumerate(tasks):
            src = sources[task_sources[t]]
            if task not in src.tasks and task.name not in [x.name for x in src.tasks]:
                raise FacemtlError(f"evaluate: source {src.index} ({src.name}) does not label task {task.name!r}")
            if len(src.test) == 0:
                skipped[task.name] = f"the test split of source {src.index} ({src.name}) is empty"
                continue
            kind = kind_of(task)
            baseline = baselines[task.name] = kind.baseline(task)
            # One meter per iteration made up front: a process whose shard is empty must still
            # take part in every all-reduce below.
            for i in range(model.refinement_iterations + 1):
                meters.setdefault(i, {})[task.name] = kind.meter(task)
            n_batches = (len(range(rank, len(src.test), world_size)) + batch_size - 1) // batch_size
            it = eval_batches(src, batch_size, rank, world_size)
            for batch, raws in tqdm(it, total=n_batches, desc=f"eval {task.name}", disable=not progress,
                                    leave=False, dynamic_ncols=True):
                with autocast(device, precision):
                    outputs = to_float32(model(batch["image"].to(device), source=None))
                baseline.update(batch, raws)
                for i, out in enumerate(outputs):
                    kind.score(meters[i][task.name], task, model.decode(task.name, out[task.name]).cpu(), batch, raws)
    finally:
        model.train(was_training)
    result: dict = {"iterations": {}}
    for i in sorted(meters):
        result["iterations"][str(i)] = {}
        for task in tasks:
            meter = meters[i].get(task.name)
            if meter is None:
                continue
            meter.all_reduce()
            result["iterations"][str(i)][task.name] = kind_of(task).result(task, meter)
    if skipped:  # said, not silently missing from the tables
        result["not_evaluated"] = skipped
    result["baselines"] = {}
    for name, baseline in baselines.items():  # task order: the same on every process
        r = baseline.result()
        if r is not None:
            result["baselines"][name] = r
    return result


# ---------------------------------------------------------------------------------------
# tables


def _row(cells, widths) -> str:
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def _table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [header] + [[r[0]] + [f"{v:.2f}" if isinstance(v, float) else str(v) for v in r[1:]] for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(header))]
    lines = [title, _row(header, widths), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    lines += [_row(c, widths) for c in cells[1:]]
    return "\n".join(lines)


def format_tables(result: dict, tasks: Sequence[Task]) -> str:
    """Tables laid out like iFAN's Tables 1-3, one row per iteration (Iter0..IterN), then one
    per trivial baseline (``mean shape``, ``all background``/``all skin``, ``majority``) when
    ``result`` has them (metrics.json files written before the baselines have none)."""
    its = result["iterations"]
    out = []
    for task in tasks:
        rows = [(f"Iter{i}", its[i][task.name]) for i in sorted(its, key=int) if task.name in its[i]]
        if not rows:
            continue
        title, header, body = kind_of(task).table(task, rows, result.get("baselines", {}).get(task.name))
        out.append(_table(title, header, body))
    out += [f"{name}: not evaluated: {why}" for name, why in result.get("not_evaluated", {}).items()]
    return "\n\n".join(out)
