"""The real-data configs train on `facemtl synth export` datasets with only their roots changed.

``configs/dcnet_mtfl.yaml``, ``configs/dcnet_aflw.yaml`` and ``configs/ifan_mtfl_helen_emotion.yaml``
are loaded with overrides that set the roots and make the run tiny (input size, updates, batch
sizes, network width) and nothing else: every reader option, task and training mode is the
config's own. Each trains a few updates through the real readers and FaceCrop, leaves finite
metrics for every task, with the landmark NME equal to a hand computation in the original
pixels (tests/test_real_format_training.py also checks Helen's parsing F1 at the original
resolution by hand), and ``facemtl.load`` predicts every task on an exported image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZE = 64  # exported image side = model input (the smallest DCNet input)
# format -> (faces, style, seed, expected (train, test) sizes under the configs' split options)
EXPORTS = {
    "mtfl": (10, "snapshot", 1, (8, 2)),  # training.txt / testing.txt: 80% / 20%
    "aflw": (10, "snapshot", 2, (5, 5)),  # ratio 0.5
    "helen": (20, "studio", 3, (17, 1)),  # exemplars / testing
    "emotion-folder": (24, "classroom", 4, (18, 6)),  # 4 subjects: 20% of each class's subjects held out
}
TINY = ["input_size=64", "eval_batch_size=8", "logging.report=false", "logging.tensorboard=false",
        "logging.progress=false"]
DCNET = ["model.kwargs.input_size=64", "model.kwargs.backbone=alexnet", "model.kwargs.width=8", "schedule.epochs=1",
         "data.0.batch_size=4"]
IFAN_WIDTH = {"num_blocks": 3, "growth_rate": 4, "layers_per_block": 1, "stem_channels": 8, "up_channels": 8,
              "reencoder_channels": 4, "points_hidden": 16, "category_hidden": 16, "decoder_channels": 8}
IFAN = [f"model.kwargs.{k}={v}" for k, v in IFAN_WIDTH.items()]
IFAN += ["schedule.pretrain_epochs=1", "schedule.rounds=2"] + [f"data.{i}.batch_size=4" for i in range(3)]
CASES = {
    "dcnet_mtfl": (["mtfl"], DCNET),
    "dcnet_aflw": (["aflw"], DCNET),
    "ifan_mtfl_helen_emotion": (["mtfl", "helen", "emotion-folder"], IFAN),
}
# What an override may touch: the roots and the size of the run, never a reader option or a task.
SIZE_KEYS = ("input_size", "eval_batch_size", "logging.", "model.kwargs.", "schedule.epochs", "schedule.rounds",
             "schedule.pretrain_epochs")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from facemtl.cli import main

    root = tmp_path_factory.mktemp("exports")
    for fmt, (n, style, seed, _) in EXPORTS.items():
        assert main(["synth", "export", "--format", fmt, "--n", str(n), "--size", str(SIZE), "--style", style,
                     "--seed", str(seed), "--out", str(root / fmt)]) == 0  # fmt: skip
    return root


def overrides(name: str, root: Path) -> list[str]:
    formats, tiny = CASES[name]
    out = [f"data.{i}.root={root / fmt}" for i, fmt in enumerate(formats)] + TINY + tiny
    for item in out:
        key = item.partition("=")[0]
        assert key.endswith((".root", ".batch_size")) or key.startswith(SIZE_KEYS), key
    return out


def finite_leaves(obj, where: str = ""):
    """(path, value) of every leaf of a metrics.json tree that is not a finite number."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from finite_leaves(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for k, v in enumerate(obj):
            yield from finite_leaves(v, f"{where}[{k}]")
    elif isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
        yield where, obj


@pytest.mark.parametrize("name", list(CASES))
def test_real_config_trains_evaluates_and_predicts_on_its_export(name, exported, tmp_path):
    import facemtl
    from facemtl.config import load_config
    from facemtl.data.mixing import build_sources
    from facemtl.data.sample import collate, to_sample
    from facemtl.data.synth import EMOTIONS
    from facemtl.data.transforms import invert_affine, warp_points
    from facemtl.engine import train
    from facemtl.models.checkpoint import load_model

    formats, _ = CASES[name]
    config = load_config(CONFIGS / f"{name}.yaml", overrides(name, exported))
    original = load_config(CONFIGS / f"{name}.yaml", [f"data.{i}.root={exported / f}" for i, f in enumerate(formats)])
    for src, orig in zip(config.data, original.data):  # the config's own readers, splits, options and tasks
        assert (src.name, src.train_split, src.test_split, src.options, src.tasks) == \
            (orig.name, orig.train_split, orig.test_split, orig.options, orig.tasks)
    sources = build_sources(config, config.build_tasks())
    assert [(len(s.train), len(s.test)) for s in sources] == [EXPORTS[f][3] for f in formats]
    assert all(s.eval_transform is not None for s in sources)  # real readers + FaceCrop, not the synthetic path
    for task in config.build_tasks():  # a declared task without classes takes the export's class folders
        if task.name == "bnu_emotion":
            assert task.class_names == tuple(sorted(EMOTIONS))

    run_dir = tmp_path / "run"
    train(config, run_dir, quiet=True)
    result = json.loads((run_dir / "metrics.json").read_text())
    iterations = result["iterations"]
    assert iterations and all(set(it) == set(config.task_names) for it in iterations.values())
    assert list(finite_leaves(iterations)) == []
    # Landmarks are scored in original pixels: the saved model's predictions on the eval crops of
    # source 0 (MTFL: crop from the points; AFLW: from facerect), warped back by hand.
    model, _ = load_model(run_dir)
    src = sources[0]
    raws = [src.test[i] for i in range(len(src.test))]
    crops = [src.eval_transform(raw) for raw in raws]
    with torch.no_grad():
        outputs = model(collate([to_sample(c, src.tasks, source=src.index) for c in crops])["image"], source=None)
    assert len(outputs) == len(iterations)
    for i, out in enumerate(outputs):
        pred = model.decode("landmarks", out["landmarks"]).double().numpy() * SIZE  # crop pixels
        nmes = [np.linalg.norm(warp_points(p, invert_affine(c["meta"]["crop_matrix"])) - raw["landmarks"], axis=1).mean()
                / np.linalg.norm(raw["landmarks"][0] - raw["landmarks"][1]) * 100 for p, raw, c in zip(pred, raws, crops)]
        assert iterations[str(i)]["landmarks"]["nme"] == pytest.approx(float(np.mean(nmes)), rel=1e-4)

    image = max((exported / formats[0]).rglob("*.jpg"))  # an image of the first source
    faces = facemtl.load(run_dir, detector="none")(str(image))
    assert len(faces) == 1
    face = faces[0]
    for task in config.build_tasks():
        assert task.name in face, task.name
        if task.kind == "points":
            points = np.asarray(face[task.name])
            assert points.shape == (5, 2) and np.isfinite(points).all()
            assert (points > -SIZE).all() and (points < 2 * SIZE).all()  # the image's pixels
        elif task.kind == "segmentation":
            mask = np.asarray(face[task.name])
            assert mask.shape == (SIZE, SIZE) and mask.max() < task.num_outputs
        else:
            assert face[task.name]["label"] in task.class_names
            assert sum(face[task.name]["probs"].values()) == pytest.approx(1.0, abs=1e-5)
