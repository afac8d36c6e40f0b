"""The fused batch norm + ReLU of the CPU speed paths (facemtl.models.bn_relu, used by
SourceBatchNorm2d.norm_relu) against float64 arithmetic, its fallbacks and its build."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from facemtl.models import cpu_kernels
from facemtl.models.fc_densenet import FCDenseNet, use_speed_paths
from facemtl.models.norm import SourceBatchNorm2d
from facemtl.models.registry import create_model

needs_kernel = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler: the kernel cannot be built")


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def norm(channels: int, sources: int, fused: bool, sets: int = 1) -> SourceBatchNorm2d:
    torch.manual_seed(3)
    bn = SourceBatchNorm2d(channels, sources, statistics_sets=sets)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.3)
        bn.running_mean.normal_(0, 1)
        bn.running_var.uniform_(0.5, 2)
    bn.fused = fused
    return bn.train()


def run(bn: SourceBatchNorm2d, x: torch.Tensor, gy: torch.Tensor, streams):
    x = x.detach().clone().requires_grad_()
    y = bn.norm_relu(x, streams)
    y.backward(gy)
    return [y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean.clone(), bn.running_var.clone()]


def reference(bn: SourceBatchNorm2d, x: torch.Tensor, gy: torch.Tensor, streams):
    """The same layer in float64, the unfused ops."""
    ref = norm(bn.num_features, bn.num_sources, False, bn.statistics_sets).double()
    ref.load_state_dict({k: v.double() for k, v in bn.state_dict().items()})
    ref.active_set = bn.active_set
    return run(ref, x.double(), gy.double(), streams)


# (shape, streams, sources): channel counts off and on multiples of 16, a batch whose rows do not
# fill the kernel's period, stacked sources (one chunk each), and one big enough for two threads
CASES = [
    ((4, 6, 8, 8), 1, 3),
    ((2, 7, 5, 3), 0, 1),
    ((3, 32, 4, 4), 0, 2),
    ((6, 22, 6, 6), (0, 1, 2), 3),
    ((8, 22, 32, 32), 2, 3),
]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the largest case crosses the kernel's two-thread threshold
    yield
    torch.set_num_threads(before)


@needs_kernel
@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("shape,streams,sources", CASES)
def test_the_fused_kernel_computes_batch_norm_and_relu_and_their_gradients(shape, streams, sources):
    g = torch.Generator().manual_seed(sum(shape))
    x = channels_last(torch.randn(shape, generator=g) * 3 + 2)
    gy = channels_last(torch.randn(shape, generator=g))
    bn = norm(shape[1], sources, True, sets=2)
    bn.active_set = 1  # rows of the second statistics set
    assert cpu_kernels.applies(x)
    want = reference(bn, x, gy, streams)  # first: run() updates the running statistics
    got = run(bn, x, gy, streams)
    names = ["output", "input gradient", "weight gradient", "bias gradient", "running mean", "running var"]
    for name, a, b in zip(names, got, want):
        scale = float(b.abs().max()) + 1e-6
        assert float((a.double() - b).abs().max()) <= 2e-5 * scale, name
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    # rows of sources not in the batch, and of the other statistics set, are untouched
    used = set(range(sources)) if isinstance(streams, tuple) else {streams}
    for s in set(range(sources)) - used:
        assert float(got[2][s].abs().max()) == 0.0 and float(got[3][s].abs().max()) == 0.0
    before = norm(shape[1], sources, True, sets=2)
    assert torch.equal(got[4][:sources], before.running_mean[:sources])


@needs_kernel
def test_the_kernel_gives_the_same_bits_on_every_call_with_several_threads():
    """Per-thread partial sums are added in thread order, not as the threads finish."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        g = torch.Generator().manual_seed(5)
        x = channels_last(torch.randn(8, 22, 32, 32, generator=g))
        gy = channels_last(torch.randn(8, 22, 32, 32, generator=g))
        first = run(norm(22, 1, True), x, gy, 0)
        for _ in range(5):
            again = run(norm(22, 1, True), x, gy, 0)
            assert all(torch.equal(a, b) for a, b in zip(first, again))
    finally:
        torch.set_num_threads(before)


