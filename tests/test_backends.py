"""Prediction backends: onnxruntime (the exported graph, iFAN's streams one at a time) agrees with torch.

A small random iFAN with three batch-norm sources whose rows DIFFER (random running statistics and
affine parameters), so a graph that mixed up the streams or their per-iteration statistics would
not match. Tolerances: decoded outputs (points normalised to [0, 1], logits) within 1e-4; the
predictor's landmarks within 1e-3 pixel, masks equal but for argmax near-ties, labels equal,
probabilities within 1e-5.
"""

import json

import numpy as np
import pytest
import torch

import facemtl
from facemtl.cli import main
from facemtl.errors import FacemtlError
from facemtl.inference.predictor import Predictor
from facemtl.models.checkpoint import save_checkpoint
from facemtl.models.norm import SourceBatchNorm2d, randomise_norms

SIZE = 64
CONFIG = dict(tasks=["landmarks", "parsing", "emotion"], num_sources=3, iterations=2, growth_rate=4,
              layers_per_block=2, stem_channels=8, up_channels=8, reencoder_channels=4, points_hidden=32,
              category_hidden=16)
NAMES = ("landmarks", "parsing", "emotion")

pytestmark = pytest.mark.usefixtures("one_thread")


def random_ifan(seed: int = 3, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomise_norms(facemtl.create_model("ifan", **{**CONFIG, **overrides}).eval())


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("onnxruntime", reason="the optional extra facemtl[onnx] is not installed")
    return random_ifan()


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    save_checkpoint(path, model, {"model": {"name": "ifan", "config": CONFIG}, "input_size": SIZE})
    return path


def crops(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def faces(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE + 10 * i, SIZE + 5 * i, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("iterations", [None, 0, 1])
def test_decoded_outputs_agree_for_every_batch_size(model, iterations):
    """The graph is traced at batch 1 and run at 1, 3 and 17; streams and per-iteration statistics differ."""
    torch_side = Predictor(model, {"input_size": SIZE}, detector="none", iterations=iterations)
    ort_side = Predictor(model, {"input_size": SIZE}, detector="none", iterations=iterations, backend="onnxruntime")
    assert not model.training  # the export leaves the model in eval mode
    for batch in (1, 3, 17):
        x = crops(batch, batch)
        expected, got = torch_side.forward(x), ort_side.forward(x)
        assert set(got) == set(NAMES)
        for name in NAMES:
            assert got[name].shape == expected[name].shape and got[name].dtype == torch.float32
            assert (got[name] - expected[name]).abs().max() < 1e-4, name
    # the refinement and the streams matter, so agreement above is not a trivial one
    with torch.no_grad():
        steps = model(x)
        single = model(x, source=0)[-1]
    assert (steps[0]["emotion"] - steps[-1]["emotion"]).abs().max() > 1e-3
    assert (single["emotion"] - steps[-1]["emotion"]).abs().max() > 1e-3


@pytest.mark.parametrize("ensemble", [False, True])
def test_predictor_results_agree(model, ensemble):
    """Landmarks in pixels, masks and labels of whole photos, several faces per batch; for an
    ensemble too (its members' outputs averaged alike in both backends)."""
    boxes = [[8.0, 6.0, 50.0, 52.0], [20.5, 3.0, 60.0, 44.0]]
    models = [model, random_ifan(seed=5)] if ensemble else model
    results = {}
    for backend in ("torch", "onnxruntime"):
        predictor = Predictor(models, {"input_size": SIZE}, batch_size=3, backend=backend)
        images = faces(3, 0)
        results[backend] = [r.faces for r in predictor.stream(enumerate(images), boxes_for=lambda _k: boxes)]
    for a_faces, b_faces in zip(results["torch"], results["onnxruntime"]):
        assert len(a_faces) == len(b_faces) == 2
        for a, b in zip(a_faces, b_faces):
            assert a["box"] == b["box"]
            np.testing.assert_allclose(b["landmarks"], a["landmarks"], atol=1e-3)
            assert b["parsing"].shape == a["parsing"].shape and b["parsing"].dtype == np.uint8
            assert (b["parsing"] != a["parsing"]).mean() < 1e-3  # argmax near-ties only
            assert len(np.unique(a["parsing"])) > 3  # random logits: a mask of many classes
            assert b["emotion"]["label"] == a["emotion"]["label"]
            for name, p in a["emotion"]["probs"].items():
                assert abs(b["emotion"]["probs"][name] - p) < 1e-5


@pytest.mark.parametrize("iterations", [0, 2])
def test_a_graph_for_some_tasks_outputs_only_them_and_runs_less(model, iterations):
    """``tasks``: the graph's outputs are those tasks and its last iteration runs only their
    stream; when a face may get a second pass the graph keeps the landmarks the re-crop reads."""
    from facemtl.inference.export import onnx_model

    info, x = {"input_size": SIZE}, crops(3, 5)
    expected = Predictor(model, info, detector="none", iterations=iterations).forward(x)
    part = Predictor(model, info, detector="none", iterations=iterations, backend="onnxruntime", tasks=["emotion"])
    assert part.backend.names == ["emotion"]
    got = part.forward(x)
    assert set(got) == {"emotion"} and (got["emotion"] - expected["emotion"]).abs().max() < 1e-4

    def convs(tasks):
        return sum(n.op_type == "Conv" for n in onnx_model(model, info, iterations, batch=1, tasks=tasks).graph.node)

    assert convs(["emotion"]) < convs(None)
    two = Predictor(model, info, iterations=iterations, backend="onnxruntime", tasks=["emotion"], passes=2)
    assert two.backend.names == ["landmarks", "emotion"]
    # a given box's first pass needs the landmarks the lean graph lacks: a second graph is built
    # once, with them too, and the lean one still serves the calls it has
    both = part.forward(x, ("landmarks", "emotion"))
    assert part.backend.names == ["emotion"] and part.backend.wider[1] == ["landmarks", "emotion"]
    for name in ("landmarks", "emotion"):
        assert (both[name] - expected[name]).abs().max() < 1e-4
    first = part.backend.wider
    part.backend(x, ("emotion",))
    part.backend(x, ("landmarks",))
    assert part.backend.wider is first
    # end to end, a fresh lean predictor: a given box builds the wider graph and answers as torch does
    box = [[4.0, 6.0, 50.0, 52.0]]
    image = faces(1, 3)[0]
    fresh = Predictor(model, info, detector="none", iterations=iterations, backend="onnxruntime", tasks=["emotion"])
    (lean,) = fresh(image, boxes=box)
    assert fresh.backend.wider is not None and fresh.backend.names == ["emotion"]
    (eager,) = Predictor(model, info, detector="none", iterations=iterations, tasks=["emotion"])(image, boxes=box)
    assert lean["emotion"]["label"] == eager["emotion"]["label"]
    assert lean["emotion"]["probs"] == pytest.approx(eager["emotion"]["probs"], abs=1e-4)


def test_graph_runs_streams_one_at_a_time(model):
    """Plain per-stream batch norms (no transposes of the grouped form) and no work that no output
    reads: the landmark and emotion streams skip the up path, the stem is computed once."""
    from facemtl.inference.export import onnx_model
    from facemtl.models.ifan import IFAN

    assert isinstance(model, IFAN)
    graph = onnx_model(model, {"input_size": SIZE}, iterations=0, batch=1).graph
    ops = [node.op_type for node in graph.node]
    assert "Transpose" not in ops and "Gather" not in ops

    calls: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=name: calls.__setitem__(n, calls.get(n, 0) + 1))
             for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(crops(1, 0), source=0, iterations=0)  # one stream, everything
    finally:
        for hook in hooks:
            hook.remove()
    one_stream = sum(calls.values())
    up_path = sum(n for name, n in calls.items() if name.startswith(("backbone.up.", "backbone.transitions.")))
    assert up_path > 0
    # 3 streams; two of them without the up path; the stem shared (it reads the same image)
    assert ops.count("Conv") <= 3 * one_stream - 2 * up_path - 2
    norms = sum(isinstance(m, SourceBatchNorm2d) for m in model.modules())
    assert ops.count("BatchNormalization") < 3 * norms


def test_optimised_graph_keeps_only_unfoldable_batch_norms(model, tmp_path):
    """onnxruntime folds the flat decoders' conv -> BN pairs; the dense layers' pre-activation batch
    norms follow a Concat and stay (a per-channel affine each)."""
    import onnx

    from facemtl.inference.export import onnx_model, onnx_session

    proto = onnx_model(model, {"input_size": SIZE}, iterations=0, batch=1)
    exported = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    onnx_session(proto.SerializeToString(), threads=1, optimized_path=tmp_path / "opt.onnx")
    optimised = onnx.load(str(tmp_path / "opt.onnx")).graph.node
    remaining = sum(n.op_type == "BatchNormalization" for n in optimised)
    producers = {out: n.op_type for n in optimised for out in n.output}
    assert remaining < exported
    # no batch norm left that reads a plain convolution (those are folded)
    assert not [n for n in optimised if n.op_type == "BatchNormalization" and producers.get(n.input[0]) == "Conv"]


def test_one_stream_and_single_pass_models_use_their_own_graph():
    from facemtl.models.streamwise import inference_module

    assert inference_module(random_ifan(num_sources=1), 0) is None  # one stream: already plain
    torch.manual_seed(2)
    dcnet = facemtl.create_model("dcnet", tasks=["landmarks", "smile"], backbone="alexnet", input_size=SIZE,
                                 width=16, head_hidden=32).eval()
    assert inference_module(dcnet) is None
    pytest.importorskip("onnxruntime")
    x = crops(2, 9)
    a = Predictor(dcnet, {"input_size": SIZE}, detector="none").forward(x)
    b = Predictor(dcnet, {"input_size": SIZE}, detector="none", backend="onnxruntime").forward(x)
    for name in ("landmarks", "smile"):
        assert (a[name] - b[name]).abs().max() < 1e-4


def test_threads_and_backend_options(model):
    p = Predictor(model, {"input_size": SIZE}, detector="none", backend="onnxruntime", threads=1)
    assert p.backend.name == "onnxruntime"
    assert p.backend.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(FacemtlError, match="unknown backend 'tensorrt'; expected one of torch, onnxruntime"):
        Predictor(model, {"input_size": SIZE}, backend="tensorrt")
    with pytest.raises(FacemtlError, match="torch.set_num_threads"):
        Predictor(model, {"input_size": SIZE}, threads=2)
    with pytest.raises(FacemtlError, match="positive integer"):
        Predictor(model, {"input_size": SIZE}, backend="onnxruntime", threads=0)


def test_load_and_cli_predict_with_onnxruntime(run_dir, tmp_path, capsys):
    """Same JSON as torch within tolerance, and no file written next to the checkpoint."""
    import cv2

    before = sorted(p.name for p in run_dir.iterdir())
    predictor = facemtl.load(run_dir, detector="none", backend="onnxruntime")
    assert predictor.backend.name == "onnxruntime"
    image = faces(1, 4)[0]
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = {}
    for backend in ("torch", "onnxruntime"):
        out[backend] = tmp_path / f"{backend}.json"
        args = ["predict", str(path), "--checkpoint", str(run_dir), "--detector", "none", "--json",
                str(out[backend]), "--backend", backend, "--threads", "1"]
        assert main(args) == 0, capsys.readouterr().err
    a, b = (json.loads(out[k].read_text())["images"][0]["faces"][0] for k in ("torch", "onnxruntime"))
    np.testing.assert_allclose(b["landmarks"], a["landmarks"], atol=1e-2)  # JSON rounds to 0.01 px
    assert b["emotion"]["label"] == a["emotion"]["label"]
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_missing_onnxruntime_is_one_line_naming_the_extra(hide_module, run_dir, tmp_path, capsys):
    hide_module("onnxruntime")
    with pytest.raises(FacemtlError, match=r"onnxruntime backend needs .*pip install 'facemtl\[onnx\]'"):
        facemtl.load(tmp_path / "not-a-run", backend="onnxruntime")  # before the checkpoint is read
    image = tmp_path / "face.png"
    image.write_bytes(b"")
    assert main(["predict", str(image), "--checkpoint", str(run_dir), "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend onnxruntime needs" in err and "pip install 'facemtl[onnx]'" in err
