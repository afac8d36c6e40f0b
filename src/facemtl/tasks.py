"""Tasks: named predictions with a kind, a loss and a flip permutation.

A task's kind decides everything model- and metric-side: models build their heads
from ``task.kind``, never from ``task.name``.

Kinds and target conventions (the ``Sample`` dict a model is trained on):

* ``points``: target ``float (K, 2)`` of (x, y) NORMALISED to [0, 1] by the sample
  image's width and height; model output ``(B, K, 2)`` in the same units.
  Loss: Euclidean (mean squared point distance), iFAN section 3.2.
* ``segmentation``: target ``long (H, W)`` class ids (255 = ignore); model output
  logits ``(B, C, H, W)``. Loss: per-pixel cross entropy.
* ``category``: target ``long ()``; model output logits ``(B, N)``. Loss: cross entropy.

``flip_permutation[i]`` is the index that point/class ``i`` becomes after a horizontal
flip (left eye <-> right eye, left brow class <-> right brow class, left pose <-> right).
The flip tables are label-schema knowledge and live here, with the tasks: augmentation takes
them from the tasks being trained (and from :data:`POINT_SETS` for a reader's point set).

Where tasks come from:

* :data:`STANDARD_TASKS`: the seven names every reader converts its labels to;
* :data:`DATASET_TASKS`: the label schemas of particular datasets (AFLW's 21 points
  ``aflw21``, 300W's ``landmarks68``, WFLW's ``landmarks98``, CelebAMask-HQ's ``parsing19``);
* a reader's own tasks (``TASKS`` of its module, e.g. CelebA's 40 binary attributes);
* the user's declarations (a config's ``tasks:`` section), built by :func:`define_task`.

"Left" and "right" in point and class names are taken as image-left and image-right, as for
MTFL's 5 points (for AFLW and CelebAMask-HQ an assumption, unconfirmed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from facemtl.errors import FacemtlError

if TYPE_CHECKING:  # the task tables load without torch (fast `facemtl --help`)
    import torch

Kind = Literal["points", "segmentation", "category"]
KINDS: tuple[str, ...] = ("points", "segmentation", "category")
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    num_outputs: int  # K points, C segmentation classes or N categories
    class_names: tuple[str, ...] = ()  # point names for points, class names otherwise
    flip_permutation: tuple[int, ...] = ()  # empty = identity

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FacemtlError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.class_names and len(self.class_names) != self.num_outputs:
            raise FacemtlError(f"task {self.name!r}: {len(self.class_names)} names for {self.num_outputs} outputs")
        if self.flip_permutation and sorted(self.flip_permutation) != list(range(self.num_outputs)):
            raise FacemtlError(f"task {self.name!r}: flip_permutation is not a permutation of 0..{self.num_outputs - 1}")

    @property
    def flip(self) -> tuple[int, ...]:
        return self.flip_permutation or tuple(range(self.num_outputs))

    @property
    def eye_indices(self) -> tuple[int, ...]:
        """The two points whose distance normalises a points task's NME, found by name: the eye
        centres ``left_eye``/``right_eye`` (MTFL's 5 points, AFLW's 21), else the outer eye
        corners ``left_eye_outer``/``right_eye_outer`` (300W, WFLW); () when neither pair is
        named (a metric must then be told, never guess)."""
        from facemtl.kinds import kind_of

        names = list(self.class_names) if kind_of(self).named_points else []
        for pair in (("left_eye", "right_eye"), ("left_eye_outer", "right_eye_outer")):
            if set(pair) <= set(names):
                return names.index(pair[0]), names.index(pair[1])
        return ()

    def loss(self, output: torch.Tensor, target: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss of a batch (the task-kind table's, :mod:`facemtl.kinds`); ``visible``
        (B, K) masks missing points."""
        from facemtl.kinds import kind_of  # kinds -> metrics -> tasks: imported on use

        return kind_of(self).loss(self, output, target, visible)


