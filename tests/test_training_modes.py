"""The training modes own the task-to-source map; the config's model section follows the model.

Defects these pin down: joint-mode iFAN trained on source 0 but was built with one batch-norm
row per task, so parsing and emotion were predicted through rows that never trained; and
``--set model.name=dcnet`` died with a TypeError traceback on iFAN's default kwargs.
"""

import json

import pytest
import torch

from facemtl.config import config_from_dict, load_config
from facemtl.engine.loop import Training, model_kwargs, train
from facemtl.errors import FacemtlError
from facemtl.models.checkpoint import load_model
from facemtl.models.norm import SourceBatchNorm2d

TINY = dict(iterations=1, growth_rate=2, layers_per_block=1, num_blocks=3, stem_channels=4, up_channels=4,
            reencoder_channels=2, points_hidden=8, category_hidden=8, decoder_channels=4)


def _joint_config():
    return config_from_dict({
        "model": {"name": "ifan", "kwargs": TINY},
        "input_size": 64,
        "data": [{"tasks": ["landmarks", "parsing", "emotion"], "style": "studio", "n_train": 6, "n_test": 3,
                  "batch_size": 3}],
        "schedule": {"mode": "joint", "epochs": 1},
        "logging": {"tensorboard": False, "progress": False},
    })


def test_joint_mode_predicts_every_task_through_the_source_it_trained(tmp_path):
    run = train(_joint_config(), tmp_path / "joint", quiet=True)
    info = json.loads((run / "model.json").read_text())
    assert info["task_sources"] == [0, 0, 0]
    assert "source_commit" in info  # the code that trained it (None outside a git checkout)
    assert info["model"]["config"]["num_sources"] == 1 and info["model"]["config"]["task_sources"] == [0, 0, 0]
    model, _ = load_model(run)
    assert model.task_sources == (0, 0, 0)
    norms = [m for m in model.modules() if isinstance(m, SourceBatchNorm2d)]
    # every batch-norm row used at inference was updated by training (running means moved off 0)
    assert norms and all(bool(m.running_mean.abs().sum() > 0) for m in norms)


def test_hybrid_mode_builds_the_model_with_its_own_map():
    cfg = load_config("configs/ifan_synth_smoke.yaml")
    kwargs = model_kwargs(cfg)
    assert kwargs["num_sources"] == 3 and kwargs["task_sources"] == [0, 1, 2]
    joint = model_kwargs(_joint_config())
    assert joint["num_sources"] == 1 and joint["task_sources"] == [0, 0, 0]


@pytest.mark.parametrize("key", ["num_sources", "task_sources"])
def test_the_source_map_cannot_be_set_by_hand(key):
    value = 1 if key == "num_sources" else [0, 0, 0]
    with pytest.raises(FacemtlError, match=f"'{key}'.*come from the data section"):
        config_from_dict({"model": {"name": "ifan", "kwargs": {key: value}},
                          "data": [{"tasks": ["landmarks", "parsing", "emotion"]}], "schedule": {"mode": "joint"}})


def test_set_model_name_starts_from_that_models_defaults():
    cfg = load_config(None, ["model.name=dcnet"])
    assert cfg.model.name == "dcnet" and dict(cfg.model.kwargs) == {}
    # model.kwargs given with the rename are kept
    cfg = load_config(None, ["model.name=dcnet", "model.kwargs.backbone=alexnet"])
    assert dict(cfg.model.kwargs)["backbone"] == "alexnet"


def test_a_kwarg_the_model_does_not_take_is_one_line():
    with pytest.raises(FacemtlError, match=r"model 'dcnet' takes no 'iterations'") as err:
        load_config(None, ["model.name=dcnet", "model.kwargs.iterations=2"])
    assert "\n" not in str(err.value)


def test_dcnet_trains_with_algorithm_1_on_the_landmark_and_attribute_sources(tmp_path):
    # Hybrid training needs only the model's parameter groups: each DCNet task's column and head
    # is its theta_t, the collaborative blocks are shared.
    cfg = load_config(None, [
        "model.name=dcnet", "model.kwargs.backbone=alexnet", "model.kwargs.width=8", "model.kwargs.head_hidden=8",
        "data=[{tasks: [landmarks], n_train: 4, n_test: 2, batch_size: 2}, {tasks: [smile], n_train: 4, n_test: 2, batch_size: 2}]",
        "schedule.pretrain_epochs=1", "schedule.rounds=1", "logging.progress=false", "logging.tensorboard=false",
    ])
    torch.manual_seed(0)
    tr = Training(cfg)
    groups = tr.model.parameter_groups()
    assert not groups.interaction and len(groups.decoders) == 2
    run = train(cfg, tmp_path / "dc", quiet=True)
    metrics = json.loads((run / "metrics.json").read_text())["iterations"]["0"]
    assert set(metrics) == {"landmarks", "smile"}


