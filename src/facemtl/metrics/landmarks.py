"""Landmark metrics: NME, per-point NME, failure rate, CED curve and its AUC.

NME of one image (the measure of iFAN Table 1 and DCNet's MTFL/AFLW figures) is the mean over
its (visible) points of ``||p_i - g_i||_2 / d``, with ``d`` the inter-ocular distance of the
ground truth (or a given normaliser such as AFLW's box size). The functions return FRACTIONS
(0.05 = 5 %); :class:`LandmarkMeter` reports percent. Any coordinate units work (pixels or
normalised [0, 1]) as long as prediction and target agree, because ``d`` is measured in them.

Conventions (``docs/datasets.md``, "Metrics"): 5-point sets use ``eye_indices=(0, 1)`` (eye
centres); 300W inter-ocular ``(36, 45)``, inter-pupil ``(range(36, 42), range(42, 48))`` (a
pair of index lists: each eye is the mean of its points); WFLW ``(60, 72)`` or ``(96, 97)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from facemtl.errors import FacemtlError
from facemtl.metrics.base import Meter, as_tensor, require_data

FAILURE_THRESHOLD = 0.10  # TCDCN / DCNet: an image fails when its NME exceeds 10 %


def _points(x, name: str) -> torch.Tensor:
    t = as_tensor(x, name).to(torch.float64)
    if t.dim() != 3 or t.shape[-1] != 2:
        raise FacemtlError(f"{name}: expected points of shape (B, K, 2), got {tuple(t.shape)}")
    return t


def _eye_centre(target: torch.Tensor, index) -> torch.Tensor:
    """One eye's position (B, 2): a point, or the mean of several (inter-pupil convention)."""
    idx = [int(index)] if isinstance(index, int) else [int(i) for i in index]
    k = target.shape[1]
    if not idx or any(not -k <= i < k for i in idx):
        raise FacemtlError(f"eye_indices: {index!r} is not a valid point index (or list of them) for {k} points")
    return target[:, idx].mean(1)


def _normaliser(target: torch.Tensor, eye_indices, norm) -> torch.Tensor:
    if norm is not None:
        d = as_tensor(norm, "norm").to(torch.float64).reshape(-1).to(target.device)
        if d.numel() != target.shape[0]:
            raise FacemtlError(f"norm: expected {target.shape[0]} values (one per image), got {d.numel()}")
    else:
        if not isinstance(eye_indices, Sequence) or len(eye_indices) != 2:
            raise FacemtlError(f"eye_indices: expected a pair (left, right), got {eye_indices!r}")
        d = (_eye_centre(target, eye_indices[0]) - _eye_centre(target, eye_indices[1])).norm(dim=-1)
    if not bool((d > 0).all()):
        raise FacemtlError("NME normaliser must be a positive number for every image "
                           "(coincident or missing eye points? pass norm= for such sets, e.g. AFLW box size)")
    return d


def per_point_nme(pred, target, eye_indices=(0, 1), norm=None) -> torch.Tensor:
    """Normalised error of every point, ``||p_i - g_i||_2 / d``, shape (B, K) (fractions)."""
    p, g = _points(pred, "pred"), _points(target, "target")
    if p.shape != g.shape:
        raise FacemtlError(f"pred {tuple(p.shape)} and target {tuple(g.shape)} must have the same shape")
    d = _normaliser(g, eye_indices, norm)
    return (p - g.to(p.device)).norm(dim=-1) / d.to(p.device)[:, None]


def _visible_mask(visible, shape) -> torch.Tensor | None:
    if visible is None:
        return None
    v = as_tensor(visible, "visible").bool()
    if tuple(v.shape) != tuple(shape):
        raise FacemtlError(f"visible: expected shape {tuple(shape)} (B, K), got {tuple(v.shape)}")
    return v