STANDARD_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "landmarks",
            "points",
            5,
            ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right"),
            (1, 0, 2, 4, 3),
        ),
        Task(
            "parsing",
            "segmentation",
            11,
            (
                "background",
                "skin",
                "left_brow",
                "right_brow",
                "left_eye",
                "right_eye",
                "nose",
                "upper_lip",
                "inner_mouth",
                "lower_lip",
                "hair",
            ),
            (0, 1, 3, 2, 5, 4, 6, 7, 8, 9, 10),
        ),
        # FER2013 names and order.
        Task("emotion", "category", 7, ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")),
        # MTFL attributes, 0-based (MTFL's files are 1-based).
        Task("gender", "category", 2, ("male", "female")),
        Task("smile", "category", 2, ("smiling", "not_smiling")),
        Task("glasses", "category", 2, ("glasses", "no_glasses")),
        Task("pose", "category", 5, ("left_profile", "left", "frontal", "right", "right_profile"), (4, 3, 2, 1, 0)),
    )
}


def _numbered(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}_{k}" for k in range(n))


# AFLW's 21 points in feature_id order 1..21 (LeftBrowLeftCorner .. ChinCenter). The eye centres
# are named ``left_eye`` / ``right_eye`` like the 5-point set's, so NME is normalised by the
# distance between the eye centres, the inter-ocular distance of Deep Collaboration section 4.1.
AFLW21_NAMES = (
    "left_brow_left", "left_brow_center", "left_brow_right", "right_brow_left", "right_brow_center",
    "right_brow_right", "left_eye_left", "left_eye", "left_eye_right", "right_eye_left", "right_eye",
    "right_eye_right", "left_ear", "nose_left", "nose", "nose_right", "right_ear", "mouth_left",
    "mouth_center", "mouth_right", "chin",
)
_AFLW21_FLIP = (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 16, 15, 14, 13, 12, 19, 18, 17, 20)

# iBUG / 300W 68 points (0-based): jaw 0..16, brows 17..26, nose 27..35, eyes 36..47, lips 48..67.
# The outer eye corners (36, 45) are the 300W inter-ocular normaliser.
IBUG68_NAMES = (
    _numbered("jaw", 17) + _numbered("left_brow", 5) + _numbered("right_brow", 5)
    + _numbered("nose_bridge", 4) + _numbered("nostril", 5)
    + ("left_eye_outer", "left_eye_upper_outer", "left_eye_upper_inner", "left_eye_inner", "left_eye_lower_inner",
       "left_eye_lower_outer", "right_eye_inner", "right_eye_upper_inner", "right_eye_upper_outer", "right_eye_outer",
       "right_eye_lower_outer", "right_eye_lower_inner")
    + ("mouth_left",) + _numbered("upper_lip", 5) + ("mouth_right",) + _numbered("lower_lip", 5)
    + _numbered("inner_lip", 8)
)
_IBUG68_FLIP = (
    tuple(range(16, -1, -1))  # jaw 0..16 reversed
    + (26, 25, 24, 23, 22, 21, 20, 19, 18, 17)  # brows
    + (27, 28, 29, 30, 35, 34, 33, 32, 31)  # nose bridge, nostrils
    + (45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40)  # eyes
    + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55)  # outer lips
    + (64, 63, 62, 61, 60, 67, 66, 65)  # inner lips
)
# WFLW 98: contour 0..32, brows 33..50, nose 51..59, eyes 60..75, mouth 76..95, pupils 96/97.
# The outer eye corners (60, 72) are WFLW's inter-ocular normaliser.
WFLW98_NAMES = (
    _numbered("contour", 33) + _numbered("left_brow", 9) + _numbered("right_brow", 9) + _numbered("nose", 9)
    + ("left_eye_outer",) + _numbered("left_eye_upper", 3) + ("left_eye_inner",) + _numbered("left_eye_lower", 3)
    + ("right_eye_inner",) + _numbered("right_eye_upper", 3) + ("right_eye_outer",) + _numbered("right_eye_lower", 3)
    + ("mouth_left",) + _numbered("upper_lip", 5) + ("mouth_right",) + _numbered("lower_lip", 5)
    + _numbered("inner_lip", 8) + ("left_pupil", "right_pupil")
)
_WFLW98_FLIP = (
    tuple(range(32, -1, -1))
    + (46, 45, 44, 43, 42, 50, 49, 48, 47, 37, 36, 35, 34, 33, 41, 40, 39, 38)
    + (51, 52, 53, 54, 59, 58, 57, 56, 55)
    + (72, 71, 70, 69, 68, 75, 74, 73, 64, 63, 62, 61, 60, 67, 66, 65)
    + (82, 81, 80, 79, 78, 77, 76, 87, 86, 85, 84, 83, 92, 91, 90, 89, 88, 95, 94, 93)
    + (97, 96)
)
# CelebAMask-HQ's 19 classes, its own names and order (l_eye <-> r_eye, l_brow <-> r_brow, l_ear <-> r_ear).
CELEBAMASK19_NAMES = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                      "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")

