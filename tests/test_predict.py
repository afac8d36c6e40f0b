"""Prediction on photos: mapping back to original pixels, the CLI's JSON/masks/overlays, bad input.

One tiny iFAN (64 px, two batch-norm sources) is trained for a few steps on synthetic faces at
module start and saved with ``save_checkpoint``; it is barely trained, so the tests check the
MAPPING exactly (a face pasted at two offsets gives predictions that move by the offset) and the
model's quality only loosely.
"""

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import facemtl
from facemtl.cli import main
from facemtl.data.sample import collate, to_sample
from facemtl.data.synth import render_face
from facemtl.models.checkpoint import save_checkpoint
from facemtl.errors import FacemtlError
from facemtl.inference.detect import BoxFile
from facemtl.inference.predictor import Predictor, logits_to_mask
from facemtl.inference.render import PALETTE, POINT_COLOUR, _label_rect, _overlap, _text_size, draw_overlay
from facemtl.models.norm import SourceBatchNorm2d

SIZE = 64
TESTDATA = Path(__file__).parents[2] / "shared" / "testdata"
CONFIG = dict(tasks=["landmarks", "parsing", "emotion"], num_sources=2, task_sources=[0, 0, 1], iterations=1,
              growth_rate=4, layers_per_block=1, stem_channels=8, up_channels=8, reencoder_channels=4,
              points_hidden=32, category_hidden=16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread):
    """A checkpoint trained 36 steps: source 0 labels landmarks + parsing, source 1 emotion."""
    torch.manual_seed(0)
    model = facemtl.create_model("ifan", **CONFIG)
    for module in model.modules():
        if isinstance(module, SourceBatchNorm2d):
            module.momentum = 0.3  # running statistics settle within a few dozen steps
    samples = [to_sample(render_face(3, i, "studio", SIZE), model.tasks) for i in range(24)]
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    model.train()
    for step in range(36):
        batch = collate([samples[(step * 8 + k) % 24] for k in range(8)])
        source = 0 if step % 3 else 1
        names = ("landmarks", "parsing") if source == 0 else ("emotion",)
        outs = model(batch["image"], source=source)
        loss = sum(model.task_loss(n, o[n], batch[n]) for o in outs for n in names)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("run")
    save_checkpoint(path, model, {"model": {"name": "ifan", "config": CONFIG}, "task_sources": [0, 0, 1],
                                  "input_size": SIZE})
    return path


@pytest.fixture(scope="module")
def predictor(run_dir):
    return facemtl.load(run_dir, batch_size=4)


def face_box_for_crop(ox: int, oy: int) -> list[float]:
    """The face box whose crop (margin 0.25) is exactly the SIZE x SIZE patch pasted at (ox, oy)."""
    side = SIZE / 1.5
    cx, cy = ox + (SIZE - 1) / 2, oy + (SIZE - 1) / 2
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def paste(face: np.ndarray, ox: int, oy: int, hw=(150, 190)) -> np.ndarray:
    canvas = np.full((*hw, 3), 90, np.uint8)
    canvas[oy : oy + SIZE, ox : ox + SIZE] = face
    return canvas


# ---------------------------------------------------------------------------------------
# mapping back to original pixels


def test_predictions_follow_the_face_across_the_canvas(predictor):
    raw = render_face(3, 100, "studio", SIZE)  # not a training face
    whole = Predictor(predictor.model, predictor.info, detector="none")(raw["image"])
    assert len(whole) == 1
    results = {}
    for ox, oy in ((23, 41), (101, 7)):
        faces = predictor(paste(raw["image"], ox, oy), boxes=[face_box_for_crop(ox, oy)])
        assert len(faces) == 1
        results[(ox, oy)] = faces[0]
        face = faces[0]
        # The crop is exactly the pasted patch, so the output is the whole-image prediction, shifted.
        np.testing.assert_allclose(face["landmarks"], whole[0]["landmarks"] + [ox, oy], atol=1e-3)
        mask = face["parsing"]
        assert mask.shape == (150, 190) and mask.dtype == np.uint8
        # Equal up to argmax near-ties (the two crop matrices agree to ~1e-15, not bit for bit);
        # a one-pixel shift would break every class boundary (several % of the pixels).
        assert (mask[oy : oy + SIZE, ox : ox + SIZE] != whole[0]["parsing"]).mean() < 0.003
        outside = np.ones_like(mask, bool)
        outside[oy : oy + SIZE, ox : ox + SIZE] = False
        assert not mask[outside].any()  # background outside the crop
        assert face["emotion"] == whole[0]["emotion"]
        # Loose quality check against the generator's ground truth (a barely trained model).
        # (36 steps: about 3.5 px mean error, face-vs-background IoU about 0.7 on such faces)
        err = np.linalg.norm(face["landmarks"] - (raw["landmarks"] + [ox, oy]), axis=1).mean()
        assert err < 0.15 * SIZE, err
        pred_fg, true_fg = mask > 0, np.zeros_like(mask, bool)
        true_fg[oy : oy + SIZE, ox : ox + SIZE] = raw["parsing"] > 0
        assert (pred_fg & true_fg).sum() / (pred_fg | true_fg).sum() > 0.5
    a, b = results[(23, 41)], results[(101, 7)]
    np.testing.assert_allclose(b["landmarks"] - a["landmarks"], np.tile([78, -34], (5, 1)), atol=1e-3)