def _masked_mean(err: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    if v is None:
        return err.mean(1)
    v = v.to(err.device)
    # where(), not multiply: invisible points may hold NaN coordinates.
    return torch.where(v, err, 0.0).sum(1) / v.sum(1)


def nme(pred, target, eye_indices=(0, 1), visible=None, norm=None) -> torch.Tensor:
    """Per-image NME (B,) as a fraction: mean over visible points of the per-point error.

    An image with no visible point has no NME: its entry is NaN (:class:`LandmarkMeter`
    skips such images).
    """
    err = per_point_nme(pred, target, eye_indices, norm)
    return _masked_mean(err, _visible_mask(visible, err.shape))


def _errors(nme, name: str) -> torch.Tensor:
    """Per-image NME as a 1-D float tensor in its OWN precision: comparing a float32 0.1 with
    the float64 threshold 0.1 would call it a failure (float32(0.1) > 0.1)."""
    e = as_tensor(nme, "nme").reshape(-1)
    if e.numel() == 0:
        raise FacemtlError(f"{name}: no NME values given")
    return e if e.is_floating_point() else e.double()


def failure_rate(nme, threshold: float = FAILURE_THRESHOLD) -> float:
    """Fraction of images whose NME is strictly above ``threshold`` (exactly 10 % is no failure)."""
    e = _errors(nme, "failure_rate")
    return float((e > torch.tensor(threshold, dtype=e.dtype)).double().mean())


def ced_curve(nme, threshold: float = FAILURE_THRESHOLD, steps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative error distribution: ``steps + 1`` thresholds from 0 to ``threshold`` and the
    fraction of images with NME <= each of them."""
    e = _errors(nme, "ced_curve").cpu()
    t = torch.linspace(0.0, threshold, steps + 1, dtype=torch.float64)
    return t, (e[None, :] <= t.to(e.dtype)[:, None]).double().mean(1)


def auc(nme, threshold: float = FAILURE_THRESHOLD) -> float:
    """Area under the CED curve from 0 to ``threshold``, divided by ``threshold`` (in [0, 1]).

    Computed exactly, not from a sampled curve: the CED is a step function, and the area an
    image with error ``e`` adds is ``max(0, threshold - e)``, so AUC = mean(max(0, 1 - e / threshold)).
    """
    e = _errors(nme, "auc").double()
    return float((1.0 - e / threshold).clamp_min(0.0).mean())


class LandmarkMeter(Meter):
    """Accumulates NME over a test set (sums and counts; reducible across processes).

    ``compute()`` -> ``{"nme": %, "failure_rate": %, "nme_per_point": [% per point], "auc": %}``.
    The mean NME is the mean over images of the per-image NME; per-point NME averages each
    point over the images where it is visible (NaN for a point never visible). Images with no
    visible point are skipped.
    """

    _concat = ("nme_values",)

    def __init__(self, num_points: int, eye_indices=(0, 1), threshold: float = FAILURE_THRESHOLD) -> None:
        self.num_points = int(num_points)
        self.eye_indices = eye_indices
        self.threshold = float(threshold)
        super().__init__()

    def _empty_state(self) -> dict[str, torch.Tensor]:
        k = self.num_points
        return {
            "nme_sum": torch.zeros((), dtype=torch.float64),
            "count": torch.zeros((), dtype=torch.int64),
            "failures": torch.zeros((), dtype=torch.int64),
            "point_sum": torch.zeros(k, dtype=torch.float64),
            "point_count": torch.zeros(k, dtype=torch.int64),
            "nme_values": torch.zeros(0, dtype=torch.float64),  # per image, for the CED curve
        }

    def update(self, pred, target, visible=None, norm=None) -> None:
        err = per_point_nme(pred, target, self.eye_indices, norm)
        if err.shape[1] != self.num_points:
            raise FacemtlError(f"LandmarkMeter: expected {self.num_points} points, got {err.shape[1]}")
        v = _visible_mask(visible, err.shape)
        v = torch.ones_like(err, dtype=torch.bool) if v is None else v.to(err.device)
        per_image = _masked_mean(err, v)
        scored = v.any(1)
        per_image = per_image[scored]
        self._add("nme_sum", per_image.sum())
        self._add("count", torch.tensor(per_image.numel()))
        self._add("failures", (per_image > self.threshold).sum())
        self._add("point_sum", torch.where(v, err, 0.0).sum(0))
        self._add("point_count", v.sum(0))
        self._add("nme_values", per_image)

    @property
    def per_image_nme(self) -> torch.Tensor:
        """NME (fraction) of every image seen, in update order; feed to :func:`ced_curve`."""
        return self._state["nme_values"].clone()

    def compute(self) -> dict:
        s = self._state
        require_data(self, s["count"])
        n = float(s["count"])
        per_point = (s["point_sum"] / s["point_count"]).mul(100.0)  # 0/0 -> NaN: never visible
        return {
            "nme": 100.0 * float(s["nme_sum"]) / n,
            "failure_rate": 100.0 * float(s["failures"]) / n,
            "nme_per_point": [float(x) for x in per_point],
            "auc": 100.0 * auc(s["nme_values"], self.threshold),
        }
