"""benchmarks/mtcnn_reference.py: the non-maximum suppression it supplies in torchvision's place."""

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
