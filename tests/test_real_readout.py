"""benchmarks/real_readout.py: one row of real-face figures per checkpoint, their mean, the baselines."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_faces  # noqa: E402
import real_readout  # noqa: E402


def counts(**groups):
    """A (groups, 3) parsing-count array with ``groups[name] = [both, truth, predicted]``, else zeros."""
    out = np.zeros((len(real_faces.PARSING_GROUPS), 3), np.int64)
    for k, name in enumerate(real_faces.PARSING_GROUPS):
        out[k] = groups.get(name, [0, 0, 0])
    return out


POSED = [{"labelled": "Angry", "found": True, "emotion": "Angry"},
         {"labelled": "Angry", "found": True, "emotion": "Disgust"},
         {"labelled": "Neutral", "found": True, "emotion": "Neutral"},
         {"labelled": "Neutral", "found": True, "emotion": "Surprise"},
         {"labelled": "Neutral", "found": False},  # missed: wrong
         {"labelled": "Happy", "found": True, "emotion": "Happy"}]
LABELS = [{"found": True, "labelled": "Happy", "emotion": "Happy", "nme": 4.0, "baseline_nme": 10.0,
           "parsing": counts(overall=[6, 10, 10]), "baseline_parsing": counts(overall=[5, 10, 10])},
          {"found": True, "labelled": "Happy", "emotion": "Neutral", "nme": 8.0, "baseline_nme": 14.0,
           "parsing": counts(overall=[1, 5, 5]), "baseline_parsing": counts(overall=[1, 5, 5])},
          {"found": True, "labelled": "Neutral", "emotion": "Neutral", "nme": 12.0, "baseline_nme": 12.0},
          {"found": True, "labelled": None, "emotion": "Sad", "nme": 6.0, "baseline_nme": 8.0}]
HAAR = [{"found": True, "labelled": "Happy", "emotion": "Happy", "nme": 5.0, "baseline_nme": 11.0},
        {"found": False, "labelled": "Happy"},
        {"found": True, "labelled": "Neutral", "emotion": "Sad", "nme": 9.0, "baseline_nme": 13.0}]


def test_readout_counts_right_readings_and_averages_the_errors_of_found_faces():
    row = real_readout.readout(POSED, LABELS, HAAR, 5.5)
    assert row["posed"] == 3 and row["posed Angry"] == 1 and row["posed Neutral"] == 1
    assert row["the 40"] == 2  # unlabelled faces do not count
    assert row["the 40 Haar"] == 1  # the missed face is not read
    assert row["NME labels"] == pytest.approx(7.5)  # (4 + 8 + 12 + 6) / 4
    assert row["NME Haar"] == pytest.approx(7.0)
    assert row["parsing"] == pytest.approx(2 * 7 / 30)  # counts summed over faces, then F1
    assert row["astronaut"] == 5.5


def test_parsing_f1_sums_counts_over_faces_before_dividing():
    f1 = real_faces.parsing_f1(LABELS)
    assert f1["overall"] == pytest.approx(14 / 30)  # not the mean of the faces' F1s, (0.6 + 0.2) / 2
    assert real_faces.parsing_f1(LABELS, "baseline_parsing")["overall"] == pytest.approx(2 * 6 / 30)
    assert f1["eyes"] == 0.0  # no pixels anywhere: 0, not a division by zero


def test_an_emotion_only_checkpoint_leaves_the_landmark_and_parsing_columns_empty():
    def bare(rows):  # what real_faces.score gives for a checkpoint with no landmarks or parsing
        return [{k: v for k, v in r.items() if k not in ("nme", "parsing", "baseline_nme", "baseline_parsing")}
                for r in rows]

    row = real_readout.readout(POSED, bare(LABELS), bare(HAAR), None)
    assert row["NME labels"] is None and row["parsing"] is None and row["astronaut"] is None
    assert row["the 40"] == 2
    assert "-" in real_readout.table([("control", row)])
    base = real_readout.baselines(POSED, bare(LABELS), bare(HAAR), None)
    assert base["the 40"] == 2 and base["NME labels"] is None and base["parsing"] is None


def test_baselines_answer_each_sets_commonest_label_and_place_the_mean_shape():
    base = real_readout.baselines(POSED, LABELS, HAAR, 15.0)
    assert base["posed"] == 3 and base["posed Neutral"] == 3 and base["posed Angry"] == 0  # always Neutral
    assert base["the 40"] == 2  # always Happy
    assert base["the 40 Haar"] == 1  # of the found faces, one Happy and one Neutral: either gives 1
    assert base["NME labels"] == pytest.approx(11.0) and base["NME Haar"] == pytest.approx(12.0)
    assert base["parsing"] == pytest.approx(0.4)
    assert base["astronaut"] == 15.0


def test_mean_row_and_table():
    a = real_readout.readout(POSED, LABELS, HAAR, 5.0)
    b = dict(a, posed=5, astronaut=7.0)
    mean = real_readout.mean_row([a, b])
    assert mean["posed"] == 4.0 and mean["astronaut"] == 6.0 and mean["NME labels"] == pytest.approx(7.5)
    assert real_readout.mean_row([a, dict(a, astronaut=None)])["astronaut"] is None
    text = real_readout.table([("run-a", a), ("mean of 2", mean)], markdown=True).splitlines()
    assert text[0].startswith("| checkpoint | posed | posed Angry |") and text[1].startswith("| --- |")
    assert text[2] == "| run-a | 3 | 1 | 1 | 2 | 1 | 7.50 | 7.00 | 0.467 | 5.00 |"
    assert text[3].startswith("| mean of 2 | 4 | 1 | 1 |")
    plain = real_readout.table([("run-a", a)]).splitlines()
    assert plain[0].split()[:3] == ["checkpoint", "posed", "posed"] and plain[1].split()[0] == "run-a"


def test_missing_photo_folders_name_the_fetch_command(tmp_path):
    with pytest.raises(SystemExit, match="real_faces.py --fetch"):
        real_readout.main(["bundled", "--photos", str(tmp_path / "no"), "--posed", str(tmp_path)])
    with pytest.raises(SystemExit, match="posed_expressions.py --fetch"):
        real_readout.main(["bundled", "--photos", str(tmp_path), "--posed", str(tmp_path / "no")])
