"""benchmarks/finetune_real.py: folds by photo, the compared configs, the offsets."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from facemtl.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import finetune_real  # noqa: E402


def _layout(root: Path, faces_per_photo: dict[str, int]) -> Path:
    layout = root / "mtfl"
    (layout / "photos").mkdir(parents=True)
    lines = [f"photos/{name}.jpg " + " ".join(["1.0"] * 10) + " 1 1 1 1\n"
             for name, n in faces_per_photo.items() for _ in range(n)]
    (layout / "testing.txt").write_text("".join(lines))
    return layout


def test_folds_keep_the_faces_of_one_photo_together_and_cover_every_face_once(tmp_path):
    photos = {f"p{i}": 1 + i % 3 for i in range(10)}  # 19 faces in 10 photos
    folds = finetune_real.write_folds(_layout(tmp_path, photos), tmp_path, 3)
    tested = []
    for fold in folds:
        test = (fold / "testing.txt").read_text().splitlines()
        train = (fold / "training.txt").read_text().splitlines()
        assert len(test) + len(train) == sum(photos.values()) == 19 and test
        assert not {x.split()[0] for x in test} & {x.split()[0] for x in train}
        assert (fold / "photos").is_symlink()
        tested += test
    every_face = sorted(f"photos/{p}.jpg" for p, n in photos.items() for _ in range(n))
    assert sorted(x.split()[0] for x in tested) == every_face
    again = finetune_real.write_folds(tmp_path / "mtfl", tmp_path / "again", 3)
    assert [(f / "testing.txt").read_text() for f in again] == [(f / "testing.txt").read_text() for f in folds]


def test_the_compared_configs_differ_only_where_they_should(tmp_path):
    paths = finetune_real.write_configs(tmp_path, finetune_real.finetuned_keep())
    shipped = load_config(finetune_real.CONFIG, ["data.2.root=/data"])
    finetuned, unkept, synthetic, scratch = (load_config(paths[c], ["data.2.root=/data"])
                                             for c in ("finetuned", "unkept", "synthetic", "scratch"))
    assert finetuned == shipped and shipped.data[2].keep == {"emotion": 0.3} == finetune_real.finetuned_keep()
    assert not unkept.data[2].keep and dataclasses.replace(unkept.data[2], keep=shipped.data[2].keep) == shipped.data[2]
    assert unkept.data[:2] == shipped.data[:2] and unkept.model == shipped.model and unkept.schedule == shipped.schedule
    assert synthetic.model.init == "bundled" and scratch.model.init is None
    assert synthetic.data[2].name == "synth" and not synthetic.data[2].keep and synthetic.data[:2] == shipped.data[:2]
    assert scratch.data == unkept.data and scratch.input_size == shipped.input_size
    assert synthetic.schedule == scratch.schedule == shipped.schedule
    heavier_path = finetune_real.write_configs(tmp_path, finetune_real.finetuned_keep(1.0))["finetuned"]  # beside it
    assert heavier_path != paths["finetuned"] and load_config(paths["finetuned"], ["data.2.root=/data"]) == shipped
    heavier = load_config(heavier_path, ["data.2.root=/data"])
    assert heavier.data[2].keep == {"emotion": 1.0} and dataclasses.replace(heavier.data[2], keep={"emotion": 0.3}) \
        == shipped.data[2]


def test_the_control_is_the_plain_network_trained_on_the_real_faces_with_as_many_landmark_updates(tmp_path):
    paths = finetune_real.write_configs(tmp_path, finetune_real.finetuned_keep())
    control = load_config(paths["control"], ["data.0.root=/data", "model.init=/runs/control-synthetic"])
    synthetic = load_config(paths["control-synthetic"])
    plain = load_config(finetune_real.CONTROL_CONFIG)
    shipped = load_config(finetune_real.CONFIG, ["data.2.root=/data"])
    # the plain control as configs/ has it, at the bundled model's input size (128 px, not its own 64)
    assert synthetic == dataclasses.replace(plain, input_size=shipped.input_size) and plain.input_size == 64
    assert dataclasses.replace(control.model, init=None) == plain.model and control.input_size == shipped.input_size
    assert control.model.init == "/runs/control-synthetic"
    assert control.data == (dataclasses.replace(shipped.data[2], keep={}),)
    # the shipped run: 150 rounds, each training the landmarks at refinement iterations 1 and 2
    assert shipped.schedule.rounds == 150 and control.schedule.mode == "joint" and control.schedule.rounds == 300
    assert (control.schedule.lr, control.schedule.lr_end, control.schedule.decay) == \
        (shipped.schedule.lr, shipped.schedule.lr_end, shipped.schedule.decay)
    assert control.schedule.warmup == 2 * shipped.schedule.warmup


def test_runs_at_other_settings_are_named_apart_so_a_rerun_does_not_reuse_them():
    assert finetune_real.run_name("finetuned", 0, {"emotion": 0.3}) == "finetuned-w0.3"
    assert finetune_real.run_name("finetuned", 1, {"emotion": 1.0}) == "finetuned-w1-seed1"
    # earlier benchmark folders named the unkept runs "finetuned": a rerun does not mistake them for kept ones
    assert finetune_real.run_name("finetuned", 0, {}) == "finetuned"
    assert finetune_real.run_name("unkept", 1, {"emotion": 0.3}) == "unkept-seed1"  # the weight is finetuned's
    assert finetune_real.run_name("scratch", 0, {"emotion": 0.3}) == "scratch"


def test_posed_emotion_is_printed_as_faces_right_beside_always_the_commonest():
    emotion = {"faces": 35, "found": 34, "accuracy": 22 / 35, "baseline": {"label": "Neutral", "accuracy": 11 / 35}}
    assert finetune_real.posed_text(emotion) == "22 of 35 (found 34; always Neutral: 11)"


def test_offsets_are_in_the_face_frame_in_percent_of_the_interocular_distance():
    points = np.array([[10.0, 10.0], [30.0, 10.0], [20.0, 20.0], [12.0, 28.0], [28.0, 28.0]])
    turned = points[:, ::-1].copy()  # the same face with the eye line vertical
    faces = [{"nme": 0.1, "points": points.tolist(), "predicted_points": (points + [0.0, 2.0]).tolist()},
             {"nme": 0.1, "points": turned.tolist(), "predicted_points": (turned + [-2.0, 0.0]).tolist()},
             {"nme": None, "points": points.tolist(), "predicted_points": None}]  # a miss: left out
    # 2 px down the first face, 2 px against the turned face's "down" (its x axis points left of its eye line)
    assert finetune_real.offsets(faces) == pytest.approx(np.array([[0.0, 10.0]] * 5))
