"""benchmarks/mtcnn_reference.py: the non-maximum suppression it supplies in torchvision's place, the split of
faces by MTCNN's error, a checkpoint's own mean."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mtcnn_reference  # noqa: E402


def test_batched_nms_keeps_the_best_of_overlapping_boxes_per_group():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.6, 0.9, 0.5, 0.7])
    groups = torch.tensor([0, 0, 0, 1])
    # boxes 0 and 1 overlap with IoU 81 / 119 = 0.68: at 0.5 the weaker goes, at 0.7 both stay;
    # box 3 is box 0 again but in another group, so it never competes with it
    assert mtcnn_reference.batched_nms(boxes, scores, groups, 0.5).tolist() == [1, 3, 2]
    assert mtcnn_reference.batched_nms(boxes, scores, groups, 0.7).tolist() == [1, 3, 0, 2]
    assert mtcnn_reference.batched_nms(boxes[:0], scores[:0], groups[:0], 0.5).numel() == 0


def test_a_missing_facenet_folder_says_how_to_fetch_it(tmp_path):
    with pytest.raises(SystemExit, match="--fetch"):
        mtcnn_reference.load_mtcnn(tmp_path)


def test_faces_split_by_the_reference_s_error_hand_computed():
    reference = [1, 2, 3, 4, None, 5, 6, 7, 8, 9]
    model = [2, 2, 2, 2, 9, 3, 3, 10, 20, None]  # face 5: MTCNN missed it; face 10: the model did
    split = mtcnn_reference.by_difficulty(reference, model)
    # the 8 faces both found, by the reference's error: halves of 4, the hardest quarter of 2
    assert split == {"faces": 8, "easier half": (2.5, 2.0), "harder half": (6.5, 9.0), "hardest quarter": (7.5, 15.0)}
    # an odd count: the harder half and the quarter take the odd face
    odd = mtcnn_reference.by_difficulty([1, 2, 3, 4, 5], [1, 1, 1, 1, 6])
    assert odd["easier half"] == (1.5, 1.0) and odd["harder half"] == (4.0, 8 / 3) and odd["hardest quarter"] == (5.0, 6.0)
    with pytest.raises(SystemExit, match="too few"):
        mtcnn_reference.by_difficulty([1, 2, None], [1, None, 3])


def test_bad_crops_are_refused_before_mtcnn_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        mtcnn_reference.main(["--photos", str(tmp_path), "--facenet", str(tmp_path), "bundled", "--crops", "box"])
    assert "--crops takes detector, labels" in capsys.readouterr().err


def test_a_checkpoint_s_own_mean_counts_every_face_it_found(monkeypatch, capsys):
    import emotion_reading
    import real_faces

    rows = [{"found": True, "nme": 2.0, "baseline_nme": 10.0}, {"found": False},
            {"found": True, "nme": 4.0, "baseline_nme": 12.0}, {"found": True, "nme": 9.0, "baseline_nme": 20.0},
            {"found": True, "nme": 5.0, "baseline_nme": 14.0}, {"found": True, "nme": 6.0, "baseline_nme": 16.0}]
    loaded = []  # the predictor options main() asked for
    monkeypatch.setattr(emotion_reading, "load_predictor", lambda ckpt, **kw: loaded.append(kw))
    monkeypatch.setattr(real_faces, "score", lambda pred, photos, mode: rows)
    monkeypatch.setattr(mtcnn_reference, "load_mtcnn", lambda folder: None)
    # MTCNN's per-point errors per face: it missed face 4 (the model missed face 2); NMEs 1, 2, 3, -, 4, 5
    monkeypatch.setattr(mtcnn_reference, "score", lambda mtcnn, photos, pad: [[v] * 5 if v else None
                                                                              for v in (1.0, 2.0, 3.0, None, 4.0, 5.0)])
    mtcnn_reference.main(["--photos", "p", "--facenet", "f", "run", "--crops", "labels", "--recrop", "turn",
                          "--refiner", "none"])
    assert loaded == [{"detector": "none", "recrop": "turn", "refiner": "none"}]
    line = capsys.readouterr().out.splitlines()[-1]
    # the face MTCNN missed counts in the model's own mean (2, 4, 9, 5, 6), as real_faces.py counts it
    assert "mean NME 5.200% on the 5 faces it found (mean shape 14.400%)" in line
    # the 4 faces both found, by MTCNN's error 1, 3, 4, 5: the hardest quarter is the last one (model 6, mean shape 16)
    assert "4 faces both found" in line and "hardest quarter MTCNN 5.0%, model 6.0% (mean shape 16.0%)" in line