DATASET_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("aflw21", "points", 21, AFLW21_NAMES, _AFLW21_FLIP),
        Task("landmarks68", "points", 68, IBUG68_NAMES, _IBUG68_FLIP),
        Task("landmarks98", "points", 98, WFLW98_NAMES, _WFLW98_FLIP),
        Task("parsing19", "segmentation", 19, CELEBAMASK19_NAMES,
             (0, 1, 2, 3, 5, 4, 7, 6, 9, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18)),
    )
}

# A reader's ``meta["point_set"]`` -> the task whose flip permutation its ``landmarks`` follow
# (readers that put a non-5-point set under ``landmarks``). LaPa's 106 points ("lapa106"):
# layout not verified here, so no entry (flipping them raises).
POINT_SETS: dict[str, Task] = {
    "mtfl5": STANDARD_TASKS["landmarks"],
    "ibug68": DATASET_TASKS["landmarks68"],
    "aflw21": DATASET_TASKS["aflw21"],
    "wflw98": DATASET_TASKS["landmarks98"],
}


class TaskDefinitionError(FacemtlError):
    """A bad field of a task declaration: ``field``, what was ``expected`` and the ``value``
    (the config names the key and file line from these)."""

    def __init__(self, name: str, field: str, expected: str, value) -> None:
        self.field, self.expected, self.value = field, expected, value
        super().__init__(f"task {name!r}: bad value for {field!r}: expected {expected}, got {value!r}")


def define_task(name: str, kind: str, classes=(), points: int | None = None, flip=(), left_right=()) -> Task:
    """A user's task from its declaration (a config's ``tasks:`` entry).

    * ``points``: ``points`` = K, or point names in ``classes`` (or both, agreeing);
    * ``segmentation`` / ``category``: ``classes``, at least 2 names (at most 255 for masks:
      255 is the ignore label);
    * the horizontal flip: ``flip``, the permutation itself (point/class ``i`` becomes
      ``flip[i]``), or ``left_right``, pairs of names swapped by a flip (the rest stay); not
      both. A flip must be its own inverse. Neither: the identity.
    """
    from facemtl.kinds import KINDS as KIND_TABLE

    if kind not in KINDS:
        raise TaskDefinitionError(name, "kind", "one of " + ", ".join(KINDS), kind)
    spec = KIND_TABLE[kind]
    classes = tuple(classes)
    if any(not isinstance(c, str) or not c for c in classes):
        raise TaskDefinitionError(name, "classes", "a list of non-empty names (quote yes/no/on/off)", list(classes))
    lowered = [c.lower() for c in classes]
    if len(set(lowered)) != len(lowered):
        raise TaskDefinitionError(name, "classes", "names that differ (case-insensitively)", list(classes))
    if spec.named_points:
        if points is None and not classes:
            raise TaskDefinitionError(name, "points", "the number of points (or their names under 'classes')", points)
        if points is not None and (isinstance(points, bool) or not isinstance(points, int) or points < 1):
            raise TaskDefinitionError(name, "points", "a positive integer", points)
        if points is not None and classes and points != len(classes):
            raise TaskDefinitionError(name, "points", f"{len(classes)}, the number of point names under 'classes'",
                                      points)
        n = points if points is not None else len(classes)
    else:
        if points is not None:
            raise TaskDefinitionError(name, "points",
                                      f"no 'points' for a {kind} task (name its classes under 'classes')", points)
        if len(classes) < 2:
            raise TaskDefinitionError(name, "classes", "a list of at least 2 class names", list(classes))
        if spec.max_classes is not None and len(classes) > spec.max_classes:
            raise TaskDefinitionError(name, "classes", f"at most {IGNORE_INDEX} classes ({IGNORE_INDEX} is 'ignore')",
                                      len(classes))
        n = len(classes)
    flip, left_right = tuple(flip), tuple(tuple(p) for p in left_right)
    if flip and left_right:
        raise TaskDefinitionError(name, "flip", "either 'flip' or 'left_right', not both", list(flip))
    if left_right:
        if not classes:
            raise TaskDefinitionError(name, "left_right", "pairs of names listed under 'classes' (or use 'flip')",
                                      [list(p) for p in left_right])
        index = {c: i for i, c in enumerate(lowered)}
        perm = list(range(n))
        used: set[int] = set()
        for pair in left_right:
            ids = [index.get(str(c).lower()) for c in pair]
            if len(pair) != 2 or None in ids or ids[0] == ids[1] or used & set(ids):
                raise TaskDefinitionError(name, "left_right", "pairs of two different names from 'classes', each "
                                          "name in one pair", list(pair))
            used.update(ids)
            perm[ids[0]], perm[ids[1]] = ids[1], ids[0]
        flip = tuple(perm)
    elif flip:
        ok = all(isinstance(i, int) and not isinstance(i, bool) for i in flip) and sorted(flip) == list(range(n))
        if not ok:
            raise TaskDefinitionError(name, "flip", f"a permutation of 0..{n - 1}", list(flip))
        if any(flip[flip[i]] != i for i in range(n)):
            raise TaskDefinitionError(name, "flip", "its own inverse (flipping twice gives every index back)",
                                      list(flip))
    return Task(name, kind, n, classes, flip)


