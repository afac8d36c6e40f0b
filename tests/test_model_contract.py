"""The model contract, parametrised over the registry (as timm does): every model that
``facemtl.models.registry.list_models()`` lists is built small and must

* return, from ``model(images, source=...)``, a non-empty list of dicts (one per refinement step)
  holding every task it was built with;
* ``decode`` each raw output to the task's standard form: points ``(B, K, 2)`` in [0, 1],
  segmentation logits ``(B, C, H, W)``, category logits ``(B, N)``;
* give a finite ``task_loss`` whose backward reaches EVERY parameter with a finite, non-zero gradient;
* in eval mode: forward deterministically, leave its buffers alone, and give each sample an output
  that does not depend on the other samples of the batch.

A model registered without an entry in :data:`SMALL` fails here (it cannot escape the contract).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

import facemtl
from facemtl.models.registry import list_models

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = 2


@dataclass(frozen=True)
class Small:
    """A small configuration of one model: the task set it supports and the builder's arguments."""

    id: str
    tasks: tuple[str, ...]
    kwargs: dict = field(default_factory=dict)
    size: int = 64  # square input side
    steps: int = 1  # dicts in the forward's list: refinement iterations + 1
    train_source: int = 0  # source index passed in training mode
    ignores_source: bool = False  # the model has no per-source normalisation
    raw: dict = field(default_factory=dict)  # task -> expected raw output shape at BATCH


# iFAN: landmarks + parsing + emotion, two sources with their own BN rows, one refinement
# iteration so the re-encoders and the task integrator are in the graph (and get gradients).
# reencoder_channels=4: at 2 the re-encoders' conv+ReLU pyramids often start with every unit dead
# (all-zero gradients, seed-dependent), an artefact of the size, not of the model.
IFAN_TASKS = ("landmarks", "parsing", "emotion")
IFAN_SMALL = Small(
    "tiny", IFAN_TASKS,
    dict(input_size=64, num_sources=2, task_sources=(0, 1, 1), iterations=1, num_blocks=3, growth_rate=2,
         layers_per_block=1, stem_channels=4, up_channels=4, reencoder_channels=4, points_hidden=8,
         category_hidden=8),
    steps=2, train_source=1,
    raw={"landmarks": (BATCH, 5, 2), "parsing": (BATCH, 11, 64, 64), "emotion": (BATCH, 7)},
)  # fmt: skip

# Deep Collaboration family (dcnet, cross-stitch, hard sharing and their widened baselines):
# points and category tasks only (no segmentation), on both backbones, at width 8. Points are
# predicted as per-axis bins, one per input pixel. ``source`` is accepted and ignored (3 here
# is no source index any model was built with).
COLLAB_TASKS = ("landmarks", "gender", "pose")


def collab(tasks=COLLAB_TASKS) -> list[Small]:
    raw = {"landmarks": (BATCH, 5, 2, 64), "gender": (BATCH, 2), "pose": (BATCH, 5), "smile": (BATCH, 2)}
    return [Small(backbone, tuple(tasks), dict(backbone=backbone, input_size=64, width=8, head_hidden=16),
                  train_source=3, ignores_source=True, raw={t: raw[t] for t in tasks})
            for backbone in ("resnet18", "alexnet")]  # fmt: skip


SMALL: dict[str, list[Small]] = {
    "ifan": [IFAN_SMALL],
    "dcnet": collab(),
    "cross-stitch": collab(),
    "cross-stitch-wide": collab(),  # width given: no search for DCNet's parameter count here
    "hps": collab(),
    "hps-wide": collab(),
    "single": collab(("landmarks",)) + collab(("smile",)),  # exactly one task, of either kind
    # the plain parsing control: segmentation tasks only, one pass, no sources
    "unet": [Small("w4", ("parsing",), dict(width=4, depth=2), ignores_source=True, train_source=3,
                   raw={"parsing": (BATCH, 11, 64, 64)})],
}


def _cases():
    for name in list_models():
        for cfg in SMALL.get(name, [None]):
            yield pytest.param(name, cfg, id=f"{name}-{cfg.id}-{'+'.join(cfg.tasks)}" if cfg else f"{name}-MISSING")


CASES = list(_cases())


def build(name: str, cfg: Small | None):
    if cfg is None:
        pytest.fail(f"model {name!r} is registered but has no small configuration: add an entry to SMALL in "
                    f"{__file__} (the tasks it supports, builder kwargs, input size)")  # fmt: skip
    torch.manual_seed(0)
    return facemtl.create_model(name, tasks=list(cfg.tasks), **cfg.kwargs)


