"""The CPU training speed paths (facemtl.models.fc_densenet.use_speed_paths: channels-last
weights, one feedback convolution per level) compute what the eager path computes.

In float64 the two paths agree to rounding (1e-10): that checks the logic. In float32 they
agree to rounding in the forward pass; a gradient can differ locally where a ReLU or max-pool
input lies within float rounding of a kink (measured on the default run's network: one flipped
ReLU among 260,000 sent 6% of one re-encoder input's gradient elsewhere; on the tiny model
below, over 12 seeds, the whole gradient vector differed by 1e-6 relative without a flip and
by up to 4.9e-4 with one), so float32 gradients are compared as one vector.
"""

import copy

import pytest
import torch

from facemtl.models.checkpoint import load_model, save_checkpoint
from facemtl.models.fc_densenet import (
    DenseLayer,
    FCDenseNet,
    use_channels_last,
    use_speed_paths,
)
from facemtl.models.registry import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = ["landmarks", "parsing", "emotion"]
TINY = dict(tasks=TASKS, num_sources=3, task_sources=[0, 1, 2], iterations=2, growth_rate=3, layers_per_block=2,
            num_blocks=3, stem_channels=4, up_channels=4, reencoder_channels=2, points_hidden=8, category_hidden=8,
            decoder_channels=4, pool="max", segmentation_loss="ce+dice", input_size=32)


def tiny(dtype=torch.float32):
    torch.manual_seed(0)
    return create_model("ifan", **TINY).to(dtype)


def targets(b: int, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"landmarks": torch.rand(b, 5, 2, generator=g), "parsing": torch.randint(0, 11, (b, size, size), generator=g),
            "emotion": torch.randint(0, 7, (b,), generator=g)}


