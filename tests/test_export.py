"""ONNX export: onnxruntime agrees with PyTorch on the source=None (per-source streams) path."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import facemtl
from facemtl.cli import main
from facemtl.models.checkpoint import load_model, save_checkpoint
from facemtl.errors import FacemtlError
from facemtl.inference.export import ExportWrapper, export_onnx, onnx_session, require_onnx

pytest.importorskip("onnx", reason="the optional extra facemtl[onnx] is not installed")
pytest.importorskip("onnxruntime", reason="the optional extra facemtl[onnx] is not installed")

SIZE = 64
CONFIG = dict(tasks=["landmarks", "parsing", "emotion"], num_sources=3, iterations=1, growth_rate=4,
              layers_per_block=1, stem_channels=8, up_channels=8, reencoder_channels=4, points_hidden=32,
              category_hidden=16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Random iFAN, three BN sources (task i from source i) with DIFFERENT running statistics,
    so an export that ignored the per-source streams would not match."""
    torch.manual_seed(1)
    model = facemtl.create_model("ifan", **CONFIG).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.2)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("run")
    save_checkpoint(path, model, {"model": {"name": "ifan", "config": CONFIG}, "input_size": SIZE})
    return path


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", str(run_dir), "--onnx", str(out)]) == 0
    return out


def test_onnxruntime_matches_pytorch_with_a_new_batch_size(run_dir, exported):
    model, info = load_model(run_dir)
    session = onnx_session(exported)
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["landmarks", "parsing", "emotion"]
    images = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))  # export used batch 2
    got = dict(zip(["landmarks", "parsing", "emotion"], session.run(None, {"images": images.numpy()})))
    with torch.no_grad():
        last = model(images)[-1]  # source=None: each task from its own source's stream, Iter1
        single = model(images, source=0)[-1]
    assert got["landmarks"].shape == (3, 5, 2) and got["parsing"].shape == (3, 11, SIZE, SIZE)
    assert got["emotion"].shape == (3, 7)
    for name, value in got.items():
        np.testing.assert_allclose(value, last[name].numpy(), atol=1e-4, rtol=1e-4)
    # The streams matter: one source's stream gives visibly different emotion logits.
    assert np.abs(got["emotion"] - single["emotion"].numpy()).max() > 1e-2


def test_metadata_describes_the_checkpoint(run_dir, exported):
    import onnx

    _, info = load_model(run_dir)
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert json.loads(meta["facemtl_info"]) == info
    assert json.loads(meta["outputs"]) == ["landmarks", "parsing", "emotion"]


def test_iterations_zero_exports_iter0(run_dir, tmp_path, capsys):
    model, info = load_model(run_dir)
    path = tmp_path / "iter0.onnx"
    assert main(["export", str(run_dir), "--onnx", str(path), "--iterations", "0", "--check"]) == 0
    report = capsys.readouterr().err.splitlines()[-1]  # "... largest difference per output: landmarks 1e-08, ..."
    diffs = [float(part.split()[-1]) for part in report.rsplit(": ", 1)[1].split(", ")]
    assert len(diffs) == 3 and max(diffs) < 1e-4, report
    images = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    got = onnx_session(path).run(None, {"images": images.numpy()})
    with torch.no_grad():
        iter0 = model(images, iterations=0)
    assert len(iter0) == 1
    for value, name in zip(got, ["landmarks", "parsing", "emotion"]):
        np.testing.assert_allclose(value, iter0[0][name].numpy(), atol=1e-4, rtol=1e-4)
    with pytest.raises(FacemtlError, match="iterations"):
        export_onnx(model, info, tmp_path / "bad.onnx", iterations=5)
    with pytest.raises(FacemtlError, match=r"\.onnx"):
        export_onnx(model, info, tmp_path / "model.bin")


