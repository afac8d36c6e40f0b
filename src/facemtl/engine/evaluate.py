"""Evaluation on each task's own test split, per refinement iteration (iFAN Tables 1-3).

``evaluate(model, info, datasets)`` runs the inference path, ``model(images, source=None)``
(each task predicted from its own source's batch-norm stream, iFAN section 3.3), over the test
split of the source that labels each task, and scores every iteration's decoded output:

* ``points``: NME (% of the inter-ocular distance), failure rate (NME > 10%), per-point NME;
* ``segmentation``: per-class F1, Mouth-All and Overall with counts accumulated over the whole
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
(Deep Collaboration's coordinate bins) are scored the same way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from facemtl.data.mixing import Source, eval_batches
from facemtl.errors import FacemtlError
from facemtl.metrics.base import Meter
from facemtl.tasks import Task


def _meter(task: Task):
    from facemtl.metrics.classification import ConfusionMatrix
    from facemtl.metrics.landmarks import LandmarkMeter
    from facemtl.metrics.parsing import ParsingF1

    if task.kind == "points":
        names = list(task.class_names)
        eyes = (names.index("left_eye"), names.index("right_eye")) if {"left_eye", "right_eye"} <= set(names) else (0, 1)
        return LandmarkMeter(task.num_outputs, eye_indices=eyes)
    if task.kind == "segmentation":
        return ParsingF1(task.num_outputs, class_names=task.class_names or None)
    return ConfusionMatrix(task.num_outputs, class_names=task.class_names or None)


def _result(task: Task, meter) -> dict:
    r = meter.compute()
    if task.kind == "points":
        return {"nme": r["nme"], "failure_rate": r["failure_rate"], "nme_per_point": r["nme_per_point"]}
    if task.kind == "segmentation":
        return {"f1": r["f1"], "mouth_all": r.get("mouth_all", float("nan")), "overall": r.get("overall", float("nan"))}
    return {"accuracy": r["accuracy"], "mean_class_accuracy": r["mean_class_accuracy"], "confusion": r["confusion"]}


class _Sums(Meter):
    """Plain totals that all-reduce like the meters (the baselines' point sums and class counts)."""

    def __init__(self, **shapes) -> None:  # name=(shape, dtype)
        self._shapes = shapes
        super().__init__()

    def _empty_state(self) -> dict[str, torch.Tensor]:
        return {k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in self._shapes.items()}

    def compute(self) -> dict:
        return self.state()


class _Baseline:
    """Trivial predictors of one task, fed the targets of the batches the model is scored on.

    Every process must call ``result()`` for the same tasks in the same order: it all-reduces.
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        n = task.num_outputs
        if task.kind == "points":
            self.sums = _Sums(point_sum=((n, 2), torch.float64), count=((n,), torch.int64))
            self.targets: list[torch.Tensor] = []
            self.visible: list[torch.Tensor] = []
        elif task.kind == "segmentation":
            names = list(task.class_names)
            skin = names.index("skin") if "skin" in names else min(1, n - 1)
            self.constants = {"all_background": (0, _meter(task)), "all_skin": (skin, _meter(task))}
        else:
            self.sums = _Sums(count=((n,), torch.int64))

    def update(self, batch: dict, raws: list) -> None:
        name, target = self.task.name, batch[self.task.name]
        if self.task.kind == "points":
            t = target.double()
            v = batch.get(f"{name}_visible")
            v = torch.ones(t.shape[:2], dtype=torch.bool) if v is None else v.bool()
            # where(), not multiply: invisible points may hold NaN coordinates.
            self.sums._add("point_sum", torch.where(v[..., None], t, 0.0).sum(0))
            self.sums._add("count", v.sum(0))
            self.targets.append(t)
            self.visible.append(v)
        elif self.task.kind == "segmentation":
            # Same resolution as the model is scored at (see _update): the raw image's for crops.
            if any("crop_matrix" in m for m in batch["meta"]):
                masks = [torch.from_numpy(np.asarray(raw[name]).astype(np.int64)) for raw in raws]
            else:
                masks = [target]
            for mask in masks:
                for cls, meter in self.constants.values():
                    meter.update(torch.full_like(mask, cls), mask)
        else:
            self.sums._add("count", torch.bincount(target.reshape(-1).long(), minlength=self.task.num_outputs))

    def result(self) -> dict | None:
        task = self.task
        if task.kind == "points":
            s = self.sums.all_reduce().state()
            mean = s["point_sum"] / s["count"][:, None]  # NaN for a point never visible
            meter = _meter(task)
            if self.targets:
                t = torch.cat(self.targets)
                meter.update(mean.expand_as(t), t, torch.cat(self.visible))
            meter.all_reduce()  # also on a process whose shard was empty
            if int(meter.state()["count"]) == 0:
                return None
            r = _result(task, meter)
            return {"mean_shape_nme": r["nme"], "mean_shape_failure_rate": r["failure_rate"],
                    "mean_shape_nme_per_point": r["nme_per_point"]}
        if task.kind == "segmentation":
            for _, meter in self.constants.values():
                meter.all_reduce()
            if int(self.constants["all_background"][1].state()["confusion"].sum()) == 0:
                return None
            return {key: _result(task, meter) for key, (_, meter) in self.constants.items()}
        counts = self.sums.all_reduce().state()["count"]
        if int(counts.sum()) == 0:
            return None
        # The constant predictor's confusion matrix: every row's samples in the majority column.
        majority = int(counts.argmax())
        meter = _meter(task)
        confusion = torch.zeros_like(meter.state()["confusion"])
        confusion[:, majority] = counts
        r = meter.merge({"confusion": confusion}).compute()
        return {"majority_class": meter.class_names[majority], "majority_accuracy": r["accuracy"],
                "majority_mean_class_accuracy": r["mean_class_accuracy"]}


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
             rank: int = 0, world_size: int = 1) -> dict:
    """Score ``model`` on each task's source test split, per iteration (percent values).

    ``datasets``: for each source of ``info["sources"]`` (same order), its test split as a
    sequence of raw samples at the model's input size (or :class:`Source` objects, whose
    ``eval_transform`` crops real images). Returns
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
    baselines: dict[str, _Baseline] = {}
    try:
        for t, task in enumerate(tasks):
            src = sources[task_sources[t]]
            if task not in src.tasks and task.name not in [x.name for x in src.tasks]:
                raise FacemtlError(f"evaluate: source {src.index} ({src.name}) does not label task {task.name!r}")
            if len(src.test) == 0:
                continue
            baseline = baselines[task.name] = _Baseline(task)
            n_batches = (len(range(rank, len(src.test), world_size)) + batch_size - 1) // batch_size
            it = eval_batches(src, batch_size, rank, world_size)
            for batch, raws in tqdm(it, total=n_batches, desc=f"eval {task.name}", disable=not progress,
                                    leave=False, dynamic_ncols=True):
                outputs = model(batch["image"].to(device), source=None)
                baseline.update(batch, raws)
                for i, out in enumerate(outputs):
                    meter = meters.setdefault(i, {}).get(task.name)
                    if meter is None:
                        meter = meters[i][task.name] = _meter(task)
                    _update(meter, task, model.decode(task.name, out[task.name]).cpu(), batch, raws)
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
            result["iterations"][str(i)][task.name] = _result(task, meter)
    result["baselines"] = {}
    for name, baseline in baselines.items():  # task order: the same on every process
        r = baseline.result()
        if r is not None:
            result["baselines"][name] = r
    return result