def test_iterations_choose_the_refinement_step(predictor):
    raw = render_face(3, 105, "studio", SIZE)
    x = torch.from_numpy(raw["image"]).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # IMAGE_MEAN/STD 0.5
    with torch.no_grad():
        steps = predictor.model(x)
    assert len(steps) == 2  # Iter0, Iter1
    for iterations, expected in ((0, steps[0]), (None, steps[1])):
        p = Predictor(predictor.model, predictor.info, detector="none", iterations=iterations, flip=False)
        np.testing.assert_allclose(p(raw["image"])[0]["landmarks"], expected["landmarks"][0].numpy() * SIZE,
                                   atol=1e-3)
    with pytest.raises(FacemtlError, match=r"0\.\.1"):
        Predictor(predictor.model, predictor.info, iterations=2)


def test_logits_to_mask_scales_and_shifts():
    # Crop of size 8 covering original x in [10, 26), y in [4, 20): scale 0.5, shift.
    matrix = np.array([[0.5, 0.0, -5.25], [0.0, 0.5, -2.25]])
    logits = torch.zeros(3, 8, 8)
    logits[1, :, :4] = 5.0  # left half of the crop: class 1
    logits[2, :, 4:] = 5.0  # right half: class 2
    mask = logits_to_mask(logits, matrix, 8, 30, 40)
    assert mask.shape == (30, 40)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 25, 4, 19)
    assert (mask[4:20, 10:18] == 1).all() and (mask[4:20, 18:26] == 2).all()
    # Logits at half the crop resolution land on the same pixels.
    half = logits[:, ::2, ::2].contiguous()
    assert (logits_to_mask(half, matrix, 8, 30, 40) == mask).all()
    # A crop partly outside the photo is clipped, not wrapped.
    clipped = logits_to_mask(logits, matrix, 8, 12, 14)
    assert (clipped[4:12, 10:14] == 1).all() and clipped.sum() == 32


def test_predictor_accepts_path_array_and_pil(predictor, tmp_path):
    from PIL import Image

    image = paste(render_face(3, 101, "webcam", SIZE)["image"], 30, 20)
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    box = [face_box_for_crop(30, 20)]
    by_array = predictor(image, boxes=box)
    by_path = predictor(path, boxes=box)
    by_pil = predictor(Image.fromarray(image), boxes=box)
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    by_rgba = predictor(rgba, boxes=box)
    for other in (by_path, by_pil, by_rgba):
        np.testing.assert_allclose(other[0]["landmarks"], by_array[0]["landmarks"], atol=1e-5)
        np.testing.assert_array_equal(other[0]["parsing"], by_array[0]["parsing"])
    with pytest.raises(FacemtlError, match="uint8"):
        predictor(image.astype(np.float32))
    with pytest.raises(FacemtlError, match="no such file"):
        predictor(tmp_path / "missing.png")
    with pytest.raises(FacemtlError, match="box"):
        predictor(image, boxes=[[5, 5, 1, 1]])


def test_stream_is_lazy_ordered_and_batches_are_bounded(predictor, monkeypatch):
    # one crop per given box (no turned second crop), so the crops counted are the faces
    predictor = Predictor(predictor.model, predictor.info, passes=1, batch_size=predictor.batch_size)
    images = [paste(render_face(3, 200 + i, "studio", SIZE)["image"], 5 * i, 3 * i) for i in range(7)]
    consumed = []
    sizes = []
    real_forward = predictor.forward

    def counting_forward(crops, tasks=None):
        sizes.append(crops.shape[0])
        return real_forward(crops, tasks)

    monkeypatch.setattr(predictor, "forward", counting_forward)

    def items():
        for i, image in enumerate(images):
            consumed.append(i)
            yield i, image if i != 3 else "/nonexistent/image.png"

    boxes = {i: [face_box_for_crop(5 * i, 3 * i)] * (2 if i == 5 else 1) for i in range(7)}
    stream = predictor.stream(items(), boxes_for=boxes.get)
    first = next(stream)
    assert first.key == 0 and len(consumed) <= predictor.batch_size + 1  # not the whole input
    rest = list(stream)
    results = [first, *rest]
    assert [r.key for r in results] == list(range(7))
    assert results[3].error and "no such file" in results[3].error and results[3].faces == []
    assert [len(r.faces) for r in results] == [1, 1, 1, 0, 1, 2, 1]
    assert max(sizes) <= predictor.batch_size and sum(sizes) == 7