def test_missing_onnx_packages_give_an_install_hint(hide_module, run_dir, tmp_path, capsys):
    hide_module("onnx")
    with pytest.raises(FacemtlError, match=r"pip install 'facemtl\[onnx\]'"):
        require_onnx()
    assert main(["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "facemtl[onnx]" in err and "Traceback" not in err and not (tmp_path / "m.onnx").exists()


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and err.count("\n") == 1


def test_wrapper_refuses_iterations_for_single_pass_models():
    from facemtl.models.base import FaceModel

    class SinglePass(FaceModel):  # the contract's default: no refinement iterations
        tasks = ()

        def forward(self, images, source=None, iterations=None):
            return [{}]

    with pytest.raises(FacemtlError, match="no refinement iterations"):
        ExportWrapper(SinglePass(), iterations=1)


def test_deep_collaboration_model_exports_and_predicts_decoded_points(tmp_path):
    """DCNet classifies coordinates over bins; the graph and the predictor both give decoded points."""
    from facemtl.inference.export import compare_with_torch
    from facemtl.inference.predictor import Predictor

    torch.manual_seed(2)
    model = facemtl.create_model("dcnet", tasks=["landmarks", "smile"], backbone="alexnet", input_size=SIZE,
                                 width=16, head_hidden=32).eval()
    info = {"input_size": SIZE}
    path = export_onnx(model, info, tmp_path / "dcnet.onnx")
    worst = compare_with_torch(model, path, size=SIZE)
    assert set(worst) == {"landmarks", "smile"} and max(worst.values()) < 1e-4
    points = onnx_session(path).run(None, {"images": np.zeros((2, 3, SIZE, SIZE), np.float32)})[0]
    assert points.shape == (2, 5, 2) and points.min() >= 0 and points.max() <= 1
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    (face,) = Predictor(model, info, detector="none")(image)
    assert set(face) == {"box", "detection_box", "landmarks", "smile"}
    assert face["smile"]["label"] in ("smiling", "not_smiling")
    assert np.all((face["landmarks"] >= 0) & (face["landmarks"] <= SIZE))  # normalised [0, 1] x SIZE


def _five_point_run(path):
    """A tiny landmark model with a random two-stage point refiner saved beside it (stage 2: 0.5 inter-ocular
    distances a patch)."""
    from facemtl.models.refiner import PointRefiner, save_refiner

    torch.manual_seed(2)
    config = {**CONFIG, "tasks": ["landmarks"], "num_sources": 1}
    save_checkpoint(path, facemtl.create_model("ifan", **config).eval(),
                    {"model": {"name": "ifan", "config": config}, "input_size": SIZE})
    save_refiner(path, PointRefiner(4), {"trained_on": "nothing: random weights"})
    save_refiner(path, PointRefiner(4, patch_side=0.5), {"trained_on": "nothing: random weights"}, stage=2)
    return path


def _patches_as_the_geometry_says(photo, points, patch, side_ratio, alias):
    """The refiner's patches cut from the metadata's words alone (numpy and OpenCV, no facemtl)."""
    import cv2

    d = points[1] - points[0]
    angle, side = np.arctan2(d[1], d[0]), max(side_ratio * np.hypot(*d), 4.0)
    if side / patch > alias:
        photo = cv2.GaussianBlur(photo, (0, 0), 0.5 * side / patch)
    turn = np.array([[np.cos(-angle), -np.sin(-angle)], [np.sin(-angle), np.cos(-angle)]]) * (patch / side)
    cut = [cv2.warpAffine(photo, np.hstack([turn, ((patch - 1) / 2 - turn @ p)[:, None]]), (patch, patch),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for p in points]
    return np.stack(cut)[None], angle, side


def test_the_refiner_is_exported_beside_and_its_metadata_is_enough_to_use_it(tmp_path, capsys):
    import onnx

    from facemtl.models.refiner import ANTI_ALIAS_FROM, PATCH, load_refiner, refine_points

    run = _five_point_run(tmp_path / "run")
    out = tmp_path / "face.onnx"
    assert main(["export", str(run), "--onnx", str(out), "--check"]) == 0
    err = capsys.readouterr().err
    assert "face.refiner.onnx" in err and "face.refiner.stage2.onnx" in err and "refiner stage 2 offsets" in err
    sessions, sides = [], []
    for stage, (name, json_name) in enumerate([("face.refiner.onnx", "refiner.json"),
                                               ("face.refiner.stage2.onnx", "refiner.stage2.json")], 1):
        meta = {p.key: p.value for p in onnx.load(str(tmp_path / name)).metadata_props}
        assert json.loads(meta["facemtl_refiner"]) == json.loads((run / json_name).read_text())
        sides.append(json.loads(meta["facemtl_refiner"])["patch_side"])
        assert f"({PATCH}, {PATCH})" in meta["geometry"] and f"{sides[-1]:g} * |d|" in meta["geometry"]
        assert f"This is stage {stage} of 2" in meta["geometry"]
        sessions.append(onnx_session(tmp_path / name))
    assert sides == [0.8, 0.5]
    refiner = load_refiner(run)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)
    for scale in (0.5, 2.0):  # a small face, and one large enough to be blurred first
        points = (np.array([[100.0, 110.0], [160.0, 100.0], [130.0, 140.0], [105.0, 170.0], [155.0, 165.0]]) - 130)
        start = refined = points * scale + 140 + rng.uniform(-2, 2, (5, 2))
        for session, side_ratio in zip(sessions, sides):  # stage 2 from stage 1's points
            patches, angle, side = _patches_as_the_geometry_says(photo, refined, PATCH, side_ratio, ANTI_ALIAS_FROM)
            assert (side / PATCH > ANTI_ALIAS_FROM) == (scale > 1 and side_ratio == 0.8)
            offsets = session.run(None, {"patches": patches})[0][0].astype(np.float64)
            turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            refined = refined + side * offsets @ turn.T
        np.testing.assert_allclose(refined, refine_points(refiner, photo, start), atol=1e-3)
        assert np.abs(refined - start).max() > 1e-2


def test_export_refiner_none_writes_the_face_model_only(tmp_path, run_dir):
    run = _five_point_run(tmp_path / "run")
    assert main(["export", str(run), "--onnx", str(tmp_path / "a.onnx"), "--refiner", "none"]) == 0
    assert (tmp_path / "a.onnx").exists() and not (tmp_path / "a.refiner.onnx").exists()
    # auto with no refiner beside the checkpoint: the face model only, no complaint
    assert main(["export", str(run_dir), "--onnx", str(tmp_path / "b.onnx")]) == 0
    assert not (tmp_path / "b.refiner.onnx").exists()


def test_export_of_a_refiner_for_a_model_without_the_five_points_is_one_line(tmp_path, capsys):
    run = _five_point_run(tmp_path / "run")
    torch.manual_seed(0)
    config = {**CONFIG, "tasks": ["emotion"], "num_sources": 1}
    save_checkpoint(tmp_path / "emo", facemtl.create_model("ifan", **config).eval(),
                    {"model": {"name": "ifan", "config": config}, "input_size": SIZE})
    capsys.readouterr()
    assert main(["export", str(tmp_path / "emo"), "--onnx", str(tmp_path / "e.onnx"), "--refiner", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no such task" in err and err.count("\n") == 1 and not (tmp_path / "e.onnx").exists()


def test_the_bundled_model_exports_with_its_refiner(tmp_path, capsys):
    assert main(["export", "bundled", "--onnx", str(tmp_path / "face.onnx")]) == 0
    assert sorted(o.name for o in onnx_session(tmp_path / "face.onnx").get_outputs()) == ["emotion", "landmarks",
                                                                                        "parsing"]
    session = onnx_session(tmp_path / "face.refiner.onnx")
    assert [(i.name, i.shape[1:]) for i in session.get_inputs()] == [("patches", [5, 48, 48, 3])]
    assert session.run(None, {"patches": np.zeros((2, 5, 48, 48, 3), np.uint8)})[0].shape == (2, 5, 2)
    # The face model's graph with its metadata's words alone (numpy, OpenCV, onnxruntime): the predictor's
    # points and emotion for a given box, two crops (passes=2: the second upright from the first's points)
    astronaut = Path(__file__).parents[2] / "shared" / "testdata" / "astronaut.png"
    if not astronaut.exists():
        pytest.skip("needs ../shared/testdata/astronaut.png")
    import cv2

    photo = cv2.cvtColor(cv2.imread(str(astronaut)), cv2.COLOR_BGR2RGB)
    box = [180.0, 80.0, 262.0, 166.0]
    session = onnx_session(tmp_path / "face.onnx")
    meta = session.get_modelmeta().custom_metadata_map
    assert "cv2.warpAffine(photo, M, (S, S), INTER_LINEAR, BORDER_CONSTANT, 0)" in meta["crop"]
    assert "m = 0.25" in meta["crop"] and "S = 128" in meta["crop"] and "opencv (-0.002, 0.091, 0.845)" in meta["crop"]
    points, probs = _face_model_as_the_crop_text_says(session, json.loads(meta["facemtl_info"]), photo, box)
    face = facemtl.load(refiner="none", passes=2)(photo, boxes=[box])[0]
    np.testing.assert_allclose(points, face["landmarks"], atol=0.01)
    np.testing.assert_allclose(probs, list(face["emotion"]["probs"].values()), atol=1e-3)
    first, _ = _face_model_as_the_crop_text_says(session, json.loads(meta["facemtl_info"]), photo, box, crops=1)
    assert np.abs(first - points).max() > 0.1  # the second crop moved the points: it was made


def _face_model_as_the_crop_text_says(session, info: dict, photo, box, crops: int = 2):
    """Points and emotion probabilities of one face from the box's crop and (``crops=2``) the upright crop of
    its points, as the graph's ``crop`` metadata says: numpy, OpenCV and onnxruntime, no facemtl."""
    import cv2

    size, margin = info["input_size"], info["crop"]["margin"]
    mean, std = (np.array(info["normalization"][k], np.float32)[:, None, None] for k in ("mean", "std"))
    flip = [t["flip_permutation"] for t in info["tasks"] if t["name"] == "landmarks"][0]

    def affine3(m):
        return np.vstack([m, [0.0, 0.0, 1.0]])

    def run(centre, side, turn):  # turn: 3x3 affine T
        k = size / (side * (1 + 2 * margin))
        m = (affine3(np.hstack([k * np.eye(2), ((size - 1) / 2 - k * centre)[:, None]])) @ turn)[:2]
        crop = cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        x = np.stack([crop, crop[:, ::-1]]).transpose(0, 3, 1, 2).astype(np.float32) / 255
        out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": (x - mean) / std})))
        mirrored = out["landmarks"][1][flip]
        mirrored[:, 0] = (size - 1) / size - mirrored[:, 0]
        inverse = np.linalg.inv(affine3(m))
        points = (out["landmarks"][0] + mirrored) / 2 * size @ inverse[:2, :2].T + inverse[:2, 2]
        logits = out["emotion"].mean(0)  # emotion's flip permutation is empty: no category swapped
        return points, np.exp(logits) / np.exp(logits).sum()

    def square(points):  # (centre, side) of five points' face square
        low, high = points.min(0), points.max(0)
        return (low + high) / 2, 2 * (high - low).max()

    box = np.asarray(box, np.float64)
    points, probs = run((box[:2] + box[2:]) / 2, (box[2:] - box[:2]).max(), np.eye(3))
    if crops == 1:
        return points, probs
    d = points[1] - points[0]
    turn = affine3(cv2.getRotationMatrix2D(tuple(square(points)[0]), np.clip(np.degrees(np.arctan2(d[1], d[0])),
                                                                            -45, 45), 1.0))
    return run(*square(points @ turn[:2, :2].T + turn[:2, 2]), turn)
