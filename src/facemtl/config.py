"""Training configuration: frozen dataclasses, YAML files and ``--set a.b=c`` overrides.

The dataclass DEFAULTS are the built-in default run: iFAN on landmarks + parsing + emotion,
each task learned from its own synthetic source in its own style (iFAN section 3.3: datasets
that label different tasks and differ in image statistics), sized to finish in about 5
minutes on an idle 2-core CPU. ``configs/ifan_paper.yaml`` holds the paper's settings (section 4.1.2).

Everything is validated when loaded; a mistake raises one :class:`FacemtlError` line that
names the key (and the file line when it came from a file) and what was expected.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from facemtl.constants import (BROW_DROP, EXPRESSION_RANGE, GLASSES_FRAMES, POSE_ANGLES, POSE_SPREAD, brow_drop_ok,
                               expression_range_ok, pose_spread_ok)
from facemtl.errors import FacemtlError



def _frozen_map(d: Mapping | None = None) -> Mapping:
    return types.MappingProxyType(dict(d or {}))


# Upper bounds, so that a typo fails at once instead of hanging or exhausting memory:
# - input_size: 1024 px (the papers use 64 to 224; model.json refuses more too);
# - synthetic n_train / n_test: 1_000_000 faces each. Faces are rendered on first use and kept
#   (about 12 KB each at 64 px: 12 GB for a million), and each pass draws a permutation of the
#   set; the default run uses 4096;
# - seeds: 0..2**32 - 1, what every RNG here takes.
MAX_INPUT_SIZE = 1024
MAX_SYNTH_FACES = 1_000_000
MAX_SEED = 2**32 - 1


# The default run trains the narrow iFAN of facemtl.models.ifan.DEFAULT_RUN_KWARGS (where it
# departs from the paper, and why, is noted there) with AdamW, warm-up and cosine decay instead of
# RMSprop 1e-3 -> 1e-6: torch's RMSprop at the paper's 1e-3 made the landmark loss climb in the
# first updates, and at 1e-4 learned far too slowly for this budget.


def _default_model() -> "ModelConfig":
    from facemtl.models.ifan import DEFAULT_RUN_KWARGS

    return ModelConfig("ifan", _frozen_map(DEFAULT_RUN_KWARGS))


@dataclass(frozen=True)
class ModelConfig:
    """``create_model(name, **kwargs)``; the trainer adds ``tasks``, and to builders that name
    them in their signature ``num_sources`` / ``task_sources`` (from the training mode),
    ``input_size`` and ``pretrained`` (an ImageNet weights file, safetensors) when set.
    ``init``: a facemtl checkpoint (run folder, model file, or ``bundled``) whose weights start
    the run instead of a random initialisation: fine-tuning
    (:func:`facemtl.models.checkpoint.initialise_from`; the run must build the checkpoint's model)."""

    name: str = "ifan"
    # The builder's own defaults apply to everything not given here (each model keeps its
    # defaults with its builder); ``--set model.kwargs.x=...`` edits the kwargs in effect.
    kwargs: Mapping[str, Any] = field(default_factory=_frozen_map)
    pretrained: str | None = None
    init: str | None = None


@dataclass(frozen=True)
class SourceConfig:
    """One training source: a dataset that labels ``tasks`` (its index is the BN domain).

    ``name: synth`` uses :class:`facemtl.data.synth.SyntheticFaces` (``style``, ``n_train``,
    ``n_test``, ``seed``); any other name is a format reader, ``load_dataset(name, root,
    split, **options)`` with ``train_split`` / ``test_split``, cropped by ``FaceCrop``.
    ``augment`` is FaceCrop's training jitter (rotation, scale, shift, flip, photometric) and so
    applies to reader sources only: synthetic faces are drawn at the input size, every one new,
    with their style's own spread of pose, framing, light and camera, and are not augmented.
    ``random_conv`` (0..1, any source) is the share of its training images seen through a random
    convolution (:func:`facemtl.data.transforms.random_convolution`): texture and colour
    randomised, shapes and labels kept. ``low_detail`` (0..1, any source) is the share of its
    training images shrunk to a random 30-100% of their side and enlarged back
    (:func:`facemtl.data.transforms.random_detail_loss`): fine detail gone, labels kept.
    ``mixup`` (a Beta concentration alpha >= 0, 0 = off; sources whose tasks are all category
    tasks) blends each training batch with a shuffled copy of itself and its labels alike
    (:mod:`facemtl.engine.mixup`).
    ``keep`` (fine-tuning, ``model.init``; hybrid training): ``{task: weight}`` for tasks this
    source does not label whose predictions on its images stay close to the initial model's
    (Learning without Forgetting): each update on this source adds ``weight`` times the kind's
    distance of the model's prediction from the initial model's (:mod:`facemtl.engine.keep`).
    """

    name: str = "synth"
    tasks: tuple[str, ...] = ("landmarks",)
    batch_size: int = 16
    style: Literal["studio", "wild", "webcam", "snapshot", "classroom"] = "studio"
    n_train: int = 512
    n_test: int = 128
    seed: int = 0
    root: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    augment: bool = True
    random_conv: float = 0.0
    low_detail: float = 0.0
    mixup: float = 0.0
    options: Mapping[str, Any] = field(default_factory=_frozen_map)
    keep: Mapping[str, float] = field(default_factory=_frozen_map)
    # synth only: the renderer's realism features (facemtl.data.synth_look.FEATURES); null = all,
    # [] = the plain low-poly renderer, a list = an ablation
    features: tuple[str, ...] | None = None
    # synth only: head pose spreads instead of the style's, per angle (yaw, pitch, roll) a
    # [mean, sd, limit] in degrees of a clipped normal, e.g. {roll: [0, 15, 45]}
    pose: Mapping[str, tuple[float, ...]] = field(default_factory=_frozen_map)
    # synth only: expression strength range [low, high] instead of the style's (0.6-1.25 for
    # most styles): the factor on each emotion's action units
    expression: tuple[float, ...] | None = None
    # synth only: probability of each expression crease (folds, frown, nose and forehead lines) on
    # any face, whatever its emotion, instead of where the emotion's action unit is strong
    creases: float | None = None
    # synth only: largest drop of a subject's brows at rest (fraction of the inter-ocular
    # distance, 0..0.2), drawn per subject
    brow_drop: float | None = None
    # synth only: glasses frames, "small" (null: the frames the bundled model trained on) or "real"
    # (sized like real frames, with temples)
    glasses_frames: str | None = None
    # synth only: probability that an Angry face shouts (mouth open, upper lip raised, nose
    # wrinkled) instead of pressing its lips; null = never
    angry_shout: float | None = None


@dataclass(frozen=True)
class TaskConfig:
    """A user's own task: one entry of the ``tasks:`` section (task name -> declaration),
    built by :func:`facemtl.tasks.define_task`. Its name may then be listed in ``data.N.tasks``.

    * ``kind``: ``points``, ``segmentation`` or ``category``;
    * ``classes``: the class names (category, segmentation: at least 2) or the point names
      (points, optional; naming two points ``left_eye`` and ``right_eye`` gives the NME its
      inter-ocular normaliser). A category task read by ``emotion-folder`` may leave them out:
      they are then that source's ``options.classes``, else its class folder names, sorted;
    * ``points``: the number of points (points tasks without names);
    * ``flip``: the horizontal-flip permutation (point/class ``i`` becomes ``flip[i]``), or
      ``left_right``: pairs of names a flip swaps. A points task on an augmented source needs
      one of them (a mirrored left eye labelled "left" would be a wrong label).

    Names of tasks the toolkit defines (standard, dataset or reader tasks) are refused: a
    checkpoint or metric reading ``emotion`` must always mean the same classes.
    """

    kind: Literal["points", "segmentation", "category"] | None = None
    classes: tuple[str, ...] = ()
    points: int | None = None
    flip: tuple[int, ...] = ()
    left_right: tuple[tuple[str, ...], ...] = ()


def _default_sources() -> tuple[SourceConfig, ...]:
    # Parsing from "studio", emotion from "classroom", landmarks from "snapshot": three sources
    # with different statistics, framed like Helen / BNU-LSVED / MTFL (iFAN section 4.1.1;
    # facemtl.data.synth.STYLE_PARAMS). Sizes differ on purpose (as the paper's datasets do):
    # 128 batches per pass for parsing and emotion, 256 for landmarks, whose regression was still
    # improving by a quarter per epoch at the end of its stage 1 with 128.
    # The order is Algorithm 1's stage-1 order. Landmarks go last: each later task's pre-training
    # moves the shared weights away from the earlier tasks, and the coordinate regression
    # recovered least in stage 2 (landmarks first in stage 1: NME 7.03% at the end; last: 6.43%;
    # trained alone with the same updates: 5.55%).
    return (
        SourceConfig(tasks=("parsing",), style="studio", n_train=1024, n_test=128, seed=2, batch_size=8),
        SourceConfig(tasks=("emotion",), style="classroom", n_train=3072, n_test=280, seed=3, batch_size=24),
        SourceConfig(tasks=("landmarks",), style="snapshot", n_train=4096, n_test=256, seed=1, batch_size=16),
    )


@dataclass(frozen=True)
class ScheduleConfig:
    """Algorithm 1 (``mode: hybrid``) or plain joint training on one source (``mode: joint``).

    * ``pretrain_epochs``: EP of Algorithm 1 (stage 1, lr ``pretrain_lr``; hybrid only).
    * ``epochs``: stage-2 epochs (hybrid) or training epochs (joint). A stage-2 epoch is
      ``max_t ceil(n_t / b_t)`` rounds: the rounds it takes the source with the most batches
      to be traversed once (smaller sources cycle), see :mod:`facemtl.engine.hybrid`.
    * ``rounds``: when set, the number of stage-2 rounds (joint: steps), overriding ``epochs``.
    * ``lr`` -> ``lr_end`` with ``decay`` over stage 2 (joint: over all steps).
    * ``warmup``: updates of linear warm-up at the start of each task's stage 1 and of stage 2
      (joint: of training).
    * ``iterations``: ITER; null = the model's own setting.
    * ``loss_weights``: task -> weight of its loss (default 1).
    """

    mode: Literal["hybrid", "joint"] = "hybrid"
    pretrain_epochs: int = 6
    epochs: int = 1  # the default run: 256 rounds (one pass of its largest source)
    rounds: int | None = None
    pretrain_lr: float = 3e-3  # configs/ifan_paper.yaml: the paper's 1e-3 with RMSprop
    lr: float = 1e-3
    lr_end: float = 1e-5
    decay: Literal["exponential", "linear", "cosine", "constant"] = "cosine"
    warmup: int = 30
    iterations: int | None = None
    loss_weights: Mapping[str, float] = field(default_factory=_frozen_map)


@dataclass(frozen=True)
class OptimiserConfig:
    """AdamW by default (the default run's recipe, see the note above _default_model); RMSprop as
    iFAN section 4.1.2 in configs/ifan_paper.yaml; ``sgd`` / ``adam`` for experiments."""

    name: Literal["rmsprop", "sgd", "adam", "adamw"] = "adamw"
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class LoggingConfig:
    """``log_every`` steps to steps.csv / TensorBoard; ``checkpoint_every`` steps (0: at stage
    and epoch ends only); ``eval_every_epoch``: score the test splits after each epoch;
    ``report``: write report.html (tables, curves, confusion matrices, CED curves, predictions)
    into the run folder at the end."""

    log_every: int = 10
    checkpoint_every: int = 0
    tensorboard: bool = True
    progress: bool = True
    eval_every_epoch: bool = False
    report: bool = True


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=_default_model)
    data: tuple[SourceConfig, ...] = field(default_factory=_default_sources)
    # The user's own tasks, name -> declaration (see TaskConfig), e.g.
    #   tasks: {bnu_emotion: {kind: category, classes: [Happy, Surprised, ...]}}
    tasks: Mapping[str, TaskConfig] = field(default_factory=_frozen_map)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: int = 0
    input_size: int = 64  # the paper's 128 in configs/ifan_paper.yaml; 64 keeps the default run short
    eval_batch_size: int = 32
    # "cpu", "cuda", "cuda:N" or "auto" (cuda when available). Exact --resume holds on the CPU; on a
    # GPU, cuDNN kernels and dropout's CUDA RNG may make resumed losses differ in the last digits.
    device: str = "cpu"
    # Forward passes in "fp32" or "bf16" (autocast; weights, optimiser and losses stay float32):
    # bf16 is for GPUs with bf16 tensor cores (facemtl.engine.precision).
    precision: Literal["fp32", "bf16"] = "fp32"
    # torch.compile the model (nn.Module.compile) for training and evaluation; the first update of
    # each kind (task, iteration) waits for its compilation. Not measured to pay: x1.04 on a CPU
    # after ~10 min of compiling, and on an H200 the paper model's updates were still compiling
    # after 5 min (benchmarks/train_step_time.py, benchmarks/gpu_speed.py).
    compile: bool = False
    # Threads that read and crop real-dataset samples of a batch (image decoding releases the GIL).
    reader_threads: int = 2

    # -- derived views used by the engine ------------------------------------------------
    @property
    def task_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for src in self.data:
            names += [t for t in src.tasks if t not in names]
        return tuple(names)

    def build_tasks(self) -> tuple:
        """The configured tasks as :class:`facemtl.tasks.Task` objects, in ``task_names`` order:
        standard and dataset tasks by name, tasks a source's reader serves (CelebA's
        attributes), and the ``tasks:`` declarations (a category task read by ``emotion-folder``
        without classes takes them from the source: its ``classes`` option, else its folder
        names, sorted, read here)."""
        from facemtl.tasks import get_tasks

        return get_tasks([_resolve_task(self, name) for name in self.task_names])

    @property
    def task_sources(self) -> tuple[int, ...]:
        """Index of the source each task learns from (the first that labels it)."""
        return tuple(next(i for i, s in enumerate(self.data) if t in s.tasks) for t in self.task_names)