@pytest.mark.parametrize("option, bad", [("random_conv", 1.5), ("low_detail", -0.5)])
def test_an_image_share_is_checked_and_applied_to_its_source_only(option, bad):
    with pytest.raises(FacemtlError, match=rf"data\.1\.{option}.*\[0, 1\]"):
        load_config(None, [f"data=[{{tasks: [landmarks]}}, {{tasks: [smile], {option}: {bad}}}]"])
    seen = {}
    for tr, u, _ in _updates_of_two_sources(f"{option}: 1.0"):
        raw, used = tr._batch[1]["image"], tr._device_batch["image"]
        seen.setdefault(tr.mode.source_of(u), []).append(torch.allclose(raw, used))
    assert all(seen[0]) and not any(seen[1])  # source 0 as drawn, source 1's images always changed


def _updates_of_two_sources(smile_option: str):
    """Every update of a tiny DCNet run, a landmark source 0 and a smile source 1 with ``smile_option``:
    yields (training, update, losses) after each."""
    cfg = load_config(None, [
        "model.name=dcnet", "model.kwargs.backbone=alexnet", "model.kwargs.width=8", "model.kwargs.head_hidden=8",
        "data=[{tasks: [landmarks], n_train: 4, n_test: 2, batch_size: 2}, "
        f"{{tasks: [smile], n_train: 4, n_test: 2, batch_size: 2, {smile_option}}}]",
        "schedule.pretrain_epochs=1", "schedule.rounds=1", "logging.progress=false", "logging.tensorboard=false",
    ])
    tr = Training(cfg)
    for k in range(tr.plan.total):
        u, _, losses = tr.run_update(k)
        yield tr, u, losses


def test_mixup_is_checked_blends_its_source_only_and_its_loss_is_the_blend_of_both_labels():
    import torch.nn.functional as F

    from facemtl.engine.mixup import MIXUP_KEY, mix_batch, task_loss

    with pytest.raises(FacemtlError) as e:
        load_config(None, ["data=[{tasks: [landmarks], mixup: 0.4}]"])
    assert str(e.value) == ("bad value for 'data.0.mixup': expected 0: mixup blends category labels only, and this "
                            "source's task 'landmarks' is a points task, got 0.4")
    with pytest.raises(FacemtlError, match=r"data\.0\.mixup.*>= 0"):
        load_config(None, ["data=[{tasks: [smile], mixup: -1}]"])

    images = torch.rand(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 1, 0])
    batch = mix_batch({"image": images.clone(), "smile": labels}, 0.4, torch.Generator().manual_seed(3))
    perm, lam = batch[MIXUP_KEY]
    assert 0 < lam < 1 and sorted(perm.tolist()) == [0, 1, 2, 3]
    assert torch.allclose(batch["image"], lam * images + (1 - lam) * images[perm])
    again = mix_batch({"image": images.clone(), "smile": labels}, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(again["image"], batch["image"])  # the generator's draws only
    assert torch.equal(batch["smile"], labels)  # labels stay; the loss blends them

    class Model:
        def task_loss(self, name, output, target, visible=None):
            return F.cross_entropy(output, target)

    logits = torch.randn(4, 2)
    by_hand = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[perm])
    assert float(task_loss(Model(), "smile", logits, batch)) == pytest.approx(float(by_hand), rel=1e-6)
    assert float(task_loss(Model(), "smile", logits, {"smile": labels})) == pytest.approx(
        float(F.cross_entropy(logits, labels)), rel=1e-6)  # an unmixed batch: the plain loss

    # both training modes train on the blended loss (a stub model: fixed logits, no dropout)
    from facemtl.engine.hybrid import hybrid_update
    from facemtl.engine.joint import joint_update
    from facemtl.tasks import get_task

    class Stub(torch.nn.Module, Model):
        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(logits.clone())

        def forward(self, images, source=None, iterations=None, tasks=None):
            return [{"smile": self.logits}]

    plain = float(F.cross_entropy(logits, labels))
    assert abs(plain - float(by_hand)) > 1e-3  # so the checks below tell the two apart
    stub = Stub()
    sgd = torch.optim.SGD(stub.parameters(), lr=0.0)
    trained = hybrid_update(stub, sgd, batch, get_task("smile"), 1, 0, {id(p) for p in stub.parameters()})
    assert trained == [pytest.approx(float(by_hand), rel=1e-6)]
    assert joint_update(stub, sgd, batch, [get_task("smile")], {}, None)["smile"] == pytest.approx(float(by_hand), rel=1e-6)

    mixed = {}
    for tr, u, losses in _updates_of_two_sources("mixup: 1.0"):
        mixed.setdefault(tr.mode.source_of(u), []).append(MIXUP_KEY in tr._device_batch)
        assert all(torch.isfinite(torch.tensor(v)).all() for v in losses.values())
    assert not any(mixed[0]) and all(mixed[1])
