"""Task kinds in one table: everything that depends on whether a task predicts points, a
segmentation or a category, outside the networks' own heads.

One :class:`TaskKind` per kind (``KINDS["points"]``, ``KINDS["segmentation"]``,
``KINDS["category"]``; :func:`kind_of` for a task) holds the training loss, the conversion of a
raw label into a training target, the evaluation meter and result, the trivial baseline, the
headline metric, the rows of the result tables, the mapping of a prediction back to the
original image, its JSON form and how it is drawn. Evaluation, inference, the sample
conversion and the checkpoint code call these and never test ``task.kind`` themselves.

Target conventions (the ``Sample`` dict a model is trained on):

* ``points``: ``float (K, 2)`` (x, y) NORMALISED to [0, 1] by the image's width and height, with
  ``<task>_visible`` (K,) bool when the reader gives visibility. Loss: mean squared point
  distance (Euclidean loss, iFAN section 3.2), invisible points masked out.
* ``segmentation``: ``long (H, W)`` class ids (255 = ignore). Loss: per-pixel cross entropy.
* ``category``: ``long ()``. Loss: cross entropy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from facemtl.errors import FacemtlError
from facemtl.metrics.base import Meter
from facemtl.tasks import IGNORE_INDEX

NAN = float("nan")


def eye_indices(task) -> tuple:
    """The two points whose distance normalises the NME of a points task: ``task.eye_indices``
    (found from the point names, :mod:`facemtl.tasks`), else (0, 1) for an unnamed 5-point set
    in the standard order."""
    declared = getattr(task, "eye_indices", None)
    if declared:
        return tuple(declared)
    if task.num_outputs == 5:
        return (0, 1)
    raise FacemtlError(f"task {task.name!r} has {task.num_outputs} points and none is named left_eye/right_eye "
                       "(or *_eye_outer): pass eye_indices= to normalise its NME")


class _Sums(Meter):
    """Plain totals that all-reduce like the meters (the baselines' point sums and class counts)."""

    def __init__(self, **shapes) -> None:  # name=(shape, dtype)
        self._shapes = shapes
        super().__init__()

    def _empty_state(self) -> dict[str, torch.Tensor]:
        return {k: torch.zeros(shape, dtype=dtype) for k, (shape, dtype) in self._shapes.items()}

    def compute(self) -> dict:
        return self.state()


def _has_crops(batch: dict) -> bool:
    """Crops of real images carry their crop matrix: they are scored at the original resolution."""
    return any("crop_matrix" in m for m in batch["meta"])


def _raw_masks(task, raws: list) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(raw[task.name]).astype(np.int64)) for raw in raws]


KEEP_TEMPERATURE = 2.0  # softened class probabilities, as Learning without Forgetting (Li & Hoiem 2016) uses


