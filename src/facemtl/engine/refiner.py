"""Training the point refiner (:mod:`facemtl.models.refiner`) on synthetic faces only.

Data: faces of the synthetic renderer at :data:`RENDER_SIZE` px (the landmark source's style of
the bundled model, "snapshot", by default), each point's patch cut around a simulated guess: the
true points under a random similarity (scale, turn, shift: a misplaced crop) plus independent
per-point noise (:func:`simulate_guess`), as far off as a face model's points for stage 1 and as
near as stage 1 leaves them for stage 2 (:data:`STAGE_GUESSES`). The target is the true point's offset in
the patch (:func:`~facemtl.models.refiner.points_to_offsets`). Training: smooth L1 on the
offsets, AdamW with a cosine schedule, mirrored patches (the point index swapped), photometric
jitter and random convolutions (as the face model's sources) on the patches.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from facemtl.constants import REFINER_PATCH_SIDE as PATCH_SIDE
from facemtl.constants import REFINER_PATCH_SIDES as PATCH_SIDE_RANGE
from facemtl.errors import FacemtlError

if TYPE_CHECKING:
    from facemtl.models.refiner import PointRefiner

# numpy, torch and the model are imported where used: `facemtl --help` reads RefinerRecipe's defaults

RENDER_SIZE = 256
# Per stage, how far the simulated guesses are off: the face size relative to the truth, the turn
# (degrees, sd), the whole face's shift and each point's own move (inter-ocular distances, sd).
# Stage 1 starts from a face model's points; stage 2 from stage 1's, trained on nearer guesses
# (applied twice, stage 1 does worse than once: docs/evidence.md, "A local point refiner").
STAGE_GUESSES = {1: dict(guess_scale=(0.85, 1.10), guess_turn_sd=5.0, guess_shift_sd=0.05, guess_point_sd=0.06),
                 2: dict(guess_scale=(0.95, 1.05), guess_turn_sd=2.0, guess_shift_sd=0.02, guess_point_sd=0.04)}
LEARNED_RATIO = 0.8  # a refiner has learned when its held-out error is below this share of the guesses'


@dataclass
class RefinerRecipe:
    """What a refiner is trained from; recorded in its refiner.json."""

    faces: int = 8000
    guesses: int = 3  # simulated first-stage guesses per face
    style: str = "snapshot"
    render_seed: int = 101
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    random_conv: float = 0.5
    seed: int = 0
    width: int = 24
    # a linear warm-up and clipped gradients: without them the head's hidden units can all die in the first
    # updates (seen on wide-yaw faces: the refiner then answers each point's mean offset, whatever the patch)
    warmup: int = 100
    clip: float = 1.0
    # the guesses (stage 1's by default: STAGE_GUESSES) and the patch side (inter-ocular distances)
    guess_scale: tuple = STAGE_GUESSES[1]["guess_scale"]
    guess_turn_sd: float = STAGE_GUESSES[1]["guess_turn_sd"]
    guess_shift_sd: float = STAGE_GUESSES[1]["guess_shift_sd"]
    guess_point_sd: float = STAGE_GUESSES[1]["guess_point_sd"]
    patch_side: float = PATCH_SIDE

    @classmethod
    def for_stage(cls, stage: int, **kwargs) -> "RefinerRecipe":
        """The recipe of refiner stage ``stage`` (:data:`STAGE_GUESSES`), ``kwargs`` overriding."""
        if stage not in STAGE_GUESSES:
            raise FacemtlError(f"refiner stage must be one of {', '.join(map(str, STAGE_GUESSES))}, got {stage!r}")
        return cls(**{**STAGE_GUESSES[stage], **kwargs})

    def check(self) -> None:
        from facemtl.data.synth import STYLES

        for name in ("faces", "guesses", "steps", "batch_size", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FacemtlError(f"refiner {name.replace('_', ' ')} must be a positive integer, got {value!r}")
        if self.style not in STYLES:
            raise FacemtlError(f"unknown synthetic style {self.style!r}; expected one of {', '.join(STYLES)}")
        if not 0 <= self.random_conv <= 1:
            raise FacemtlError(f"random_conv must be in 0..1, got {self.random_conv}")
        if not self.lr > 0:
            raise FacemtlError(f"learning rate must be positive, got {self.lr}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise FacemtlError(f"refiner warmup must be a whole number of updates >= 0, got {self.warmup!r}")
        if not self.clip > 0:
            raise FacemtlError(f"refiner gradient clip must be positive, got {self.clip}")
        low, high = PATCH_SIDE_RANGE
        if not low <= self.patch_side <= high:
            raise FacemtlError(f"refiner patch side must be {low:g} to {high:g} inter-ocular distances, "
                               f"got {self.patch_side}")


def simulate_guess(truth, rng, recipe: RefinerRecipe | None = None):
    """The five points a refiner stage starts from, for a face whose true points are ``truth``: the
    whole shape scaled, turned and shifted about its centre, then each point moved on its own, as far
    as ``recipe`` says (None: stage 1's)."""
    import numpy as np

    from facemtl.models.refiner import rotation_2d

    recipe = recipe or RefinerRecipe()
    eyes = truth[1] - truth[0]
    iod = float(np.hypot(*eyes))
    centre = truth.mean(0)
    scale = rng.uniform(*recipe.guess_scale)
    turn = rotation_2d(np.deg2rad(rng.normal(0, recipe.guess_turn_sd)))
    shift = rng.normal(0, recipe.guess_shift_sd * iod, 2)
    guess = (truth - centre) @ turn.T * scale + centre + shift
    return guess + rng.normal(0, recipe.guess_point_sd * iod, truth.shape)


def make_patches(recipe: RefinerRecipe, progress: bool = False, seed_offset: int = 0) -> dict:
    """``x`` (N, PATCH, PATCH, 3) uint8 patches, ``y`` (N, 2) float32 offsets, ``index`` (N,)
    point indices, from ``recipe.faces`` rendered faces (renderer seed ``render_seed +
    seed_offset``: another offset gives held-out faces)."""
    import numpy as np
    from tqdm import tqdm

    from facemtl.data.synth import render_face
    from facemtl.models.refiner import cut_patches, points_to_offsets

    render_seed = recipe.render_seed + seed_offset
    rng = np.random.default_rng(render_seed)
    x, y, index = [], [], []
    for i in tqdm(range(recipe.faces), desc="refiner patches", disable=not progress, unit="face"):
        face = render_face(render_seed, i, recipe.style, RENDER_SIZE)
        truth = np.asarray(face["landmarks"], np.float64)
        for _ in range(recipe.guesses):
            guess = simulate_guess(truth, rng, recipe)
            patches, angle, side = cut_patches(face["image"], guess, recipe.patch_side)
            x.append(patches)
            y.append(points_to_offsets(truth, guess, angle, side).astype(np.float32))
            index.append(np.arange(len(truth)))
    return {"x": np.concatenate(x), "y": np.concatenate(y), "index": np.concatenate(index)}


def _batch(data: dict, rng, size: int):
    """A training batch: random patches, half mirrored (offset and point index with them), jittered."""
    import numpy as np
    import torch

    from facemtl.data.transforms import photometric_jitter
    from facemtl.models.refiner import FIVE_POINTS

    pick = rng.integers(0, len(data["x"]), size)
    x, y, index = data["x"][pick].copy(), data["y"][pick].copy(), data["index"][pick].copy()
    mirror = rng.random(size) < 0.5
    x[mirror] = x[mirror, :, ::-1]
    y[mirror, 0] *= -1
    index[mirror] = np.asarray(FIVE_POINTS.flip)[index[mirror]]
    x = np.stack([photometric_jitter(p, rng) for p in x])
    return (torch.from_numpy(x).permute(0, 3, 1, 2).float(), torch.from_numpy(y), torch.from_numpy(index).long())


def offset_error(refiner: PointRefiner, data: dict, batch: int = 512) -> tuple[float, float]:
    """(mean point error after the refiner, before it) on ``data``, in % of the guessed inter-ocular
    distance (offsets are in patch sides of the refiner's ``patch_side`` inter-ocular distances)."""
    import numpy as np
    import torch

    refiner.eval()
    with torch.no_grad():
        out = torch.cat([refiner(torch.from_numpy(data["x"][s:s + batch]).permute(0, 3, 1, 2),
                                 torch.from_numpy(data["index"][s:s + batch]).long())
                         for s in range(0, len(data["x"]), batch)]).numpy()
    scale = 100 * refiner.patch_side
    return (float(np.hypot(*(out - data["y"]).T).mean() * scale), float(np.hypot(*data["y"].T).mean() * scale))


def training_command(recipe: RefinerRecipe) -> str | None:
    """The ``facemtl train-refiner`` command that trains ``recipe`` (a stage's recipe with the command's
    options), None for a recipe no command line gives."""
    options = dict(faces=recipe.faces, steps=recipe.steps, style=recipe.style, seed=recipe.seed)
    for stage in STAGE_GUESSES:
        if RefinerRecipe.for_stage(stage, **options) == recipe:
            return (f"facemtl train-refiner --out DIR --stage {stage} --faces {recipe.faces} --steps {recipe.steps} "
                    f"--style {recipe.style} --seed {recipe.seed}")
    return None


def train_refiner(recipe: RefinerRecipe, progress: bool = False, data: dict | None = None) -> tuple[PointRefiner, dict]:
    """A refiner stage trained by ``recipe`` (:meth:`RefinerRecipe.for_stage`) and its provenance (the
    command that trains it, recipe, steps, final loss, the held-out synthetic error). ``data``: patches made
    before (else :func:`make_patches`). Whether it learned is :func:`check_learned`'s to say (``facemtl
    train-refiner`` calls it before writing)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from facemtl.data.transforms import random_convolution
    from facemtl.models.refiner import PointRefiner

    from facemtl.engine.loop import source_commit, training_platform

    recipe.check()
    started = time.time()
    # the code and platform that train it, read before training (an edit meanwhile is not its code)
    origin = {"source_commit": source_commit(), "platform": training_platform(torch.device("cpu"), speed_paths=False)}
    data = make_patches(recipe, progress) if data is None else data
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    refiner = PointRefiner(recipe.width, patch_side=recipe.patch_side)
    optimiser = torch.optim.AdamW(refiner.parameters(), recipe.lr, weight_decay=recipe.weight_decay)
    refiner.train()
    smoothed = None
    warmup = min(recipe.warmup, recipe.steps // 10)  # a short run still reaches its learning rate
    bar = tqdm(range(recipe.steps), desc="refiner", disable=not progress, unit="step")
    for step in bar:
        warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
        for group in optimiser.param_groups:
            group["lr"] = recipe.lr * warm * 0.5 * (1 + np.cos(np.pi * step / recipe.steps))
        x, y, index = _batch(data, rng, recipe.batch_size)
        if recipe.random_conv:
            x = random_convolution(x, recipe.random_conv, generator).clamp(0, 255)
        loss = torch.nn.functional.smooth_l1_loss(refiner(x, index), y, beta=0.02)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(refiner.parameters(), recipe.clip)
        optimiser.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
    held_out = RefinerRecipe(**{**asdict(recipe), "faces": max(1, recipe.faces // 20)})
    after, before = offset_error(refiner, make_patches(held_out, seed_offset=1))
    info = {"trained_on": "synthetic faces only (facemtl's renderer)",
            "command": training_command(recipe) or "none: a recipe of its own (no facemtl train-refiner options "
                                                   "give it; every field under recipe)",
            "recipe": asdict(recipe), "final_loss": smoothed, **origin,
            "minutes": round((time.time() - started) / 60, 1),
            "held_out": {"faces": held_out.faces, "render_seed": held_out.render_seed + 1,
                         "point_error": round(after, 3), "guess_error": round(before, 3)}}
    return refiner.eval(), info


def check_learned(info: dict, out) -> None:
    """A :class:`FacemtlError` unless the refiner described by ``info`` (:func:`train_refiner`'s)
    moves held-out guesses closer: its error below :data:`LEARNED_RATIO` of theirs. A refiner that
    did not learn answers about the same offset for every patch and would move real points away."""
    held = info["held_out"]
    if not held["point_error"] < LEARNED_RATIO * held["guess_error"]:
        raise FacemtlError(
            f"the refiner did not learn: on {held['faces']} held-out synthetic faces its points are "
            f"{held['point_error']:.2f}% of the inter-ocular distance off, the guesses it started from "
            f"{held['guess_error']:.2f}% (it must reach below {LEARNED_RATIO:.0%} of that); nothing written to "
            f"{out}. Train again with more --steps or --faces, or another --seed")
