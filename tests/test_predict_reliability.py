"""Prediction, evaluation output, export and model files under abuse: aborts keep the old files,
bad arguments and model.json fields are one line before any work, huge images and huge model
descriptions are refused before memory is spent, degenerate crops and NaN never reach the JSON,
and links that lead nowhere are reported.

The checkpoint is a random tiny iFAN (nothing here depends on its quality).
"""

import errno
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import facemtl
from facemtl.cli import main
from facemtl.data.synth import render_face
from facemtl.errors import FacemtlError
from facemtl.models.checkpoint import load_model, save_checkpoint

SIZE = 64
CONFIG = dict(tasks=["landmarks", "parsing", "emotion"], num_sources=3, iterations=1, growth_rate=4,
              layers_per_block=1, stem_channels=8, up_channels=8, reencoder_channels=4, points_hidden=32,
              category_hidden=16)
SMOKE_CONFIG = Path(__file__).parents[1] / "configs" / "ifan_synth_smoke.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread):
    torch.manual_seed(0)
    model = facemtl.create_model("ifan", **CONFIG).eval()
    path = tmp_path_factory.mktemp("run")
    save_checkpoint(path, model, {"model": {"name": "ifan", "config": CONFIG}, "input_size": SIZE,
                                  "crop": {"size": SIZE, "margin": 0.25}})
    return path


def write_face(path: Path, index: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = render_face(3, index, "studio", SIZE)["image"]
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def strict_json(text: str):
    """json.loads that refuses the NaN/Infinity tokens Python's json would accept."""
    def refuse(token):
        raise AssertionError(f"not JSON: bare {token} token in the output")
    return json.loads(text, parse_constant=refuse)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".facemtl-probe-")]


