"""Metrics with accumulated counts (reducible across processes): landmarks, parsing, classification.

Every meter keeps the protocol of :class:`facemtl.metrics.base.Meter`: ``update``, ``compute``,
``reset``, ``state``, ``merge``, ``all_reduce``.
"""

from facemtl.metrics.base import Meter
from facemtl.metrics.classification import ConfusionMatrix
from facemtl.metrics.landmarks import LandmarkMeter, auc, ced_curve, failure_rate, nme, per_point_nme
from facemtl.metrics.parsing import HELEN_CLASSES, PARSING_GROUPS, ParsingF1
from facemtl.tasks import get_task

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
    "meter_for",
    "nme",
    "per_point_nme",
]


def meter_for(task, **options) -> Meter:
    """The meter of a task's KIND (never its name), from the task-kind table
    (:mod:`facemtl.kinds`): points -> :class:`LandmarkMeter` (NME normalised by the task's
    eye points), segmentation -> :class:`ParsingF1`, category -> :class:`ConfusionMatrix`.
    ``options`` go to the meter (``eye_indices``/``threshold`` for points, ``groups`` for
    segmentation)."""
    from facemtl.kinds import kind_of

    task = get_task(task)
    return kind_of(task).meter(task, **options)
