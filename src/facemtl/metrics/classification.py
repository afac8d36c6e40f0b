"""Classification metrics (emotion, gender, smile, glasses, pose): a confusion matrix.

C[i, j] counts samples of true class i predicted as j (rows ground truth). Accuracy is
trace / total; mean per-class (balanced) accuracy is the mean of the row-normalised diagonal
over the classes that have samples, which is what the emotion results of iFAN are compared
with on imbalanced sets.
"""

from __future__ import annotations

import torch

from facemtl.errors import FacemtlError
from facemtl.metrics.base import Meter, as_tensor, require_data


class ConfusionMatrix(Meter):
    """``compute()`` -> ``{"accuracy": %, "mean_class_accuracy": %, "confusion": [[int]],
    "per_class_accuracy": {class_name: %}}`` (per-class only for classes with samples)."""

    def __init__(self, num_classes: int, class_names=None) -> None:
        self.num_classes = int(num_classes)
        self.class_names = tuple(class_names) if class_names is not None else tuple(
            f"class_{i}" for i in range(self.num_classes))
        if len(self.class_names) != self.num_classes:
            raise FacemtlError(f"ConfusionMatrix: {len(self.class_names)} class names for {self.num_classes} classes")
        super().__init__()

    def _empty_state(self) -> dict[str, torch.Tensor]:
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    def update(self, pred, target) -> None:
        """``pred``: class ids (B,) or logits (B, N); ``target``: class ids (B,)."""
        p, t = as_tensor(pred, "pred"), as_tensor(target, "target").reshape(-1).long()
        if p.dim() == 2:
            if p.shape[1] != self.num_classes:
                raise FacemtlError(f"ConfusionMatrix: logits have {p.shape[1]} classes, expected {self.num_classes}")
            p = p.argmax(1)
        p = p.reshape(-1).long().to(t.device)
        if p.numel() != t.numel():
            raise FacemtlError(f"ConfusionMatrix: {p.numel()} predictions for {t.numel()} targets")
        c = self.num_classes
        for name, x in (("target", t), ("prediction", p)):
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= c):
                raise FacemtlError(f"ConfusionMatrix: {name} class ids must be in 0..{c - 1}")
        self._add("confusion", torch.bincount(t * c + p, minlength=c * c).reshape(c, c))

    def compute(self) -> dict:
        conf = self._state["confusion"]
        require_data(self, conf.sum())
        rows = conf.sum(1)
        has = rows > 0
        recall = conf.diagonal()[has].double() / rows[has].double()
        return {
            "accuracy": 100.0 * float(conf.diagonal().sum()) / float(conf.sum()),
            "mean_class_accuracy": 100.0 * float(recall.mean()),
            "confusion": conf.tolist(),
            "per_class_accuracy": {n: 100.0 * float(r) for n, r in
                                   zip([n for n, h in zip(self.class_names, has.tolist()) if h], recall)},
        }
