"""Fine-tuning that keeps the initial model's predictions of tasks a source does not label
(``data.N.keep``, :mod:`facemtl.engine.keep`)."""

import csv
import math
import re

import pytest
import torch

from facemtl.config import config_from_dict
from facemtl.engine.loop import Training, train
from facemtl.errors import FacemtlError
from facemtl.kinds import kind_of
from facemtl.models.checkpoint import load_model
from facemtl.tasks import get_task

TINY = dict(iterations=1, growth_rate=2, layers_per_block=1, num_blocks=3, stem_channels=4, up_channels=4,
            reencoder_channels=2, points_hidden=8, category_hidden=8)
SIZE = 64
LOGGING = {"log_every": 1, "tensorboard": False, "progress": False, "report": False}
THREE = [(["landmarks"], "wild"), (["parsing"], "studio"), (["emotion"], "webcam")]


def _config(init=None, keep=None, mode="hybrid", **schedule):
    model = {"name": "ifan", "kwargs": dict(TINY)}
    if init is not None:
        model["init"] = str(init)
    data = [{"tasks": tasks, "style": style, "n_train": 8, "n_test": 2, "seed": i, "batch_size": 4}
            for i, (tasks, style) in enumerate(THREE)]
    if keep is not None:
        data[0]["keep"] = keep
    return config_from_dict({"model": model, "input_size": SIZE, "data": data, "logging": LOGGING, "schedule": {
        "mode": mode, "pretrain_epochs": 1, "rounds": 1, "lr": 1e-3, **schedule}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(_config(), tmp_path_factory.mktemp("keep") / "run", quiet=True)


def test_the_distance_of_class_probabilities_is_the_softened_kl_hand_computed():
    emotion, parsing = get_task("emotion"), get_task("parsing")
    ref = torch.zeros(1, 7)
    ref[0, 0] = 2 * math.log(3)  # at T = 2 the first two classes are 3:1
    ref[0, 2:] = -1e4  # the other five out of play
    out = torch.zeros(1, 7)
    out[0, 2:] = -1e4  # 1:1
    # KL((3/4, 1/4) || (1/2, 1/2)) = 3/4 ln(3/2) + 1/4 ln(1/2), times T^2 = 4
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert kind_of(emotion).keep_loss(emotion, out, ref).item() == pytest.approx(expected, rel=1e-5)
    assert kind_of(emotion).keep_loss(emotion, ref, ref).item() == pytest.approx(0.0, abs=1e-6)
    # per pixel, averaged: one pixel as above, one equal -> half
    seg_ref = torch.full((1, 11, 1, 2), -1e4)
    seg_out = seg_ref.clone()
    seg_ref[0, :2, 0, 0] = torch.tensor([2 * math.log(3), 0.0])
    seg_out[0, :2, 0, 0] = 0.0
    seg_ref[0, 1, 0, 1] = seg_out[0, 1, 0, 1] = 0.0
    assert kind_of(parsing).keep_loss(parsing, seg_out, seg_ref).item() == pytest.approx(expected / 2, rel=1e-5)


def test_the_distance_of_points_is_the_mean_squared_point_distance():
    landmarks = get_task("landmarks")
    ref = torch.zeros(1, 5, 2)
    out = ref.clone()
    out[0, 0] = torch.tensor([0.3, 0.4])  # one point 0.5 away: 0.25 / 5 points
    assert kind_of(landmarks).keep_loss(landmarks, out, ref).item() == pytest.approx(0.05)


def test_the_term_is_zero_before_the_model_moves_and_logged_on_the_keeping_source(trained, tmp_path):
    run = train(_config(trained, keep={"emotion": 1.0}, pretrain_epochs=0, rounds=3), tmp_path / "kept", quiet=True)
    rows = list(csv.DictReader(open(run / "steps.csv")))
    kept = [float(r["keep_loss"]) for r in rows]
    sources = [r["task"] for r in rows]
    assert sources[0] == "landmarks" and abs(kept[0]) < 1e-6  # the run's first update: the initial weights
    assert all(math.isnan(v) == (s != "landmarks") for v, s in zip(kept, sources))  # only source 0 keeps
    assert max(v for v in kept if not math.isnan(v)) > 1e-6  # later the model has moved


def _emotion_drift(run, initial, images):
    """Mean KL of the run's emotion probabilities from the initial model's, as each predicts."""
    task = get_task("emotion")
    with torch.no_grad():
        out = load_model(run)[0].eval()(images)[-1]["emotion"]
        ref = initial(images)[-1]["emotion"]
    return kind_of(task).keep_loss(task, out, ref).item()


def test_keeping_emotion_on_the_landmark_images_keeps_its_predictions_there(trained, tmp_path):
    schedule = dict(pretrain_epochs=0, rounds=6, lr=1e-2)
    free = train(_config(trained, **schedule), tmp_path / "free", quiet=True)
    kept = train(_config(trained, keep={"emotion": 20.0}, **schedule), tmp_path / "kept", quiet=True)
    streams = Training(_config(trained)).mode.streams
    images = torch.cat([streams[1].batch(0)["image"], streams[1].batch(1)["image"]])  # source 0's own faces
    initial = load_model(trained)[0].eval()
    assert _emotion_drift(kept, initial, images) < 0.5 * _emotion_drift(free, initial, images)


@pytest.mark.parametrize("change, message", [
    (dict(init=None), "expected no value without model.init"),
    (dict(keep={"landmarks": 1.0}), re.escape("expected tasks this source does not label: parsing, emotion "
                                              "(data.0.keep={} keeps none), got 'landmarks'")),
    (dict(keep={"smile": 1.0}), "got 'smile'"),
    (dict(keep={"emotion": -1.0}), "data.0.keep.emotion"),
])
def test_a_keep_that_cannot_apply_is_refused(trained, change, message):
    args = {"init": trained, "keep": {"emotion": 1.0}, **change}
    with pytest.raises(FacemtlError, match=message):
        _config(**args)


def test_joint_training_keeps_nothing(trained):
    with pytest.raises(FacemtlError, match="no value in joint training"):
        config_from_dict({"model": {"name": "ifan", "init": str(trained)}, "schedule": {"mode": "joint"},
                          "data": [{"tasks": ["landmarks"], "keep": {"emotion": 1.0}}]})


def test_an_interrupted_keeping_run_resumes_to_the_same_weights(trained, tmp_path):
    config = _config(trained, keep={"emotion": 1.0}, pretrain_epochs=0, rounds=2)
    full = train(config, tmp_path / "full", quiet=True)
    part = train(config, tmp_path / "part", quiet=True, stop_after=1)  # after the first update, a keeping one
    train(config, part, resume=True, quiet=True)
    a, b = load_model(full)[0].state_dict(), load_model(part)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
