"""Face parsing F-score (Helen protocol, as reported in iFAN's parsing table).

Per-class F1 = 2|G ∩ P| / (|G| + |P|) with pixel counts ACCUMULATED over the whole test set
(never averaged per image or per batch). Groups are scored as binary masks: a pixel is in a
group in the ground truth / prediction when its class is one of the group's classes, and it is
a true positive when both fall in the group, even with different classes inside it (a left-eye
pixel predicted as right eye is wrong for "left_eye" but right for "eyes").

Everything comes from one confusion histogram C[g, p] (rows ground truth), so a group's
counts are sums of a block of C and meters merge / all-reduce exactly.

A class or group with neither ground-truth nor predicted pixels has nothing to score and is
OMITTED from the result (not reported as 100, which would be invented).
"""

from __future__ import annotations

import torch

from facemtl.errors import FacemtlError
from facemtl.metrics.base import Meter, as_tensor, require_data
from facemtl.tasks import IGNORE_INDEX, STANDARD_TASKS

HELEN_CLASSES: tuple[str, ...] = STANDARD_TASKS["parsing"].class_names

# Helen F-score groups, keyed by class NAMES so any label set using these names (LaPa, or a
# CelebAMask-HQ mapping) reuses them. "overall" = eyes + brows + nose + mouth.
PARSING_GROUPS: dict[str, tuple[str, ...]] = {
    "eyes": ("left_eye", "right_eye"),
    "brows": ("left_brow", "right_brow"),
    "mouth_all": ("upper_lip", "inner_mouth", "lower_lip"),
    "overall": ("left_brow", "right_brow", "left_eye", "right_eye", "nose", "upper_lip", "inner_mouth", "lower_lip"),
}


def _f1(tp: torch.Tensor, gt: torch.Tensor, pr: torch.Tensor) -> float | None:
    denom = int(gt) + int(pr)
    return None if denom == 0 else 100.0 * 2.0 * int(tp) / denom


class ParsingF1(Meter):
    """Accumulated per-class and group F1 in percent.

    ``groups`` maps a group name to class names. By default :data:`PARSING_GROUPS`,
    keeping only the groups whose classes all exist in ``class_names``; groups given
    explicitly must name existing classes.

    ``compute()`` -> ``{"f1": {class_name: %}, "eyes": %, "brows": %, "mouth_all": %, "overall": %}``
    (entries with no pixels in GT or prediction are omitted, see the module docstring).
    """

    def __init__(self, num_classes: int = 11, class_names=None, groups: dict | None = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = int(num_classes)
        if class_names is None:
            class_names = HELEN_CLASSES if self.num_classes == len(HELEN_CLASSES) else [
                f"class_{i}" for i in range(self.num_classes)]
        self.class_names = tuple(class_names)
        if len(self.class_names) != self.num_classes:
            raise FacemtlError(f"ParsingF1: {len(self.class_names)} class names for {self.num_classes} classes")
        self.ignore_index = ignore_index
        index = {n: i for i, n in enumerate(self.class_names)}
        if groups is None:
            groups = {g: names for g, names in PARSING_GROUPS.items() if all(n in index for n in names)}
        self.groups: dict[str, tuple[int, ...]] = {}
        for g, names in groups.items():
            missing = [n for n in names if n not in index]
            if missing:
                raise FacemtlError(f"ParsingF1: group {g!r} names unknown classes {missing}; classes: {self.class_names}")
            self.groups[g] = tuple(index[n] for n in names)
        super().__init__()

    def _empty_state(self) -> dict[str, torch.Tensor]:
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    def update(self, pred_mask, target_mask) -> None:
        """Add integer masks of any matching shape ((H, W) or (B, H, W)); target ``ignore_index``
        pixels are skipped. Logits (B, C, H, W) are also accepted as ``pred_mask`` (argmax over C)."""
        pred, target = as_tensor(pred_mask, "pred_mask"), as_tensor(target_mask, "target_mask")
        if pred.is_floating_point() and pred.dim() == target.dim() + 1 and target.dim() in (2, 3):
            axis = 1 if target.dim() == 3 else 0  # (B, C, H, W) or a single (C, H, W)
            if pred.shape[axis] != self.num_classes:
                raise FacemtlError(f"ParsingF1: logits {tuple(pred.shape)} do not have {self.num_classes} classes "
                                   f"on axis {axis}")
            pred = pred.argmax(axis)
        if pred.shape != target.shape:
            raise FacemtlError(f"ParsingF1: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                               "masks must have the same shape (resize logits to the target size first)")
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long().to(pred.device)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        c = self.num_classes
        for name, t in (("target", target), ("prediction", pred)):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= c):
                raise FacemtlError(f"ParsingF1: {name} mask has class ids outside 0..{c - 1} "
                                   f"(and {self.ignore_index} = ignore for the target)")
        hist = torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)
        self._add("confusion", hist)

    def compute(self) -> dict:
        conf = self._state["confusion"]
        require_data(self, conf.sum())
        gt, pr, tp = conf.sum(1), conf.sum(0), conf.diagonal()
        result: dict = {"f1": {}}
        for i, name in enumerate(self.class_names):
            f = _f1(tp[i], gt[i], pr[i])
            if f is not None:
                result["f1"][name] = f
        for g, idx in self.groups.items():
            ids = list(idx)
            f = _f1(conf[ids][:, ids].sum(), gt[ids].sum(), pr[ids].sum())
            if f is not None:
                result[g] = f
        return result
