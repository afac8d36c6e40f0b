import numpy as np
import pytest
import torch

from facemtl.data.sample import collate, to_sample
from facemtl.errors import FacemtlError
from facemtl.tasks import STANDARD_TASKS, Task, get_task, get_tasks


def test_flip_permutations_are_involutions():
    for task in STANDARD_TASKS.values():
        flip = task.flip
        assert [flip[flip[i]] for i in range(task.num_outputs)] == list(range(task.num_outputs))


def test_points_loss_is_mean_squared_distance():
    task = get_task("landmarks")
    out = torch.zeros(1, 5, 2)
    target = torch.zeros(1, 5, 2)
    target[0, 0] = torch.tensor([0.3, 0.4])  # squared distance 0.25 on one of 5 points
    assert task.loss(out, target).item() == pytest.approx(0.05)
    visible = torch.tensor([[True, False, False, False, False]])
    assert task.loss(out, target, visible).item() == pytest.approx(0.25)


def test_bad_task_definitions_fail_clearly():
    with pytest.raises(FacemtlError, match="kind must be one of"):
        Task("x", "boxes", 1)
    with pytest.raises(FacemtlError, match="not a permutation"):
        Task("x", "points", 2, flip_permutation=(0, 0))
    with pytest.raises(FacemtlError, match="unknown task"):
        get_task("age")
    with pytest.raises(FacemtlError, match="twice"):
        get_tasks(["emotion", "emotion"])


def test_to_sample_normalises_points_and_keeps_only_present_labels():
    raw = {
        "image": np.full((20, 40, 3), 255, np.uint8),
        "landmarks": np.array([[10.0, 5.0]] * 5, np.float32),
        "emotion": 3,
        "meta": {"id": 1},
    }
    s = to_sample(raw, get_tasks(["landmarks", "parsing", "emotion"]), source=2)
    assert s["image"].shape == (3, 20, 40) and torch.allclose(s["image"], torch.ones(1))
    assert torch.allclose(s["landmarks"][0], torch.tensor([0.25, 0.25]))
    assert "parsing" not in s and s["emotion"].item() == 3 and s["source"] == 2
    batch = collate([s, s])
    assert batch["landmarks"].shape == (2, 5, 2) and batch["source"].tolist() == [2, 2]


def test_pose_from_yaw_bins_and_mirror_symmetry():
    from facemtl.tasks import pose_from_yaw

    yaws = (-80, -46, -45, -16, -15, 0, 15, 16, 45, 46, 80)
    assert [pose_from_yaw(y) for y in yaws] == [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]
    # A mirrored face (yaw -> -yaw) gets the flipped class, as flip augmentation relabels it.
    flip = STANDARD_TASKS["pose"].flip
    for y in np.linspace(-90.0, 90.0, 721):
        assert pose_from_yaw(-y) == flip[pose_from_yaw(y)]
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(FacemtlError, match="finite"):
            pose_from_yaw(bad)