def one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("facemtl: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def copy_run(run_dir: Path, dest: Path, edit=None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
    meta = json.loads((run_dir / "model.json").read_text())
    if edit is not None:
        edit(meta)
    (dest / "model.json").write_text(json.dumps(meta))
    return dest


@pytest.fixture
def unwritable(monkeypatch):
    """``unwritable(folder)``: a folder nobody can create files in (chmod 0555; as root, whom
    permissions do not stop, creating temporaries there fails as on a read-only mount)."""
    made = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        made.append(folder)
        try:
            (folder / "probe").write_text("x")
        except OSError:
            return folder
        (folder / "probe").unlink()
        real = tempfile.mkstemp

        def refuse_there(*args, dir=None, **kwargs):
            if dir is not None and Path(dir).resolve() == folder.resolve():
                raise PermissionError(errno.EACCES, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse_there)
        return folder

    yield make
    for folder in made:
        folder.chmod(0o755)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any checkpoint load fails the test: the error must come before it."""
    import facemtl.models.checkpoint as ckpt

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the arguments were checked")

    monkeypatch.setattr(ckpt, "load_model", refuse)


# ---------------------------------------------------------------------------------------
# 3. an abort keeps the previous output files


def test_predict_json_abort_keeps_the_old_file_and_no_temporary(run_dir, tmp_path, monkeypatch, capsys):
    from facemtl.inference.predictor import Predictor

    folder = tmp_path / "photos"
    for i in range(3):
        write_face(folder / f"p{i}.png", i)
    out = tmp_path / "res" / "pred.json"
    out.parent.mkdir()
    out.write_bytes(b'{"images": [], "errors": [], "note": "the previous results"}\n')
    before = out.read_bytes()
    real_run, calls = Predictor._run, []

    def interrupted(self, batch):
        calls.append(len(batch))
        if len(calls) == 2:  # the first image's record is already written
            raise KeyboardInterrupt
        return real_run(self, batch)

    monkeypatch.setattr(Predictor, "_run", interrupted)
    code = main(["predict", str(folder), "--checkpoint", str(run_dir), "--detector", "none", "--batch-size", "1",
                 "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and len(calls) == 2, err
    assert f"interrupted after 1 of 3 image(s): {out} kept as it was" in err  # says what happened to the file
    assert out.read_bytes() == before
    assert temporaries(tmp_path) == []

    def broken(self, batch):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(Predictor, "_run", broken)
    with pytest.raises(RuntimeError, match="model exploded"):  # a bug keeps its traceback, and the old file
        main(["predict", str(folder), "--checkpoint", str(run_dir), "--detector", "none", "--json", str(out)])
    assert out.read_bytes() == before
    assert temporaries(tmp_path) == []


def test_predict_replaces_json_masks_and_overlays_only_when_complete(run_dir, tmp_path, monkeypatch, capsys):
    img = write_face(tmp_path / "in" / "face.png")
    out, overlays = tmp_path / "res" / "pred.json", tmp_path / "res" / "overlays"
    args = ["predict", str(img), "--checkpoint", str(run_dir), "--detector", "none", "--json", str(out),
            "--overlays", str(overlays)]
    assert main(args) == 0, capsys.readouterr().err
    first = strict_json(out.read_text())
    mask = out.parent / first["images"][0]["faces"][0]["parsing"]
    overlay = overlays / "face.png"
    assert mask.exists() and overlay.exists()
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600
    old = {p: b"old " + p.name.encode() for p in (out, mask, overlay)}
    for p, data in old.items():
        p.write_bytes(data)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # every atomic write fails before its rename
    code = main(args)
    one_error_line(capsys.readouterr().err, "No space left on device")
    assert code == 2
    for p, data in old.items():
        assert p.read_bytes() == data, p
    assert temporaries(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_eval_json_is_atomic_strict_and_checked_before_evaluating(run_dir, tmp_path, monkeypatch, capsys):
    import facemtl.data.mixing as mixing
    import facemtl.engine.evaluate as evaluation

    monkeypatch.setattr(mixing, "build_sources", lambda config, tasks: [])
    monkeypatch.setattr(evaluation, "format_tables", lambda result, tasks: "tables")
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: {"parsing": {"f1": float("nan"), "n": 3}})
    out = tmp_path / "eval.json"
    args = ["eval", str(run_dir), "--config", str(SMOKE_CONFIG), "--json", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    assert strict_json(out.read_text()) == {"parsing": {"f1": None, "n": 3}}  # NaN is null, not a bare NaN

    out.write_text("old results\n")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    assert main(args) == 2
    one_error_line(capsys.readouterr().err, "No space left")
    assert out.read_text() == "old results\n" and temporaries(tmp_path) == []


def test_export_failure_keeps_the_old_onnx_file(run_dir, tmp_path, monkeypatch, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous export")

    def refuse(proto, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx.checker, "check_model", refuse)  # after torch has built the graph
    assert main(["export", str(run_dir), "--onnx", str(out)]) == 130
    assert out.read_bytes() == b"the previous export"
    assert temporaries(tmp_path) == []


# ---------------------------------------------------------------------------------------
# 5. one line, before any work


def test_eval_json_to_a_folder_or_a_read_only_folder_fails_before_evaluating(run_dir, tmp_path, monkeypatch,
                                                                            capsys, unwritable):
    import facemtl.engine.evaluate as evaluation

    def refuse(*args, **kwargs):
        raise AssertionError("evaluated before checking --json")

    monkeypatch.setattr(evaluation, "evaluate", refuse)
    (tmp_path / "adir").mkdir()
    assert main(["eval", str(run_dir), "--config", str(SMOKE_CONFIG), "--json", str(tmp_path / "adir")]) == 2
    one_error_line(capsys.readouterr().err, "--json", "adir", "is a folder; expected a file name")

    ro = unwritable(tmp_path / "ro")
    assert main(["eval", str(run_dir), "--config", str(SMOKE_CONFIG), "--json", str(ro / "eval.json")]) == 2
    one_error_line(capsys.readouterr().err, "--json", "cannot write into folder", "ro")


def test_export_into_a_read_only_folder_or_with_a_bad_opset_is_one_line_before_loading(
        run_dir, tmp_path, capsys, unwritable, no_model_loading):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    ro = unwritable(tmp_path / "ro")
    assert main(["export", str(run_dir), "--onnx", str(ro / "m.onnx")]) == 2
    one_error_line(capsys.readouterr().err, "--onnx", "cannot write into folder")
    assert main(["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx"), "--opset", "3"]) == 2
    one_error_line(capsys.readouterr().err, "--opset 3", "opsets 11 to 20")
    (tmp_path / "afile").write_text("x")
    assert main(["export", str(run_dir), "--onnx", str(tmp_path / "afile" / "m.onnx")]) == 2
    one_error_line(capsys.readouterr().err, "afile is a file, not a folder")


def test_predict_device_is_checked_before_loading(tmp_path, monkeypatch, capsys, no_model_loading):
    img = write_face(tmp_path / "face.png")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    assert main(["predict", str(img), "--checkpoint", str(tmp_path / "nowhere"), "--device", "cuda"]) == 2
    one_error_line(capsys.readouterr().err, "--device 'cuda'", "CUDA is not available", "--device cpu")
    assert main(["predict", str(img), "--checkpoint", str(tmp_path / "nowhere"), "--device", "bogus"]) == 2
    one_error_line(capsys.readouterr().err, "--device 'bogus'", "not a torch device", "expected cpu, cuda")


def test_unwritable_overlays_masks_and_json_are_one_line_before_loading(tmp_path, capsys, unwritable,
                                                                       no_model_loading):
    img = write_face(tmp_path / "face.png")
    ro = unwritable(tmp_path / "ro")
    (tmp_path / "afile").write_text("x")
    for option, where, message in [
        ("--overlays", ro, "cannot write into folder"),
        ("--overlays", tmp_path / "afile" / "ov", "cannot create the folder"),
        ("--masks", ro, "cannot write into folder"),
        ("--masks", tmp_path / "afile", "is a file; expected a folder"),
        ("--json", ro / "p.json", "cannot write into folder"),
        ("--json", tmp_path, "is a folder; expected a file name"),
    ]:
        code = main(["predict", str(img), "--checkpoint", str(tmp_path / "nowhere"), option, str(where)])
        assert code == 2
        one_error_line(capsys.readouterr().err, option, message)


@pytest.mark.parametrize(
    "edit, key, expected",
    [
        (lambda m: m.update(input_size="abc"), "'input_size' is 'abc'", "integer number of pixels from 8 to 1024"),
        (lambda m: m.update(input_size=-64), "'input_size' is -64", "from 8 to 1024"),
        (lambda m: m.update(input_size=0), "'input_size' is 0", "from 8 to 1024"),
        (lambda m: m["crop"].update(margin="wide"), "'crop.margin' is 'wide'", "a number from 0 to 5"),
        (lambda m: m["crop"].update(detail=4), "'crop.detail' is 4", "0 (the crop as cut) or a side in pixels from 8"),
        (lambda m: m["crop"].update(detail=48.0), "'crop.detail' is 48.0", "to the model's input size"),
        (lambda m: m["normalization"].update(mean=[0.5, 0.5]), "'normalization.mean' is [0.5, 0.5]",
         "expected 3 finite numbers"),
        (lambda m: m["normalization"].update(std=[0.5, 0, 0.5]), "'normalization.std'", "3 numbers above 0"),
        (lambda m: m.update(task_sources=[0, "x"]), "'task_sources'", "one per task"),
        (lambda m: m["tasks"].__setitem__(1, 7), "'tasks.1' is 7", "expected an object with a 'name'"),
        (lambda m: m["model"]["config"].update(growth_rate=-4), "'model'", "growth_rate"),
    ],
)
def test_model_json_fields_are_checked_with_file_key_and_expectation(run_dir, tmp_path, capsys, edit, key,
                                                                     expected):
    ckpt = copy_run(run_dir, tmp_path / "ckpt", edit)
    with pytest.raises(FacemtlError) as info:
        load_model(ckpt)
    message = str(info.value)
    assert str(ckpt / "model.json") in message and key in message and expected in message, message
    img = write_face(tmp_path / "face.png")
    assert main(["predict", str(img), "--checkpoint", str(ckpt)]) == 2
    one_error_line(capsys.readouterr().err, key)


# ---------------------------------------------------------------------------------------
# 7. limits: huge images from their header, huge models on the meta device


def _png(width: int, height: int) -> bytes:
    """A valid gray PNG of any size, all rows alike (a 30000 x 30000 one is under 1 MB)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".ppm", ".pgm"])