def test_the_default_batch_depends_on_the_device_and_does_not_change_the_results(predictor):
    from facemtl.inference.predictor import ACCELERATOR_BATCH_SIZE, CPU_BATCH_SIZE

    default = Predictor(predictor.model, predictor.info, passes=1)
    assert default.batch_size == CPU_BATCH_SIZE < ACCELERATOR_BATCH_SIZE  # this machine's device: the CPU
    images = [paste(render_face(3, 300 + i, "studio", SIZE)["image"], 4 * i, 2 * i) for i in range(5)]
    boxes = {i: [face_box_for_crop(4 * i, 2 * i)] for i in range(5)}
    results = {}
    for size in (None, 1, 5):
        pred = Predictor(predictor.model, predictor.info, passes=1, batch_size=size)
        results[size] = [r.faces[0] for r in pred.stream(enumerate(images), boxes_for=boxes.get)]
    for size in (1, 5):  # the batch changes nothing but the speed (batch norm runs in eval mode)
        for a, b in zip(results[None], results[size]):
            np.testing.assert_allclose(a["landmarks"], b["landmarks"], atol=1e-4)
            assert a["emotion"]["label"] == b["emotion"]["label"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(FacemtlError, match="batch size must be a positive integer"):
            Predictor(predictor.model, predictor.info, batch_size=bad)


# ---------------------------------------------------------------------------------------
# the command line


def write_rgb(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def test_cli_predict_writes_json_masks_and_overlays(run_dir, predictor, tmp_path, capsys):
    raw = render_face(3, 102, "studio", SIZE)
    canvas = paste(raw["image"], 40, 30)
    img = write_rgb(tmp_path / "in" / "photo.png", canvas)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"in/photo.png": [face_box_for_crop(40, 30)]}))
    out = tmp_path / "out" / "pred.json"
    code = main(["predict", str(img), "--checkpoint", str(run_dir), "--boxes", str(boxes), "--json", str(out),
                 "--overlays", str(tmp_path / "overlays")])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["errors"] == [] and len(data["images"]) == 1
    rec = data["images"][0]
    assert rec["path"] == str(img) and (rec["width"], rec["height"]) == (190, 150)
    (face,) = rec["faces"]
    assert set(face) == {"box", "landmarks", "parsing", "emotion"}  # only the model's tasks
    expected = predictor(canvas, boxes=[face_box_for_crop(40, 30)])[0]
    np.testing.assert_allclose(face["landmarks"], expected["landmarks"], atol=0.006)
    np.testing.assert_allclose(face["box"], face_box_for_crop(40, 30), atol=0.006)
    mask_path = out.parent / face["parsing"]
    assert mask_path.parent.name == "pred_masks"
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (150, 190) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected["parsing"])
    emotion = face["emotion"]
    assert emotion == {"label": expected["emotion"]["label"], "probs": pytest.approx(expected["emotion"]["probs"], abs=1e-5)}
    assert sum(emotion["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    overlay = cv2.imread(str(tmp_path / "overlays" / "photo.png"))
    assert overlay.shape == (150, 190, 3) and not np.array_equal(overlay[:, :, ::-1], canvas)


def test_cli_bad_inputs_are_reported_and_the_rest_processed(run_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    write_rgb(folder / "a_face.png", paste(render_face(3, 103, "studio", SIZE)["image"], 10, 10))
    write_rgb(folder / "b_blank.png", np.full((80, 96, 3), 128, np.uint8))  # no face for the detector
    (folder / "c_broken.png").write_bytes(b"this is not a PNG")
    (folder / "notes.txt").write_text("ignored: not an image name")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "pred.json"
    code = main(["predict", str(folder), str(missing), "--checkpoint", str(run_dir), "--json", str(out),
                 "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("facemtl: error:")]
    assert any("c_broken.png" in line and "not an image" in line for line in lines), err
    assert any("missing.jpg" in line and "no such file" in line for line in lines), err
    assert "Traceback" not in err
    data = json.loads(out.read_text())
    assert [Path(r["path"]).name for r in data["images"]] == ["a_face.png", "b_blank.png"]
    assert data["images"][1]["faces"] == []  # a photo with no face is still a record
    assert sorted(Path(e["path"]).name for e in data["errors"]) == ["c_broken.png", "missing.jpg"]


def test_cli_detector_none_treats_the_image_as_the_crop(run_dir, predictor, tmp_path, capsys):
    raw = render_face(3, 104, "studio", SIZE)
    img = write_rgb(tmp_path / "crop.png", raw["image"])
    code = main(["predict", str(img), "--checkpoint", str(run_dir), "--detector", "none"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)  # JSON to stdout without --json
    (face,) = data["images"][0]["faces"]
    assert "parsing" not in face  # no --json/--masks/--overlays: nowhere to put masks
    whole = Predictor(predictor.model, predictor.info, detector="none")(raw["image"])[0]
    np.testing.assert_allclose(face["landmarks"], whole["landmarks"], atol=0.006)
    assert face["box"] == [-0.5, -0.5, SIZE - 0.5, SIZE - 0.5]


@pytest.mark.parametrize(
    "damage, message",
    [
        (None, "checkpoint not found"),
        ('{"format": "facemtl-checkpoint", "format_version": 99', "malformed JSON"),
        ('{"format": "facemtl-checkpoint", "format_version": 99, "model": {"name": "ifan"}, "tasks": [{}]}',
         "format_version 99 is not supported"),
    ],
)
def test_cli_bad_checkpoint_is_one_clear_line(run_dir, tmp_path, capsys, damage, message):
    ckpt = tmp_path / "ckpt"
    if damage is not None:
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
        (ckpt / "model.json").write_text(damage)
    img = write_rgb(tmp_path / "x.png", np.zeros((64, 64, 3), np.uint8))
    code = main(["predict", str(img), "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_boxes_file_errors_and_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "boxes.json"
    good.write_text(json.dumps({"sub/a.jpg": [[1, 2, 30, 40]], "b.jpg": [], "/abs/c.png": [[0, 0, 5, 5]]}))
    boxes = BoxFile(good)
    assert boxes.lookup(tmp_path / "sub" / "a.jpg").tolist() == [[1, 2, 30, 40]]
    assert boxes.lookup(Path("elsewhere/b.jpg")).shape == (0, 4)  # bare names match any folder
    assert boxes.lookup(Path("other/a.jpg")) is None  # a key with a folder matches that file only
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a.jpg": [[1, 2, 3]]\n}')
    with pytest.raises(FacemtlError, match="4 numbers"):
        BoxFile(bad)
    bad.write_text('{\n  "a.jpg": [[1, 2, 3, 4]],\n  oops\n}')
    with pytest.raises(FacemtlError, match=r"bad.json:3: not valid JSON"):
        BoxFile(bad)
    with pytest.raises(FacemtlError, match="does not exist"):
        BoxFile(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------
# a real photograph


def test_astronaut_photo_one_face_and_outputs_inside(predictor, tmp_path):
    path = TESTDATA / "astronaut.png"
    if not path.exists():
        pytest.skip(f"real test photo not found at {path} (shared/testdata beside the repo)")
    result = predictor.predict_image(path)
    assert (result.width, result.height) == (512, 512)
    (face,) = result.faces
    x0, y0, x1, y1 = face["box"]
    # around the face: this barely trained model's points move the square with each of its (up to
    # four) crops, but its centre stays inside the detector's box and its side within 3x of it
    d0, d1, d2, d3 = face["detection_box"]
    assert d0 < (x0 + x1) / 2 < d2 and d1 < (y0 + y1) / 2 < d3, (face["box"], face["detection_box"])
    assert 1 / 3 < (x1 - x0) / (d2 - d0) < 3 and x1 - x0 == pytest.approx(y1 - y0)
    pts = face["landmarks"]
    assert pts.shape == (5, 2) and np.all(np.isfinite(pts))
    assert np.all((pts >= 0) & (pts <= [511, 511]))
    mask = face["parsing"]
    assert mask.shape == (512, 512) and mask.max() <= 10
    ys, xs = np.nonzero(mask)
    if len(xs):  # non-background pixels stay in the (margin-widened, maybe upright-turned) face crop
        half = (x1 - x0) * 1.5 / 2
        reach = np.hypot(xs - (x0 + x1) / 2, ys - (y0 + y1) / 2).max()
        assert reach <= half * np.sqrt(2) + 1, (reach, half)  # inside the turned square's corners
    assert sum(face["emotion"]["probs"].values()) == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------------
# overlays


def test_overlay_draws_box_points_mask_and_label(predictor):
    tasks = predictor.tasks
    image = np.full((100, 160, 3), 200, np.uint8)
    mask = np.zeros((100, 160), np.uint8)
    mask[60:70, 80:90] = 6  # nose
    face = {"box": [60.0, 30.0, 130.0, 95.0], "landmarks": np.array([[100.0, 50.0]] * 5, np.float32),
            "parsing": mask, "emotion": {"label": "Happy", "probs": {"Happy": 0.9, "Sad": 0.1}}}
    out = draw_overlay(image, [face], tasks)
    assert out.shape == image.shape and (image == 200).all()  # input untouched
    assert tuple(out[50, 100]) == POINT_COLOUR
    assert tuple(out[30, 95]) == (0, 255, 0)  # top edge of the box
    expected = (0.55 * 200 + 0.45 * PALETTE[6] + 0.5).astype(np.uint8)
    assert tuple(out[65, 85]) == tuple(expected)
    # the label is a green tag touching the top of the box, the face itself stays clear
    tag = _label_rect(["emotion: Happy 0.90"], (60, 30, 130, 95), 160 / 512, (100, 160))
    assert tag[3] == 30 and tag[0] == min(60, 160 - (tag[2] - tag[0]))
    assert (out[tag[1]:tag[3], tag[0]:tag[2]] == (0, 255, 0)).all(axis=2).mean() > 0.5
    assert (out[35:45, 62:128] == 200).all()
    # the colour legend of the class present (nose) is a light panel in the top-left corner (no
    # face there), one entry tall: the points' coordinates are not classes
    assert out[0, 0].mean() > 200
    step = int(_text_size("Ag", 160 / 512)[1] * 1.8) + 2
    assert np.flatnonzero((out[:, 0] != 200).any(axis=1)).max() + 1 == step + 6


def test_overlay_tags_stay_with_their_own_faces_in_a_group_photo():
    lines = ["emotion: Happy 0.90"]
    scale = 400 / 512
    left_face, right_face = (100, 60, 180, 140), (190, 60, 270, 140)
    first = _label_rect(lines, left_face, scale, (200, 400), [right_face])
    assert first[3] == 60 and _overlap(first, right_face) == 0  # above its face: it touches the other's top only
    # the second face's place above is taken by the first tag: its tag goes under its own box
    second = _label_rect(lines, right_face, scale, (200, 400), [left_face, first])
    assert second[1] == 140 and second[0] == 190
    assert _overlap(second, left_face) == 0 and _overlap(second, first) == 0
    # no room above or under (a face as tall as the image): right of the box, else left of it
    assert _label_rect(lines, (20, 0, 120, 200), scale, (200, 400))[0] == 120
    right_edge = _label_rect(lines, (250, 0, 400, 200), scale, (200, 400))
    assert right_edge[2] == 250
    # every place covers something: the one that covers least, here under the box
    crowd = [(0, 0, 400, 59), (0, 141, 400, 150), (181, 60, 400, 140), (0, 60, 99, 140)]
    assert _label_rect(lines, left_face, scale, (200, 400), crowd)[1] == 140


def test_overlay_marks_small_faces_in_a_large_photo_at_their_own_size(predictor):
    """A group photo: 1920 px wide, faces 90 px apart. Sized by the image (scale 3.75) a tag would be
    about 500 px wide and cover the neighbours; sized by its face it stays within about its width."""
    tasks = [t for t in predictor.tasks if t.kind != "segmentation"]
    image = np.full((1080, 1920, 3), 200, np.uint8)
    faces = [{"box": [x, 500.0, x + 80.0, 580.0], "landmarks": np.array([[x + 40.0, 540.0]] * 5, np.float32),
              "emotion": {"label": "Neutral", "probs": {"Neutral": 0.95}}} for x in (800.0, 890.0, 980.0)]
    out = draw_overlay(image, faces, tasks)
    green = (out == (0, 255, 0)).all(axis=2)
    tags = green[:498]  # above the boxes: the tags and nothing else
    rows, cols = np.nonzero(tags)
    assert len(rows) and rows.min() > 440  # tags about as tall as a line of text on an 80-px face
    assert cols.min() >= 790 and cols.max() < 1090  # within the three faces' columns, not 500 px out
    # each tag above its own face (all three have room there): three separate green runs
    covered = tags.any(axis=0)
    assert np.count_nonzero(np.diff(covered.astype(int)) == 1) == 3
    # points and box lines are thin: the dot covers at most a few pixels across
    dot = (out[530:551, 830:851] == POINT_COLOUR).all(axis=2)
    assert 0 < dot.sum() <= 30
    # point names too are sized by their face: they stay near it, not hundreds of pixels across the photo
    named = draw_overlay(image, faces, tasks, point_names=True)
    rows, cols = np.nonzero((named != out).any(axis=2))
    assert len(rows) and cols.max() < 1150 and rows.max() < 620


def test_overlay_legend_takes_the_corner_without_faces_and_point_names_on_demand(predictor):
    tasks = predictor.tasks
    image = np.full((100, 300, 3), 200, np.uint8)
    mask = np.zeros((100, 300), np.uint8)
    mask[20:30, 20:30] = 6
    face = {"box": [0.0, 0.0, 90.0, 90.0], "landmarks": np.array([[40.0, 40.0]] * 5, np.float32),
            "parsing": mask, "emotion": {"label": "Happy", "probs": {"Happy": 0.9}}}
    out = draw_overlay(image, [face], tasks)
    assert out[0, 299].mean() > 200 and (out[0, 250:300] != 200).any()  # the legend: top-right
    assert (out[95:100, 200:300] == 200).all()  # not bottom-right
    assert (out[:, 0:90] == (0, 255, 0)).all(axis=2)[1:89, 2:88].sum() == 0  # nothing over the face but its marks
    plain = draw_overlay(image, [face], tasks, legend=False)
    assert (plain[0:20, 250:300] == 200).all()
    named = draw_overlay(image, [face], tasks, point_names=True, legend=False)
    assert (named != plain).any()  # point names drawn beside the points


def test_detector_searches_big_photos_downscaled_and_reports_original_pixels():
    from facemtl.inference.detect import HaarFaceDetector

    path = TESTDATA / "astronaut.png"
    if not path.exists():
        pytest.skip(f"real test photo not found at {path} (shared/testdata beside the repo)")
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    full = HaarFaceDetector()(image)
    half = HaarFaceDetector(max_side=256, min_size=20)(image)  # searched at 256 x 256
    assert len(full) == 1 and len(half) >= 1
    np.testing.assert_allclose(half[0], full[0], atol=12)  # largest face first, in 512-px coordinates


# ---------------------------------------------------------------------------------------
# tasks: only the requested tasks are reported (and run at the last iteration)


@pytest.mark.parametrize("iterations", [0, None])
def test_requested_tasks_only_and_the_same_numbers(predictor, iterations):
    raw = render_face(3, 106, "studio", SIZE)
    kw = {"detector": "none", "passes": 1, "iterations": iterations}  # one crop, the same in both runs
    (full,) = Predictor(predictor.model, predictor.info, **kw)(raw["image"])
    only = Predictor(predictor.model, predictor.info, tasks=["landmarks"], **kw)
    assert [t.name for t in only.tasks] == ["landmarks"]
    (face,) = only(raw["image"])
    assert set(face) == {"box", "detection_box", "landmarks"}
    # Only landmarks' stream ran at the last iteration (one of two here): the same numbers up to
    # float rounding, so effectively equal in pixels.
    np.testing.assert_allclose(face["landmarks"], full["landmarks"], rtol=0, atol=1e-4)
    (emotion,) = Predictor(predictor.model, predictor.info, tasks=["emotion"], **kw)(raw["image"])
    assert set(emotion) == {"box", "detection_box", "emotion"}
    assert emotion["emotion"] == {"label": full["emotion"]["label"],
                                  "probs": pytest.approx(full["emotion"]["probs"], abs=1e-6)}


def test_two_passes_without_landmarks_still_recrop_from_them(predictor, monkeypatch):
    raw = render_face(3, 107, "studio", SIZE)
    canvas = paste(raw["image"], 60, 40)
    box = [[v + 3 for v in face_box_for_crop(60, 40)]]  # off the face a little: the re-crop moves it
    # one pass per crop (flip=False): the crops this scenario was built on
    (full,) = Predictor(predictor.model, predictor.info, passes=2, flip=False)(canvas, boxes=box)
    assert full["box"] != full["detection_box"]  # the second crop was taken
    p = Predictor(predictor.model, predictor.info, passes=2, tasks=["emotion"], flip=False)
    asked = []
    real_forward = p.forward

    def spy(crops, tasks=None):
        asked.append(tasks)
        return real_forward(crops, tasks)

    monkeypatch.setattr(p, "forward", spy)
    (face,) = p(canvas, boxes=box)
    # a crop that may be followed (the first; an upright one) also asks for landmarks, the last does not
    assert 2 <= len(asked) <= 4 and asked[-1] == ("emotion",), asked
    assert all(a == ("landmarks", "emotion") for a in asked[:-1]), asked
    assert set(face) == {"box", "detection_box", "emotion"}  # but only emotion is reported
    np.testing.assert_allclose(face["box"], full["box"], atol=1e-4)
    assert face["emotion"] == {"label": full["emotion"]["label"],
                               "probs": pytest.approx(full["emotion"]["probs"], abs=1e-6)}


def test_unknown_or_malformed_tasks_are_one_clear_error(run_dir, predictor):
    with pytest.raises(FacemtlError, match=r"unknown task\(s\) 'age'; this model's tasks are landmarks, parsing, emotion"):
        facemtl.load(run_dir, tasks=["landmarks", "age"])
    with pytest.raises(FacemtlError, match="must be a list of task names"):
        Predictor(predictor.model, predictor.info, tasks="landmarks")
    with pytest.raises(FacemtlError, match="names no task"):
        Predictor(predictor.model, predictor.info, tasks=[])


def test_cli_tasks_writes_only_those_tasks(run_dir, predictor, tmp_path, capsys):
    raw = render_face(3, 108, "studio", SIZE)
    img = write_rgb(tmp_path / "crop.png", raw["image"])
    out = tmp_path / "pred.json"
    code = main(["predict", str(img), "--checkpoint", str(run_dir), "--detector", "none", "--json", str(out),
                 "--overlays", str(tmp_path / "overlays"), "--tasks", "emotion, landmarks"])
    assert code == 0, capsys.readouterr().err
    (face,) = json.loads(out.read_text())["images"][0]["faces"]
    assert set(face) == {"box", "landmarks", "emotion"}
    assert not (tmp_path / "pred_masks").exists()  # no parsing requested: no masks written
    assert (tmp_path / "overlays" / "crop.png").exists()
    (whole,) = Predictor(predictor.model, predictor.info, detector="none")(raw["image"])
    np.testing.assert_allclose(face["landmarks"], whole["landmarks"], atol=0.006)
    assert face["emotion"]["label"] == whole["emotion"]["label"]
    capsys.readouterr()
    assert main(["predict", str(img), "--checkpoint", str(run_dir), "--tasks", "age"]) == 2
    err = capsys.readouterr().err
    assert "unknown task(s) 'age'" in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):  # an empty name: argparse's usage error
        main(["predict", str(img), "--checkpoint", str(run_dir), "--tasks", "landmarks,"])


def test_passes_help_states_the_default_tilt_threshold(capsys):
    from facemtl.inference.predictor import UPRIGHT_MIN_DEGREES

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert f"tilt by {UPRIGHT_MIN_DEGREES:g} degrees or more" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------------------
# test-time flip


def test_flip_averages_each_crop_with_its_mirror(predictor):
    raw = render_face(3, 107, "studio", SIZE)
    plain = Predictor(predictor.model, predictor.info, detector="none", flip=False)
    flipped = Predictor(predictor.model, predictor.info, detector="none")  # the default
    assert flipped.flip and predictor.flip
    (face,) = plain(raw["image"])
    (mirror,) = plain(np.ascontiguousarray(raw["image"][:, ::-1]))
    back = mirror["landmarks"].copy()
    back[:, 0] = SIZE - 1 - back[:, 0]  # pixel centres at integers
    back = back[[1, 0, 2, 4, 3]]  # the mirror's left eye is the face's right eye, and so on
    (both,) = flipped(raw["image"])
    np.testing.assert_allclose(both["landmarks"], (face["landmarks"] + back) / 2, atol=1e-3)
    assert np.abs(both["landmarks"] - face["landmarks"]).max() > 0.05  # the mirror did count


def test_flip_is_mirror_symmetric_for_every_task(predictor):
    """With the flip, a mirrored photo gets the mirrored answer: points mirrored with left and
    right swapped, the mask mirrored with left/right classes swapped, the same emotion."""
    raw = render_face(3, 108, "studio", SIZE)
    flipped = Predictor(predictor.model, predictor.info, detector="none", flip=True)
    (face,) = flipped(raw["image"])
    (mirror,) = flipped(np.ascontiguousarray(raw["image"][:, ::-1]))
    expected = face["landmarks"][[1, 0, 2, 4, 3]].copy()
    expected[:, 0] = SIZE - 1 - expected[:, 0]
    np.testing.assert_allclose(mirror["landmarks"], expected, atol=1e-3)
    swap = np.array(predictor.model.task("parsing").flip, np.uint8)
    assert (mirror["parsing"] != swap[face["parsing"][:, ::-1]]).mean() < 0.003  # argmax near-ties only
    assert mirror["emotion"]["probs"] == pytest.approx(face["emotion"]["probs"], abs=1e-5)


def test_unflip_swaps_left_and_right_back_for_each_kind():
    """Hand-made outputs of a MIRRORED 4-px crop -> the crop's own frame (the barely trained
    model above finds no eyes or brows, so the class swap is checked here)."""
    from facemtl.kinds import kind_of
    from facemtl.tasks import get_task

    lm = get_task("landmarks")
    mirrored = torch.tensor([[[0.0, 0.1], [0.5, 0.2], [0.25, 0.3], [0.5, 0.4], [0.0, 0.5]]])  # x in pixels / 4
    back = kind_of(lm).unflip(lm, mirrored, 4)
    # point i of the mirror is point flip[i] of the crop; x -> 3 - x pixels = 0.75 - x normalised
    np.testing.assert_allclose(back[0], [[0.25, 0.2], [0.75, 0.1], [0.5, 0.3], [0.75, 0.5], [0.25, 0.4]], atol=1e-6)
    parsing = get_task("parsing")
    logits = torch.zeros(1, 11, 1, 4)
    logits[0, 2, 0, 0] = 5.0  # the mirror's left brow, at its image-left pixel
    logits[0, 4, 0, 3] = 7.0  # the mirror's left eye, at its image-right pixel
    back = kind_of(parsing).unflip(parsing, logits, 4)
    assert back[0, 3, 0, 3] == 5.0 and back[0, 5, 0, 0] == 7.0  # right brow / right eye, mirrored
    assert back.abs().sum() == 12.0
    pose = get_task("pose")
    # a left profile of the mirror is a right profile of the crop
    assert kind_of(pose).unflip(pose, torch.arange(5.0)[None], 4).tolist() == [[4.0, 3.0, 2.0, 1.0, 0.0]]
    emotion = get_task("emotion")
    assert kind_of(emotion).unflip(emotion, torch.arange(7.0)[None], 4).tolist() == [list(range(7))]


def test_flip_must_be_a_bool(predictor):
    with pytest.raises(FacemtlError, match="flip must be True or False, got 'yes'"):
        Predictor(predictor.model, predictor.info, flip="yes")


def test_cli_no_flip_reaches_the_predictor(run_dir, predictor, tmp_path, capsys):
    raw = render_face(3, 109, "studio", SIZE)
    img = write_rgb(tmp_path / "crop.png", raw["image"])
    assert main(["predict", str(img), "--checkpoint", str(run_dir), "--detector", "none", "--no-flip"]) == 0
    (face,) = json.loads(capsys.readouterr().out)["images"][0]["faces"]
    (want,) = Predictor(predictor.model, predictor.info, detector="none", flip=False)(raw["image"])
    np.testing.assert_allclose(face["landmarks"], want["landmarks"], atol=0.006)
    (default,) = Predictor(predictor.model, predictor.info, detector="none")(raw["image"])
    assert np.abs(np.asarray(face["landmarks"]) - default["landmarks"]).max() > 0.05


# ---------------------------------------------------------------------------------------
# ensembles: several checkpoints, every task's outputs averaged


def _other_member(model, seed: int):
    """A second model with the same tasks and other weights (the first nudged by noise)."""
    import copy

    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05 * (p.std() if p.numel() > 1 else 1.0))
    return other.eval()


def test_class_averages_are_the_mean_probabilities_and_stay_finite():
    from facemtl.kinds import kind_of
    from facemtl.tasks import get_task

    emotion = get_task("emotion")
    a = torch.zeros(1, 7)
    b = torch.zeros(1, 7)
    b[0, 0] = np.log(7.0)  # p(class 0) = 7 / 13
    mean = kind_of(emotion).average(emotion, [a, b])
    want = (torch.full((7,), 1 / 7) + torch.tensor([7.0] + [1.0] * 6) / 13) / 2
    np.testing.assert_allclose(mean.softmax(1)[0], want, atol=1e-6)
    far = torch.tensor([[200.0, -200.0, 0, 0, 0, 0, 0]])  # probabilities that underflow float32
    assert torch.isfinite(kind_of(emotion).average(emotion, [far, far])).all()
    lm = get_task("landmarks")
    points = [torch.tensor([[[0.1, 0.2]] * 5]), torch.tensor([[[0.3, 0.6]] * 5])]
    np.testing.assert_allclose(kind_of(lm).average(lm, points)[0, 0], [0.2, 0.4], atol=1e-7)


def test_an_ensemble_averages_every_task_over_its_members(predictor):
    raw = render_face(3, 110, "studio", SIZE)
    members = [predictor.model, _other_member(predictor.model, 1)]
    single = [Predictor(m, predictor.info, detector="none", flip=False) for m in members]
    both = Predictor(members, predictor.info, detector="none", flip=False)
    faces = [p(raw["image"])[0] for p in single]
    (face,) = both(raw["image"])
    np.testing.assert_allclose(face["landmarks"], (faces[0]["landmarks"] + faces[1]["landmarks"]) / 2, atol=1e-3)
    for name, p in face["emotion"]["probs"].items():
        assert p == pytest.approx((faces[0]["emotion"]["probs"][name] + faces[1]["emotion"]["probs"][name]) / 2, abs=1e-6)
    assert np.abs(faces[0]["landmarks"] - faces[1]["landmarks"]).max() > 0.05  # the members do differ
    crops = both.normalise(raw["image"][None])
    seg = [p.forward(crops)["parsing"].softmax(1) for p in single]
    np.testing.assert_allclose(both.forward(crops)["parsing"].softmax(1), (seg[0] + seg[1]) / 2, atol=1e-6)


def test_an_ensemble_of_one_model_twice_predicts_as_the_model(predictor):
    raw = render_face(3, 111, "studio", SIZE)
    (one,) = Predictor(predictor.model, predictor.info, detector="none")(raw["image"])
    (twice,) = Predictor([predictor.model, predictor.model], predictor.info, detector="none")(raw["image"])
    np.testing.assert_allclose(twice["landmarks"], one["landmarks"], atol=1e-4)
    assert twice["emotion"]["probs"] == pytest.approx(one["emotion"]["probs"], abs=1e-6)
    assert (twice["parsing"] != one["parsing"]).mean() < 0.001


def _ensemble_folder(tmp_path, run_dir, predictor, info=None) -> Path:
    folder = tmp_path / "ensemble"
    (folder / "a").mkdir(parents=True)
    for name in ("model.json", "model.safetensors"):
        (folder / "a" / name).write_bytes((run_dir / name).read_bytes())
    save_checkpoint(folder / "b", _other_member(predictor.model, 2),
                    info or {"model": {"name": "ifan", "config": CONFIG}, "task_sources": [0, 0, 1], "input_size": SIZE})
    (folder / "ensemble.json").write_text(json.dumps({"format": "facemtl-ensemble", "members": ["a", "b"]}))
    return folder


def test_an_ensemble_folder_loads_like_its_list_of_members_in_the_api_and_the_cli(run_dir, predictor, tmp_path, capsys):
    folder = _ensemble_folder(tmp_path, run_dir, predictor)
    raw = render_face(3, 112, "studio", SIZE)
    (from_folder,) = facemtl.load(folder, detector="none")(raw["image"])
    (from_list,) = facemtl.load([folder / "a", folder / "b"], detector="none")(raw["image"])
    (alone,) = facemtl.load(folder / "a", detector="none")(raw["image"])
    np.testing.assert_allclose(from_folder["landmarks"], from_list["landmarks"], atol=1e-5)
    assert np.abs(from_folder["landmarks"] - alone["landmarks"]).max() > 0.02  # the second member counts
    img = write_rgb(tmp_path / "crop.png", raw["image"])
    assert main(["predict", str(img), "--checkpoint", str(folder), "--detector", "none"]) == 0
    (cli_folder,) = json.loads(capsys.readouterr().out)["images"][0]["faces"]
    assert main(["predict", str(img), "--checkpoint", str(folder / "a"), "--checkpoint", str(folder / "b"),
                 "--detector", "none"]) == 0
    (cli_list,) = json.loads(capsys.readouterr().out)["images"][0]["faces"]
    np.testing.assert_allclose(cli_folder["landmarks"], from_folder["landmarks"], atol=0.006)
    assert cli_list == cli_folder


def test_ensemble_errors_name_the_file_and_what_was_expected(run_dir, predictor, tmp_path, capsys):
    folder = _ensemble_folder(tmp_path, run_dir, predictor)
    manifest = folder / "ensemble.json"
    cases = [
        ({"format": "something-else", "members": ["a"]}, "not a facemtl ensemble"),
        ({"format": "facemtl-ensemble", "members": []}, "'members' must be a non-empty list"),
        ({"format": "facemtl-ensemble", "members": ["a", "missing"]}, "member 'missing' has no model.json"),
        ({"format": "facemtl-ensemble", "members": ["a", "../.."]}, "is not a sub-folder of the ensemble"),
    ]
    for content, message in cases:
        manifest.write_text(json.dumps(content))
        with pytest.raises(FacemtlError, match=message) as err:
            facemtl.load(folder)
        assert str(manifest) in str(err.value)
    manifest.write_text(json.dumps({"format": "facemtl-ensemble", "members": ["a", "b"]}))
    # one model's commands are told which members to give
    assert main(["eval", str(folder)]) == 2  # a usage error
    assert "is an ensemble (ensemble.json); this command takes one model" in capsys.readouterr().err
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):  # else export names them first
        assert main(["export", str(folder), "--onnx", str(tmp_path / "m.onnx")]) == 2
        assert "is an ensemble (ensemble.json); this command takes one model" in capsys.readouterr().err
    other = _ensemble_folder(tmp_path / "x", run_dir, predictor,
                             {"model": {"name": "ifan", "config": CONFIG}, "task_sources": [0, 0, 1], "input_size": 48})
    with pytest.raises(FacemtlError, match="ensemble members differ in 'input_size'"):
        facemtl.load(other)
    # the descriptions are compared before any weights are read: unreadable weights do not hide it
    (other / "b" / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(FacemtlError, match="ensemble members differ in 'input_size'"):
        facemtl.load(other)
    lone = facemtl.create_model("ifan", **{**CONFIG, "tasks": ["landmarks", "emotion"], "task_sources": [0, 1]})
    with pytest.raises(FacemtlError, match="ensemble member 1 has other tasks than member 0"):
        Predictor([predictor.model, lone], predictor.info)
