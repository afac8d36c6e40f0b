"""Deep Collaboration models and their baselines (facemtl.models.collab / cross_stitch / sharing)."""

import dataclasses
import math

import pytest
import torch
from safetensors.torch import save_file

from facemtl.errors import FacemtlError
from facemtl.models import create_model
from facemtl.models.alexnet import AlexNet
from facemtl.models.collab import CollaborativeBlock, DCNet
from facemtl.models.cross_stitch import CrossStitchNet
from facemtl.models.heads import angle_to_bin, bin_loss, count_on_meta, decode_bins, num_parameters
from facemtl.models.resnet import ResNet18

NAMES = ("single", "hps", "hps-wide", "cross-stitch", "cross-stitch-wide", "dcnet")
TWO_TASKS = ("landmarks", "pose")  # one points and one category task keep the models small


pytestmark = pytest.mark.usefixtures("one_thread")


def _targets(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"landmarks": torch.rand(batch, 5, 2, generator=g), "pose": torch.tensor([0, 4][:batch])}


def test_collaborative_block_is_relu_of_input_when_last_bn_is_zero():
    torch.manual_seed(0)
    block = CollaborativeBlock(3, 8)
    for f in block.task_specific:
        torch.nn.init.zeros_(f[-1].weight)
        torch.nn.init.zeros_(f[-1].bias)
    xs = [torch.randn(2, 8, 5, 5) for _ in range(3)]
    for x, y in zip(xs, block(xs)):
        assert torch.equal(y, torch.relu(x))


def test_collaborative_block_structure_follows_eq_2_3():
    block = CollaborativeBlock(4, 16)
    h = block.central
    assert (h[0].in_channels, h[0].out_channels, h[0].kernel_size) == (64, 16, (1, 1))  # T*C -> T*C/4
    assert (h[3].in_channels, h[3].out_channels, h[3].kernel_size) == (16, 16, (3, 3))
    assert isinstance(h[-1], torch.nn.ReLU) and isinstance(block.task_specific[0][-1], torch.nn.BatchNorm2d)
    f = block.task_specific[2]
    assert (f[0].in_channels, f[0].out_channels, f[3].kernel_size) == (16 + 16, 16, (3, 3))