def images(cfg: Small, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, cfg.size, cfg.size, generator=torch.Generator().manual_seed(seed))


def targets(model, cfg: Small) -> dict:
    g = torch.Generator().manual_seed(1)
    out = {}
    for t in model.tasks:
        if t.kind == "points":
            out[t.name] = torch.rand(BATCH, t.num_outputs, 2, generator=g) * 0.8 + 0.1
        elif t.kind == "segmentation":
            out[t.name] = torch.randint(0, t.num_outputs, (BATCH, cfg.size, cfg.size), generator=g)
        else:
            out[t.name] = torch.randint(0, t.num_outputs, (BATCH,), generator=g)
    return out


def test_every_registered_model_has_a_small_configuration():
    registered = set(list_models())
    missing = sorted(registered - set(SMALL))
    assert not missing, f"registered models without a small configuration in SMALL: {missing}"
    stale = sorted(set(SMALL) - registered)
    assert not stale, f"SMALL lists models that are not registered: {stale}"


def test_a_model_without_a_small_configuration_fails_clearly():
    with pytest.raises(pytest.fail.Exception, match="'new-model' is registered but has no small configuration"):
        build("new-model", None)


@pytest.mark.parametrize("name, cfg", CASES)
def test_forward_returns_every_task_and_decodes_to_standard_forms(name, cfg):
    model = build(name, cfg)
    assert [t.name for t in model.tasks] == list(cfg.tasks)
    outputs = model(images(cfg), source=cfg.train_source)
    assert isinstance(outputs, list) and len(outputs) == cfg.steps >= 1
    for step, out in enumerate(outputs):
        assert isinstance(out, dict) and set(out) == set(cfg.tasks), step
        for task in model.tasks:
            raw = out[task.name]
            assert tuple(raw.shape) == cfg.raw[task.name], (step, task.name)
            assert torch.isfinite(raw).all(), (step, task.name)
            std = model.decode(task.name, raw)
            if task.kind == "points":
                assert std.shape == (BATCH, task.num_outputs, 2)
                assert (std >= 0).all() and (std <= 1).all(), "points are normalised to [0, 1]"
            elif task.kind == "segmentation":
                assert std.shape == (BATCH, task.num_outputs, cfg.size, cfg.size)
            else:
                assert std.shape == (BATCH, task.num_outputs)
            assert std.dtype.is_floating_point and torch.isfinite(std).all()


@pytest.mark.parametrize("name, cfg", CASES)
def test_task_loss_is_finite_and_backward_reaches_every_parameter(name, cfg):
    model = build(name, cfg)
    target = targets(model, cfg)
    outputs = model(images(cfg), source=cfg.train_source)
    losses = {(step, n): model.task_loss(n, o, target[n]) for step, out in enumerate(outputs) for n, o in out.items()}
    for key, loss in losses.items():
        assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0, key
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    assert params
    no_grad = [n for n, p in params.items() if p.grad is None]
    assert not no_grad, f"parameters the loss does not reach: {no_grad}"
    not_finite = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"non-finite gradients: {not_finite}"
    zero = [n for n, p in params.items() if not p.grad.abs().sum() > 0]
    assert not zero, f"all-zero gradients: {zero}"


@pytest.mark.parametrize("name, cfg", CASES)
def test_eval_forward_is_deterministic_batch_independent_and_keeps_buffers(name, cfg):
    model = build(name, cfg)
    model(images(cfg, seed=5), source=cfg.train_source)  # one training step's statistics
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(cfg, batch=3, seed=2)
    with torch.no_grad():
        a = model(x, source=None)
        b = model(x, source=None)
        alone = model(x[1:2], source=None)
        other = model(x, source=cfg.train_source) if cfg.ignores_source else None
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "eval forward changed a buffer"
    assert len(a) == len(b) == len(alone) == cfg.steps
    for step in range(cfg.steps):
        assert set(a[step]) == set(cfg.tasks)
        for t in cfg.tasks:
            assert torch.equal(a[step][t], b[step][t]), (step, t)
            torch.testing.assert_close(alone[step][t], a[step][t][1:2], rtol=1e-4, atol=1e-5, msg=f"{step} {t}")
            if other is not None:
                assert torch.equal(other[step][t], a[step][t]), (step, t)  # the source index is ignored