@needs_kernel
def test_the_kernel_is_more_accurate_than_float32_batch_norm_on_large_batches():
    """PyTorch's channels-last float32 backward sums naively; the kernel sums in double."""
    g = torch.Generator().manual_seed(0)
    x = channels_last(torch.randn(24, 22, 32, 32, generator=g) * 3 + 2)
    gy = channels_last(torch.randn(24, 22, 32, 32, generator=g))
    want = reference(norm(22, 1, False), x, gy, 0)
    fused = run(norm(22, 1, True), x, gy, 0)
    plain = run(norm(22, 1, False), x, gy, 0)
    err = [float((a.double() - b).abs().max()) for a, b in zip(fused[1:4], want[1:4])]
    plain_err = [float((a.double() - b).abs().max()) for a, b in zip(plain[1:4], want[1:4])]
    assert all(e <= p for e, p in zip(err, plain_err)), (err, plain_err)


def run_cat(bn: SourceBatchNorm2d, a, b, gx, gy, streams):
    """cat_norm_relu forward and backward; gx: the concatenation's gradient from its other readers (None: none)."""
    a, b = (t.detach().clone().requires_grad_() for t in (a, b))
    x, y = bn.cat_norm_relu(a, b, streams)
    torch.autograd.backward([x, y] if gx is not None else [y], [gx, gy] if gx is not None else [gy])
    return [x.detach(), y.detach(), a.grad, b.grad, bn.weight.grad, bn.bias.grad, bn.running_mean.clone(),
            bn.running_var.clone()]


# (batch, channels of a, channels of b, height, width, streams, sources): a dense layer's pieces
CAT_CASES = [(4, 22, 6, 8, 8, 0, 1), (6, 5, 3, 5, 3, (0, 1, 2), 3), (8, 34, 6, 16, 16, 1, 2)]


@needs_kernel
@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("n,ca,cb,h,w,streams,sources", CAT_CASES)
@pytest.mark.parametrize("other_gradient", ["slice", "none"])
def test_the_concatenating_kernel_computes_the_concatenation_batch_norm_and_gradients(
        n, ca, cb, h, w, streams, sources, other_gradient):
    g = torch.Generator().manual_seed(n * ca + cb)
    a = channels_last(torch.randn(n, ca, h, w, generator=g) * 2 + 1)
    b = channels_last(torch.randn(n, cb, h, w, generator=g) - 1)
    gy = channels_last(torch.randn(n, ca + cb, h, w, generator=g))
    # what a concatenation's backward hands on: the first channels of a wider channels-last tensor
    gx = channels_last(torch.randn(n, ca + cb + 6, h, w, generator=g))[:, :ca + cb] if other_gradient == "slice" else None
    bn = norm(ca + cb, sources, True)
    ref = norm(ca + cb, sources, False).double()
    ref.load_state_dict({k: v.double() for k, v in bn.state_dict().items()})
    want = run_cat(ref, a.double(), b.double(), None if gx is None else gx.double(), gy.double(), streams)
    assert cpu_kernels.applies(a) and cpu_kernels.applies(b)
    got = run_cat(bn, a, b, gx, gy, streams)
    assert torch.equal(got[0], torch.cat([a, b], 1))
    names = ["output", "gradient of a", "gradient of b", "weight gradient", "bias gradient", "running mean",
             "running var"]
    for name, x, y in zip(names, got[1:], want[1:]):
        assert float((x.double() - y).abs().max()) <= 2e-5 * (float(y.abs().max()) + 1e-6), name
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in got[:4])


def test_cat_norm_relu_without_the_kernel_is_cat_then_norm_relu():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)
    x, y = norm(5, 1, True).cat_norm_relu(a, b, 0)  # NCHW: not the kernel
    assert torch.equal(x, torch.cat([a, b], 1))
    assert torch.equal(y, norm(5, 1, False).norm_relu(x, 0))