def _update(meter, task: Task, pred: torch.Tensor, batch: dict, raws: list) -> None:
    target = batch[task.name]
    if task.kind == "points":
        meter.update(pred.float(), target, batch.get(f"{task.name}_visible"))
    elif task.kind == "segmentation":
        metas = batch["meta"]
        if any("crop_matrix" in m for m in metas):
            from facemtl.data.transforms import warp_logits_back

            # Score at the original resolution (section 4.1.2): warp logits back, then argmax.
            for logits, meta, raw in zip(pred, metas, raws):
                full = warp_logits_back(logits.float(), meta["crop_matrix"], raw["image"].shape[:2])
                meter.update(full.argmax(0), torch.from_numpy(np.asarray(raw[task.name]).astype(np.int64)))
        else:
            if pred.shape[-2:] != target.shape[-2:]:
                pred = torch.nn.functional.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear",
                                                       align_corners=False)
            meter.update(pred.argmax(1), target)
    else:
        meter.update(pred, target)


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
    nan = float("nan")
    out = []
    for task in tasks:
        rows = []
        for i in sorted(its, key=int):
            r = its[i].get(task.name)
            if r is None:
                continue
            label = f"Iter{i}"
            if task.kind == "points":
                rows.append([label, *r["nme_per_point"], r["nme"], r["failure_rate"]])
            elif task.kind == "segmentation":
                rows.append([label, *[r["f1"].get(c, float("nan")) for c in task.class_names], r["mouth_all"], r["overall"]])
            else:
                rows.append([label, r["accuracy"], r["mean_class_accuracy"]])
        b = result.get("baselines", {}).get(task.name)
        if rows and b:
            if task.kind == "points":
                per_point = b.get("mean_shape_nme_per_point") or [nan] * len(task.class_names)
                rows.append(["mean shape", *per_point, b["mean_shape_nme"], b["mean_shape_failure_rate"]])
            elif task.kind == "segmentation":
                for key in ("all_background", "all_skin"):
                    r = b[key]
                    rows.append([key.replace("_", " "), *[r["f1"].get(c, nan) for c in task.class_names],
                                 r["mouth_all"], r["overall"]])
            else:
                rows.append([f"majority ({b['majority_class']})", b["majority_accuracy"],
                             b["majority_mean_class_accuracy"]])
        if not rows:
            continue
        if task.kind == "points":
            header = [task.name, *[f"{n} NME" for n in task.class_names], "mean NME", "failure"]
            out.append(_table(f"{task.name}: NME % (lower is better)", header, rows))
        elif task.kind == "segmentation":
            header = [task.name, *task.class_names, "mouth_all", "overall"]
            out.append(_table(f"{task.name}: F1 % (higher is better)", header, rows))
        else:
            out.append(_table(f"{task.name}: % (higher is better)", [task.name, "accuracy", "mean_class_acc"], rows))
    return "\n\n".join(out)