def _soft_label_distance(kind, task, output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p) of the class probabilities (dim 1) at temperature T, times T^2 (which keeps
    its gradients' scale that of a cross entropy at T = 1), averaged over images and pixels."""
    t = KEEP_TEMPERATURE
    ref = F.log_softmax(reference.float() / t, 1)
    kl = (ref.exp() * (ref - F.log_softmax(output.float() / t, 1))).sum(1)
    return kl.mean() * t * t


def _average_probabilities(kind, task, values: list[torch.Tensor]) -> torch.Tensor:
    """The members' class probabilities (softmax over dim 1) averaged, as log-probabilities: a
    softmax of the result gives the mean back. Clamped above 0 so that a probability that
    underflowed stays finite through the bilinear warp of segmentation logits."""
    mean = torch.stack([v.float().softmax(1) for v in values]).mean(0)
    return mean.clamp_min(1e-30).log()


class TaskKind:
    name: str
    headline: str  # the one number logs show per task
    lower_is_better: bool
    # What a task of this kind is made of (the rules of a declaration, facemtl.tasks.define_task):
    named_points = False  # outputs are K points (count or names; eyes normalise the NME; flips swap them)
    label_per_image = False  # one class per image: a folder or attribute reader can supply the classes
    max_classes: int | None = None  # class ids must stay below the ignore label

    # -- training ---------------------------------------------------------------------------
    def loss(self, task, output: torch.Tensor, target: torch.Tensor, visible=None) -> torch.Tensor:
        raise NotImplementedError

    def add_target(self, sample: dict, task, raw: dict, width: int, height: int) -> None:
        """Put ``raw[task.name]`` into ``sample`` as a training target."""
        raise NotImplementedError

    def keep_loss(self, task, output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """How far raw outputs are from a reference model's raw outputs on the same images: what
        fine-tuning keeps small for a task its data does not label (:mod:`facemtl.engine.keep`)."""
        raise NotImplementedError

    # -- evaluation -------------------------------------------------------------------------
    def meter(self, task, **options):
        raise NotImplementedError

    def result(self, task, meter) -> dict:
        raise NotImplementedError

    def score(self, meter, task, pred: torch.Tensor, batch: dict, raws: list) -> None:
        meter.update(pred, batch[task.name])

    def baseline(self, task) -> "Baseline":
        raise NotImplementedError

    def table(self, task, rows: list[tuple[str, dict]], baseline: dict | None) -> tuple[str, list[str], list[list]]:
        """(title, header, rows) of the task's result table: one row per iteration, then the baselines."""
        raise NotImplementedError

    # -- inference --------------------------------------------------------------------------
    def to_image(self, task, value: torch.Tensor, matrix: np.ndarray, crop_size: int, height: int, width: int):
        """A decoded prediction of one face crop -> the original image's frame."""
        raise NotImplementedError

    def unflip(self, task, value: torch.Tensor, crop_size: int) -> torch.Tensor:
        """Decoded predictions of a batch of MIRRORED crops -> what they say about the crops
        themselves (test-time flip, :class:`facemtl.inference.predictor.Predictor`): the
        mirror undone and left/right labels swapped back with ``task.flip``. Here only the swap
        along dim 1 (point, class or category ``i`` of the mirror is ``flip[i]`` of the crop,
        e.g. pose: left profile <-> right profile); kinds with geometry also undo the mirror."""
        out = torch.empty_like(value)
        out[:, list(task.flip)] = value
        return out

    def average(self, task, values: list[torch.Tensor]) -> torch.Tensor:
        """Decoded predictions of one batch by several models (an ensemble,
        :class:`facemtl.inference.predictor.Predictor`) -> one prediction of the same form: here
        their mean (points); kinds with classes average the probabilities instead."""
        return torch.stack(values).mean(0)

    def to_json(self, task, value, mask_path: str | None = None):
        raise NotImplementedError

    def draw(self, out: np.ndarray, task, value, thickness: int, names: bool = False) -> list[str]:
        """Draw marks on ``out`` (RGB, in place; point names too with ``names``); returns text
        lines for the face's label."""
        return []

    def draw_layer(self, out: np.ndarray, task, value, alpha: float) -> None:
        """Translucent layers drawn under every face's marks."""

    def legend_classes(self, task, value) -> set[int]:
        """Class ids that :meth:`draw_layer` colours (listed in the overlay's legend)."""
        return set()


class Baseline:
    """Trivial predictors of one task, fed the targets of the batches the model is scored on.
    Every process must call ``result()`` for the same tasks in the same order: it all-reduces."""

    def update(self, batch: dict, raws: list) -> None:
        raise NotImplementedError

    def result(self) -> dict | None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# points


class PointsKind(TaskKind):
    name, headline, lower_is_better = "points", "nme", True
    named_points = True

    def loss(self, task, output, target, visible=None):
        sq = (output - target.to(output.dtype)).pow(2).sum(-1)  # (B, K)
        if visible is None:
            return sq.mean()
        w = visible.to(sq.dtype)
        return (sq * w).sum() / w.sum().clamp_min(1.0)

    def keep_loss(self, task, output, reference):
        return self.loss(task, output, reference)  # mean squared point distance from the reference points

    def add_target(self, sample, task, raw, width, height):
        pts = torch.as_tensor(np.asarray(raw[task.name], dtype=np.float32))
        sample[task.name] = pts / torch.tensor([width, height], dtype=torch.float32)
        # a point set's own visibility (e.g. aflw21_visibility) else the reader's main one
        visibility = raw.get(f"{task.name}_visibility", raw.get("visibility"))
        if visibility is not None:
            sample[f"{task.name}_visible"] = torch.as_tensor(np.asarray(visibility, dtype=bool))

    def meter(self, task, **options):
        from facemtl.metrics.landmarks import LandmarkMeter

        if "eye_indices" not in options:
            options["eye_indices"] = eye_indices(task)
        return LandmarkMeter(task.num_outputs, **options)

    def result(self, task, meter):
        r = meter.compute()
        return {"nme": r["nme"], "failure_rate": r["failure_rate"], "nme_per_point": r["nme_per_point"]}

    def score(self, meter, task, pred, batch, raws):
        meter.update(pred.float(), batch[task.name], batch.get(f"{task.name}_visible"))

    def baseline(self, task):
        return _MeanShape(task)

    def table(self, task, rows, baseline):
        names = list(task.class_names) or [str(i) for i in range(task.num_outputs)]
        body = [[label, *r["nme_per_point"], r["nme"], r["failure_rate"]] for label, r in rows]
        if baseline:
            per_point = baseline.get("mean_shape_nme_per_point") or [NAN] * len(names)
            body.append(["mean shape", *per_point, baseline["mean_shape_nme"], baseline["mean_shape_failure_rate"]])
        header = [task.name, *[f"{n} NME" for n in names], "mean NME", "failure"]
        return f"{task.name}: NME % (lower is better)", header, body

    def unflip(self, task, value, crop_size):
        # normalised x = pixel x / crop_size, pixel centres at integers: a mirror maps x to S - 1 - x
        out = super().unflip(task, value, crop_size)
        out[..., 0] = (crop_size - 1) / crop_size - out[..., 0]
        return out

    def to_image(self, task, value, matrix, crop_size, height, width):
        from facemtl.data.transforms import invert_affine, warp_points

        crop_px = value.numpy().astype(np.float64) * crop_size  # normalised [0, 1] -> crop pixels
        return warp_points(crop_px, invert_affine(matrix))

    def to_json(self, task, value, mask_path=None):
        return [[round(float(x), 2), round(float(y), 2)] for x, y in value]

    def draw(self, out, task, value, thickness, names=False):
        import cv2

        from facemtl.inference.render import POINT_COLOUR, put_text

        radius = max(2, thickness + 1)
        for k, (x, y) in enumerate(np.asarray(value, np.float64).reshape(-1, 2)):
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(out, (int(round(x)), int(round(y))), radius, POINT_COLOUR, -1)
                if names and k < len(task.class_names):
                    # half the face's mark scale (thickness = 2 x scale): names sized by the face, like its dots
                    put_text(out, task.class_names[k], (int(round(x)) + radius + 1, int(round(y)) - radius),
                             thickness / 4)
        return []


class _MeanShape(Baseline):
    """The test set's own mean shape (mean of the visible normalised points of each landmark)
    predicted for every face."""

    def __init__(self, task):
        n = task.num_outputs
        self.task = task
        self.sums = _Sums(point_sum=((n, 2), torch.float64), count=((n,), torch.int64))
        self.targets: list[torch.Tensor] = []
        self.visible: list[torch.Tensor] = []

    def update(self, batch, raws):
        t = batch[self.task.name].double()
        v = batch.get(f"{self.task.name}_visible")
        v = torch.ones(t.shape[:2], dtype=torch.bool) if v is None else v.bool()
        # where(), not multiply: invisible points may hold NaN coordinates.
        self.sums._add("point_sum", torch.where(v[..., None], t, 0.0).sum(0))
        self.sums._add("count", v.sum(0))
        self.targets.append(t)
        self.visible.append(v)

    def result(self):
        kind = KINDS["points"]
        s = self.sums.all_reduce().state()
        mean = s["point_sum"] / s["count"][:, None]  # NaN for a point never visible
        meter = kind.meter(self.task)
        if self.targets:
            t = torch.cat(self.targets)
            meter.update(mean.expand_as(t), t, torch.cat(self.visible))
        meter.all_reduce()  # also on a process whose shard was empty
        if int(meter.state()["count"]) == 0:
            return None
        r = kind.result(self.task, meter)
        return {"mean_shape_nme": r["nme"], "mean_shape_failure_rate": r["failure_rate"],
                "mean_shape_nme_per_point": r["nme_per_point"]}


# ---------------------------------------------------------------------------------------------
# segmentation


class SegmentationKind(TaskKind):
    name, headline, lower_is_better = "segmentation", "overall", False
    max_classes = IGNORE_INDEX
    average = _average_probabilities
    keep_loss = _soft_label_distance

    def loss(self, task, output, target, visible=None):
        return F.cross_entropy(output, target.long(), ignore_index=IGNORE_INDEX)

    def add_target(self, sample, task, raw, width, height):
        sample[task.name] = torch.from_numpy(np.ascontiguousarray(raw[task.name]).astype(np.int64))

    def meter(self, task, **options):
        from facemtl.metrics.parsing import ParsingF1

        return ParsingF1(task.num_outputs, task.class_names or None, **options)

    def result(self, task, meter):
        """Per-class F1 and every group the meter scores (eyes, brows, mouth_all, overall)."""
        r = meter.compute()
        out = {"f1": r["f1"]}
        for group in meter.groups:
            out[group] = r.get(group, NAN)
        return out

    def score(self, meter, task, pred, batch, raws):
        target = batch[task.name]
        if _has_crops(batch):
            from facemtl.data.transforms import warp_logits_back

            # Score at the original resolution (iFAN section 4.1.2): warp logits back, then argmax.
            for logits, meta, raw, mask in zip(pred, batch["meta"], raws, _raw_masks(task, raws)):
                full = warp_logits_back(logits.float(), meta["crop_matrix"], raw["image"].shape[:2])
                meter.update(full.argmax(0), mask)
            return
        if pred.shape[-2:] != target.shape[-2:]:
            pred = F.interpolate(pred.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        meter.update(pred.argmax(1), target)

    def baseline(self, task):
        return _ConstantMasks(task)

    def table(self, task, rows, baseline):
        names = list(task.class_names) or [str(i) for i in range(task.num_outputs)]
        groups = [g for g in self.meter(task).groups]
        body = [[label, *[r["f1"].get(c, NAN) for c in names], *[r.get(g, NAN) for g in groups]] for label, r in rows]
        for key, r in (baseline or {}).items():
            body.append([key.replace("_", " "), *[r["f1"].get(c, NAN) for c in names], *[r.get(g, NAN) for g in groups]])
        return f"{task.name}: F1 % (higher is better)", [task.name, *names, *groups], body

    def unflip(self, task, value, crop_size):
        return super().unflip(task, value, crop_size).flip(-1)  # classes swapped, then the pixels

    def to_image(self, task, value, matrix, crop_size, height, width):
        from facemtl.inference.predictor import logits_to_mask

        return logits_to_mask(value, matrix, crop_size, height, width)

    def to_json(self, task, value, mask_path=None):
        return mask_path

    def draw_layer(self, out, task, value, alpha):
        from facemtl.inference.render import colour_mask

        if isinstance(value, np.ndarray):
            on = value > 0
            blended = (1 - alpha) * out[on] + alpha * colour_mask(value[on])
            out[on] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)

    def legend_classes(self, task, value):
        return {int(c) for c in np.unique(value) if c} if isinstance(value, np.ndarray) else set()


class _ConstantMasks(Baseline):
    """Every pixel background (class 0) / skin (class "skin", else 1), scored at the resolution
    the model is scored at (the raw image's for crops of real images)."""

    def __init__(self, task):
        self.task = task
        names = list(task.class_names)
        skin = names.index("skin") if "skin" in names else min(1, task.num_outputs - 1)
        kind = KINDS["segmentation"]
        self.constants = {"all_background": (0, kind.meter(task)), "all_skin": (skin, kind.meter(task))}

    def update(self, batch, raws):
        masks = _raw_masks(self.task, raws) if _has_crops(batch) else [batch[self.task.name]]
        for mask in masks:
            for cls, meter in self.constants.values():
                meter.update(torch.full_like(mask, cls), mask)

    def result(self):
        for _, meter in self.constants.values():
            meter.all_reduce()
        if int(self.constants["all_background"][1].state()["confusion"].sum()) == 0:
            return None
        return {key: KINDS["segmentation"].result(self.task, meter) for key, (_, meter) in self.constants.items()}


# ---------------------------------------------------------------------------------------------
# category


class CategoryKind(TaskKind):
    name, headline, lower_is_better = "category", "accuracy", False
    label_per_image = True
    average = _average_probabilities
    keep_loss = _soft_label_distance

    def loss(self, task, output, target, visible=None):
        return F.cross_entropy(output, target.long())

    def add_target(self, sample, task, raw, width, height):
        sample[task.name] = torch.tensor(int(raw[task.name]), dtype=torch.long)

    def meter(self, task, **options):
        from facemtl.metrics.classification import ConfusionMatrix

        return ConfusionMatrix(task.num_outputs, task.class_names or None, **options)

    def result(self, task, meter):
        r = meter.compute()
        return {"accuracy": r["accuracy"], "mean_class_accuracy": r["mean_class_accuracy"], "confusion": r["confusion"]}

    def baseline(self, task):
        return _MajorityClass(task)

    def table(self, task, rows, baseline):
        body = [[label, r["accuracy"], r["mean_class_accuracy"]] for label, r in rows]
        if baseline:
            body.append([f"majority ({baseline['majority_class']})", baseline["majority_accuracy"],
                         baseline["majority_mean_class_accuracy"]])
        return f"{task.name}: % (higher is better)", [task.name, "accuracy", "mean_class_acc"], body

    def to_image(self, task, value, matrix, crop_size, height, width):
        probs = torch.softmax(value, dim=0).numpy().astype(np.float64)
        names = task.class_names or tuple(str(k) for k in range(task.num_outputs))
        return {"label": names[int(probs.argmax())], "probs": {n: float(p) for n, p in zip(names, probs)}}

    def to_json(self, task, value, mask_path=None):
        return {"label": value["label"], "probs": {k: round(p, 5) for k, p in value["probs"].items()}}

    def draw(self, out, task, value, thickness, names=False):
        return [f"{task.name}: {value['label']} {value['probs'][value['label']]:.2f}"]


class _MajorityClass(Baseline):
    """The most frequent class predicted for every sample."""

    def __init__(self, task):
        self.task = task
        self.sums = _Sums(count=((task.num_outputs,), torch.int64))

    def update(self, batch, raws):
        target = batch[self.task.name]
        self.sums._add("count", torch.bincount(target.reshape(-1).long(), minlength=self.task.num_outputs))

    def result(self):
        counts = self.sums.all_reduce().state()["count"]
        if int(counts.sum()) == 0:
            return None
        # The constant predictor's confusion matrix: every row's samples in the majority column.
        majority = int(counts.argmax())
        kind = KINDS["category"]
        meter = kind.meter(self.task)
        confusion = torch.zeros_like(meter.state()["confusion"])
        confusion[:, majority] = counts
        r = meter.merge({"confusion": confusion}).compute()
        return {"majority_class": meter.class_names[majority], "majority_accuracy": r["accuracy"],
                "majority_mean_class_accuracy": r["mean_class_accuracy"]}


KINDS: dict[str, TaskKind] = {k.name: k for k in (PointsKind(), SegmentationKind(), CategoryKind())}


def kind_of(task) -> TaskKind:
    """The table entry of a task's kind."""
    try:
        return KINDS[task.kind]
    except KeyError:
        raise FacemtlError(f"task {task.name!r}: kind must be one of {tuple(KINDS)}, got {task.kind!r}") from None