def test_dropped_task_features_are_zeroed_only_before_h():
    torch.manual_seed(0)
    block = CollaborativeBlock(3, 4).eval()
    xs = [torch.randn(2, 4, 3, 3) for _ in range(3)]
    full = block(xs)
    block.dropped_tasks = {1}
    dropped = block(xs)
    # same as computing z from zeroed x_1 but keeping x_1 in its own F_1 and skip connection
    z = block.central(torch.cat([xs[0], torch.zeros_like(xs[1]), xs[2]], 1))
    expected = [torch.relu(x + f(torch.cat([x, z], 1))) for x, f in zip(xs, block.task_specific)]
    for a, b, c in zip(dropped, expected, full):
        assert torch.allclose(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("backbone", ["resnet18", "alexnet"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_and_gradients_reach_every_parameter(name, backbone):
    torch.manual_seed(0)
    tasks = ("landmarks",) if name == "single" else TWO_TASKS
    model = create_model(name, tasks=tasks, backbone=backbone, input_size=64)
    outputs = model(torch.randn(2, 3, 64, 64), source=3)  # source is accepted and ignored
    assert isinstance(outputs, list) and len(outputs) == 1 and set(outputs[0]) == set(tasks)
    assert outputs[0]["landmarks"].shape == (2, 5, 2, 64)
    if "pose" in tasks:
        assert outputs[0]["pose"].shape == (2, 5)
    targets = _targets()
    loss = sum(model.task_loss(t, outputs[0][t], targets[t]) for t in tasks)
    assert torch.isfinite(loss)
    loss.backward()
    unreached = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unreached == []
    assert model.decode("landmarks", outputs[0]["landmarks"]).shape == (2, 5, 2)


@pytest.mark.parametrize("backbone", ["resnet18", "alexnet"])
def test_widened_baselines_match_dcnet_parameter_count(backbone):
    def count(name):
        return count_on_meta(lambda: create_model(name, backbone=backbone, input_size=128))

    counts = {name: count(name) for name in ("hps", "hps-wide", "cross-stitch", "cross-stitch-wide", "dcnet")}
    print(backbone, counts)
    dc = counts["dcnet"]
    assert abs(counts["hps-wide"] - dc) <= 0.05 * dc
    assert abs(counts["cross-stitch-wide"] - dc) <= 0.05 * dc
    assert counts["hps"] < 0.5 * dc and counts["cross-stitch"] < 0.9 * dc  # widening was needed


def test_cross_stitch_identity_mixing_reproduces_separate_columns():
    torch.manual_seed(0)
    tasks = ("landmarks", "gender", "pose")
    model = CrossStitchNet(tasks, "resnet18", input_size=64).eval()
    unit = model.connectors[0]
    assert torch.allclose(unit.alpha, torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        mixed = model(images)[0]
        for u in model.connectors:
            u.alpha.copy_(torch.eye(3))
        stitched = model(images)[0]
        for column, t in zip(model.columns, tasks):
            alone = model.heads[t](column.forward_features(images))
            assert torch.equal(stitched[t], alone)
            assert not torch.allclose(mixed[t], alone)


def test_single_hps_and_dcnet_layouts():
    single = create_model("single", tasks=["landmarks"], input_size=64)
    hps = create_model("hps", tasks=TWO_TASKS, input_size=64)
    dc = create_model("dcnet", tasks=TWO_TASKS, input_size=64)
    assert len(dc.columns) == 2 and len(dc.collaborative_blocks) == 4
    assert [b.task_specific[0][0].out_channels for b in dc.collaborative_blocks] == [64, 128, 256, 512]
    alex = create_model("dcnet", tasks=TWO_TASKS, backbone="alexnet", input_size=64)
    assert [b.task_specific[0][0].out_channels for b in alex.collaborative_blocks] == [64, 192, 256]
    # single and hps differ only in their heads
    assert num_parameters(hps) - num_parameters(single) == num_parameters(hps.heads["pose"])


def test_bad_configurations_fail_clearly():
    with pytest.raises(FacemtlError, match="exactly one task"):
        create_model("single", tasks=TWO_TASKS)
    with pytest.raises(FacemtlError, match="'points' and 'category' tasks only"):
        create_model("dcnet", tasks=("landmarks", "parsing"), input_size=64)
    with pytest.raises(FacemtlError, match="unknown backbone 'vgg'"):
        create_model("hps", backbone="vgg")
    with pytest.raises(FacemtlError, match="input_size must be an integer >= 64"):
        create_model("dcnet", input_size=32)


def test_torchvision_state_dict_keys():
    keys = ResNet18().state_dict().keys()
    assert len(keys) == 122  # torchvision resnet18: 62 parameters + 60 BN buffers
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.1.bn2.num_batches_tracked",
              "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias", "layer4.1.conv2.weight", "fc.bias"):  # fmt: skip
        assert k in keys
    alex = AlexNet().state_dict()
    assert sorted(alex) == sorted(
        f"{part}.{i}.{p}" for part, idx in (("features", (0, 3, 6, 8, 10)), ("classifier", (1, 4, 6)))
        for i in idx for p in ("weight", "bias")
    )  # fmt: skip
    assert alex["classifier.1.weight"].shape == (4096, 9216)


@pytest.mark.parametrize("backbone,cls", [("resnet18", ResNet18), ("alexnet", AlexNet)])
def test_pretrained_weights_round_trip_into_every_column(tmp_path, backbone, cls):
    torch.manual_seed(1)
    source = cls(include_top=True)  # stands in for an ImageNet network (has its fc/classifier)
    with torch.no_grad():
        for v in source.state_dict().values():
            if v.is_floating_point():
                v.uniform_(-1, 1)
    path = tmp_path / "imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith(("fc.", "classifier."))}
    dc = create_model("dcnet", tasks=TWO_TASKS, backbone=backbone, input_size=64, pretrained=str(path))
    hps = create_model("hps", tasks=TWO_TASKS, backbone=backbone, input_size=64, pretrained=str(path))
    for column in [*dc.columns, hps.trunk]:
        got = column.state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_pretrained_errors_are_clear(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in ResNet18().state_dict().items()}, str(path))
    with pytest.raises(FacemtlError, match=r"shape mismatch\(es\): bn1.bias: file \(64,\) vs model \(75,\)"):
        create_model("hps", tasks=TWO_TASKS, input_size=64, width=75, pretrained=str(path))
    with pytest.raises(FacemtlError, match="key\\(s\\) missing from the file"):
        create_model("hps", tasks=TWO_TASKS, backbone="alexnet", input_size=64, pretrained=str(path))
    with pytest.raises(FacemtlError, match="not found"):
        create_model("dcnet", tasks=TWO_TASKS, input_size=64, pretrained=str(tmp_path / "none.safetensors"))
    pth = tmp_path / "resnet18.pth"
    pth.write_bytes(b"\x80\x02")
    with pytest.raises(FacemtlError, match="expected a .safetensors file"):
        create_model("dcnet", tasks=TWO_TASKS, input_size=64, pretrained=str(pth))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(FacemtlError, match="not a readable safetensors file"):
        create_model("dcnet", tasks=TWO_TASKS, input_size=64, pretrained=str(bad))


def test_bin_loss_and_decode_hand_case():
    size = 4
    # x = 0.3 -> bin floor(1.2) = 1; y = 1.0 -> bin 4 clamped to 3
    target = torch.tensor([[[0.3, 1.0]]])
    uniform = torch.zeros(1, 1, 2, size)
    assert bin_loss(uniform, target).item() == pytest.approx(math.log(4))
    logits = torch.tensor([[[[0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]]])
    # x: CE = -log(e^2 / (e^2 + 3)); y: target bin 3 has logit 0: CE = -log(1 / (e + 3))
    expected = (-math.log(math.e**2 / (math.e**2 + 3)) + math.log(math.e + 3)) / 2
    assert bin_loss(logits, target).item() == pytest.approx(expected)
    # decode: bin 1 -> centre 1.5 / 4, bin 0 -> 0.5 / 4; the binning error stays in the score
    assert decode_bins(logits).tolist() == [[[0.375, 0.125]]]
    # a masked (invisible) point does not count
    two = torch.cat([logits, uniform], 1)
    visible = torch.tensor([[False, True]])
    assert bin_loss(two, torch.cat([target, target], 1), visible).item() == pytest.approx(math.log(4))


def test_model_task_loss_and_decode_use_bins_for_points_only():
    model = DCNet(TWO_TASKS, input_size=64)
    logits = torch.zeros(1, 5, 2, 64)
    logits[..., 10] = 5.0
    assert torch.allclose(model.decode("landmarks", logits), torch.full((1, 5, 2), 10.5 / 64))
    target = torch.full((1, 5, 2), 10.2 / 64)  # inside bin 10
    assert model.task_loss("landmarks", logits, target).item() == pytest.approx(
        -math.log(math.exp(5) / (math.exp(5) + 63)), rel=1e-5
    )
    pose = torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0]])
    assert torch.equal(model.decode("pose", pose), pose)
    assert model.task_loss("pose", pose, torch.tensor([2])).item() == pytest.approx(
        -math.log(math.exp(3) / (math.exp(3) + 4)), rel=1e-5
    )


