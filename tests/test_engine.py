"""Algorithm 1 (which parameters each update changes, in which order), per-source BN, the
batch streams, joint training and evaluation, on tiny models and tiny synthetic sets."""

import csv
import dataclasses
import math

import numpy as np
import pytest
import torch

from facemtl.config import config_from_dict
from facemtl.data.mixing import BatchStream, Source
from facemtl.data.sample import collate, to_sample
from facemtl.data.synth import SyntheticFaces
from facemtl.engine.evaluate import evaluate, format_tables
from facemtl.engine.hybrid import HybridPlan, hybrid_update
from facemtl.engine.loop import Training, train
from facemtl.engine.schedule import lr_at
from facemtl.models.norm import SourceBatchNorm2d
from facemtl.models.registry import create_model
from facemtl.tasks import get_tasks

TINY = dict(growth_rate=2, layers_per_block=1, num_blocks=3, stem_channels=4, up_channels=4,
            reencoder_channels=2, points_hidden=8, category_hidden=8)
SIZE = 64
TASKS = ("landmarks", "parsing", "emotion")


def tiny_ifan(iterations=1, seed=0):
    torch.manual_seed(seed)
    return create_model("ifan", tasks=list(TASKS), num_sources=3, task_sources=[0, 1, 2], iterations=iterations, **TINY)


def batch_for(source: int, n: int = 4, style: str = "studio"):
    faces = SyntheticFaces(n, style=style, seed=source, size=SIZE)
    tasks = get_tasks(TASKS)
    return collate([to_sample(faces[i], tasks, source=source) for i in range(n)])


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def role_names(model):
    roles = model.parameter_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    return ({names[id(p)] for p in roles.shared}, [{names[id(p)] for p in d} for d in roles.decoders],
            {names[id(p)] for p in roles.interaction})


def test_parameter_roles_follow_the_model_structure():
    model = tiny_ifan()
    shared, decoders, interaction = role_names(model)
    assert all(n.startswith("backbone.") for n in shared)
    assert all(all(n.startswith(f"decoders.{t}.") for n in d) for t, d in enumerate(decoders))
    assert interaction and all(n.startswith("integrator.") for n in interaction)
    assert len(shared) + sum(map(len, decoders)) + len(interaction) == len(list(model.parameters()))


def test_stage1_update_changes_shared_and_own_decoder_only():
    """Algorithm 1 line 5: Delta^t_0 updates theta_S and theta_t (iterations=0)."""
    model = tiny_ifan()
    roles = model.parameter_groups()
    shared, decoders, interaction = role_names(model)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    for t, task in enumerate(model.tasks):
        before = snapshot(model)
        losses = hybrid_update(model, opt, batch_for(t), task, t, 0, roles.trainable(1, t))
        assert len(losses) == 1 and math.isfinite(losses[0])
        diff = changed(before, model)
        assert diff & decoders[t], f"stage 1 task {t} did not train its decoder"
        assert diff & shared, "shared backbone must move"
        for o in range(3):
            if o != t:
                assert not diff & decoders[o], f"stage 1 task {t} changed decoder {o}"
        assert not diff & interaction, "re-encoders/integrator are not trained in stage 1"


def test_stage2_update_changes_interaction_and_own_decoder_not_others():
    """Algorithm 1 line 13 / Eq. (6): theta_S, theta_t and all theta_e; other decoders stay."""
    model = tiny_ifan(iterations=2)
    roles = model.parameter_groups()
    shared, decoders, interaction = role_names(model)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    t = 1  # parsing
    before = snapshot(model)
    losses = hybrid_update(model, opt, batch_for(t), model.tasks[t], t, 2, roles.trainable(2, t))
    assert len(losses) == 3  # l_t at iterations 0, 1, 2 (Eq. 5 summed up to I)
    diff = changed(before, model)
    assert diff & decoders[t] and diff & shared
    # the re-encoders take part: the predictions of parsing AND of the other tasks were fed back
    # (at these tiny widths a category re-encoder may start with dead ReLUs: not required)
    moved = {r for r in range(3) if any(n.startswith(f"integrator.reencoders.{r}.") for n in diff)}
    assert {0, 1} <= moved
    assert not diff & (decoders[0] | decoders[2])

    # Without the mask the other decoders WOULD move (their predictions are re-encoded), so the
    # check above is about the trainer, not about missing gradients.
    before = snapshot(model)
    everything = {id(p) for p in model.parameters()}
    hybrid_update(model, opt, batch_for(t), model.tasks[t], t, 2, everything)
    assert changed(before, model) & decoders[0]