# ---------------------------------------------------------------------------------------
# dict <-> dataclass


def to_dict(cfg: Any) -> Any:
    """A config (or part of it) as plain YAML/JSON-ready data."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


class _Where:
    """Key path -> 'file:line' for error messages (lines from the YAML node tree)."""

    def __init__(self, path: str | None = None, lines: dict[str, int] | None = None):
        self.path, self.lines = path, lines or {}

    def __call__(self, key: str) -> str:
        if self.path is None:
            return ""
        line = self.lines.get(key)
        return f"{self.path}:{line}: " if line else f"{self.path}: "


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in _MAPS or tp in _MAPS:
        return "a mapping"
    if tp is Any:
        return "any value"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


_NO = object()
_MAPS = (Mapping, dict, collections.abc.Mapping)


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or ``_NO``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        return value if value in typing.get_args(tp) else _NO
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            out = _coerce(value, arg)
            if out is not _NO:
                return out
        return _NO
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            return _NO
        items = [_coerce(v, typing.get_args(tp)[0]) for v in value]
        return _NO if any(i is _NO for i in items) else tuple(items)
    if origin in _MAPS or tp in _MAPS:
        if not isinstance(value, Mapping):
            return _NO
        args = typing.get_args(tp)
        if args and args[1] is not Any:
            out = {}
            for k, v in value.items():
                cv = _coerce(v, args[1])
                if cv is _NO or not isinstance(k, str):
                    return _NO
                out[k] = cv
            return _frozen_map(out)
        return _frozen_map(value)
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return _NO
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    return _NO


def _build(cls: type, data: Any, prefix: str, where: _Where) -> Any:
    if not isinstance(data, Mapping):
        raise FacemtlError(f"{where(prefix)}'{prefix or 'config'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else f" (expected one of: {', '.join(names)})"
            raise FacemtlError(f"{where(full)}unknown key '{full}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, full, where)
        elif key == "data":
            if not isinstance(value, (list, tuple)) or not value:
                raise FacemtlError(f"{where(full)}'{full}' must be a non-empty list of sources, got {value!r}")
            kwargs[key] = tuple(_build(SourceConfig, v, f"{full}.{i}", where) for i, v in enumerate(value))
        elif key == "tasks" and cls is TrainConfig:
            if not isinstance(value, Mapping):
                raise FacemtlError(
                    f"{where(full)}'{full}' must be a mapping of task names to declarations, got {value!r}")
            kwargs[key] = _frozen_map({str(n): _build(TaskConfig, v, f"{full}.{n}", where)
                                       for n, v in value.items()})
        else:
            out = _coerce(value, tp)
            if out is _NO:
                raise FacemtlError(f"{where(full)}bad value for '{full}': expected {_type_name(tp)}, got {value!r}")
            kwargs[key] = out
    return cls(**kwargs)


_TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _served_tasks(src: SourceConfig) -> dict:
    """Tasks the reader of a source serves beyond the known ones (CelebA's attributes)."""
    if src.name == "synth":
        return {}
    from facemtl.data import DATASETS, reader_tasks

    return reader_tasks(src.name) if str(src.name).lower() in DATASETS else {}


def _canonical_task_names(cfg: TrainConfig) -> TrainConfig:
    """Reader tasks are named in any case in ``data.N.tasks`` (CelebA's ``Wearing_Hat`` is the
    task ``wearing_hat``); the config keeps the reader's spelling."""
    data = []
    for src in cfg.data:
        served = _served_tasks(src)
        names = tuple(t.lower() if t not in served and t not in cfg.tasks and t.lower() in served else t
                      for t in src.tasks)
        data.append(src if names == src.tasks else dataclasses.replace(src, tasks=names))
    return dataclasses.replace(cfg, data=tuple(data))


def _task_choices(cfg: TrainConfig, src: SourceConfig) -> str:
    from facemtl.tasks import DATASET_TASKS, STANDARD_TASKS

    text = f"task names among {', '.join(STANDARD_TASKS)} (standard), {', '.join(DATASET_TASKS)} (dataset tasks)"
    served = _served_tasks(src)
    if served:
        text += f", the {len(served)} tasks of the '{src.name}' reader (e.g. {next(iter(served))})"
    if cfg.tasks:
        return text + f", {', '.join(cfg.tasks)} (declared under 'tasks')"
    return text + ", or a task declared under 'tasks'"


def _declared_classes(cfg: TrainConfig, name: str) -> tuple[tuple[str, ...] | None, SourceConfig | None]:
    """Where a category declaration without classes gets them: (the ``classes`` option of a
    source labelling it, that source) or (None, the ``emotion-folder`` source whose folder
    names give them) or (None, None)."""
    owners = [s for s in cfg.data if name in s.tasks]
    for src in owners:
        if isinstance(src.options.get("classes"), (list, tuple)):
            return tuple(str(c) for c in src.options["classes"]), src
    folder = next((s for s in owners if s.name == "emotion-folder"), None)
    return None, folder


def _kind(decl):
    """The task-kind table's entry of a declaration (its base entry for a kind not yet validated)."""
    from facemtl.kinds import KINDS, TaskKind

    return KINDS.get(decl.kind, TaskKind())


def _resolve_task(cfg: TrainConfig, name: str):
    """The Task of a name listed in ``data.N.tasks`` (see :meth:`TrainConfig.build_tasks`)."""
    from facemtl.tasks import KNOWN_TASKS, TaskDefinitionError, define_task

    if name in cfg.tasks:
        decl = cfg.tasks[name]
        classes = decl.classes
        if not classes and _kind(decl).label_per_image:
            given, src = _declared_classes(cfg, name)
            if given is not None:
                classes = given
            elif src is not None:
                from facemtl.data.formats.emotion_folder import folder_classes

                classes = folder_classes(src.root)
        try:
            return define_task(name, decl.kind, classes, decl.points, decl.flip, decl.left_right)
        except TaskDefinitionError as exc:
            raise FacemtlError(f"bad value for 'tasks.{name}.{exc.field}': expected {exc.expected}, got "
                               f"{exc.value!r}") from None
    if name in KNOWN_TASKS:
        return KNOWN_TASKS[name]
    for src in cfg.data:
        if name in src.tasks and name in _served_tasks(src):
            return _served_tasks(src)[name]
    raise FacemtlError(f"unknown task {name!r}")  # _check refuses such configs


def _check_task_declarations(cfg: TrainConfig, where: _Where) -> None:
    """The ``tasks:`` section: names, and each declaration as :func:`define_task` checks it."""
    from facemtl.tasks import DATASET_TASKS, STANDARD_TASKS, TaskDefinitionError, define_task

    for name, decl in cfg.tasks.items():
        key = f"tasks.{name}"
        if not _TASK_NAME.fullmatch(name):
            raise FacemtlError(f"{where(key)}bad task name '{name}' under 'tasks': expected letters, digits and "
                               "underscores, starting with a letter")
        if name in STANDARD_TASKS or name in DATASET_TASKS:
            what = "standard" if name in STANDARD_TASKS else "dataset"
            raise FacemtlError(f"{where(key)}bad task name '{name}' under 'tasks': '{name}' is a {what} task "
                               "the toolkit defines; declare yours under another name")
        for i, src in enumerate(cfg.data):
            if name in src.tasks and name in _served_tasks(src):
                raise FacemtlError(f"{where(key)}bad task name '{name}' under 'tasks': the '{src.name}' reader of "
                                   f"data.{i} serves a task '{name}'; declare yours under another name")
        if decl.kind is None:
            raise FacemtlError(f"{where(key)}'{key}' needs a 'kind': one of points, segmentation, category")
        classes, flip, left_right = decl.classes, decl.flip, decl.left_right
        if not classes and _kind(decl).label_per_image:
            given, src = _declared_classes(cfg, name)
            if given is not None:
                classes = given
            elif src is not None:
                # Folder names are read when the tasks are built; check the rest now.
                classes, flip, left_right = ("?0", "?1"), (), ()
        elif classes and _kind(decl).label_per_image:
            for i, src in enumerate(cfg.data):
                given = src.options.get("classes") if name in src.tasks else None
                if given is not None and [str(c).lower() for c in given] != [c.lower() for c in classes]:
                    k = f"data.{i}.options.classes"
                    raise FacemtlError(f"{where(k)}bad value for '{k}': expected the classes of task '{name}' "
                                       f"({', '.join(classes)}) or no classes option, got {list(given)!r}")
        try:
            define_task(name, decl.kind, classes, decl.points, flip, left_right)
        except TaskDefinitionError as exc:
            k = f"{key}.{exc.field}"
            raise FacemtlError(f"{where(k)}bad value for '{k}': expected {exc.expected}, got {exc.value!r}") from None
        if _kind(decl).named_points and not decl.flip and not decl.left_right:
            augmented = [i for i, s in enumerate(cfg.data) if name in s.tasks and s.augment]
            if augmented:
                raise FacemtlError(
                    f"{where(key)}'{key}' needs 'flip' (the flip permutation of its points) or 'left_right' (pairs "
                    f"of point names): data.{augmented[0]} augments with horizontal flips, which swap left and "
                    f"right points (or set data.{augmented[0]}.augment: false)")


def _check(cfg: TrainConfig, where: _Where) -> None:
    """Value checks beyond types (ranges, cross-field rules)."""
    from facemtl.tasks import KNOWN_TASKS

    def bad(key: str, expected: str, value: Any) -> FacemtlError:
        return FacemtlError(f"{where(key)}bad value for '{key}': expected {expected}, got {value!r}")

    positive = {
        "input_size": cfg.input_size,
        "eval_batch_size": cfg.eval_batch_size,
        "logging.log_every": cfg.logging.log_every,
        "reader_threads": cfg.reader_threads,
    }
    for key, v in positive.items():
        if v <= 0:
            raise bad(key, "a positive integer", v)
    if cfg.input_size > MAX_INPUT_SIZE:
        raise bad("input_size", f"at most {MAX_INPUT_SIZE} pixels", cfg.input_size)
    if any(s.name == "synth" for s in cfg.data):
        from facemtl.data.synth import MIN_SIZE

        if cfg.input_size < MIN_SIZE:
            raise bad("input_size", f"at least {MIN_SIZE} pixels with synthetic sources", cfg.input_size)
    if not 0 <= cfg.seed <= MAX_SEED:
        raise bad("seed", f"an integer in 0..{MAX_SEED}", cfg.seed)
    if not 0 <= cfg.optimiser.alpha < 1:  # RMSprop's smoothing constant; 1 would never update the average
        raise bad("optimiser.alpha", "a number in [0, 1)", cfg.optimiser.alpha)
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", cfg.device):
        raise bad("device", "'cpu', 'cuda', 'cuda:N' or 'auto'", cfg.device)
    for key in ("lr", "lr_end", "pretrain_lr"):
        if getattr(cfg.schedule, key) <= 0:
            raise bad(f"schedule.{key}", "a positive number", getattr(cfg.schedule, key))
    for key in ("pretrain_epochs", "epochs", "warmup"):
        if getattr(cfg.schedule, key) < 0:
            raise bad(f"schedule.{key}", "an integer >= 0", getattr(cfg.schedule, key))
    if cfg.schedule.rounds is not None and cfg.schedule.rounds < 0:
        raise bad("schedule.rounds", "an integer >= 0 or null", cfg.schedule.rounds)
    if cfg.schedule.iterations is not None and cfg.schedule.iterations < 0:
        raise bad("schedule.iterations", "an integer >= 0 or null", cfg.schedule.iterations)
    if cfg.logging.checkpoint_every < 0:
        raise bad("logging.checkpoint_every", "an integer >= 0", cfg.logging.checkpoint_every)
    for key in ("momentum", "weight_decay", "eps"):
        if getattr(cfg.optimiser, key) < 0:
            raise bad(f"optimiser.{key}", "a number >= 0", getattr(cfg.optimiser, key))
    _check_task_declarations(cfg, where)
    for i, src in enumerate(cfg.data):
        p = f"data.{i}"
        if not src.tasks:
            raise bad(f"{p}.tasks", "a non-empty list of task names", list(src.tasks))
        for t in src.tasks:
            if t not in KNOWN_TASKS and t not in cfg.tasks and t not in _served_tasks(src):
                raise bad(f"{p}.tasks", _task_choices(cfg, src), t)
        if len(set(src.tasks)) != len(src.tasks):
            raise bad(f"{p}.tasks", "each task once", list(src.tasks))
        if src.batch_size <= 0:
            raise bad(f"{p}.batch_size", "a positive integer", src.batch_size)
        if not 0 <= src.seed <= MAX_SEED:
            raise bad(f"{p}.seed", f"an integer in 0..{MAX_SEED}", src.seed)
        if not 0 <= src.random_conv <= 1:
            raise bad(f"{p}.random_conv", "a share in [0, 1]", src.random_conv)
        if not 0 <= src.low_detail <= 1:
            raise bad(f"{p}.low_detail", "a share in [0, 1]", src.low_detail)
        if not src.mixup >= 0:
            raise bad(f"{p}.mixup", "a Beta concentration >= 0 (0 = off)", src.mixup)
        if src.mixup > 0:
            for t in src.tasks:
                kind = cfg.tasks[t].kind if t in cfg.tasks else _resolve_task(cfg, t).kind
                if kind != "category":
                    raise bad(f"{p}.mixup", f"0: mixup blends category labels only, and this source's task {t!r} "
                              f"is a {kind} task", src.mixup)
        if src.features is not None:
            from facemtl.data.synth_look import FEATURES

            if src.name != "synth":
                raise bad(f"{p}.features", "no value: only synthetic sources have renderer features", list(src.features))
            unknown = [f for f in src.features if f not in FEATURES]
            if unknown:
                raise bad(f"{p}.features", f"names from {', '.join(FEATURES)}", unknown[0])
        if src.pose:
            if src.name != "synth":
                raise bad(f"{p}.pose", "no value: only synthetic sources draw head poses", dict(src.pose))
            for angle, spread in src.pose.items():
                if angle not in POSE_ANGLES:
                    raise bad(f"{p}.pose", f"angles from {', '.join(POSE_ANGLES)}", angle)
                if not pose_spread_ok(spread):
                    raise bad(f"{p}.pose.{angle}", POSE_SPREAD, list(spread))
        if src.expression is not None:
            if src.name != "synth":
                raise bad(f"{p}.expression", "no value: only synthetic sources draw expressions", list(src.expression))
            if not expression_range_ok(src.expression):
                raise bad(f"{p}.expression", EXPRESSION_RANGE, list(src.expression))
        for option, drawn in (("creases", "creases"), ("angry_shout", "expressions")):  # probabilities
            if (value := getattr(src, option)) is None:
                continue
            if src.name != "synth":
                raise bad(f"{p}.{option}", f"no value: only synthetic sources draw {drawn}", value)
            if not 0 <= value <= 1:
                raise bad(f"{p}.{option}", "a probability in 0..1 or null", value)
        if src.brow_drop is not None:
            if src.name != "synth":
                raise bad(f"{p}.brow_drop", "no value: only synthetic sources draw brows", src.brow_drop)
            if not brow_drop_ok(src.brow_drop):
                raise bad(f"{p}.brow_drop", f"{BROW_DROP} or null", src.brow_drop)
        if src.glasses_frames is not None:
            if src.name != "synth":
                raise bad(f"{p}.glasses_frames", "no value: only synthetic sources draw glasses", src.glasses_frames)
            if src.glasses_frames not in GLASSES_FRAMES:
                raise bad(f"{p}.glasses_frames", f"one of {', '.join(GLASSES_FRAMES)} or null", src.glasses_frames)
        if src.name == "synth":
            if not 0 < src.n_train <= MAX_SYNTH_FACES:
                raise bad(f"{p}.n_train", f"an integer in 1..{MAX_SYNTH_FACES:_}", src.n_train)
            if not 0 <= src.n_test <= MAX_SYNTH_FACES:
                raise bad(f"{p}.n_test", f"an integer in 0..{MAX_SYNTH_FACES:_}", src.n_test)
        elif not src.root:
            raise bad(f"{p}.root", f"the dataset folder of source '{src.name}'", src.root)
    for t, w in cfg.schedule.loss_weights.items():
        if t not in cfg.task_names:
            raise bad("schedule.loss_weights", "weights for the configured tasks " + ", ".join(cfg.task_names), t)
        if w < 0:
            raise bad(f"schedule.loss_weights.{t}", "a number >= 0", w)
    if cfg.schedule.mode == "hybrid":
        for t in cfg.task_names:
            owners = [i for i, s in enumerate(cfg.data) if t in s.tasks]
            if len(owners) > 1:
                raise FacemtlError(
                    f"{where('data')}task '{t}' is labelled by sources {owners}; hybrid training "
                    "(Algorithm 1) needs one source per task"
                )
    elif len(cfg.data) != 1:
        raise FacemtlError(
            f"{where('schedule.mode')}bad value for 'schedule.mode': joint training takes exactly one "
            f"source, got {len(cfg.data)} (use mode: hybrid for several)"
        )
    # The training mode owns the task-to-source map (facemtl.engine.hybrid / joint).
    reserved = {"tasks", "num_sources", "task_sources"} & set(cfg.model.kwargs)
    if reserved:
        raise FacemtlError(
            f"{where('model.kwargs')}bad value for 'model.kwargs': {sorted(reserved)} come from the data "
            "section, remove them"
        )
    if cfg.model.init is not None and (not isinstance(cfg.model.init, str) or not cfg.model.init.strip()):
        raise FacemtlError(f"{where('model.init')}bad value for 'model.init': a checkpoint path or 'bundled', "
                           f"got {cfg.model.init!r}")
    if cfg.model.init is not None and cfg.model.pretrained is not None:
        raise FacemtlError(f"{where('model.init')}model.init and model.pretrained both set: a run starts from a "
                           "checkpoint or from ImageNet weights, give one")
    for i, src in enumerate(cfg.data):
        for t, w in src.keep.items():
            if cfg.model.init is None:
                raise bad(f"data.{i}.keep", "no value without model.init: the predictions kept are those of the "
                          "checkpoint the run starts from", dict(src.keep))
            if cfg.schedule.mode != "hybrid":
                raise bad(f"data.{i}.keep", "no value in joint training: its one source labels every task",
                          dict(src.keep))
            if t not in cfg.task_names or t in src.tasks:
                others = [n for n in cfg.task_names if n not in src.tasks]
                raise bad(f"data.{i}.keep", "tasks this source does not label: " + (", ".join(others) or "none")
                          + f" (data.{i}.keep={{}} keeps none)", t)
            if not w >= 0:
                raise bad(f"data.{i}.keep.{t}", "a weight >= 0", w)
    _check_model_kwargs(cfg, where)


def _check_model_kwargs(cfg: TrainConfig, where: _Where) -> None:
    """Arguments the model's builder does not take are named here, not in a traceback."""
    from facemtl.models.registry import builder_parameters

    try:
        accepted = builder_parameters(cfg.model.name)
    except FacemtlError as exc:
        raise FacemtlError(f"{where('model.name')}{exc}") from None
    if "**" in accepted:  # the builder checks its own keyword arguments
        return
    unknown = sorted(set(cfg.model.kwargs) - accepted)
    if unknown:
        raise FacemtlError(f"{where('model.kwargs')}bad value for 'model.kwargs': model {cfg.model.name!r} takes no "
                           f"{', '.join(map(repr, unknown))} (it takes: {', '.join(sorted(accepted - {'tasks'}))})")


def config_from_dict(data: Mapping | None, *, path: str | None = None, lines: dict[str, int] | None = None) -> TrainConfig:
    """Build and validate a :class:`TrainConfig`; keys missing from ``data`` keep their defaults."""
    where = _Where(path, lines)
    cfg = _canonical_task_names(_build(TrainConfig, data or {}, "", where))
    _check(cfg, where)
    return cfg


# ---------------------------------------------------------------------------------------
# files and overrides


def _node_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}.{k.value}" if prefix else str(k.value)
            out[key] = k.start_mark.line + 1
            _node_lines(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            key = f"{prefix}.{i}"
            out[key] = v.start_mark.line + 1
            _node_lines(v, key, out)


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"  # the repository's configs/ (a link to it)


def config_path(path: str | Path) -> Path:
    """A config file or run folder as given, or, for a bare name that is neither, the config of that
    name shipped with facemtl (``finetune_bundled`` or ``finetune_bundled.yaml``): installed without
    the repository, ``facemtl train finetune_bundled`` still finds it."""
    path = Path(path)
    if path.exists() or len(path.parts) != 1:
        return path
    shipped = SHIPPED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    return shipped if shipped.is_file() else path


def read_yaml(path: str | Path) -> tuple[dict, dict[str, int]]:
    """YAML file -> (data, key path -> line); errors name the file and line. A run folder stands
    for the config it was trained with (its ``config.json``)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FacemtlError(f"config {path} is a folder without a config.json; expected a YAML config file "
                               "or a run folder")
        from facemtl.files import read_json

        return read_json(path / "config.json", "run config"), {}  # written by facemtl: JSON errors fit it
    if not path.is_file():
        names = ", ".join(sorted(c.stem for c in SHIPPED_CONFIGS.glob("*.yaml")))
        raise FacemtlError(f"config file not found: {path} (or give the name of a config shipped with facemtl: "
                           f"{names})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise FacemtlError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                           "save the config as UTF-8") from None
    except OSError as exc:
        raise FacemtlError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FacemtlError(f"{loc}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FacemtlError(f"{path}:1: a config must be a mapping of sections, got {type(data).__name__}")
    lines: dict[str, int] = {}
    if node is not None:
        _node_lines(node, "", lines)
    return data, lines


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``a.b=c`` overrides (values parsed as YAML scalars or lists) to a nested dict.

    ``data.1.n_train=64`` indexes the source list; missing sources cannot be created this way.
    Returns a new dict; ``data`` is not changed.
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FacemtlError(f"bad --set {item!r}: expected KEY=VALUE, e.g. schedule.lr=0.001")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise FacemtlError(f"bad --set {item!r}: the value is not a YAML scalar or list") from None
        parts = key.split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            sofar = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise FacemtlError(f"bad --set {item!r}: '{sofar}' is not a source index (0..{len(node) - 1})")
                node = node[int(part)]
            else:
                if depth == 0 and part not in node and part in ("data", "model"):
                    # Start from the default section, so that e.g. model.kwargs.x=1 keeps the
                    # other default kwargs (a section given whole replaces its default).
                    node[part] = to_dict(getattr(TrainConfig(), part))
                    if part == "model":
                        _drop_default_kwargs_on_rename(node[part], overrides)
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise FacemtlError(f"bad --set {item!r}: '{sofar}' is a value, not a section")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise FacemtlError(f"bad --set {item!r}: '{key}' is not a source index (0..{len(node) - 1})")
            node[int(last)] = value
        else:
            node[last] = value
    return out


def _drop_default_kwargs_on_rename(model: dict, overrides) -> None:
    """``--set model.name=dcnet`` on the default config: the default kwargs are iFAN's, so the
    other model starts from its builder's defaults (``model.kwargs.x=...`` overrides then add to them)."""
    renamed = [item.partition("=")[2].strip() for item in overrides if item.partition("=")[0].strip() == "model.name"]
    if renamed and renamed[-1] != model.get("name"):
        model["kwargs"] = {}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults <- YAML file (optional) <- overrides, validated."""
    path = config_path(path) if path is not None else None
    data, lines = read_yaml(path) if path is not None else ({}, {})
    if overrides:
        data = apply_overrides(data, overrides)
        # Keys set on the command line are reported as such, not at a file line.
        for item in overrides:
            lines.pop(item.partition("=")[0].strip(), None)
    return config_from_dict(data, path=str(path) if path is not None else None, lines=lines)
