"""Metrics with accumulated counts (reducible across processes): landmarks, parsing, classification.

Every meter keeps the protocol of :class:`facemtl.metrics.base.Meter`: ``update``, ``compute``,
``reset``, ``state``, ``merge``, ``all_reduce``.
"""

from facemtl.errors import FacemtlError
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
    """The meter of a task's KIND (never its name): points -> :class:`LandmarkMeter`,
    segmentation -> :class:`ParsingF1`, category -> :class:`ConfusionMatrix`.

    ``options`` go to the meter (``eye_indices``/``threshold`` for points, ``groups`` for
    segmentation). A points task with other than 5 points must say which points are the eyes.
    """
    task = get_task(task)
    names = task.class_names or None
    if task.kind == "points":
        if task.num_outputs != 5 and "eye_indices" not in options:
            raise FacemtlError(f"task {task.name!r} has {task.num_outputs} points: pass eye_indices= "
                               "(e.g. 300W (36, 45), WFLW (60, 72)) to score its NME")
        return LandmarkMeter(task.num_outputs, **options)
    if task.kind == "segmentation":
        return ParsingF1(task.num_outputs, names, **options)
    return ConfusionMatrix(task.num_outputs, names, **options)
