"""Metrics with accumulated counts (reducible across processes): landmarks, parsing, classification.

Every meter keeps the protocol of :class:`facemtl.metrics.base.Meter`: ``update``, ``compute``,
``reset``, ``state``, ``merge``, ``all_reduce``.
"""

from facemtl.metrics.base import Meter
from facemtl.metrics.classification import ConfusionMatrix
from facemtl.metrics.landmarks import LandmarkMeter, auc, ced_curve, failure_rate, nme, per_point_nme
from facemtl.metrics.parsing import HELEN_CLASSES, PARSING_GROUPS, ParsingF1

__all__ = [
    "ConfusionMatrix",
    "HELEN_CLASSES",
    "LandmarkMeter",
    "Meter",
    "PARSING_GROUPS",
    "ParsingF1",
    "auc",
    "ced_curve",
    "failure_rate",
    "nme",
    "per_point_nme",
]