def test_per_source_bn_statistics_untouched_for_other_sources():
    model = tiny_ifan()
    roles = model.parameter_groups()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    bns = [m for m in model.modules() if isinstance(m, SourceBatchNorm2d)]
    assert bns
    means = [m.running_mean.clone() for m in bns]
    weights = [m.weight.detach().clone() for m in bns]
    hybrid_update(model, opt, batch_for(2), model.tasks[2], 2, 1, roles.trainable(2, 2))
    moved_row2 = False
    for m, mean, w in zip(bns, means, weights):
        assert torch.equal(m.running_mean[:2], mean[:2]), "sources 0 and 1 statistics must not move"
        assert torch.equal(m.weight.detach()[:2], w[:2]), "sources 0 and 1 affine rows must not move"
        moved_row2 |= not torch.equal(m.running_mean[2], mean[2])
    assert moved_row2


def test_plan_order_is_algorithm_1():
    plan = HybridPlan(batches=(2, 3, 1), pretrain_epochs=2, epochs=1, rounds_override=None, iterations=2,
                      pretrain_lr=1e-3, lr=1e-3, lr_end=1e-5, decay="exponential")
    ups = [plan[k] for k in range(plan.total)]
    stage1 = [u for u in ups if u.stage == 1]
    # task by task, EP epochs each, every batch of the pass once
    assert [(u.task, u.epoch) for u in stage1] == [(0, 0)] * 2 + [(0, 1)] * 2 + [(1, 0)] * 3 + [(1, 1)] * 3 + [(2, 0), (2, 1)]
    assert all(u.iteration == 0 and u.lr == 1e-3 for u in stage1)
    assert [u.draw for u in stage1 if u.task == 1] == list(range(6))
    stage2 = [u for u in ups if u.stage == 2]
    # an epoch = max batches per pass = 3 rounds; each round: every task, I = 1..ITER, same batch
    assert len(stage2) == 3 * 3 * 2
    assert [(u.task, u.iteration) for u in stage2[:6]] == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(u.draw == u.round for u in stage2)
    assert {u.stream for u in stage2 if u.task == 1} == {3} and {u.stream for u in stage1 if u.task == 1} == {2}
    assert stage2[0].lr == pytest.approx(1e-3) and stage2[-1].lr == pytest.approx(1e-5)
    assert stage2[6].lr == pytest.approx(1e-4)  # round 1 of 3: geometric midpoint
    # equal number of updates per task
    assert {t: sum(u.task == t for u in stage2) for t in range(3)} == {0: 6, 1: 6, 2: 6}
    assert [u.step for u in ups if u.epoch_end] == [1, 3, 6, 9, 10, 11, 29]


def test_lr_schedules():
    assert lr_at(0, 5, 1e-3, 1e-6, "exponential") == pytest.approx(1e-3)
    assert lr_at(4, 5, 1e-3, 1e-6, "exponential") == pytest.approx(1e-6)
    assert lr_at(2, 5, 1e-3, 1e-5, "exponential") == pytest.approx(1e-4)
    assert lr_at(2, 5, 1.0, 0.0 + 1e-12, "linear") == pytest.approx(0.5)
    assert lr_at(3, 5, 0.1, 0.01, "constant") == 0.1
    # cosine: lr at the first, the mean of the two half-way, lr_end at the last
    assert [lr_at(i, 5, 1.0, 0.2, "cosine") for i in (0, 2, 4)] == pytest.approx([1.0, 0.6, 0.2])
    # warm-up: lr * (i + 1) / (warmup + 1) for the first `warmup`, then the decay over the rest
    assert [lr_at(i, 7, 1.0, 0.2, "cosine", warmup=2) for i in range(7)] == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)), 0.6, 0.2 + 0.8 * 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.2])
    assert lr_at(0, 1, 1.0, 0.2, "cosine", warmup=5) == 1.0  # a one-update schedule has no room to warm up


def test_plan_warms_up_each_task_in_stage_1_and_stage_2():
    plan = HybridPlan(batches=(3, 2), pretrain_epochs=1, epochs=2, rounds_override=None, iterations=1,
                      pretrain_lr=1.0, lr=0.5, lr_end=0.1, decay="linear", warmup=1)
    lrs = [(plan[k].stage, plan[k].task, plan[k].lr) for k in range(plan.total)]
    assert lrs[:5] == [(1, 0, 0.5), (1, 0, 1.0), (1, 0, 1.0), (1, 1, 0.5), (1, 1, 1.0)]
    stage2 = [lr for st, _, lr in lrs if st == 2]  # 6 rounds x 2 tasks, one update each
    assert stage2[:2] == [0.25, 0.25] and stage2[2:4] == [0.5, 0.5] and stage2[-1] == pytest.approx(0.1)


def _source(n=10, batch=4):
    faces = SyntheticFaces(n, style="wild", seed=5, size=SIZE)
    return Source(0, "synth", get_tasks(["landmarks"]), faces, faces, batch)


