import dataclasses
import json
import math

import pytest
import torch

import facemtl
from facemtl.errors import FacemtlError
from facemtl.models.ifan import IFAN, IFANConfig, render_heatmaps
from facemtl.models.norm import SourceBatchNorm2d
from facemtl.tasks import Task

TASKS = ("landmarks", "parsing", "emotion")


def make(**kw) -> IFAN:
    torch.manual_seed(0)
    kw.setdefault("tasks", TASKS)
    return facemtl.create_model("ifan", **kw)


def images(b=2, size=64, seed=0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def check_outputs(outs, n_iter, b, h, w):
    assert len(outs) == n_iter + 1
    for out in outs:
        assert set(out) == set(TASKS)
        assert out["landmarks"].shape == (b, 5, 2)
        assert out["parsing"].shape == (b, 11, h, w)
        assert out["emotion"].shape == (b, 7)
        for v in out.values():
            assert torch.isfinite(v).all()
        assert (out["landmarks"] >= 0).all() and (out["landmarks"] <= 1).all()


def randomise_norms(model: IFAN, seed: int = 1) -> None:
    """Make every source's BN rows different, so a wrong stream cannot pass a comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SourceBatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_interface_of_the_brief_at_128():
    m = make(num_sources=3, iterations=2)
    outs = m(images(1, 128), source=0)
    check_outputs(outs, 2, 1, 128, 128)
    assert [t.name for t in m.tasks] == list(TASKS) and isinstance(m.config, IFANConfig)


@pytest.mark.parametrize("size", [64, 96])
def test_shapes_at_other_sizes_in_train_and_eval(size):
    m = make(iterations=3)
    check_outputs(m(images(2, size), source=1), 3, 2, size, size)
    m.eval()
    with torch.no_grad():
        check_outputs(m(images(2, size)), 3, 2, size, size)
        check_outputs(m(images(2, size), iterations=1), 1, 2, size, size)


def test_rectangular_input():
    m = make(iterations=1)
    out = m(images(1, 64)[..., :32], source=0)[-1]
    assert out["parsing"].shape == (1, 11, 64, 32) and out["landmarks"].shape == (1, 5, 2)


def test_loss_over_all_iterations_reaches_every_parameter():
    m = make(iterations=1)
    x = images(2, 64)
    targets = {
        "landmarks": torch.rand(2, 5, 2),
        "parsing": torch.randint(0, 11, (2, 64, 64)),
        "emotion": torch.tensor([1, 4]),
    }
    for s in range(3):  # grads accumulate: the union over sources
        outs = m(x, source=s)
        loss = sum(m.task_loss(n, o, targets[n]) for out in outs for n, o in out.items())
        loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    # per-source BN: every source's row was trained by its own stream
    for name, mod in m.named_modules():
        if isinstance(mod, SourceBatchNorm2d):
            assert (mod.weight.grad.abs().sum(1) > 0).all(), name


def test_iteration_zero_leaves_reencoders_and_feedback_weights_without_gradient():
    m = make(iterations=2)
    outs = m(images(2, 64), source=0, iterations=0)  # Algorithm 1's pre-training pass
    assert len(outs) == 1
    sum(o.float().pow(2).mean() for o in outs[0].values()).backward()
    for name, p in m.integrator.named_parameters():
        assert p.grad is None, name
    # the backbone weights that read the (neutral, all-zero) integrator maps are not used
    feedback_convs = [n for n, p in m.backbone.named_parameters() if "feedback_conv" in n]
    assert len(feedback_convs) == 2 * m.config.num_blocks * m.config.layers_per_block
    for name, p in m.backbone.named_parameters():
        assert (p.grad is None) == ("feedback_conv" in name), name
    fb = m.integrator.channels
    # neutral feedback (None) is exactly all-zero maps, in train and eval mode alike
    x = images(2, 64)
    zeros = [torch.zeros(2, fb, 64 >> i, 64 >> i) for i in range(m.config.num_blocks + 1)]
    for mode in (True, False):
        m.train(mode)
        with torch.no_grad():
            a, b = m.backbone(x, 1, None)["out"], m.backbone(x, 1, zeros)["out"]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # configured with iterations=0: a plain multi-task network without feedback inputs
    plain = make(iterations=0)
    assert plain.integrator is None
    assert plain.backbone.down[0].layers[0].feedback_conv is None
    check_outputs(plain(images(2, 64), source=2), 0, 2, 64, 64)


def test_feedback_changes_later_iterations():
    m = make(iterations=1).eval()
    with torch.no_grad():
        outs = m(images(2, 64), source=0)
    assert not torch.allclose(outs[0]["landmarks"], outs[1]["landmarks"])
    assert not torch.allclose(outs[0]["parsing"], outs[1]["parsing"])


def test_per_source_statistics_separate_during_training():
    m = make(iterations=1)
    bns = [mod for mod in m.modules() if isinstance(mod, SourceBatchNorm2d)]
    untouched = [(bn.running_mean[2].clone(), bn.running_var[2].clone()) for bn in bns]
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    for step in range(2):
        for s, x in ((0, images(2, 64, seed=step)), (1, images(2, 64, seed=10 + step) * 3 + 2)):
            outs = m(x, source=s)
            loss = sum(m.task_loss("landmarks", o["landmarks"], torch.full((2, 5, 2), 0.5)) for o in outs)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for bn, (mean, var) in zip(bns, untouched):
        assert torch.equal(bn.running_mean[2], mean) and torch.equal(bn.running_var[2], var)
    stem_bn = m.backbone.down[0].layers[0].norm
    assert not torch.allclose(stem_bn.running_mean[0], stem_bn.running_mean[1])
    m.eval()
    with torch.no_grad():
        x = images(2, 64, seed=99)
        a, b = m(x, source=0)[-1], m(x, source=1)[-1]
    assert not torch.allclose(a["landmarks"], b["landmarks"])


def test_inference_assembles_each_task_from_its_source_stream():
    m = make(iterations=1).eval()
    randomise_norms(m)
    x = images(2, 64)
    with torch.no_grad():
        outs = m(x)
        per_source = [m(x, source=s, iterations=0)[0] for s in range(3)]
        # Iter0: task t equals stream task_sources[t] run alone ...
        for t, name in enumerate(TASKS):
            torch.testing.assert_close(outs[0][name], per_source[t][name], rtol=1e-5, atol=1e-5)
        # ... and not another stream (so the comparison above can fail)
        assert not torch.allclose(per_source[0]["parsing"], per_source[1]["parsing"], atol=1e-3)
        # Iter1: every stream gets the ASSEMBLED Iter0 predictions as feedback
        fb = m.integrator([outs[0][n] for n in TASKS], (64, 64))
        m.use_iteration_statistics(1)  # Iter1 normalises with its own running statistics
        for t, name in enumerate(TASKS):
            feats = m.backbone(x, t, fb)
            torch.testing.assert_close(outs[1][name], m.decoders[t](feats, t), rtol=1e-5, atol=1e-5)


def test_single_source_inference_equals_its_stream_exactly():
    m = make(num_sources=1, iterations=2).eval()
    randomise_norms(m)
    assert m.config.task_sources == (0, 0, 0)
    x = images(2, 64)
    with torch.no_grad():
        a, b = m(x), m(x, source=0)
    for oa, ob in zip(a, b):
        for name in TASKS:
            assert torch.equal(oa[name], ob[name])


def test_source_tensor_and_task_sources():
    m = make(num_sources=2, task_sources=(1, 0, 1), iterations=1).eval()
    randomise_norms(m)
    x = images(2, 64)
    with torch.no_grad():
        a = m(x, source=torch.tensor([1, 1]))
        b = m(x, source=1)
        assert torch.equal(a[-1]["parsing"], b[-1]["parsing"])
        inf = m(x)
        torch.testing.assert_close(inf[0]["parsing"], m(x, source=0, iterations=0)[0]["parsing"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(inf[0]["landmarks"], b[0]["landmarks"], rtol=1e-5, atol=1e-5)
    with pytest.raises(FacemtlError, match="one source"):
        m(x, source=torch.tensor([0, 1]))
    with pytest.raises(FacemtlError, match="out of range"):
        m(x, source=2)
    m.train()
    with pytest.raises(FacemtlError, match="training needs source"):
        m(x)


@pytest.mark.parametrize("kw", [{"reencoder": "resize"}, {"source_bn": False}])
def test_ablation_variants_build_and_run(kw):
    m = make(iterations=2, **kw)
    outs = m(images(2, 64), source=1)
    check_outputs(outs, 2, 2, 64, 64)
    outs[-1]["landmarks"].sum().backward()
    if kw.get("reencoder") == "resize":
        assert not list(m.integrator.parameters())  # nothing learned between prediction and backbone
        assert m.integrator.channels == 5 + 11 + 7
    else:
        assert all(mod.num_sources == 1 for mod in m.modules() if isinstance(mod, SourceBatchNorm2d))
        m.eval()
        with torch.no_grad():
            x = images(2, 64)
            a, b = m(x, source=0), m(x, source=2)
            c = m(x)
        assert torch.equal(a[-1]["emotion"], b[-1]["emotion"]) and torch.equal(a[-1]["emotion"], c[-1]["emotion"])


def test_task_subsets_and_custom_tasks():
    aflw = Task("aflw21", "points", 21)
    m = facemtl.create_model("ifan", tasks=(aflw, "gender", "smile"), num_sources=1, iterations=1)
    out = m(images(2, 64), source=0)[-1]
    assert out["aflw21"].shape == (2, 21, 2) and out["gender"].shape == (2, 2) and out["smile"].shape == (2, 2)
    seg_only = facemtl.create_model("ifan", tasks=["parsing"], iterations=1)
    assert seg_only.config.num_sources == 1
    assert seg_only(images(1, 64), source=0)[-1]["parsing"].shape == (1, 11, 64, 64)


def test_config_round_trips_through_json():
    aflw = Task("aflw21", "points", 21, flip_permutation=tuple(range(21)))
    m = facemtl.create_model("ifan", tasks=(aflw, "parsing"), iterations=1, reencoder="resize", growth_rate=8)
    cfg = json.loads(json.dumps(dataclasses.asdict(m.config)))
    assert cfg["tasks"][1] == "parsing" and cfg["tasks"][0]["name"] == "aflw21"
    m2 = facemtl.create_model("ifan", **cfg)
    assert m2.config == m.config and m2.tasks == m.tasks
    m2.load_state_dict(m.state_dict())  # same architecture, same keys and shapes
    default = IFANConfig()
    assert (default.iterations, default.growth_rate, default.layers_per_block, default.num_blocks) == (2, 12, 3, 5)
    assert facemtl.create_model("ifan", **dataclasses.asdict(default)).config == default


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"iterations": 5}, "iterations must be"),
        ({"iterations": -1}, "iterations must be"),
        ({"reencoder": "pca"}, "reencoder must be"),
        ({"num_sources": 2}, "task_sources is required"),
        ({"num_sources": 2, "task_sources": (0, 1, 2)}, "task_sources must give"),
        ({"task_sources": (0, 1)}, "task_sources must give"),
        ({"source_bn": "yes"}, "source_bn must be"),
        ({"growth_rate": 0}, "growth_rate must be"),
        ({"num_blocks": 1}, "num_blocks must be"),
        ({"widht": 3}, "unknown config field"),
        ({"tasks": ("landmarks", "landmarks")}, "listed twice"),
        ({"tasks": ("eyes",)}, "unknown task"),
        ({"tasks": "landmarks"}, "list of task names"),
    ],
)
def test_bad_config_values_raise(kw, match):
    with pytest.raises(FacemtlError, match=match):
        make(**kw)


def test_bad_forward_arguments_raise():
    m = make(iterations=1)
    with pytest.raises(FacemtlError, match="divisible by 32"):
        m(torch.randn(1, 3, 100, 100), source=0)
    with pytest.raises(FacemtlError, match=r"\(B, 3, H, W\)"):
        m(torch.randn(3, 64, 64), source=0)
    with pytest.raises(FacemtlError, match="iterations must be an integer in 0..1"):
        m(images(1), source=0, iterations=2)
    for bad in (1.5, "0", True):
        with pytest.raises(FacemtlError, match="source must be an int"):
            m(images(1), source=bad)


def test_heatmaps_are_soft_disks_differentiable_in_the_coordinates():
    pts = torch.tensor([[[0.5, 0.25]]], requires_grad=True)  # pixel (32, 16) at 64x64
    maps = render_heatmaps(pts, 64, 64, radius=5.0)
    assert maps.shape == (1, 1, 64, 64)
    # pixel centre (31.5, 15.5) is 0.71 px away: well inside; 20 px away: outside
    assert maps[0, 0, 15, 31] > 0.98 and maps[0, 0, 15, 51] < 1e-6
    # a point on pixel centre (31.5, 15.5): pixel centre (36.5, 15.5) lies exactly on the 5 px rim
    rim = render_heatmaps(torch.tensor([[[31.5 / 64, 15.5 / 64]]]), 64, 64, radius=5.0)
    assert rim[0, 0, 15, 36].item() == pytest.approx(0.5, abs=1e-4)
    # mass of sigmoid(r - d) over the plane: integral of 2 pi d sigmoid(r - d) = pi (r^2 + pi^2 / 3)
    assert maps.sum().item() == pytest.approx(math.pi * (25 + math.pi**2 / 3), rel=0.01)
    (maps * torch.arange(64.0)).sum().backward()  # mass-weighted x: moving right increases it
    assert pts.grad[0, 0, 0] > 0


def test_each_iteration_keeps_its_own_batch_norm_statistics():
    """Iter0 at inference is the same function whether or not later iterations ran in training."""
    torch.manual_seed(0)
    m = make(iterations=1)
    x = images(4, 64)
    m.train()
    m(x, source=0, iterations=1)
    stem_norm = m.backbone.down[0].layers[0].norm
    n = stem_norm.num_sources
    assert stem_norm.running_mean.shape[0] == 2 * n
    # a later layer sees the feedback: its Iter0 and Iter1 statistics differ
    later = m.backbone.down[1].layers[0].norm
    assert not torch.allclose(later.running_mean[0], later.running_mean[n])
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x, source=0, iterations=1)[0], m(x, source=0, iterations=0)[0])


def test_soft_dice_loss_by_hand_and_against_the_one_hot_formula():
    import torch.nn.functional as F

    from facemtl.models.ifan import soft_dice_loss
    from facemtl.tasks import IGNORE_INDEX

    # two pixels: p = (.5, .5) with truth 0, p = (.75, .25) with truth 1
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])
    dice0, dice1 = 2 * 0.5 / (1.25 + 1), 2 * 0.25 / (0.75 + 1)
    assert soft_dice_loss(logits, torch.tensor([[[0, 1]]])).item() == pytest.approx(1 - (dice0 + dice1) / 2)
    # the second pixel ignored: class 1 is absent, class 0 alone
    assert soft_dice_loss(logits, torch.tensor([[[0, IGNORE_INDEX]]])).item() == pytest.approx(1 - 2 * 0.5 / 1.5)

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 9, 7, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 9, (3, 9, 7), generator=g)  # classes 9, 10 absent
    target[0, :2] = IGNORE_INDEX
    valid = (target != IGNORE_INDEX).unsqueeze(1).double()
    onehot = F.one_hot(target.clamp(max=10) * (target != IGNORE_INDEX), 11).permute(0, 3, 1, 2).double() * valid
    probs = logits.softmax(1) * valid
    inter, sizes = (probs * onehot).sum((0, 2, 3)), probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    want = 1 - (2 * inter[:9] / sizes[:9]).mean()
    got = soft_dice_loss(logits, target)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)  # computed in float32
    (g_got,), (g_want,) = torch.autograd.grad(got, logits), torch.autograd.grad(want, logits)
    assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-8)
