"""benchmarks/band_swap.py: band rows, the swap, the synthetic faces, the tally and the report."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facemtl.data.synth import render_face

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import band_swap as bs  # noqa: E402

CLASSES = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]


def test_band_rows_at_128_and_64():
    assert [(r.start, r.stop) for r in (bs.band_rows(b, 128) for b in bs.BANDS.values())] == \
        [(0, 16), (16, 38), (36, 56), (56, 80), (76, 100)]
    assert bs.band_rows(bs.BANDS["nose"], 64) == slice(28, 40)


def test_swap_band_takes_only_those_rows_and_cycles_the_source():
    dst = np.zeros((5, 8, 8, 3), np.uint8)
    src = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (1, 2)])
    out = bs.swap_band(dst, src, slice(2, 4))
    assert out[:, 2:4, :, 0].reshape(5, -1).max(1).tolist() == [1, 2, 1, 2, 1]
    assert out[:, 2:4].reshape(5, -1).min(1).tolist() == [1, 2, 1, 2, 1]
    assert not out[:, :2].any() and not out[:, 4:].any()
    assert not dst.any()  # a copy


def test_synthetic_faces_are_the_first_of_that_emotion():
    faces = bs.synthetic_faces(3, 64, 1, "studio", 6)
    wanted = [f["image"] for f in (render_face(1, i, "studio", 64) for i in range(60)) if f["emotion"] == 6][:3]
    np.testing.assert_array_equal(faces, np.stack(wanted))


def test_synthetic_faces_with_a_margin_are_cut_by_their_own_points():
    from facemtl.data.transforms import warp_image
    from facemtl.inference.alignment import upright_crop

    crops = bs.synthetic_faces(2, 64, 1, "studio", 6, margin=0.25)
    wanted = [f for f in (render_face(1, i, "studio", 64) for i in range(60)) if f["emotion"] == 6][:2]
    for crop, face in zip(crops, wanted):
        np.testing.assert_array_equal(crop, warp_image(face["image"], upright_crop(face["landmarks"], 64, 0.25)[0], 64))


def test_tally_counts_by_hand():
    assert bs.tally(np.array([6, 1, 1, 0, 6]), CLASSES, "Neutral") == "Neutral 2/5: Disgust 2, Angry 1"
    assert bs.tally(np.array([6, 6]), CLASSES, "Neutral") == "Neutral 2/2"


class ByBrightness:
    """Stand-in predictor: reads a crop as Disgust when its top-left pixel is bright, else Neutral."""

    input_size = 64
    margin = 0.1

    class model:
        @staticmethod
        def task(name):
            return type("T", (), {"class_names": CLASSES})

    def normalise(self, crops):
        return torch.from_numpy(np.ascontiguousarray(crops)).float()

    def forward(self, crops, tasks):
        logits = torch.zeros(len(crops), 7)
        bright = crops[:, 0, 0].mean(-1) > 200  # the forehead band's first pixel
        logits[bright, 1] = 1.0
        logits[~bright, 6] = 1.0
        return {"emotion": logits}


def test_probe_report_swaps_each_band_both_ways(monkeypatch):
    white = np.full((2, 64, 64, 3), 255, np.uint8)  # two "real" faces, read as Disgust
    monkeypatch.setattr(bs, "real_crops", lambda pred, photos, label: (white, ["a", "b"]))
    monkeypatch.setattr(bs, "synthetic_faces", lambda n, size, seed, style, emotion, margin: np.zeros((n, size, size, 3), np.uint8))
    lines = bs.probe(ByBrightness(), Path("."), "Neutral", 3, 7, "studio")
    assert lines[0] == "real Neutral faces as read: Neutral 0/2: Disgust 2"
    assert lines[1] == "synthetic Neutral faces (studio, seed 7, in the same crop) as read: Neutral 6/6"
    # only the forehead band holds the pixel the stand-in reads: both directions flip there only
    seam_alone = ["Neutral", "6/6"]  # the stand-in ignores seams: the control keeps every face
    assert lines[3].split() == ["forehead", "0-8", "Neutral", "0/6:", "Disgust", "6", *seam_alone, "Neutral", "2/2"]
    for line in lines[4:]:
        assert line.split()[2:] == ["Neutral", "6/6", *seam_alone, "Neutral", "0/2:", "Disgust", "2"]


def test_probe_refuses_an_unknown_label():
    with pytest.raises(SystemExit, match="not one of the model's emotions"):
        bs.probe(ByBrightness(), Path("."), "Bored", 1, 7, "studio")


def test_real_crops_cut_the_training_crop_of_the_largest_face_of_that_label(monkeypatch):
    import posed_expressions as pe

    from facemtl.data.transforms import warp_image
    from facemtl.inference.alignment import upright_crop

    rng = np.random.default_rng(0)
    photos = {name: rng.integers(0, 255, (90, 120, 3), dtype=np.uint8) for name in ("n1", "n2", "h1", "n3")}
    faces = [{"image": "src/n1", "emotion": "Neutral"}, {"image": "src/n2", "emotion": "Neutral"},
             {"image": "src/h1", "emotion": "Happy"}, {"image": "src/n3", "emotion": "Neutral"}]
    monkeypatch.setattr(pe, "labels", lambda: {"faces": faces})
    monkeypatch.setattr(pe, "face_image", lambda folder, face: photos[face["image"][4:]])
    small = np.array([[40, 40], [60, 40], [50, 50], [42, 60], [58, 60]], float)
    large = np.array([[30, 35], [70, 38], [50, 55], [36, 70], [66, 72]], float)

    class Finder:
        input_size, margin = 64, 0.2
        recrop_task = type("T", (), {"name": "landmarks"})

        def predict_image(self, image):
            if image is photos["n2"]:  # no face found: left out
                return type("R", (), {"faces": []})
            return type("R", (), {"faces": [{"detection_box": [40, 40, 60, 60], "landmarks": small},
                                            {"detection_box": [20, 20, 80, 80], "landmarks": large}]})

    crops, names = bs.real_crops(Finder(), Path("."), "Neutral")
    assert names == ["n1", "n3"]
    for crop, name in zip(crops, names):
        np.testing.assert_array_equal(crop, warp_image(photos[name], upright_crop(large, 64, 0.2)[0], 64))
    with pytest.raises(SystemExit, match="no face labelled 'Sad'"):
        bs.real_crops(Finder(), Path("."), "Sad")