def run_pool(x, gskip, gout, fused: bool, split: int | None = None):
    """(pooled, gradient of x) through the kernel or PyTorch; with ``split``, x is given as
    its two pieces (channels :split and split:) and their gradients are concatenated back."""
    x = x.detach().clone()
    pieces = [x] if split is None else [x[:, :split].contiguous(memory_format=torch.channels_last),
                                        x[:, split:].contiguous(memory_format=torch.channels_last)]
    for t in pieces:
        t.requires_grad_()
    if fused:
        skip, out = cpu_kernels.max_pool_keeping_input(*pieces)
    else:
        skip = pieces[0] if split is None else torch.cat(pieces, 1)
        out = F.max_pool2d(skip, 2)
    if split is not None:  # the concatenation, bit for bit (NaNs included)
        assert torch.equal(skip.detach().view(torch.int32), x.view(torch.int32))
    if gskip is None:
        out.backward(gout)
    else:
        torch.autograd.backward([skip, out], [gskip, gout])
    return out.detach(), torch.cat([t.grad for t in pieces], 1)


@needs_kernel
@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("shape", [(2, 5, 6, 4), (3, 28, 8, 10), (2, 16, 2, 2), (4, 40, 32, 32)])
@pytest.mark.parametrize("other_gradient", ["slice", "none"])
@pytest.mark.parametrize("split", [None, 3])
def test_the_pooling_kernel_is_pytorchs_max_pooling_bit_for_bit(shape, other_gradient, split):
    g = torch.Generator().manual_seed(sum(shape))
    x = channels_last(torch.randn(shape, generator=g))
    x[0, 0, :2, :2] = 1.0  # a four-way tie: the first in scan order wins
    x[0, 1, 0, 1] = x[0, 1, 1, 0] = 5.0  # a two-way tie
    x[-1, -1, 0, 1] = x[-1, -1, 1, 1] = float("nan")  # NaNs win over numbers, the last NaN
    gskip = (channels_last(torch.randn(shape[0], shape[1] + 3, *shape[2:], generator=g))[:, :shape[1]]
             if other_gradient == "slice" else None)
    gout = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=g)
    out, grad = run_pool(x, gskip, gout, True, split)
    want_out, want_grad = run_pool(x, gskip, gout, False, split)
    assert torch.equal(out.nan_to_num(), want_out.nan_to_num()) and torch.equal(grad, want_grad)
    assert out.is_contiguous(memory_format=torch.channels_last)


@needs_kernel
def test_the_pooling_kernel_refuses_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        cpu_kernels.max_pool_keeping_input(channels_last(torch.randn(1, 4, 5, 4)))


@needs_kernel
def test_a_speed_path_training_step_runs_through_the_kernels(monkeypatch):
    """The concatenating batch norm and the pooling kernel are used in a model's training step
    (so the float32 speed-path tests in test_speed_paths.py check them inside the model)."""
    calls = {"cat_bn_relu": 0, "max_pool_keeping_input": 0}
    for name in calls:
        original = getattr(cpu_kernels, name)

        def counted(*args, _original=original, _name=name):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(cpu_kernels, name, counted)
    torch.manual_seed(0)
    net = use_speed_paths(FCDenseNet(growth_rate=4, layers_per_block=2, num_blocks=2, stem_channels=8,
                                     up_channels=8, pool="max")).train()
    out = net(channels_last(torch.randn(2, 3, 16, 16)))["out"]
    out.sum().backward()
    # 2 down + 2 up blocks, whose second layer reads a concatenation, and the second up block's
    # first layer, which joins the skip; pooling after each down block
    assert calls == {"cat_bn_relu": 5, "max_pool_keeping_input": 2}
    assert all(p.grad is not None for p in net.parameters())