def test_batch_streams_are_deterministic_and_sharded():
    src = _source(n=10, batch=4)
    a, b = BatchStream(src, seed=3, stream=0), BatchStream(src, seed=3, stream=0)
    assert a.batches_per_pass == 2  # trailing 2 samples dropped
    assert np.array_equal(a.indices(5)[2], b.indices(5)[2])
    assert not np.array_equal(a.order(0), a.order(1))  # a new shuffle each pass
    assert sorted(a.order(0).tolist()) == list(range(10))
    assert not np.array_equal(a.order(0), BatchStream(src, seed=3, stream=1).order(0))
    assert torch.equal(a.batch(3)["landmarks"], b.batch(3)["landmarks"])
    r0, r1 = BatchStream(src, 3, 0, rank=0, world_size=2), BatchStream(src, 3, 0, rank=1, world_size=2)
    s0, s1 = set(r0.order(4).tolist()), set(r1.order(4).tolist())
    assert len(s0) == len(s1) == 5 and not s0 & s1
    small = BatchStream(_source(n=3, batch=8), 0, 0)
    assert small.batch_size == 3 and small.batches_per_pass == 1


def _tiny_config(**schedule):
    return config_from_dict({
        "model": {"name": "ifan", "kwargs": {"iterations": 1, **TINY}},
        "input_size": SIZE,
        "data": [
            {"tasks": ["landmarks"], "style": "wild", "n_train": 6, "n_test": 3, "seed": 1, "batch_size": 3},
            {"tasks": ["parsing"], "style": "studio", "n_train": 4, "n_test": 3, "seed": 2, "batch_size": 2},
            {"tasks": ["emotion"], "style": "webcam", "n_train": 4, "n_test": 3, "seed": 3, "batch_size": 4},
        ],
        "schedule": {"pretrain_epochs": 1, "epochs": 1, "lr": 1e-3, "lr_end": 1e-4, **schedule},
        "logging": {"log_every": 1, "tensorboard": False, "progress": False},
    })


def _losses(run_dir):
    with open(run_dir / "steps.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_resume_continues_exactly_and_the_run_is_complete(tmp_path):
    cfg = _tiny_config(rounds=2)  # stage 1: 2 + 2 + 1 updates, stage 2: 2 rounds x 3 tasks
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    full = train(cfg, tmp_path / "full", quiet=True)
    assert torch.equal(torch.rand(1), expected_next), "train() must not touch the global torch RNG"

    part = train(cfg, tmp_path / "part", quiet=True, stop_after=4)  # stops inside stage 1
    assert _losses(part)[-1][0] == 4 and not (part / "metrics.json").exists()
    train(cfg, part, resume=True, quiet=True, stop_after=7)  # stops inside stage-2 round 0
    train(cfg, part, resume=True, quiet=True)
    assert _losses(part) == _losses(full) and len(_losses(full)) == 11
    from facemtl.engine.checkpoint import load_train_state

    a, ma = load_train_state(full)
    b, mb = load_train_state(part)
    assert ma["step"] == mb["step"] == ma["total_steps"] == 11
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the run folder
    import json

    for name in ("model.safetensors", "model.json", "train_state.safetensors", "train_state.json",
                 "config.json", "steps.csv", "epochs.csv", "metrics.json"):
        assert (full / name).is_file(), name
    # synthetic sources: inference crops detected faces with the synthetic framing's margin
    info = json.loads((full / "model.json").read_text())
    assert info["crop"] == {"size": SIZE, "margin": 0.25}
    # the platform the numbers depend on: versions, processor, threads, the CPU kernels' build
    import cv2

    plat = info["platform"]
    assert (plat["torch"], plat["opencv"], plat["device"]) == (torch.__version__, cv2.__version__, "cpu")
    assert plat["threads"] == torch.get_num_threads() and plat["cpu"]
    from facemtl.models import cpu_kernels

    assert (plat["cpu_kernels"] is None) == (not cpu_kernels.available())
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics == json.loads((part / "metrics.json").read_text())
    assert set(metrics["iterations"]) == {"0", "1"}
    it1 = metrics["iterations"]["1"]
    assert set(it1) == set(TASKS)
    assert set(it1["landmarks"]) == {"nme", "failure_rate", "nme_per_point"} and len(it1["landmarks"]["nme_per_point"]) == 5
    assert set(it1["parsing"]) == {"f1", "eyes", "brows", "mouth_all", "overall"}  # the groups ParsingF1 scores
    assert set(it1["emotion"]) == {"accuracy", "mean_class_accuracy", "confusion"}
    assert sum(map(sum, it1["emotion"]["confusion"])) == 3  # the 3 test faces of source 2
    assert 0 <= it1["emotion"]["accuracy"] <= 100
    rows = list(csv.DictReader(open(full / "steps.csv")))
    assert [r["task"] for r in rows] == ["landmarks"] * 2 + ["parsing"] * 2 + ["emotion"] + TASK_ROUND * 2
    assert [r["stage"] for r in rows] == ["1"] * 5 + ["2"] * 6
    assert all(float(r["loss"]) == pytest.approx(float(r["loss_iter0"]) + float(r["loss_iter1"]), rel=1e-4) for r in rows[5:])
    from facemtl.errors import FacemtlError

    with pytest.raises(FacemtlError, match="already holds a run; use --resume"):
        train(cfg, full, quiet=True)


TASK_ROUND = list(TASKS)


def test_a_run_resumed_on_another_platform_keeps_the_earlier_one_and_says_so(tmp_path, capsys):
    import json

    cfg = _tiny_config(rounds=1)
    run = train(cfg, tmp_path / "run", quiet=True, stop_after=3)
    info = json.loads((run / "model.json").read_text())
    here = info["platform"]
    elsewhere = {**here, "torch": "0.0.0", "cpu": "another processor"}
    (run / "model.json").write_text(json.dumps({**info, "platform": elsewhere}))
    train(cfg, run, resume=True, quiet=False, stop_after=5)
    err = capsys.readouterr().err
    assert "resuming on another platform (torch 0.0.0 -> " in err and "cpu another processor -> " in err
    info = json.loads((run / "model.json").read_text())
    assert info["platform"] == here and info["platform_history"] == [elsewhere]
    train(cfg, run, resume=True, quiet=False)  # the same platform again: nothing said, history kept
    assert "another platform" not in capsys.readouterr().err
    assert json.loads((run / "model.json").read_text())["platform_history"] == [elsewhere]


def test_joint_training_updates_all_tasks_with_loss_weights(tmp_path):
    cfg = config_from_dict({
        "model": {"name": "ifan", "kwargs": {"iterations": 0, **TINY}},
        "input_size": SIZE,
        "data": [{"tasks": ["landmarks", "gender"], "style": "wild", "n_train": 6, "n_test": 2, "batch_size": 3}],
        "schedule": {"mode": "joint", "epochs": 1, "loss_weights": {"gender": 0.5}},
        "logging": {"log_every": 1, "tensorboard": False, "progress": False},
    })
    run = train(cfg, tmp_path / "joint", quiet=True)
    rows = list(csv.DictReader(open(run / "steps.csv")))
    assert len(rows) == 2
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["landmarks_loss"]) + 0.5 * float(r["gender_loss"]), rel=1e-5)
    import json

    res = json.loads((run / "metrics.json").read_text())["iterations"]["0"]
    assert set(res) == {"landmarks", "gender"}


