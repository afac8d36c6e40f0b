"""`facemtl score`: a checkpoint on a labelled dataset read as predict reads photos
(facemtl.inference.score). Figures against hand-computed cases, the matching of detections to
labelled faces, and the command end to end on exported and real images."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from facemtl.cli import main
from facemtl.inference import score

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT.parent / "shared" / "testdata" / "astronaut.png"
ASTRONAUT_LABELS = json.loads((ROOT / "benchmarks" / "data" / "astronaut_5points.json").read_text())
SQUARE = np.array([0.0, 0.0, 100.0, 100.0])
TRUTH = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]])  # inter-ocular 40 px


def row(points=TRUTH, predicted=None, found=True, emotion=None, said=None, square=SQUARE):
    r = {"id": "x", "found": found, "points": points, "visible": None if points is None else np.ones(5, bool),
         "emotion": emotion, "square": square if found else None}
    if found and predicted is not None:
        r["predicted_points"] = predicted
    if found and said is not None:
        r["predicted_emotion"] = said
    return r


def test_landmark_figures_by_hand():
    # face 1: every point 2 px right (NME 2/40 = 5%); face 2: every point 8 px down (20%, a failure);
    # face 3: missed. Both scored faces share SQUARE, so the mean shape is the labels themselves (NME 0).
    rows = [row(predicted=TRUTH + [2.0, 0.0]), row(predicted=TRUTH + [0.0, 8.0]), row(found=False)]
    lm = score.landmark_summary(rows)
    assert (lm["faces"], lm["found"], lm["scored"]) == (3, 2, 2)
    assert lm["mean"] == pytest.approx(0.125) and lm["median"] == pytest.approx(0.125)
    assert lm["failure_rate"] == pytest.approx(0.5)
    assert lm["failure_rate_with_misses"] == pytest.approx(2 / 3)
    assert lm["auc"] == pytest.approx((0.5 + 0.0 + 0.0) / 3)  # 1 - 5%/10%, a failure 0, a miss 0
    assert lm["per_point"] == pytest.approx([0.125] * 5)
    assert [e for _, _, e in lm["worst"]] == pytest.approx([0.2, 0.05])  # largest first
    assert lm["baseline"]["mean"] == pytest.approx(0.0)
    assert lm["baseline"]["failure_rate_with_misses"] == pytest.approx(1 / 3)


def test_mean_shape_baseline_is_the_sets_mean_in_each_faces_square():
    # the second face is the first one moved by (100, 0) and twice as large, in a square moved and grown alike
    big = np.array([100.0, 0.0, 300.0, 200.0])
    other = TRUTH * 2 + [100.0, 0.0] + [[0.0, 10.0]] * 5  # and its points 10 px (0.05 of its side) lower
    rows = [row(predicted=TRUTH), row(points=other, predicted=other, square=big)]
    base = score.landmark_summary(rows)["baseline"]
    # each face gets the OTHER face's points in units of its own square: 0.05 of the side off,
    # 5 px in the 40-px-eyed face, 10 px in the 80-px-eyed one: 12.5% both
    assert base["mean"] == pytest.approx(0.125)
    third = row(predicted=TRUTH)  # with a copy of the first face, the first two get means of two others
    assert score.landmark_summary(rows + [third])["baseline"]["mean"] == pytest.approx((0.0625 * 2 + 0.125) / 3)
    assert "baseline" not in score.landmark_summary(rows[:1])  # one face: no other face to average


def test_hidden_points_are_left_out_of_the_nme():
    vis = np.array([True, True, True, False, False])
    r = row(predicted=TRUTH + [[0, 0], [0, 0], [4.0, 0], [30.0, 0], [30.0, 0]])
    r["visible"] = vis
    r["points"] = np.where(vis[:, None], TRUTH, np.nan)  # readers may give hidden points no coordinates
    lm = score.landmark_summary([r, row(predicted=TRUTH)])
    assert lm["mean"] == pytest.approx((4 / 40 / 3 + 0) / 2)  # the mouth's 30-px errors do not count
    assert lm["per_point"][3] == pytest.approx(0.0)  # the mouth corner of the face that shows it
    assert lm["baseline"]["mean"] == pytest.approx(0.0)  # the same face twice: its mean shape is exact
    only = score.landmark_summary([r])
    assert math.isnan(only["per_point"][3]) and "baseline" not in only


def test_emotion_figures_by_hand():
    rows = [row(points=None, emotion="Happy", said="Happy"), row(points=None, emotion="Happy", said="Surprise"),
            row(points=None, emotion="Happy", found=False), row(points=None, emotion="Neutral", said="Neutral"),
            row(points=None, emotion="Contempt", said="Angry")]
    em = score.emotion_summary(rows)
    assert (em["faces"], em["found"]) == (5, 4)
    assert em["accuracy"] == pytest.approx(2 / 5) and em["accuracy_found"] == pytest.approx(2 / 4)
    assert em["mean_class_accuracy"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert em["per_class"] == {"Happy": [1, 3], "Neutral": [1, 1], "Contempt": [0, 1]}
    assert em["confusion"]["Happy"] == {"Happy": 1, "Surprise": 1, "missed": 1}
    assert em["baseline"] == {"label": "Happy", "accuracy": pytest.approx(3 / 5)}
    assert em["unknown_classes"] == ["Contempt"]
    text = score.format_summary(score.summary(rows))
    assert "always Happy: accuracy 60.00%" in text and "cannot answer (counted wrong): Contempt" in text
    assert score.landmark_summary(rows) is None


def test_labels_a_sample_gives():
    five = score.labelled({"landmarks": TRUTH.astype(np.float32), "emotion": 3, "meta": {"point_set": "mtfl5"}})
    assert five["emotion"] == "Happy" and five["points"].shape == (5, 2) and five["square"] is not None
    many = score.labelled({"landmarks": np.zeros((68, 2), np.float32), "box": [0, 0, 50, 80],
                           "meta": {"point_set": "ibug68"}})
    assert many["points"] is None and list(many["square"]) == [-15.0, 0.0, 65.0, 80.0]  # the box's square
    blind = score.labelled({"landmarks": TRUTH, "visibility": [False, True, True, True, True],
                            "meta": {"point_set": "mtfl5"}})
    assert blind["points"] is None  # no inter-ocular distance without both eyes
    folder = score.labelled({"emotion": 0, "meta": {"class_name": "happy"}})
    assert folder["emotion"] == "Happy" and folder["square"] is None  # the folder's class, in the model's spelling


# Two runs of the predictor that differ only in float rounding (other tasks, other batch sizes) move the face
# model's points by ~1.5e-5 px, which can flip a uint8 pixel of the point refiner's patches and so move the
# refined points by up to 0.004 px on the astronaut (seen with the bundled float16-stored weights; 0.0007 with
# float32): NME within 1e-4 (about 0.01 px at its inter-ocular distance) is "the same answer".
REFINED_ROUNDING = 1e-4


def _mtfl(root: Path, image: Path, points) -> Path:
    root.mkdir(parents=True)
    xs = [p[0] + 1 for p in points]  # MTFL files are 1-based
    ys = [p[1] + 1 for p in points]
    (root / "img.png").symlink_to(image.resolve())
    (root / "testing.txt").write_text(" ".join(["img.png", *map(str, xs + ys), "1", "1", "1", "3"]) + "\n")
    (root / "training.txt").write_text("")
    return root


@pytest.mark.skipif(not ASTRONAUT.exists(), reason="../shared/testdata/astronaut.png is not beside the checkout")
def test_score_on_a_real_photo_matches_the_predictor_and_the_metric(tmp_path, capsys):
    import torch

    import facemtl
    from facemtl.data.images import read_image
    from facemtl.metrics.landmarks import nme

    truth = np.asarray(ASTRONAUT_LABELS["landmarks"], np.float64)
    root = _mtfl(tmp_path / "mtfl", ASTRONAUT, truth)
    out = tmp_path / "score.json"
    assert main(["score", "mtfl", str(root), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    lm = result["summary"]["landmarks"]
    assert (result["summary"]["faces"], result["summary"]["found"], lm["scored"]) == (1, 1, 1)
    # the same face through the predictor (Haar, its default), scored by the metric directly
    faces = facemtl.load()(read_image(ASTRONAUT))
    want = float(nme(torch.as_tensor(np.asarray(faces[0]["landmarks"])[None]), torch.as_tensor(truth[None]))[0])
    # score runs only the landmark task (other float rounding)
    assert lm["mean"] == pytest.approx(want, abs=REFINED_ROUNDING)
    assert lm["mean"] < 0.08  # the bundled model on this photo: about 5% (README)
    assert result["refiner"] == "auto"  # the bundled model's point refiner moved the points
    assert "baseline" not in lm and "mean shape  - (one face" in text  # no other face to average
    assert f"NME mean {100 * want:.2f}%" in text and "mean shape" in text
    assert result["faces"][0]["found"] and len(result["faces"][0]["predicted_points"]) == 5
    assert result["faces"][0]["nme"] == pytest.approx(lm["mean"]) and lm["worst"][0][2] == pytest.approx(lm["mean"])


@pytest.fixture(scope="module")
def emotion_export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("score") / "emotions"
    assert main(["synth", "export", "--format", "emotion-folder", "--n", "8", "--style", "studio", "--seed", "3",
                 "--out", str(root)]) == 0
    return root


def test_score_of_an_emotion_folder_counts_each_image_once(emotion_export, tmp_path, capsys):
    import facemtl
    from facemtl.data import load_dataset

    out = tmp_path / "score.json"
    assert main(["score", "emotion-folder", str(emotion_export), "--detector", "none", "--json", str(out),
                 "--overlays", str(tmp_path / "overlays")]) == 0
    em = json.loads(out.read_text())["summary"]["emotion"]
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == [f"{i:05d}.png" for i in range(8)]
    samples = load_dataset("emotion-folder", emotion_export, "all")
    assert em["faces"] == em["found"] == len(samples) == 8
    pred = facemtl.load(detector="none", tasks=["emotion"])
    right = sum(pred(s["image"])[0]["emotion"]["label"] == s["meta"]["class_name"] for s in samples)
    assert em["accuracy"] == pytest.approx(right / 8)
    labels = [s["meta"]["class_name"] for s in samples]
    assert em["baseline"]["accuracy"] == pytest.approx(max(labels.count(n) for n in set(labels)) / 8)
    assert "landmarks" not in capsys.readouterr().out  # the folder labels no points


def test_score_refuses_what_it_cannot_do(emotion_export, tmp_path, capsys):
    assert main(["score", "emotion-folder", str(emotion_export), "--crops", "labels"]) == 2
    assert "--crops labels needs labelled points or a face box" in capsys.readouterr().err
    assert main(["score", "emotion-folder", str(emotion_export), "--limit", "0"]) == 2
    assert "--limit must be a positive number" in capsys.readouterr().err
    assert main(["score", "mtfl", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["score", "emotion-folder", str(emotion_export), "--option", "colour=1"]) == 2
    assert "unknown option(s) colour" in capsys.readouterr().err


def test_an_interrupted_score_prints_the_figures_of_the_faces_it_scored(emotion_export, monkeypatch, capsys):
    real = score.score_faces

    def two_then_ctrl_c(*args, **kwargs):
        rows = real(*args, **kwargs)
        yield next(rows)
        yield next(rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(score, "score_faces", two_then_ctrl_c)
    assert main(["score", "emotion-folder", str(emotion_export), "--detector", "none"]) == 130
    out, err = capsys.readouterr()
    assert "INTERRUPTED: the first 2 of 8 face(s) only" in out and "emotion (2 labelled faces, 2 read)" in out
    assert "interrupted after 2 of 8 face(s)" in err


def test_a_set_without_the_models_labels_is_refused_before_the_model_loads(tmp_path, capsys):
    def points(k, point_set):
        return {"landmarks": np.zeros((k, 2)), "meta": {"point_set": point_set}}

    assert "add --option points=5" in score.unscorable(points(21, "aflw21"), "aflw")
    assert "add --option points=5" in score.unscorable(points(98, "wflw98"), "wflw")
    assert "no 5-point subset" in score.unscorable(points(106, "lapa106"), "lapa")
    assert "nothing to score" in score.unscorable({"gender": 1, "meta": {}}, "celeba")
    assert score.unscorable({"parsing": np.zeros((4, 4), np.uint8)}, "helen") is None
    assert score.unscorable({"landmarks": TRUTH, "meta": {"point_set": "mtfl5"}}, "mtfl") is None
    root = tmp_path / "aflw"
    assert main(["synth", "export", "--format", "aflw", "--n", "4", "--out", str(root)]) == 0
    assert main(["score", "aflw", str(root), "--split", "all"]) == 2
    assert "aflw labels aflw21 points" in capsys.readouterr().err
    assert main(["score", "aflw", str(root), "--split", "all", "--option", "points=5", "--detector", "none"]) == 0
    assert "landmarks (4 faces with 5 labelled points, 4 scored" in capsys.readouterr().out


def test_parsing_is_scored_at_the_images_resolution_like_predicts_masks(tmp_path):
    import facemtl
    from facemtl.data import load_dataset
    from facemtl.metrics.parsing import ParsingF1

    root = tmp_path / "helen"
    assert main(["synth", "export", "--format", "helen", "--n", "12", "--style", "snapshot", "--seed", "5",
                 "--out", str(root)]) == 0
    out = tmp_path / "score.json"
    assert main(["score", "helen", str(root), "--split", "train", "--limit", "3", "--detector", "none",
                 "--json", str(out)]) == 0
    ps = json.loads(out.read_text())["summary"]["parsing"]
    pred = facemtl.load(detector="none", tasks=["parsing"])
    meter = ParsingF1()
    for sample in list(load_dataset("helen", root, "train"))[:3]:
        meter.update(pred(sample["image"])[0]["parsing"], sample["parsing"])
    want = meter.compute()
    assert (ps["faces"], ps["scored"]) == (3, 3)
    assert ps["overall"] == pytest.approx(want["overall"]) and ps["f1"] == pytest.approx(want["f1"])
    assert ps["overall_with_misses"] == pytest.approx(want["overall"])  # nothing missed


def test_a_missed_faces_mask_counts_as_all_background():
    conf_hit = np.zeros((11, 11), np.int64)
    conf_hit[6, 6] = 30  # 30 nose pixels read as nose
    conf_miss = np.zeros((11, 11), np.int64)
    conf_miss[6, 0] = 30  # a missed face: its 30 nose pixels as background
    rows = [{**row(points=None), "parsing_confusion": conf_hit, "parsing_scored": True},
            {**row(points=None, found=False), "parsing_confusion": conf_miss, "parsing_scored": False}]
    ps = score.parsing_summary(rows)
    assert (ps["faces"], ps["scored"]) == (2, 1)
    assert ps["overall"] == pytest.approx(100.0) and ps["f1"]["nose"] == pytest.approx(100.0)
    assert ps["overall_with_misses"] == pytest.approx(100 * 2 * 30 / (60 + 30))


def test_an_overlay_tile_marks_the_labels_and_the_predictions_where_they_are():
    from facemtl.inference.render import LABEL_COLOUR, POINT_COLOUR, draw_scored_face

    image = np.zeros((200, 300, 3), np.uint8)
    predicted = TRUTH + [[10.0, 0.0]] * 5
    tile = draw_scored_face(image, {**row(predicted=predicted, emotion="Happy", said="Sad"), "nme": 0.25, "index": 7})
    assert tile.shape == (256, 256, 3)
    scale = 256 / (100 * 1.6)  # the square widened by 0.3 of its side on both sides
    for points, colour in ((TRUTH, LABEL_COLOUR), (predicted, POINT_COLOUR)):
        for x, y in points[2:]:  # the nose and mouth (the text sits in the top-left corner)
            assert tuple(tile[int(round((y + 30) * scale)), int(round((x + 30) * scale))]) == colour
    missed = draw_scored_face(image, {**row(found=False), "index": 8})
    assert missed.shape == (256, 256, 3) and (missed == LABEL_COLOUR).all(-1).any()  # its labels still shown


def test_the_mean_face_baseline_is_the_other_faces_commonest_class_per_cell():
    nose = np.zeros((score.GRID, score.GRID), np.uint8)
    nose[20:40, 20:40] = 6
    mouth = nose.copy()
    mouth[30:40, 20:40] = 8
    blank = np.zeros_like(nose)
    faces = [{"parsing_grid": nose, "parsing_grid_predicted": nose},
             {"parsing_grid": nose, "parsing_grid_predicted": blank}]
    f1 = score.mean_face_f1(faces)
    assert f1["mean_face"] == pytest.approx(100.0)  # each face's other face is the same face
    assert f1["model"] == pytest.approx(100 * 2 * 400 / (800 + 400))  # one face right, one all background
    # three faces: the first's others are a nose and a nose-with-mouth; ties go to the lower id (nose 6)
    three = score.mean_face_f1(faces + [{"parsing_grid": mouth, "parsing_grid_predicted": mouth}])
    assert three["mean_face"] == pytest.approx(100.0)  # every cell's majority class is in the face-part group
    assert score.mean_face_f1(faces[:1]) is None


def test_a_mask_on_the_grid_keeps_its_place():
    mask = np.zeros((200, 200), np.uint8)
    mask[90:110, 90:110] = 6  # a 20-px block at the centre of the square [50, 50, 150, 150]
    grid = score.on_grid(mask, [50.0, 50.0, 150.0, 150.0], 255)
    # the grid spans 150 px (the square widened by a quarter on each side): the block is 20 * 64 / 150 cells
    rows, cols = np.nonzero(grid == 6)
    assert abs((rows.min() + rows.max()) / 2 - 31.5) <= 0.5 and abs((cols.min() + cols.max()) / 2 - 31.5) <= 0.5
    assert abs(len(set(rows)) - 20 * 64 / 150) <= 1
    outside = score.on_grid(mask, [150.0, 150.0, 250.0, 250.0], 255)
    assert (outside[-5:, -5:] == 255).all()  # past the image's edge


def test_every_readers_default_split_is_one_it_has(tmp_path, monkeypatch):
    import importlib

    from facemtl.data import DATASETS, load_dataset

    class Checked(Exception):
        pass

    for name, module in DATASETS.items():
        reader = importlib.import_module(f"facemtl.data.formats.{module}")
        seen = []

        def check(split, splits, dataset, seen=seen):
            seen.append(tuple(splits))
            raise Checked

        monkeypatch.setattr(reader, "check_split", check)
        (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n")  # FER2013 reads its header first
        with pytest.raises(Checked):
            load_dataset(name, tmp_path, "x")
        assert score.SPLITS.get(name, score.DEFAULT_SPLIT) in seen[0], (name, seen)


@pytest.mark.skipif(not ASTRONAUT.exists(), reason="../shared/testdata/astronaut.png is not beside the checkout")
def test_faces_of_one_photo_share_one_pass_of_the_predictor():
    import facemtl
    from facemtl.data.images import read_image

    image = read_image(ASTRONAUT)
    truth = np.asarray(ASTRONAUT_LABELS["landmarks"], np.float64)
    other = truth + [150.0, 200.0]  # a second labelled "face" elsewhere in the photo
    samples = [{"image": image, "landmarks": pts, "meta": {"path": "a.png", "id": "a.png", "point_set": "mtfl5"}}
               for pts in (truth, other)]
    samples.append({**samples[0], "meta": {"path": "b.png", "id": "b.png", "point_set": "mtfl5"}})
    pred = facemtl.load(tasks=["landmarks"])
    for crops in ("labels", "detector"):
        passes = []
        stream = pred.stream

        def counting(items, **kwargs):
            return stream(((passes.append(key), (key, image))[1] for key, image in items), **kwargs)

        pred.stream = counting
        rows = list(score.score_faces(pred, samples, crops))
        pred.stream = stream
        assert passes == [0, 2] and [r["index"] for r in rows] == [0, 1, 2]  # a.png once, b.png once
        # the same face, the same answer (in batches of other sizes: other float rounding)
        assert rows[0]["nme"] == pytest.approx(rows[2]["nme"], abs=REFINED_ROUNDING)
        if crops == "labels":  # each face from its own square
            assert rows[1]["found"] and np.allclose(rows[1]["square"], score.landmark_square(other))
        else:  # the detector finds the one real face; nothing is centred in the second square
            assert rows[0]["found"] and not rows[1]["found"]
