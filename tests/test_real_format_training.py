"""Training through real on-disk formats (not the synthetic in-memory source).

A tiny synthetic dataset is exported by the project's own exporter (``facemtl synth export``) in
the real layouts of MTFL (landmarks), Helen (parsing) and an emotion folder (emotion), at 96x96
pixels; a tiny iFAN trains on them at 64x64 through ``build_sources``' real-data path (the
format readers + ``FaceCrop``), a few updates, and then:

* metrics.json holds finite numbers for every task and iteration;
* parsing is scored at the ORIGINAL resolution through the crop matrix: every Helen sample
  carries ``meta["crop_matrix"]``, and the scored pixel count is the original images' (96x96
  each), not the crops' (64x64);
* the landmark NME of metrics.json equals a hand computation in original pixels (predictions
  warped back through the inverse crop matrix, normalised by the ground truth's eye distance);
* the parsing F1 of metrics.json equals a hand computation from logits warped back by hand,
  and ``facemtl.load(run_dir)`` predicts the same masks on the exported Helen files;
* ``facemtl.load(run_dir)`` predicts on an exported image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZE = 96  # exported image side
INPUT = 64  # model input: crops and originals differ in pixel count
MARGIN = 0.25
# format -> (faces, style, seed). Helen's test list gets max(1, n // 20) faces and tuning max(1, n // 10):
# with 20 faces the tuning list ("val") has 2, so the parsing test split is "val".
EXPORTS = {"mtfl": (10, "snapshot", 1), "helen": (20, "studio", 2), "emotion-folder": (16, "classroom", 3)}
PARSING_SPLIT = "val"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from facemtl.cli import main

    root = tmp_path_factory.mktemp("real_formats")
    for fmt, (n, style, seed) in EXPORTS.items():
        assert main(["synth", "export", "--format", fmt, "--n", str(n), "--size", str(SIZE), "--style", style,
                     "--seed", str(seed), "--out", str(root / fmt)]) == 0  # fmt: skip
    return root


def make_config(root: Path):
    from facemtl.config import config_from_dict

    smoke = yaml.safe_load((CONFIGS / "ifan_synth_smoke.yaml").read_text())  # its tiny iFAN
    return config_from_dict({
        "model": smoke["model"],
        "input_size": INPUT,
        "data": [
            {"name": "mtfl", "root": str(root / "mtfl"), "tasks": ["landmarks"], "batch_size": 4,
             "train_split": "train", "test_split": "test", "options": {"margin": MARGIN}},
            {"name": "helen", "root": str(root / "helen"), "tasks": ["parsing"], "batch_size": 4,
             "train_split": "train", "test_split": PARSING_SPLIT, "options": {"margin": MARGIN, "mask_rule": "argmax"}},
            {"name": "emotion-folder", "root": str(root / "emotion-folder"), "tasks": ["emotion"], "batch_size": 4,
             "train_split": "train", "test_split": "test", "options": {"test_share": 0.25, "seed": 0}},
        ],
        "schedule": {"pretrain_epochs": 1, "epochs": 1, "lr": 1e-3, "lr_end": 1e-4, "warmup": 2},
        "eval_batch_size": 8,
        "logging": {"log_every": 1, "tensorboard": False, "progress": False},
    })  # fmt: skip


@pytest.fixture(scope="module")
def trained(exported, tmp_path_factory):
    """(config, run dir, per-meter pixel counts of every parsing score) of one short run."""
    from facemtl.engine import train
    from facemtl.metrics.parsing import ParsingF1

    config = make_config(exported)
    updates: dict[int, list[tuple[tuple, tuple]]] = {}
    original = ParsingF1.update

    def spy(self, pred, target, *args, **kwargs):
        updates.setdefault(id(self), []).append((tuple(pred.shape), tuple(target.shape)))
        return original(self, pred, target, *args, **kwargs)

    run_dir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ParsingF1, "update", spy)
        train(config, run_dir, quiet=True)
    return config, run_dir, updates


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_sources_are_read_through_the_real_formats_and_cropped(exported):
    from facemtl.data import load_dataset
    from facemtl.data.mixing import build_sources

    config = make_config(exported)
    sources = build_sources(config, config.build_tasks())
    assert [s.name for s in sources] == ["mtfl", "helen", "emotion-folder"]
    n_mtfl = EXPORTS["mtfl"][0]
    assert (len(sources[0].train), len(sources[0].test)) == (n_mtfl - n_mtfl // 5, n_mtfl // 5)
    assert len(sources[1].test) == len(load_dataset("helen", exported / "helen", PARSING_SPLIT)) == 2
    assert len(sources[2].test) >= 1 and len(sources[2].train) + len(sources[2].test) == EXPORTS["emotion-folder"][0]
    rng = np.random.default_rng(0)
    for src in sources:
        assert src.transform is not None and src.eval_transform is not None  # FaceCrop, not synthetic
        raw = src.test[0]
        assert raw["image"].shape == (SIZE, SIZE, 3)
        crop = src.eval_transform(raw)
        assert crop["image"].shape == (INPUT, INPUT, 3)
        assert np.asarray(crop["meta"]["crop_matrix"]).shape == (2, 3)
        sample = src.sample(0, rng)  # a training sample (augmented crop)
        assert tuple(sample["image"].shape) == (3, INPUT, INPUT) and "crop_matrix" in sample["meta"]
    # Helen: masks are cropped with the image; the original mask stays on the raw sample
    helen = sources[1]
    raw = helen.test[0]
    crop = helen.eval_transform(raw)
    assert raw["parsing"].shape == (SIZE, SIZE) and crop["parsing"].shape == (INPUT, INPUT)
    # MTFL: the crop matrix maps the original landmarks onto the crop's
    from facemtl.data.transforms import warp_points

    mtfl = sources[0]
    raw = mtfl.test[0]
    crop = mtfl.eval_transform(raw)
    np.testing.assert_allclose(warp_points(raw["landmarks"], crop["meta"]["crop_matrix"]), crop["landmarks"], atol=1e-3)


def test_metrics_are_finite_for_every_task_and_iteration(trained):
    config, run_dir, _ = trained
    result = metrics(run_dir)
    iterations = result["iterations"]
    n_iterations = int(config.model.kwargs["iterations"])  # the smoke iFAN's refinement iterations
    assert n_iterations >= 1 and sorted(iterations, key=int) == [str(i) for i in range(n_iterations + 1)]
    for it in iterations.values():
        assert set(it) == {"landmarks", "parsing", "emotion"}
        lm = it["landmarks"]
        assert 0 < lm["nme"] < math.inf and 0 <= lm["failure_rate"] <= 100
        assert len(lm["nme_per_point"]) == 5 and all(math.isfinite(v) for v in lm["nme_per_point"])
        assert 0 <= it["parsing"]["overall"] <= 100 and math.isfinite(it["parsing"]["f1"]["skin"])
        em = it["emotion"]
        assert 0 <= em["accuracy"] <= 100 and 0 <= em["mean_class_accuracy"] <= 100
    assert (run_dir / "model.safetensors").exists() and (run_dir / "model.json").exists()


def test_parsing_is_scored_at_the_original_resolution(trained, exported):
    from facemtl.data import load_dataset

    _, _, updates = trained
    n_test = len(load_dataset("helen", exported / "helen", PARSING_SPLIT))
    assert updates, "no parsing score was computed"
    shapes = {s for calls in updates.values() for pair in calls for s in pair}
    assert shapes == {(SIZE, SIZE)}, f"parsing scored at {shapes}, expected the original {SIZE}x{SIZE} only"
    # one meter per iteration (and per trivial baseline), each over every original pixel once
    assert len(updates) >= 2
    for calls in updates.values():
        pixels = sum(math.prod(target) for _, target in calls)
        assert pixels == n_test * SIZE * SIZE != n_test * INPUT * INPUT


def _hand_outputs(model, src):
    """Eval crops of ``src``'s test split through ``model``: (raws, crops, list of per-iteration outputs)."""
    from facemtl.data.sample import collate, to_sample

    raws = [src.test[i] for i in range(len(src.test))]
    crops = [src.eval_transform(raw) for raw in raws]
    batch = collate([to_sample(c, src.tasks, source=src.index) for c in crops])
    with torch.no_grad():
        outputs = model(batch["image"], source=None)
    return raws, crops, outputs