KNOWN_TASKS: dict[str, Task] = {**STANDARD_TASKS, **DATASET_TASKS}


def get_task(name: str | Task) -> Task:
    """A task by name (standard or dataset schema), or the task itself."""
    if isinstance(name, Task):
        return name
    try:
        return KNOWN_TASKS[name]
    except KeyError:
        raise FacemtlError(f"unknown task {name!r}; standard tasks: {', '.join(STANDARD_TASKS)}; "
                           f"dataset tasks: {', '.join(DATASET_TASKS)} (others are declared in a config's "
                           "'tasks:' section)") from None


def get_tasks(names) -> tuple[Task, ...]:
    tasks = tuple(get_task(n) for n in names)
    if not tasks:
        raise FacemtlError("at least one task is needed")
    seen = [t.name for t in tasks]
    if len(set(seen)) != len(seen):
        raise FacemtlError(f"task listed twice in {seen}")
    return tasks


# Yaw (degrees) -> the ``pose`` task's class, for sources that give an angle (AFLW, the
# synthetic faces) rather than MTFL's five labels. |yaw| <= 15 is frontal, 15 < |yaw| <= 45
# left / right, |yaw| > 45 a profile, negative yaw on the left. The bins are mirror images
# of each other (both edges inclusive on the frontal side), so the class of -yaw is the flip
# of the class of yaw, as the task's flip permutation assumes for flipped training images.
POSE_YAW_EDGES: tuple[float, float] = (15.0, 45.0)


def pose_from_yaw(yaw_degrees: float) -> int:
    """The ``pose`` class (0 left_profile .. 4 right_profile) of a yaw angle in degrees.

    Which way negative yaw turns the face is the source's convention (the synthetic faces:
    nose towards image-left; AFLW: unconfirmed). A non-finite yaw is a FacemtlError.
    """
    yaw = float(yaw_degrees)
    if not abs(yaw) < float("inf"):  # False for NaN as well as for +-inf
        raise FacemtlError(f"pose_from_yaw: yaw must be a finite number of degrees, got {yaw_degrees!r}")
    steps = sum(abs(yaw) > edge for edge in POSE_YAW_EDGES)
    return 2 - steps if yaw < 0 else 2 + steps