def test_evaluate_scores_each_task_on_its_source_and_prints_tables():
    model = tiny_ifan(iterations=1).eval()
    tests = [SyntheticFaces(3, style=s, seed=10 + i, size=SIZE) for i, s in enumerate(("wild", "studio", "webcam"))]
    info = {"task_sources": [0, 1, 2], "sources": [{"name": "synth", "tasks": [t]} for t in TASKS]}
    res = evaluate(model, info, tests, batch_size=2)
    assert set(res["iterations"]) == {"0", "1"}
    conf = np.array(res["iterations"]["0"]["emotion"]["confusion"])
    truth = np.bincount([tests[2][i]["emotion"] for i in range(3)], minlength=7)
    assert np.array_equal(conf.sum(1), truth)  # rows are the ground truth of source 2's faces
    nme = res["iterations"]["1"]["landmarks"]
    assert nme["nme"] == pytest.approx(np.mean(nme["nme_per_point"]), rel=1e-6)  # all points visible
    table = format_tables(res, model.tasks)
    assert "Iter0" in table and "Iter1" in table and "mouth_all" in table and "mean NME" in table


def test_random_conv_draws_the_same_images_when_a_run_resumes_between_updates_sharing_a_batch():
    cfg = _tiny_config()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, kwargs={**cfg.model.kwargs, "iterations": 2}),
                              data=tuple(dataclasses.replace(s, random_conv=1.0) for s in cfg.data))
    tr = Training(cfg)
    # at ITER = 2, stage 2 makes updates I = 1 and 2 on one batch: the second's images come from the first's draw
    k = next(k for k in range(1, tr.plan.total)
             if (tr.plan[k].stream, tr.plan[k].draw) == (tr.plan[k - 1].stream, tr.plan[k - 1].draw))
    for j in range(k + 1):
        tr.run_update(j)
    straight = tr._device_batch["image"].clone()
    resumed = Training(cfg)  # a fresh process resuming at update k has no batch in hand
    resumed.run_update(k)
    assert torch.equal(resumed._device_batch["image"], straight)
    assert not torch.allclose(resumed._batch[1]["image"], straight)  # convolved, not as drawn