def test_landmark_nme_is_the_nme_in_original_pixels(trained, exported):
    import facemtl
    from facemtl.data.mixing import build_sources
    from facemtl.data.transforms import invert_affine, warp_points

    config, run_dir, _ = trained
    predictor = facemtl.load(run_dir, detector="none", flip=False)  # one pass: the logits warped by hand
    model = predictor.model.eval()
    src = build_sources(config, config.build_tasks())[0]
    raws, crops, outputs = _hand_outputs(model, src)
    result = metrics(run_dir)["iterations"]
    for i, out in enumerate(outputs):
        pred = model.decode("landmarks", out["landmarks"]).double().numpy() * INPUT  # crop pixels
        nmes = []
        for p, raw, crop in zip(pred, raws, crops):
            original = warp_points(p, invert_affine(crop["meta"]["crop_matrix"]))
            gt = np.asarray(raw["landmarks"], np.float64)
            eyes = np.linalg.norm(gt[0] - gt[1])
            nmes.append(np.linalg.norm(original - gt, axis=1).mean() / eyes * 100)
        assert result[str(i)]["landmarks"]["nme"] == pytest.approx(float(np.mean(nmes)), rel=1e-4)
        failure = 100 * float(np.mean(np.asarray(nmes) > 10))
        assert result[str(i)]["landmarks"]["failure_rate"] == pytest.approx(failure)


