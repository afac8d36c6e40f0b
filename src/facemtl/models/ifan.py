"""iFAN: integrated face analytics network (Li et al., "Integrated Face Analytics Networks through
Cross-Dataset Hybrid Training", sections 3.2, 4.1.2, 4.3).

Components (Figure 2):

* **Backbone** :class:`~facemtl.models.fc_densenet.FCDenseNet` (shared features f_S).
* **Decoders**, built from the task KIND (never its name):
  ``points`` reads the down-path features at 1/16 of the input (8x8 at 128) and regresses
  normalised (x, y) in [0, 1] through a sigmoid (so outputs are always valid coordinates and the
  decoder starts at the image centre); ``category`` reads the bottom features ("the feature with
  spatial size 4", 4.1.2) -> logits ``(B, N)``; ``segmentation`` reads the input-resolution end
  of the up path -> logits ``(B, C, H, W)``. The two global decoders keep the spatial layout:
  BN-ReLU-conv3x3 to ``decoder_channels`` maps, BN-ReLU, flatten, FC layers. An earlier category
  decoder averaged the bottom over its 4x4 positions and never learned (emotion stayed at chance,
  train loss at ln 7): expression is WHERE the mouth corners and brows are, which a global
  average of shallow-dominated features discards. Flattening needs a fixed feature size, so the
  decoders are built for ``input_size`` (other sizes are resized to it).
* **Re-encoders** (f_theta_e^t) turn a task's raw prediction back into a feature pyramid, one map
  per backbone level (128, 64, ..., 4): points -> soft disks of radius 5 px (at 128, scaled with
  the input) rendered as ``sigmoid(r - distance)`` so they stay differentiable w.r.t. the
  coordinates -> alternating 3x3 conv and 2x2 max pool; segmentation -> softmax -> the same kind
  of pyramid; category -> softmax -> FC layers, tiled to every level. ``reencoder="resize"``
  (ablation 4.3.2) skips the learned layers: heat maps / probability maps are area-resized to each
  level and category probabilities tiled.
* **Task integrator**: concatenates the re-encoded pyramids of all tasks (Eq. 4, "realized by
  feature concatenation") and feeds them into the backbone at every level, in both the down and
  the up path (see fc_densenet for where exactly), then re-runs the backbone and decoders.
  Iteration 0 is plain multi-task prediction: its integrator input is NEUTRAL = all-zero maps
  (f_INT^0 = f_S), so the same weights serve every iteration; iteration i feeds iteration i-1's
  predictions back. The maps enter each dense layer's conv after its batch norm, so zeros add
  exactly nothing and Iter0 skips the feedback convolutions (Iter0 costs one plain backbone
  pass). Gradients flow through the feedback into earlier iterations (Eq. 5 sums the losses of
  all iterations). ``forward(..., iterations=0)`` on such a model is the task-wise
  pre-training pass of Algorithm 1. A model CONFIGURED with ``iterations=0`` has no integrator
  and no feedback inputs at all (``model.integrator is None``): a plain multi-task FC-DenseNet.

Per-source batch norm (task-dependent BN, 3.3 / 4.3.3): every normalisation layer (backbone and
decoders; re-encoders have none) is a :class:`~facemtl.models.norm.SourceBatchNorm2d` with one row
of affine parameters and running statistics per source dataset. With ``iteration_statistics``
(default) each refinement iteration also keeps its own running statistics (the affine parameters
stay shared): Iter0 sees all-zero feedback, later iterations re-encoded predictions, and a
shared running average would normalise both at inference with a mixture (see norm.py).

* ``model(images, source=s)``: ``s`` is an int or a ``(B,)`` tensor whose values are all equal
  (a mixed batch raises FacemtlError: split it by source first). Everything runs in stream ``s``;
  in training only row ``s`` of the statistics is updated.
* ``model(images)`` (``source=None``, inference): each task's output must come from the stream of
  the source that trained it (``config.task_sources``). The batch is repeated once per source in
  use (``S`` streams stacked along dim 0) and run through shared convs with a grouped BN; each
  task's prediction is cut from its own source's stream; the assembled prediction set is
  re-encoded once and fed back into EVERY stream at the next iteration. Cost: ``S`` times the
  compute of a single-source pass (benchmarks/model_cost.py measures it). In training mode
  ``source=None`` is refused when there are several BN sources, since it would update every
  source's statistics with the same images.
* ``source_bn=False`` (ablation 4.3.3): one shared BN row, one stream; ``source`` is validated and
  otherwise ignored.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from facemtl.errors import FacemtlError
from facemtl.models.base import FaceModel, ParameterGroups
from facemtl.models.fc_densenet import POOLS, BNReLUConv, FCDenseNet, is_channels_last
from facemtl.models.norm import SourceBatchNorm2d, select_statistics, use_statistics_sets
from facemtl.models.registry import register_model
from facemtl.tasks import IGNORE_INDEX, STANDARD_TASKS, Task, get_tasks

REENCODERS = ("learned", "resize")
SEGMENTATION_LOSSES = ("ce", "ce+dice")
MAX_ITERATIONS = 4


def _task_entry(task: Task) -> str | dict:
    """Standard tasks are stored by name, others whole (the checkpoint's task serialiser)."""
    from facemtl.models.checkpoint import task_to_json

    return task.name if STANDARD_TASKS.get(task.name) == task else task_to_json(task)


def _task_from_entry(entry: Any) -> Task:
    if isinstance(entry, Task):
        return entry
    if isinstance(entry, dict):
        from facemtl.models.checkpoint import task_from_json

        try:
            return task_from_json(entry)
        except TypeError as e:
            raise FacemtlError(f"bad custom task {entry!r}: {e}") from None
    return get_tasks([entry])[0]


@dataclass(frozen=True)
class IFANConfig:
    """Every architecture setting of iFAN; defaults are the paper's (section 4.1.2).

    ``tasks``: standard task names or dicts (custom :class:`Task` fields); Task objects are
    accepted and stored in that form. ``num_sources``: source datasets (None: one per task).
    ``task_sources[t]``: the source whose BN stream predicts task ``t`` at inference (None: task i
    -> source i when ``num_sources == len(tasks)``, all 0 when ``num_sources == 1``).
    ``heatmap_radius`` is in pixels at ``reference_size`` and scales with the input.
    ``segmentation_loss``: ``"ce"`` (the paper's per-pixel cross entropy) or ``"ce+dice"``
    (plus a soft Dice term, :func:`soft_dice_loss`). ``points_loss_weight`` scales the points
    loss (squared distances in image units, ~1e-3: far below the cross entropies of the other
    tasks that share the backbone and the optimiser state).
    ``input_size``: the input side the flattening decoders are built for. ``pool``: ``"avg"``
    (the paper) or ``"max"`` on the down path (see :mod:`facemtl.models.fc_densenet`).
    """

    tasks: tuple = ("landmarks", "parsing", "emotion")
    num_sources: int | None = None
    task_sources: tuple | None = None
    iterations: int = 2
    reencoder: str = "learned"
    source_bn: bool = True
    growth_rate: int = 12
    layers_per_block: int = 3
    num_blocks: int = 5
    stem_channels: int = 48
    stem_kernel: int = 7
    up_channels: int = 24
    reencoder_channels: int = 16
    heatmap_radius: float = 5.0
    reference_size: int = 128
    input_size: int = 128
    pool: str = "avg"
    decoder_channels: int = 32
    segmentation_loss: str = "ce"
    points_loss_weight: float = 1.0
    iteration_statistics: bool = True
    points_hidden: int = 256
    category_hidden: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.tasks, (str, Task, dict)):
            raise FacemtlError(f"tasks must be a list of task names, got {self.tasks!r}")
        tasks = tuple(_task_from_entry(t) for t in self.tasks)
        get_tasks(tasks)  # non-empty, no duplicates
        object.__setattr__(self, "tasks", tuple(_task_entry(t) for t in tasks))

        def check_int(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
                expected = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
                raise FacemtlError(f"ifan: {name} must be {expected}, got {value!r}")

        if self.num_sources is None:
            object.__setattr__(self, "num_sources", len(tasks))
        check_int("num_sources", 1)
        if self.task_sources is None:
            if self.num_sources == len(tasks):
                object.__setattr__(self, "task_sources", tuple(range(len(tasks))))
            elif self.num_sources == 1:
                object.__setattr__(self, "task_sources", (0,) * len(tasks))
            else:
                raise FacemtlError(
                    f"ifan: task_sources is required when num_sources ({self.num_sources}) is neither 1 "
                    f"nor the number of tasks ({len(tasks)})"
                )
        if isinstance(self.task_sources, (str, int)):
            raise FacemtlError(f"ifan: task_sources must be a list of source indices, got {self.task_sources!r}")
        ts = tuple(self.task_sources)
        if len(ts) != len(tasks) or any(
            isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < self.num_sources for s in ts
        ):
            raise FacemtlError(
                f"ifan: task_sources must give one source in 0..{self.num_sources - 1} per task "
                f"({len(tasks)} tasks), got {list(ts)}"
            )
        object.__setattr__(self, "task_sources", ts)
        check_int("iterations", 0, MAX_ITERATIONS)
        if self.reencoder not in REENCODERS:
            raise FacemtlError(f"ifan: reencoder must be one of {REENCODERS}, got {self.reencoder!r}")
        if isinstance(self.points_loss_weight, bool) or not isinstance(self.points_loss_weight, (int, float)) \
                or not self.points_loss_weight > 0:
            raise FacemtlError(f"ifan: points_loss_weight must be a positive number, got {self.points_loss_weight!r}")
        if not isinstance(self.iteration_statistics, bool):
            raise FacemtlError(f"ifan: iteration_statistics must be true or false, got {self.iteration_statistics!r}")
        if not isinstance(self.source_bn, bool):
            raise FacemtlError(f"ifan: source_bn must be true or false, got {self.source_bn!r}")
        for name in ("growth_rate", "layers_per_block", "stem_channels", "up_channels", "reencoder_channels",
                     "points_hidden", "category_hidden", "decoder_channels"):
            check_int(name, 1)
        check_int("num_blocks", 2, 8)
        check_int("stem_kernel", 1)
        if self.stem_kernel % 2 == 0:
            raise FacemtlError(f"ifan: stem_kernel must be odd, got {self.stem_kernel}")
        for name in ("reference_size", "input_size"):
            check_int(name, 2**self.num_blocks, 4096)
            if getattr(self, name) % 2**self.num_blocks:
                raise FacemtlError(f"ifan: {name} must be divisible by {2**self.num_blocks}, got {getattr(self, name)}")
        if self.segmentation_loss not in SEGMENTATION_LOSSES:
            raise FacemtlError(f"ifan: segmentation_loss must be one of {SEGMENTATION_LOSSES}, got {self.segmentation_loss!r}")
        if self.pool not in POOLS:
            raise FacemtlError(f"ifan: pool must be one of {POOLS}, got {self.pool!r}")
        if not isinstance(self.heatmap_radius, (int, float)) or isinstance(self.heatmap_radius, bool) or not self.heatmap_radius > 0:
            raise FacemtlError(f"ifan: heatmap_radius must be a positive number, got {self.heatmap_radius!r}")

    def task_objects(self) -> tuple[Task, ...]:
        return tuple(_task_from_entry(t) for t in self.tasks)

    @property
    def bn_sources(self) -> int:
        """Rows of every batch norm: one per source, or one shared (``source_bn=False``)."""
        return self.num_sources if self.source_bn else 1


# ---------------------------------------------------------------------------------------------
# Decoders (f_theta^t)


class FlatDecoder(nn.Module):
    """A global prediction from one feature level, spatial layout kept: BN-ReLU-conv3x3 to
    ``width`` maps, BN-ReLU, flatten the ``grid x grid`` positions, FC-ReLU-FC.

    Features of another size than ``grid`` (an input other than ``input_size``) are resized
    to it: bilinear (exported by ONNX; adaptive pooling to a non-divisor size is not)."""

    def __init__(self, in_channels: int, outputs: int, grid: int, hidden: int, num_sources: int, width: int):
        super().__init__()
        self.grid = grid
        self.reduce = BNReLUConv(in_channels, width, 3, num_sources)
        self.norm = SourceBatchNorm2d(width, num_sources)
        self.fc1 = nn.Linear(width * grid * grid, hidden)
        self.fc2 = nn.Linear(hidden, outputs)

    def read(self, features: torch.Tensor, stream: int) -> torch.Tensor:
        h = self.norm.norm_relu(self.reduce(features, stream), stream)
        g = self.grid
        if tuple(h.shape[-2:]) != (g, g):
            h = F.interpolate(h, size=(g, g), mode="bilinear", align_corners=False)
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


class PointsDecoder(FlatDecoder):
    """Regression of K normalised points from the 1/16 down-path features (8x8 at 128)."""

    def __init__(self, in_channels: int, num_points: int, grid: int, hidden: int, num_sources: int, width: int = 32):
        super().__init__(in_channels, 2 * num_points, grid, hidden, num_sources, width)
        self.num_points = num_points

    reads = "down"  # the backbone features it needs (iFAN.forward skips the rest where it can)

    def forward(self, features: dict, stream: int) -> torch.Tensor:
        return torch.sigmoid(self.read(features["down"][-1], stream)).view(-1, self.num_points, 2)


class CategoryDecoder(FlatDecoder):
    """Class logits from the bottom features (4x4 at 128 with 5 blocks)."""

    reads = "bottom"

    def forward(self, features: dict, stream: int) -> torch.Tensor:
        return self.read(features["bottom"], stream)


class SegmentationDecoder(nn.Module):
    """Per-pixel logits at input resolution from the end of the up path: BN-ReLU-1x1 conv, the
    per-pixel classifier of FC-DenseNet (a 3x3 conv here would cost as much as a dense block)."""

    def __init__(self, in_channels: int, num_classes: int, num_sources: int):
        super().__init__()
        self.norm = SourceBatchNorm2d(in_channels, num_sources)
        self.classify = nn.Conv2d(in_channels, num_classes, 1)

    reads = "out"

    def forward(self, features: dict, stream: int) -> torch.Tensor:
        return self.classify(self.norm.norm_relu(features["out"], stream))


def build_decoder(task: Task, backbone: FCDenseNet, config: IFANConfig) -> nn.Module:
    s, width, bottom = config.bn_sources, config.decoder_channels, config.input_size // 2**config.num_blocks
    if task.kind == "points":
        return PointsDecoder(backbone.down_channels[-1], task.num_outputs, 2 * bottom, config.points_hidden, s, width)
    if task.kind == "category":
        return CategoryDecoder(backbone.bottom_channels, task.num_outputs, bottom, config.category_hidden, s, width)
    return SegmentationDecoder(backbone.out_channels, task.num_outputs, s)


# ---------------------------------------------------------------------------------------------
# Re-encoders (f_theta_e^t): raw prediction -> one feature map per backbone level


def render_heatmaps(points: torch.Tensor, height: int, width: int, radius: float, softness: float = 1.0) -> torch.Tensor:
    """Soft disks: ``(B, K, 2)`` normalised (x, y) -> ``(B, K, H, W)`` maps in (0, 1).

    Pixel (row i, column j) has its centre at normalised ((j + 0.5) / W, (i + 0.5) / H), the
    convention of :mod:`facemtl.data.sample`. The value is ``sigmoid((radius - d) / softness)``
    with d the distance in pixels, i.e. ~1 inside the disk and ~0 outside, with a smooth rim
    through which gradients reach the coordinates.
    """
    xs = (torch.arange(width, device=points.device, dtype=points.dtype) + 0.5).view(1, 1, 1, width)
    ys = (torch.arange(height, device=points.device, dtype=points.dtype) + 0.5).view(1, 1, height, 1)
    px = (points[..., 0] * width).unsqueeze(-1).unsqueeze(-1)
    py = (points[..., 1] * height).unsqueeze(-1).unsqueeze(-1)
    dist = ((xs - px) ** 2 + (ys - py) ** 2 + 1e-6).sqrt()
    return torch.sigmoid((radius - dist) / softness)


class ConvPoolPyramid(nn.Module):
    """Alternating 3x3 conv (+ReLU) and 2x2 max pool: one map per level, finest first."""

    def __init__(self, in_channels: int, channels: int, num_levels: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1) for i in range(num_levels)
        )

    def forward(self, maps: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = maps
        for i, conv in enumerate(self.convs):
            if i:
                h = F.max_pool2d(h, 2)
            h = F.relu(conv(h))
            out.append(h)
        return out


def _resize_pyramid(maps: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """The 'resize' ablation: the prediction map itself, area-resized to every level."""
    h, w = maps.shape[-2:]
    return [maps if i == 0 else F.adaptive_avg_pool2d(maps, (h >> i, w >> i)) for i in range(num_levels)]


class MapReencoder(nn.Module):
    """Re-encoder of a task predicted per pixel (points, segmentation): the prediction becomes
    maps at input resolution (:meth:`to_maps`), then a pyramid: learned conv/max-pool, or the
    maps resized to every level (``reencoder="resize"``, 4.3.2)."""

    def __init__(self, task: Task, config: IFANConfig):
        super().__init__()
        self.num_levels = config.num_blocks + 1
        self.learned = config.reencoder == "learned"
        if self.learned:
            self.pyramid = ConvPoolPyramid(task.num_outputs, config.reencoder_channels, self.num_levels)
        self.out_channels = config.reencoder_channels if self.learned else task.num_outputs

    def to_maps(self, output: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, output: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
        maps = self.to_maps(output, size)
        return self.pyramid(maps) if self.learned else _resize_pyramid(maps, self.num_levels)


class PointsReencoder(MapReencoder):
    """Points -> soft disks of radius ``heatmap_radius`` px at ``reference_size`` (scaled with the input)."""

    def __init__(self, task: Task, config: IFANConfig):
        super().__init__(task, config)
        self.radius = config.heatmap_radius
        self.reference_size = config.reference_size

    def to_maps(self, output: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        return render_heatmaps(output, h, w, self.radius * min(h, w) / self.reference_size)


class SegmentationReencoder(MapReencoder):
    """Segmentation logits -> class-probability maps."""

    def to_maps(self, output: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return output.softmax(1)


class CategoryReencoder(nn.Module):
    def __init__(self, task: Task, config: IFANConfig):
        super().__init__()
        self.num_levels = config.num_blocks + 1
        self.learned = config.reencoder == "learned"
        c = config.reencoder_channels
        if self.learned:
            self.mlp = nn.Sequential(nn.Linear(task.num_outputs, 4 * c), nn.ReLU(), nn.Linear(4 * c, c), nn.ReLU())
        self.out_channels = c if self.learned else task.num_outputs

    def forward(self, output: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
        v = output.softmax(1)
        if self.learned:
            v = self.mlp(v)
        h, w = size
        return [v[:, :, None, None].expand(-1, -1, h >> i, w >> i) for i in range(self.num_levels)]


def build_reencoder(task: Task, config: IFANConfig) -> nn.Module:
    cls = {"points": PointsReencoder, "segmentation": SegmentationReencoder, "category": CategoryReencoder}[task.kind]
    return cls(task, config)


class TaskIntegrator(nn.Module):
    """Eq. (4) by concatenation: re-encode every task's prediction and stack the pyramids."""

    def __init__(self, reencoders: Sequence[nn.Module], num_levels: int):
        super().__init__()
        self.reencoders = nn.ModuleList(reencoders)
        self.num_levels = num_levels
        self.channels = sum(r.out_channels for r in reencoders)

    def forward(self, outputs: Sequence[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        pyramids = [r(o, size) for r, o in zip(self.reencoders, outputs)]
        levels = []
        for i in range(self.num_levels):
            pieces = [p[i] for p in pyramids]
            if any(is_channels_last(t) for t in pieces):
                # keep the speed paths' layout: a category's broadcast maps (zero strides) would
                # make the concatenation NCHW and the backbone convert it back, a copy of every piece
                pieces = [t.contiguous(memory_format=torch.channels_last) for t in pieces]
            levels.append(torch.cat(pieces, 1))
        return levels


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - mean_c 2|P_c . G_c| / (|P_c| + |G_c|)`` over the classes present in the batch's
    ground truth, with P the softmax probabilities (ignored pixels excluded).

    Why: with cross entropy alone, classes covering ~1% of the pixels (brows, eyes) contribute
    ~1% of the gradient and stay at F1 0 for hundreds of updates, while background and skin
    are learned. Measured (studio style, parsing only, 500 updates of 8): cross entropy overall
    F1 64.2 with brows, eyes and inner mouth at 0; plus Dice 78.1 (brows 39/22, inner mouth 59,
    eyes still 0). Dice weighs every class present equally, whatever its area.
    """
    c = logits.shape[1]
    probs = logits.float().softmax(1)
    valid = target != IGNORE_INDEX
    truth = (target.clamp(max=c - 1) * valid).unsqueeze(1)  # ignored pixels: class 0, weight 0 below
    probs = probs * valid.unsqueeze(1).to(probs.dtype)
    # per-class sums without a one-hot tensor: |P_c . G_c| adds each pixel's probability of its
    # own class to that class, |G_c| counts the class's (valid) pixels
    hit = probs.gather(1, truth).flatten()
    inter = torch.zeros(c, dtype=probs.dtype, device=probs.device).index_add_(0, truth.flatten(), hit)
    count = torch.bincount(truth.flatten(), weights=valid.flatten().to(probs.dtype), minlength=c)
    sizes = probs.sum((0, 2, 3)) + count
    present = count > 0
    dice = 2 * inter[present] / sizes[present].clamp_min(1e-6)
    return 1.0 - dice.mean() if present.any() else logits.sum() * 0.0


# ---------------------------------------------------------------------------------------------


class IFAN(FaceModel):
    """See the module docstring. ``forward`` returns ``iterations + 1`` dicts, Iter0 first."""

    def __init__(self, config: IFANConfig):
        super().__init__()
        self.config = config
        self.tasks = config.task_objects()
        # iterations=0 is a plain multi-task network: no re-encoders, no feedback inputs (so that a
        # single-task iterations=0 model is a fair "separate network" baseline). Otherwise the
        # integrator inputs always exist and Iter0 feeds them zeros.
        integrator = None
        if config.iterations > 0:
            integrator = TaskIntegrator([build_reencoder(t, config) for t in self.tasks], config.num_blocks + 1)
        self.backbone = FCDenseNet(
            stem_channels=config.stem_channels,
            stem_kernel=config.stem_kernel,
            growth_rate=config.growth_rate,
            layers_per_block=config.layers_per_block,
            num_blocks=config.num_blocks,
            up_channels=config.up_channels,
            num_sources=config.bn_sources,
            feedback_channels=integrator.channels if integrator is not None else 0,
            pool=config.pool,
        )
        self.decoders = nn.ModuleList(build_decoder(t, self.backbone, config) for t in self.tasks)
        self.integrator = integrator
        # one set of running statistics per iteration (Iter0..IterN), see the module docstring
        sets = config.iterations + 1 if config.iteration_statistics else 1
        self._norms = use_statistics_sets(self, sets)

    @property
    def refinement_iterations(self) -> int:
        return self.config.iterations

    @property
    def task_sources(self) -> tuple[int, ...]:
        return tuple(self.config.task_sources)

    def parameter_groups(self) -> ParameterGroups:
        """theta_t = task t's decoder, theta_e = the re-encoders and the task integrator (section 3.3)."""
        return ParameterGroups.split(self, list(self.decoders), self.integrator)

    def use_iteration_statistics(self, iteration: int) -> None:
        """Make every batch norm read (and in training update) iteration ``iteration``'s running
        statistics; ``forward`` calls it before each iteration's backbone pass."""
        if self.config.iteration_statistics:
            select_statistics(self._norms, iteration)

    def task_loss(self, name: str, output: torch.Tensor, target: torch.Tensor, visible=None) -> torch.Tensor:
        kind = self.task(name).kind
        if kind == "segmentation":
            # channels-last logits (the speed paths): one NCHW copy for both losses; measured on
            # the default run's parsing batch, cross entropy + Dice forward and backward 4.6 -> 3.3 ms
            output = output.contiguous()
        loss = super().task_loss(name, output, target, visible)
        if kind == "segmentation" and self.config.segmentation_loss == "ce+dice":
            loss = loss + soft_dice_loss(output, target.long())
        elif kind == "points":
            loss = loss * self.config.points_loss_weight
        return loss

    # -- argument checks -------------------------------------------------------------------

    def _source_index(self, source: Any) -> int:
        s = source
        if isinstance(s, torch.Tensor):
            if s.numel() == 0:
                raise FacemtlError("ifan: empty source tensor")
            values = torch.unique(s.detach().flatten())
            if values.numel() != 1:
                raise FacemtlError(
                    f"ifan: a batch must come from one source, got sources {values.tolist()}; split the batch by source"
                )
            s = values.item()
        try:
            if isinstance(s, bool):
                raise TypeError
            s = operator.index(s)  # ints, numpy ints; not floats or strings
        except TypeError:
            raise FacemtlError(f"ifan: source must be an int, a (B,) tensor of equal ints or None, got {source!r}") from None
        if not 0 <= s < self.config.num_sources:
            raise FacemtlError(f"ifan: source {s} out of range 0..{self.config.num_sources - 1}")
        return s

    def _streams(self, source: Any) -> tuple[tuple[int, ...], list[int]]:
        """(BN rows stacked in this pass, position of each task's stream in that stack)."""
        n_tasks = len(self.tasks)
        if source is not None:
            s = self._source_index(source)
            return ((s if self.config.source_bn else 0),), [0] * n_tasks
        if self.config.bn_sources == 1:
            return (0,), [0] * n_tasks
        if self.training:
            raise FacemtlError(
                "ifan: training needs source=<index of the batch's dataset>; source=None would update "
                "every source's batch-norm statistics with the same images"
            )
        streams = tuple(sorted(set(self.config.task_sources)))
        return streams, [streams.index(s) for s in self.config.task_sources]

    # -- forward -----------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, source: Any = None, iterations: int | None = None,
                tasks: Sequence[str] | None = None) -> list[dict]:
        """Iter0..IterN outputs (see :mod:`facemtl.models.base`). ``tasks``: the tasks read at the
        last iteration; only their decoders and batch-norm streams run there, and the up path
        only for a segmentation task. The requested outputs are the same numbers; what is skipped
        feeds nothing requested (in training it would only update running statistics of outputs
        no loss reads)."""
        n_iter = self.check_iterations(iterations)
        if images.dim() != 4 or images.shape[1] != 3:
            raise FacemtlError(f"ifan: images must be (B, 3, H, W), got {tuple(images.shape)}")
        b, _, h, w = images.shape
        div = 2**self.config.num_blocks
        if h % div or w % div:
            raise FacemtlError(f"ifan: image height and width must be divisible by {div}, got {h}x{w}")
        streams, position = self._streams(source)
        wanted = self._wanted(tasks)

        feedback = None  # Iter0: neutral (all-zero) feedback, which the backbone skips exactly
        results: list[dict] = []
        for i in range(n_iter + 1):
            needed = wanted if i == n_iter else range(len(self.tasks))
            run = sorted({position[t] for t in needed})  # the streams this pass needs, in stack order
            n = len(run)
            if i:
                # Re-encode the assembled predictions once and give the same maps to every stream.
                maps = self.integrator([results[-1][t.name] for t in self.tasks], (h, w))
                feedback = maps if n == 1 else [m.repeat(n, 1, 1, 1) for m in maps]
            self.use_iteration_statistics(i)
            x = images if n == 1 else images.repeat(n, 1, 1, 1)
            bn_streams = streams[run[0]] if n == 1 else tuple(streams[k] for k in run)
            up = any(self.decoders[t].reads == "out" for t in needed)
            features = self.backbone(x, bn_streams, feedback, up=up)
            outputs = {}
            for t in needed:
                k = run.index(position[t])
                chunk = features if n == 1 else _take_chunk(features, k, b)
                outputs[self.tasks[t].name] = self.decoders[t](chunk, streams[position[t]])
            results.append(outputs)
        return results

    def _wanted(self, tasks: Sequence[str] | None) -> list[int]:
        if tasks is None:
            return list(range(len(self.tasks)))
        names = [t.name for t in self.tasks]
        unknown = [t for t in tasks if t not in names]
        if unknown or not tasks:
            raise FacemtlError(f"ifan: tasks must name some of {names}, got {list(tasks)}")
        return [names.index(t) for t in names if t in tasks]


def _take_chunk(features: dict, k: int, b: int) -> dict:
    def cut(v):
        return [cut(u) for u in v] if isinstance(v, list) else v[k * b : (k + 1) * b]

    return {key: cut(v) for key, v in features.items()}


# The default training run's iFAN (facemtl.config.TrainConfig()): the narrow network below at
# 64 px on three calibrated synthetic sources, sized for about 7 minutes on 2 idle CPU cores
# (README gives the measured time and numbers). Where it departs from IFANConfig's paper
# defaults (configs/ifan_paper.yaml keeps the paper's settings), and why:
# * narrower and shallower (growth 6, 2 layers per block, 4 blocks at 64 px): the paper-sized
#   network costs ~5 s per stage-1 update at 128 px on 2 cores;
# * max pooling on the down path (``pool: max``): with average pooling the narrow network's
#   emotion accuracy was 40.7% against 68.6% (see facemtl.models.fc_densenet);
# * cross entropy plus soft Dice for parsing (``segmentation_loss: ce+dice``): with cross
#   entropy alone brows, eyes and inner mouth stayed at F1 0 after 500 updates (overall 64%),
#   with Dice 78% (see soft_dice_loss);
# * the landmark loss x10 (``points_loss_weight``): a squared distance in image units (~1e-3)
#   is far smaller than the cross entropies, and in stage 2 the shared weights' AdamW second
#   moments, fed by every task's updates, shrank the landmark steps accordingly.
DEFAULT_RUN_KWARGS = {
    "iterations": 2,
    "num_blocks": 4,
    "growth_rate": 6,
    "layers_per_block": 2,
    "stem_channels": 16,
    "up_channels": 12,
    "reencoder_channels": 8,
    "points_hidden": 64,
    "category_hidden": 64,
    "pool": "max",
    "segmentation_loss": "ce+dice",
    "points_loss_weight": 10.0,
}


@register_model("ifan")
def build_ifan(input_size: int = 128, num_sources: int | None = None, task_sources=None, **config) -> IFAN:
    """``create_model("ifan", **fields of IFANConfig)``; ``tasks`` may hold Task objects.
    ``input_size``, ``num_sources`` and ``task_sources`` are named in the signature: the trainer
    passes its configured size and its training mode's task-to-source map to builders that name them."""
    config.update(input_size=input_size, num_sources=num_sources, task_sources=task_sources)
    known = {f.name for f in dataclasses.fields(IFANConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise FacemtlError(f"ifan: unknown config field(s) {unknown}; known: {sorted(known)}")
    return IFAN(IFANConfig(**config))