def test_header_size_reads_common_formats(ext):
    from facemtl.data.image_header import header_size

    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    if ext == ".pgm":
        image = image[:, :, 0]
    ok, data = cv2.imencode(ext, image)
    assert ok
    assert header_size(data.tobytes()) == (53, 37)
    assert header_size(data) == (53, 37)  # the numpy buffer read_image holds
    assert header_size(data.tobytes()[:4]) is None  # cut short: decode decides
    lossless = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])[1]
    assert header_size(lossless) == (53, 37)


def test_huge_png_is_refused_from_its_header_and_the_folder_goes_on(run_dir, tmp_path, monkeypatch, capsys):
    from facemtl.data.images import read_image

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a_huge.png").write_bytes(_png(30000, 30000))
    assert (folder / "a_huge.png").stat().st_size < 1_000_000
    write_face(folder / "b_face.png")
    real = cv2.imdecode

    def decode(data, flag):
        assert data.size != (folder / "a_huge.png").stat().st_size, "the huge image was decoded"
        return real(data, flag)

    monkeypatch.setattr(cv2, "imdecode", decode)
    with pytest.raises(FacemtlError, match=r"a_huge.png: image is 30000 x 30000 = 900.0 megapixels; .*at most 100 "):
        read_image(folder / "a_huge.png")
    out = tmp_path / "pred.json"
    code = main(["predict", str(folder), "--checkpoint", str(run_dir), "--detector", "none", "--json", str(out)])
    assert code == 1
    data = strict_json(out.read_text())
    assert [Path(r["path"]).name for r in data["images"]] == ["b_face.png"]
    (error,) = data["errors"]
    assert Path(error["path"]).name == "a_huge.png" and "megapixels" in error["error"]