def images(b: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(dtype)


def train_pass(model, x, source=1, iterations=2):
    """Every task's loss at every iteration (as Eq. 5 sums them), its gradients, the buffers."""
    model.train()
    outputs = model(x, source=source, iterations=iterations)
    y = targets(x.shape[0])
    losses = torch.stack([model.task_loss(t, out[t], y[t]) for out in outputs for t in TASKS])
    model.zero_grad(set_to_none=True)
    losses.sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses.detach(), grads, {n: b.detach().clone() for n, b in model.named_buffers()}


def assert_close_rel(a, b, rtol, what):
    scale = a.abs().max().clamp_min(1e-30)
    assert (a - b).abs().max() <= rtol * scale, f"{what}: {((a - b).abs().max() / scale).item():.2e} relative"


@pytest.mark.parametrize("iterations", [0, 2])
def test_speed_paths_give_the_eager_losses_gradients_and_statistics_in_float64(iterations):
    eager = tiny(torch.float64)
    fast = use_speed_paths(copy.deepcopy(eager))
    x = images(6, torch.float64)
    ref, got = train_pass(eager, x, iterations=iterations), train_pass(fast, x, iterations=iterations)
    assert_close_rel(ref[0], got[0], 1e-10, "losses")
    assert ref[1].keys() == got[1].keys() and len(ref[1]) > 0
    for name in ref[1]:
        assert_close_rel(ref[1][name], got[1][name], 1e-10, name)
    for name in ref[2]:
        assert_close_rel(ref[2][name], got[2][name], 1e-10, name)


def test_speed_paths_give_the_eager_losses_and_gradients_in_float32():
    eager = tiny()
    fast = use_speed_paths(copy.deepcopy(eager))
    x = images(8)
    ref, got = train_pass(eager, x), train_pass(fast, x)
    assert_close_rel(ref[0], got[0], 1e-5, "losses")
    flat_ref = torch.cat([g.flatten() for g in ref[1].values()])
    flat_got = torch.cat([got[1][n].flatten() for n in ref[1]])
    assert ((flat_got - flat_ref).norm() / flat_ref.norm()).item() < 1e-3


def test_a_training_step_and_multi_stream_inference_match():
    eager = tiny(torch.float64)
    fast = use_speed_paths(copy.deepcopy(eager))
    x = images(4, torch.float64)
    for model in (eager, fast):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for source in (0, 2):  # two AdamW steps, with optimiser state made in each layout
            train_pass(model, x, source=source)
            opt.step()
    for (name, p), q in zip(eager.named_parameters(), fast.parameters()):
        assert_close_rel(p.detach(), q.detach(), 1e-8, name)  # AdamW divides by sqrt(v): rounding grows
    eager.eval(), fast.eval()
    with torch.no_grad():
        # source=None: every source's stream stacked along the batch (grouped batch norm)
        for a, b in zip(eager(x), fast(x)):
            for task in TASKS:
                assert_close_rel(a[task], b[task], 1e-10, task)


def test_the_fast_layout_is_channels_last_and_feedback_convolutions_are_batched():
    model = tiny()
    calls = []
    for module in model.modules():
        if isinstance(module, DenseLayer) and module.feedback_conv is not None:
            module.feedback_conv.register_forward_hook(lambda *args: calls.append(1))
    seen = {}
    model.backbone.register_forward_hook(lambda m, args, out: seen.update(out=out["out"], fb=args[2] if len(args) > 2 else None))
    model.train()
    model(images(2), source=0, iterations=1)
    assert len(calls) == 6 * 2  # eager, Iter1: 3 down + 3 up blocks x 2 layers, one convolution each
    assert seen["out"].is_contiguous()

    use_speed_paths(model)
    assert model.backbone.batched_feedback
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    calls.clear()
    model(images(2), source=0, iterations=1)
    assert calls == []  # one stacked convolution per level instead of the layers' own
    assert seen["out"].is_contiguous(memory_format=torch.channels_last) and not seen["out"].is_contiguous()

    use_speed_paths(model, enabled=False)
    assert not model.backbone.batched_feedback
    assert all(p.is_contiguous() for p in model.parameters())


def test_feedback_terms_are_each_layers_own_convolution():
    model = tiny()
    backbone: FCDenseNet = model.backbone
    g = torch.Generator().manual_seed(3)
    channels = backbone.feedback_channels
    feedback = [torch.randn(2, channels[i], 32 >> i, 32 >> i, generator=g) for i in range(backbone.num_blocks + 1)]
    terms = backbone.feedback_terms(feedback)
    for level, maps in enumerate(feedback):
        layers = backbone.level_layers(level)
        assert layers and all(layer in terms for layer in layers)
        for layer in layers:
            torch.testing.assert_close(terms[layer], layer.feedback_conv(maps), rtol=1e-5, atol=1e-6)
    # levels 1..n-1 hold a down block and an up block, level 0 and the bottom one block each
    assert [len(backbone.level_layers(i)) for i in range(4)] == [2, 4, 4, 2]


def test_a_fast_model_saves_a_checkpoint_an_eager_model_loads(tmp_path):
    model = use_channels_last(tiny())
    model.train()
    model(images(2), source=1)  # non-trivial running statistics
    model.eval()
    info = {"model": {"name": "ifan", "config": model.builder_config()}, "task_sources": [0, 1, 2],
            "sources": [{"name": "synth", "tasks": [t], "style": "studio"} for t in TASKS], "input_size": 32}
    save_checkpoint(tmp_path, model, info)
    loaded, _ = load_model(tmp_path)
    assert all(p.is_contiguous() for p in loaded.parameters())
    x = images(2)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            for task in TASKS:
                torch.testing.assert_close(a[task], b[task], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("iterations", [0, 2])
def test_asking_for_one_task_gives_its_numbers_and_gradients(iterations):
    """``tasks=(t,)`` skips what task t's last output does not depend on (other decoders and
    streams; the up path without a segmentation task): same loss, same gradients."""
    model = tiny(torch.float64).train()
    images = torch.rand(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for task in TASKS:
        grads = []
        for tasks in (None, (task,)):
            model.zero_grad(set_to_none=True)
            outputs = model(images, source=1, iterations=iterations, tasks=tasks)
            assert set(outputs[-1]) == ({task} if tasks else set(TASKS))
            assert all(set(o) == set(TASKS) for o in outputs[:-1])  # earlier steps feed the integrator
            sum(o[task].double().square().sum() for o in outputs).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert grads[0].keys() == grads[1].keys()
        for name, g in grads[0].items():
            torch.testing.assert_close(grads[1][name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_inference_for_some_tasks_runs_only_their_streams():
    model = tiny().eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(images)
        part = model(images, tasks=["landmarks"])
    assert set(part[-1]) == {"landmarks"}
    torch.testing.assert_close(part[-1]["landmarks"], full[-1]["landmarks"])
    with pytest.raises(Exception, match="tasks must name some of"):
        model(images, tasks=["age"])