def test_angle_bins_are_30_degrees_wide():
    assert [angle_to_bin(a) for a in (-90, -61, -60, -1, 0, 29.9, 30, 89, 95, -120)] == [0, 0, 1, 2, 3, 3, 4, 5, 5, 0]


@pytest.mark.parametrize("name", ["hps-wide", "dcnet"])
def test_checkpoint_records_resolved_width_and_no_weights_file(tmp_path, name):
    from facemtl.models.checkpoint import load_model, save_checkpoint

    torch.manual_seed(0)
    weights = tmp_path / "alex.safetensors"
    save_file({k: v.contiguous() for k, v in AlexNet().state_dict().items()}, str(weights))
    pretrained = str(weights) if name == "dcnet" else None
    model = create_model(name, tasks=TWO_TASKS, backbone="alexnet", input_size=64, pretrained=pretrained)
    assert model.config.width == (64 if name == "dcnet" else model.trunk.block_channels[0]) and model.config.width > 0
    config = {**dataclasses.asdict(model.config), "tasks": list(model.config.tasks)}  # as the engine records it
    assert config["pretrained"] is None
    save_checkpoint(tmp_path / "run", model, {"model": {"name": name, "config": config}})
    weights.unlink()  # the checkpoint must not need the ImageNet file any more
    loaded, info = load_model(tmp_path / "run")
    assert info["model"]["config"]["width"] == model.config.width
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_widened_baselines_match_a_narrow_dcnet_and_the_experiment_asks_for_it():
    import facemtl
    from facemtl.config import config_from_dict
    from facemtl.experiments.dcnet import variant

    tasks = ["landmarks", "gender", "smile", "glasses", "pose"]

    def count(name, **kw):
        return sum(p.numel() for p in facemtl.create_model(name, tasks=tasks, backbone="resnet18", input_size=64,
                                                           **kw).parameters())

    target = count("dcnet", width=16)
    for name in ("hps-wide", "cross-stitch-wide"):
        assert abs(count(name, match_width=16) - target) <= 0.05 * target
    assert count("hps-wide", width=16) < 0.5 * target  # a given width is not widened
    base = config_from_dict({"input_size": 64, "model": {"name": "dcnet", "kwargs": {"backbone": "resnet18", "width": 16}},
                             "schedule": {"mode": "joint"}, "data": [{"tasks": tasks, "style": "snapshot"}]})
    assert dict(variant(base, "hps-wide", 1.0).model.kwargs)["match_width"] == 16
    assert "width" not in dict(variant(base, "cross-stitch-wide", 1.0).model.kwargs)
    assert dict(variant(base, "hps", 1.0).model.kwargs)["width"] == 16
