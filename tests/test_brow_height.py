"""benchmarks/brow_height.py: the brow-eye gap by hand, its summary, the synthetic gaps and the
readings of lowered brows."""

import sys
from pathlib import Path

import numpy as np
import torch

from facemtl.data.synth import EMOTIONS, render_face

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import band_swap as bs  # noqa: E402
import brow_height as bh  # noqa: E402


def test_brow_eye_gap_by_hand():
    mask = np.zeros((12, 20), np.uint8)
    mask[2:4, 2:7] = 2   # left brow: rows 2-3, mean 2.5
    mask[3:5, 12:17] = 3  # right brow: rows 3-4, mean 3.5
    mask[6:8, 3:6] = 4   # left eye: rows 6-7, centre (6.5, 4)
    mask[6:8, 13:16] = 5  # right eye: centre (6.5, 14), 10 px from the left one
    assert bh.brow_eye_gap(mask) == ((6.5 - 2.5) + (6.5 - 3.5)) / 2 / 10
    mask[mask == 3] = 1  # a brow hidden (under hair): no gap
    assert np.isnan(bh.brow_eye_gap(mask))


def test_summary_skips_faces_without_a_gap():
    assert bh.summary([0.2, float("nan"), 0.4]) == "0.300 +- 0.100 (n 2)"
    assert bh.summary([float("nan")]) == "no face with both brows and eyes"


def test_synthetic_gaps_are_the_masks_gaps_by_emotion_and_lower_with_brow_drop():
    plain = bh.synthetic_gaps(12, 64, 1, "studio")
    for emotion, gaps in plain.items():
        faces = [f for f in (render_face(1, i, "studio", 64) for i in range(12)) if EMOTIONS[f["emotion"]] == emotion]
        assert gaps == [bh.brow_eye_gap(f["parsing"]) for f in faces]
    low = bh.synthetic_gaps(12, 64, 1, "studio", brow_drop=0.2)
    assert low.keys() == plain.keys()
    assert all(a < b for e in plain for a, b in zip(low[e], plain[e]))


def test_by_label_names_the_unlabelled():
    assert bh.by_label(["Happy", "", "Happy"], [0.1, 0.2, 0.3]) == {"Happy": [0.1, 0.3], "unlabelled": [0.2]}


class AlwaysNeutral:
    """Stand-in predictor: reads every crop as Neutral and keeps what it was shown."""

    input_size = 64

    class model:
        @staticmethod
        def task(name):
            return type("T", (), {"class_names": list(EMOTIONS)})

    def __init__(self):
        self.seen = []

    def normalise(self, crops):
        self.seen.append(np.asarray(crops).copy())
        return torch.zeros(len(crops), 3, 64, 64)

    def forward(self, crops, tasks):
        logits = torch.zeros(len(crops), len(EMOTIONS))
        logits[:, EMOTIONS.index("Neutral")] = 1.0
        return {"emotion": logits}


def test_lowered_brow_readings_read_the_neutral_faces_at_each_limit():
    pred = AlwaysNeutral()
    lines = bh.lowered_brow_readings(pred, 3, 1, "studio")
    assert lines == [f"brow_drop {d:.2f}: Neutral 3/3" for d in bh.READ_DROPS]
    for seen, drop in zip(pred.seen, bh.READ_DROPS):
        np.testing.assert_array_equal(seen, bs.synthetic_faces(3, 64, 1, "studio", EMOTIONS.index("Neutral"), brow_drop=drop))