def test_norm_relu_takes_the_plain_ops_where_the_kernel_does_not_apply():
    x = torch.randn(4, 6, 5, 5)
    bn = norm(6, 2, True)
    # NCHW, float64 and evaluation: relu(bn(x)) exactly
    assert not cpu_kernels.applies(x)
    assert torch.equal(bn.norm_relu(x, 1), F.relu(norm(6, 2, False)(x, 1)))
    assert not cpu_kernels.applies(channels_last(x).double())
    bn.eval()
    xc = channels_last(x)
    assert torch.equal(bn.norm_relu(xc, 1), F.relu(bn(xc, 1)))


@needs_kernel
def test_norm_relu_refuses_what_forward_refuses():
    bn = norm(6, 3, True)
    x = channels_last(torch.randn(4, 6, 5, 5))
    with pytest.raises(IndexError, match="source 3 out of range"):
        bn.norm_relu(x, 3)
    with pytest.raises(RuntimeError, match="subset of stacked sources"):
        bn.norm_relu(x, (0, 2))


def test_speed_paths_switch_the_fused_norm_on_and_off():
    model = create_model("ifan", tasks=["landmarks", "parsing"], num_sources=2, task_sources=[0, 1], growth_rate=3,
                         layers_per_block=1, num_blocks=2, stem_channels=4, up_channels=4, reencoder_channels=2,
                         points_hidden=8, decoder_channels=4, input_size=16)
    norms = [m for m in model.modules() if isinstance(m, SourceBatchNorm2d)]
    assert norms and not any(n.fused for n in norms)
    use_speed_paths(model)
    assert all(n.fused for n in norms)
    use_speed_paths(model, False)
    assert not any(n.fused for n in norms)


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A kernel build of its own (empty cache), forgotten afterwards."""
    monkeypatch.setenv("FACEMTL_CACHE", str(tmp_path))
    cpu_kernels._library.cache_clear()
    yield tmp_path
    cpu_kernels._library.cache_clear()


@needs_kernel
def test_the_kernel_is_built_into_the_cache_once(fresh_build):
    assert cpu_kernels.available()
    built = list((fresh_build / "kernels").glob("cpu_kernels-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    cpu_kernels._library.cache_clear()
    assert cpu_kernels.available() and built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_without_a_working_compiler_the_plain_ops_are_used_with_one_warning(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with pytest.warns(UserWarning, match="could not be built"):
        assert not cpu_kernels.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not on every call
        assert not cpu_kernels.available()
        bn = norm(6, 1, True)
        x = channels_last(torch.randn(4, 6, 5, 5))
        assert not cpu_kernels.applies(x)
        assert torch.equal(bn.norm_relu(x, 0), F.relu(norm(6, 1, False)(x, 0)))


def test_facemtl_native_0_switches_the_kernel_off(fresh_build, monkeypatch):
    monkeypatch.setenv("FACEMTL_NATIVE", "0")
    assert not cpu_kernels.available()
    assert not list(fresh_build.glob("**/*.so"))


def test_the_compilers_version_is_asked_once_per_compiler(fresh_build, monkeypatch):
    asked = []
    real_run = cpu_kernels.subprocess.run

    def counting_run(command, **kwargs):
        if command[1:] == ["--version"]:
            asked.append(command[0])
        return real_run(command, **kwargs)

    monkeypatch.setattr(cpu_kernels.subprocess, "run", counting_run)
    monkeypatch.setenv("CC", "true")  # a "compiler" that builds nothing
    cpu_kernels._compiler_version.cache_clear()
    first = cpu_kernels._compiler()
    assert first[0] == "true" and cpu_kernels._compiler() == first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not be built": no library came out
        cpu_kernels.build_description()  # a run's platform record: the kernel build, then the compiler
    assert asked == ["true"]
    monkeypatch.setenv("CC", "false")  # another compiler: asked too
    assert cpu_kernels._compiler()[0] == "false" and asked == ["true", "false"]
    cpu_kernels._compiler_version.cache_clear()