def test_pixel_limit_applies_after_decoding_other_formats(tmp_path, monkeypatch):
    from facemtl.data.image_header import header_size
    from facemtl.data.images import read_image

    path = tmp_path / "x.tiff"
    assert cv2.imwrite(str(path), np.zeros((40, 50, 3), np.uint8))
    assert header_size(path.read_bytes()) is None  # TIFF: no header reader, decoded then checked
    monkeypatch.setenv("FACEMTL_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(FacemtlError, match=r"x.tiff: image is 50 x 40 .* at most 0.001 megapixels"):
        read_image(path)
    monkeypatch.setenv("FACEMTL_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(FacemtlError, match="FACEMTL_MAX_IMAGE_PIXELS='lots': expected a positive number"):
        read_image(path)


def test_a_model_json_asking_for_a_huge_network_is_refused_on_the_meta_device(run_dir, tmp_path, monkeypatch):
    import facemtl.models.checkpoint as ckpt

    real, devices = ckpt.build_model, []

    def spy(info, *args, **kwargs):
        device = torch.empty(0).device  # the default device the builder allocates on
        devices.append(device.type)
        assert device.type == "meta", "the described model was built for real before its weights were checked"
        return real(info, *args, **kwargs)

    monkeypatch.setattr(ckpt, "build_model", spy)
    big = copy_run(run_dir, tmp_path / "big", lambda m: m["model"]["config"].update(growth_rate=20000))
    with pytest.raises(FacemtlError) as info:
        load_model(big)
    message = str(info.value)
    assert "weights do not match model 'ifan'" in message and "model.json describes" in message, message
    assert "of another shape (e.g. 'backbone." in message and "[20000," in message, message
    assert devices == ["meta"]


def test_matching_weights_still_load_after_the_meta_check(run_dir):
    model, info = load_model(run_dir)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert info["input_size"] == SIZE


# ---------------------------------------------------------------------------------------
# 8. margins, degenerate crops, strict JSON


@pytest.mark.parametrize("margin", ["nan", "inf", "-0.1", "1e9"])
def test_bad_margin_is_one_line_before_loading(tmp_path, capsys, no_model_loading, margin):
    img = write_face(tmp_path / "face.png")
    assert main(["predict", str(img), "--checkpoint", str(tmp_path / "nowhere"), "--margin", margin]) == 2
    one_error_line(capsys.readouterr().err, "--margin is", "expected a number from 0 to 5")


def test_predictor_refuses_a_nan_margin(run_dir):
    model, info = load_model(run_dir)
    with pytest.raises(FacemtlError, match="crop margin is nan; expected a number from 0 to 5"):
        facemtl.inference.predictor.Predictor(model, info, margin=float("nan"))


def test_detail_shrinks_every_crop_before_the_network_from_the_argument_or_the_checkpoint(run_dir, tmp_path):
    from facemtl.inference.predictor import Predictor, reduce_detail

    crops = np.stack([render_face(3, i, "studio", SIZE)["image"] for i in range(2)])
    model, info = load_model(run_dir)
    plain = Predictor(model, info).normalise(crops)
    torch.testing.assert_close(Predictor(model, info, detail=0).normalise(crops), plain)
    torch.testing.assert_close(Predictor(model, info, detail=SIZE).normalise(crops), plain)  # nothing to shrink
    shrunk = Predictor(model, info, detail=16).normalise(crops)
    assert not torch.allclose(shrunk, plain)
    torch.testing.assert_close(shrunk, Predictor(model, info).normalise(np.stack([reduce_detail(c, 16) for c in crops])))
    # by hand: a dark left half and a bright right half at an 8-px side are 8 columns of block means
    # (0 0 0 0 200 200 200 200), enlarged bilinearly: pixel x samples column (x + 0.5) / 8 - 0.5
    halves = np.zeros((SIZE, SIZE, 3), np.uint8)
    halves[:, SIZE // 2:] = 200
    row = reduce_detail(halves, 8)[SIZE // 2, :, 0].astype(int)
    assert abs(row[27]) <= 1 and abs(row[31] - 87.5) <= 1 and abs(row[32] - 112.5) <= 1 and abs(row[36] - 200) <= 1
    # a checkpoint's crop.detail is the default; the argument overrides it
    ckpt = copy_run(run_dir, tmp_path / "ckpt", lambda m: m["crop"].update(detail=16))
    assert facemtl.load(ckpt).detail == 16 and facemtl.load(ckpt, detail=0).detail == 0
    with pytest.raises(FacemtlError, match=f"detail is 200; expected 0 .* from 8 to the model's input size {SIZE}"):
        Predictor(model, info, detail=200)
    with pytest.raises(FacemtlError, match="checkpoint 'crop.detail' is 4; expected 0"):
        Predictor(model, dict(info, crop={"margin": 0.25, "detail": 4}))


def test_bad_detail_is_one_line_before_loading(tmp_path, capsys, no_model_loading):
    img = write_face(tmp_path / "face.png")
    assert main(["predict", str(img), "--checkpoint", str(tmp_path / "nowhere"), "--detail", "-3"]) == 2
    one_error_line(capsys.readouterr().err, "--detail must be 0 (the crop as cut) or a side in pixels, got -3")


def test_degenerate_face_is_reported_and_the_rest_continue(run_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    write_face(folder / "a.png", 1)
    write_face(folder / "b.png", 2)
    boxes = tmp_path / "boxes.json"
    good = [8, 8, 56, 56]
    boxes.write_text(json.dumps({"a.png": [[0, 0, 1e9, 1e9], good, [5000, 5000, 5040, 5040]], "b.png": [good]}))
    out = tmp_path / "pred.json"
    code = main(["predict", str(folder), "--checkpoint", str(run_dir), "--boxes", str(boxes), "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    data = strict_json(out.read_text())
    assert [len(r["faces"]) for r in data["images"]] == [1, 1]
    assert data["images"][0]["faces"][0]["box"] == good
    assert [(Path(e["path"]).name, e["box"]) for e in data["errors"]] == [
        ("a.png", [0.0, 0.0, 1e9, 1e9]), ("a.png", [5000.0, 5000.0, 5040.0, 5040.0])]
    assert "more than 10 times the 64 x 64 image" in data["errors"][0]["error"]
    assert "lies outside the 64 x 64 image" in data["errors"][1]["error"]
    assert "2 face(s) left out" in err


def test_library_stream_lists_degenerate_faces(run_dir):
    predictor = facemtl.load(run_dir, detector="none")
    image = render_face(3, 5, "studio", SIZE)["image"]
    (result,) = predictor.stream([("x", image)], boxes_for=lambda key: [[8, 8, 56, 56], [float("nan"), 0, 9, 9],
                                                                         [0, 0, 1e9, 1e9]])
    assert len(result.faces) == 1 and result.error is None
    assert [e["box"] for e in result.face_errors] == [[None, 0.0, 9.0, 9.0], [0.0, 0.0, 1e9, 1e9]]
    assert "4 numbers" in result.face_errors[0]["error"]
    with pytest.raises(FacemtlError, match="more than 10 times"):  # a plain list of faces cannot report it
        predictor(image, boxes=[[0, 0, 1e9, 1e9]])


def test_nan_outputs_are_null_in_the_json(run_dir, tmp_path, monkeypatch, capsys):
    from facemtl.inference.predictor import Predictor

    real = Predictor.forward

    def nan_points(self, crops, tasks=None):
        out = {k: v.clone() for k, v in real(self, crops, tasks).items()}  # inference tensors are read-only
        out["landmarks"][:, 0, :] = float("nan")
        out["emotion"][:, 0] = float("inf")
        return out

    monkeypatch.setattr(Predictor, "forward", nan_points)
    img = write_face(tmp_path / "face.png")
    code = main(["predict", str(img), "--checkpoint", str(run_dir), "--detector", "none"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "NaN" not in captured.out and "Infinity" not in captured.out
    (face,) = strict_json(captured.out)["images"][0]["faces"]
    assert face["landmarks"][0] == [None, None]
    assert all(isinstance(v, float) for v in face["landmarks"][1])


# ---------------------------------------------------------------------------------------
# 12. links that lead nowhere


def test_broken_links_and_loops_in_a_folder_are_listed_in_errors(run_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    write_face(folder / "good.png")
    (folder / "gone.png").symlink_to(folder / "deleted.png")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder)  # a folder link back up the tree
    (folder / "album").symlink_to(tmp_path / "unmounted")  # a folder link to nowhere
    (folder / "notes.txt").symlink_to(folder / "nothing.txt")  # not an image name: ignored
    (tmp_path / "gone_too.jpg").symlink_to(tmp_path / "missing.jpg")  # given by name
    out = tmp_path / "pred.json"
    code = main(["predict", str(folder), str(tmp_path / "gone_too.jpg"), "--checkpoint", str(run_dir),
                 "--detector", "none", "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    data = strict_json(out.read_text())
    assert [Path(r["path"]).name for r in data["images"]] == ["good.png"]
    errors = {Path(e["path"]).name: e["error"] for e in data["errors"]}
    assert set(errors) == {"gone.png", "loop.jpg", "up", "album", "gone_too.jpg"}, errors
    assert errors["gone.png"].startswith("broken symbolic link") and "deleted.png" in errors["gone.png"]
    assert errors["loop.jpg"].startswith("symbolic link loop")
    assert errors["up"].startswith("symbolic link loop")
    assert errors["album"].startswith("broken symbolic link")
    assert errors["gone_too.jpg"].startswith("broken symbolic link")
    for name in errors:
        assert name in err
    assert "5 input(s) skipped" in err


def test_find_images_reports_problems_and_follows_good_links(tmp_path):
    from facemtl.inference.predictor import find_images

    write_face(tmp_path / "real" / "a.png")
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "top" / "b.png").symlink_to(tmp_path / "real" / "a.png")
    (tmp_path / "top" / "c.png").symlink_to(tmp_path / "real" / "gone.png")
    problems = []
    found = find_images(tmp_path / "top", problems)
    assert [p.relative_to(tmp_path / "top").as_posix() for p in found] == ["b.png", "linked/a.png"]
    assert [(p.name, r.split(":")[0]) for p, r in problems] == [("c.png", "broken symbolic link")]


def test_weights_from_another_save_are_refused_by_their_recorded_hash(run_dir, tmp_path):
    meta = json.loads((run_dir / "model.json").read_text())
    if "weights_sha256" not in meta:
        pytest.skip("save_checkpoint does not record the weights' hash")
    other = tmp_path / "other"
    torch.manual_seed(1)
    save_checkpoint(other, facemtl.create_model("ifan", **CONFIG), {"model": {"name": "ifan", "config": CONFIG},
                                                                  "input_size": SIZE})
    mixed = copy_run(run_dir, tmp_path / "mixed")
    (mixed / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())  # same shapes
    with pytest.raises(FacemtlError, match="does not belong with .*model.json"):
        load_model(mixed)
    bad = copy_run(run_dir, tmp_path / "bad", lambda m: m.update(weights_sha256="xyz"))
    with pytest.raises(FacemtlError, match="'weights_sha256' is 'xyz'; expected 64 lowercase hex digits"):
        load_model(bad)


def test_a_broken_image_is_one_message_naming_it_without_opencvs_own_log(run_dir, tmp_path, capfd):
    folder = tmp_path / "photos"
    write_face(folder / "good.png")
    (folder / "cut.jpg").write_bytes((folder / "good.png").read_bytes()[:40])  # a PNG cut short, named .jpg
    (folder / "gif.jpg").write_bytes(b"GIF89a")
    log = getattr(cv2.utils, "logging", cv2)  # OpenCV 4.13 and later: cv2.utils.logging; before: cv2
    before = log.getLogLevel()
    log.setLogLevel(3)  # LOG_LEVEL_WARNING, OpenCV's default, as in a new process
    try:
        code = main(["predict", str(folder), "--checkpoint", str(run_dir), "--detector", "none",
                     "--json", str(tmp_path / "pred.json")])
        assert log.getLogLevel() == 1  # FATAL: set by the command
    finally:
        log.setLogLevel(before)
    err = capfd.readouterr().err  # file-descriptor level: OpenCV writes from C++
    assert code == 1
    for name in ("cut.jpg", "gif.jpg"):
        assert f"{name}: not an image OpenCV can read" in err
    assert "imdecode_" not in err and "[ERROR" not in err, err


def test_quiet_opencv_speaks_both_of_opencvs_logging_apis(monkeypatch):
    import types

    from facemtl.data import images

    calls = []
    # OpenCV 4.12 and before (4.11: what the detect extra's numpy < 2 brings): no cv2.utils.logging
    monkeypatch.setattr(images, "cv2", types.SimpleNamespace(utils=types.SimpleNamespace(), setLogLevel=calls.append))
    images.quiet_opencv()
    assert calls == [1]  # LOG_LEVEL_FATAL
    # 4.13 and later: cv2.utils.logging, and no cv2.setLogLevel
    logging = types.SimpleNamespace(LOG_LEVEL_FATAL=1, setLogLevel=calls.append)
    monkeypatch.setattr(images, "cv2", types.SimpleNamespace(utils=types.SimpleNamespace(logging=logging)))
    images.quiet_opencv()
    assert calls == [1, 1]