def test_parsing_f1_and_prediction_agree_with_logits_warped_back_by_hand(trained, exported):
    import facemtl
    from facemtl.data.mixing import build_sources
    from facemtl.data.transforms import face_crop_matrix, warp_logits_back
    from facemtl.metrics.parsing import ParsingF1

    config, run_dir, _ = trained
    predictor = facemtl.load(run_dir, detector="none", flip=False)  # one pass: the logits warped by hand
    model = predictor.model.eval()
    src = build_sources(config, config.build_tasks())[1]
    raws, crops, outputs = _hand_outputs(model, src)
    task = model.tasks[[t.name for t in model.tasks].index("parsing")]
    result = metrics(run_dir)["iterations"]
    masks = []
    for i, out in enumerate(outputs):
        logits = model.decode("parsing", out["parsing"]).float()
        meter = ParsingF1(task.num_outputs, task.class_names or None)
        masks = []
        for lg, raw, crop in zip(logits, raws, crops):
            full = warp_logits_back(lg, crop["meta"]["crop_matrix"], raw["image"].shape[:2])
            assert tuple(full.shape) == (task.num_outputs, SIZE, SIZE)
            masks.append(full.argmax(0))
            meter.update(masks[-1], torch.from_numpy(raw["parsing"].astype(np.int64)))
        hand = meter.compute()
        assert result[str(i)]["parsing"]["overall"] == pytest.approx(hand["overall"], rel=1e-6, abs=1e-9)
        assert result[str(i)]["parsing"]["f1"]["skin"] == pytest.approx(hand["f1"]["skin"], rel=1e-6, abs=1e-9)
    # Helen has no box or landmarks: evaluation crops the face square around the ground-truth
    # face-part classes (1..9) with the margin. Given that box, the predictor crops the same way and
    # reports the last iteration's mask in the original image: the same labels inside the crop's
    # footprint, background (its documented convention) outside.
    for raw, crop, mask in zip(raws, crops, masks):
        ys, xs = np.nonzero((raw["parsing"] >= 1) & (raw["parsing"] <= 9))
        box = [xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5]
        matrix = crop["meta"]["crop_matrix"]
        np.testing.assert_allclose(face_crop_matrix(box=box, size=INPUT, margin=MARGIN), matrix, atol=1e-9)
        faces = predictor(raw["meta"]["path"], boxes=[box])
        assert len(faces) == 1
        got = np.asarray(faces[0]["parsing"])
        assert got.shape == (SIZE, SIZE) and got.dtype == np.uint8
        vs, us = np.mgrid[0:SIZE, 0:SIZE]
        cx = matrix[0, 0] * us + matrix[0, 1] * vs + matrix[0, 2]
        cy = matrix[1, 0] * us + matrix[1, 1] * vs + matrix[1, 2]
        inside = (cx >= -0.5) & (cx <= INPUT - 0.5) & (cy >= -0.5) & (cy <= INPUT - 0.5)
        assert inside.mean() > 0.5
        assert (got[inside] == mask.numpy()[inside]).mean() > 0.999
        assert (got[~inside] == 0).all()


def test_load_predicts_on_an_exported_image(trained, exported):
    import facemtl

    _, run_dir, _ = trained
    image = sorted((exported / "mtfl" / "AFLW").glob("*.jpg"))[0]
    faces = facemtl.load(run_dir, detector="none")(str(image))
    assert len(faces) == 1
    face = faces[0]
    points = np.asarray(face["landmarks"])
    assert points.shape == (5, 2) and np.isfinite(points).all()
    assert (points > -SIZE).all() and (points < 2 * SIZE).all()  # near the image, in its pixels
    mask = np.asarray(face["parsing"])
    assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8 and mask.max() < 11
    assert sum(face["emotion"]["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert face["emotion"]["label"] in face["emotion"]["probs"]


def test_a_source_that_cannot_be_read_is_named_by_its_config_key(exported, tmp_path):
    import dataclasses

    from facemtl.data.mixing import build_sources
    from facemtl.errors import FacemtlError

    config = make_config(exported)
    moved = dataclasses.replace(config.data[1], root=str(tmp_path / "nowhere"))
    config = dataclasses.replace(config, data=(config.data[0], moved, config.data[2]))
    with pytest.raises(FacemtlError, match=r"^data\.1 \(helen\): folder not found: .*nowhere"):
        build_sources(config, config.build_tasks())
