"""Deep Collaboration experiments (facemtl.experiments.dcnet) at smoke scale."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facemtl.cli import main
from facemtl.errors import FacemtlError
from facemtl.experiments.dcnet import (
    block_ablation,
    landmark_scores,
    load_experiment,
    sample_task_weights,
    variant,
)
from facemtl.models.collab import DCNet

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "dcnet_synth_smoke.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One smoke comparison (single, hps, dcnet), shared by the tests that need trained runs."""
    out = tmp_path_factory.mktemp("compare")
    assert main(["experiment", "dcnet", "compare", str(SMOKE), "--out", str(out)]) == 0
    return out


def test_compare_writes_table_and_parameter_counts(compared, capsys):
    result = json.loads((compared / "compare.json").read_text())
    models = result["models"]
    assert list(models) == ["single", "hps", "dcnet"]
    for name, r in models.items():
        assert 0 <= r["failure_rate"] <= 100 and r["nme"] > 0
        # the reported numbers are the engine's own test-split evaluation of that run
        engine = json.loads((compared / name / "metrics.json").read_text())["iterations"]["0"]["landmarks"]
        assert r["failure_rate"] == engine["failure_rate"] and r["nme"] == engine["nme"]
    assert models["single"]["parameters"] < models["hps"]["parameters"] < models["dcnet"]["parameters"]
    assert result["budget"]["epochs"] == 1 and result["budget"]["backbone"] == "alexnet"
    table = (compared / "compare.md").read_text()
    assert table.startswith("| model | failure rate % | NME % | parameters |") and "| dcnet |" in table
    # the single-task model trained landmarks only; the others all three tasks with weight 1
    cfg = json.loads((compared / "single" / "config.json").read_text())
    assert cfg["data"][0]["tasks"] == ["landmarks"] and cfg["schedule"]["loss_weights"] == {"landmarks": 1.0}
    cfg = json.loads((compared / "dcnet" / "config.json").read_text())
    assert cfg["schedule"]["loss_weights"] == {"landmarks": 1.0, "gender": 1.0, "pose": 1.0}
    # checkpoints describe the model as built (resolved width, no ImageNet file needed)
    saved = json.loads((compared / "dcnet" / "model.json").read_text())["model"]["config"]
    assert saved["width"] == 64 and saved["pretrained"] is None and saved["input_size"] == 64
    assert saved["tasks"] == ["landmarks", "gender", "pose"]  # the task set it was trained with, in order
    # only the ablation model keeps its weights; no training state is left behind
    assert (compared / "dcnet" / "model.safetensors").exists() and not (compared / "hps" / "model.safetensors").exists()
    assert not list(compared.glob("*/train_state.*"))


def test_ablation_of_a_trained_dcnet(compared, tmp_path, capsys):
    out = tmp_path / "ablation"
    assert main(["experiment", "dcnet", "ablation", str(SMOKE), "--out", str(out),
                 "--checkpoint", str(compared / "dcnet")]) == 0  # fmt: skip
    result = json.loads((out / "ablation.json").read_text())
    assert list(result["cells"]) == ["landmarks", "gender", "pose"] and result["blocks"] == 3
    assert all(len(cells) == 3 for cells in result["cells"].values())
    # the landmarks-only scorer agrees with the engine's evaluation of the same run
    engine = json.loads((compared / "dcnet" / "metrics.json").read_text())["iterations"]["0"]["landmarks"]
    assert result["base"]["failure_rate"] == pytest.approx(engine["failure_rate"])
    assert result["base"]["nme"] == pytest.approx(engine["nme"], rel=1e-5)
    table = (out / "ablation.md").read_text()
    assert "| landmarks |" in table and "block 3" in table and "Relative change of the landmark NME" in table
    assert (out / "ablation.png").stat().st_size > 1000
    assert "heat map" in capsys.readouterr().out


def test_block_ablation_cells_and_relative_change():
    from facemtl.data.synth import SyntheticFaces

    torch.manual_seed(0)
    model = DCNet(("landmarks", "pose"), "alexnet", input_size=64).eval()
    samples = [SyntheticFaces(4, style="wild", seed=3, size=64)[i] for i in range(4)]
    result = block_ablation(model, samples, batch_size=3)
    assert all(not b.dropped_tasks for b in model.collaborative_blocks)  # nothing left zeroed
    base = landmark_scores(model, samples)
    assert result["base"] == base and result["blocks"] == 3
    # cell (task 1 = pose, block 2) is the score with pose's features zeroed before block 2's H
    model.collaborative_blocks[1].dropped_tasks = {1}
    cell = {k: result["cells"]["pose"][1][k] for k in ("failure_rate", "nme")}
    assert cell == landmark_scores(model, samples)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        zeroed = model(images)[0]["landmarks"]
        model.collaborative_blocks[1].dropped_tasks = set()
        assert not torch.allclose(zeroed, model(images)[0]["landmarks"])  # the ablation changes the landmark logits
    for cells in result["cells"].values():
        for c in cells:
            fr0 = base["failure_rate"]
            if fr0 > 0:
                assert c["relative_change"] == pytest.approx(100 * (c["failure_rate"] - fr0) / fr0)
            else:
                assert c["relative_change"] is None
            assert c["nme_relative_change"] == pytest.approx(100 * (c["nme"] - base["nme"]) / base["nme"])


def test_block_ablation_needs_collaborative_blocks():
    from facemtl.models import create_model

    with pytest.raises(FacemtlError, match="collaborative blocks"):
        block_ablation(create_model("hps", tasks=("landmarks",), backbone="alexnet", input_size=64), [])


@pytest.mark.slow
def test_scarcity_and_task_weights_end_to_end(tmp_path, capsys):
    out = tmp_path / "scarcity"
    assert main(["experiment", "dcnet", "scarcity", str(SMOKE), "--out", str(out)]) == 0
    result = json.loads((out / "scarcity.json").read_text())
    assert list(result["failure_rate"]) == ["0.25", "0.75"] and result["pool"] == 16
    assert set(result["failure_rate"]["0.25"]) == {"single", "dcnet"}
    # test split = the faces the train split left: 12 and 4 of the 16-face pool
    m = json.loads((out / "ratio_0.25" / "dcnet" / "metrics.json").read_text())
    assert len(m["iterations"]["0"]["landmarks"]["nme_per_point"]) == 5
    assert "| 0.25 / 0.75 |" in (out / "scarcity.md").read_text()

    out = tmp_path / "weights"
    assert main(["experiment", "dcnet", "task-weights", str(SMOKE), "--out", str(out)]) == 0
    result = json.loads((out / "task_weights.json").read_text())
    assert result["models"] == ["cross-stitch", "dcnet"] and result["summary"]["trials"] == 2
    for i, trial in enumerate(result["trials"]):
        assert trial["improvement"] == pytest.approx(trial["failure_rate"]["cross-stitch"] - trial["failure_rate"]["dcnet"])
        cfg = json.loads((out / f"trial_{i:03d}" / "dcnet" / "config.json").read_text())
        assert cfg["schedule"]["loss_weights"] == {"landmarks": 1.0, **trial["weights"]}
    assert (out / "task_weights.png").stat().st_size > 1000
    assert "random task weightings" in capsys.readouterr().out


def test_scarcity_repeats_ratio_splits_of_aflw_and_of_the_synthetic_pool(tmp_path, monkeypatch):
    """Section 4.3's protocol: each ratio's split drawn `repeats` times, the table their mean."""
    import dataclasses

    from facemtl.experiments import dcnet as D

    base, exp = load_experiment(SMOKE)
    exp = dataclasses.replace(exp, ratios=(0.5,), repeats=3, scarcity_models=("dcnet",))
    seen = []

    def fake_run(cfg, folder, datasets=None, **kw):  # records the split; failure rate = 10 * repeat
        seen.append((cfg, folder, datasets))
        k = int(Path(folder).parent.name.split("_")[1])
        return {"iterations": {"0": {"landmarks": {"failure_rate": 10.0 * k, "nme": 5.0}}}}

    monkeypatch.setattr(D, "run", fake_run)
    aflw = dataclasses.replace(base, data=(dataclasses.replace(
        base.data[0], name="aflw", root=str(tmp_path), options={"ratio": 0.8, "seed": 7, "points": 5}),))
    result = D.scarcity(aflw, exp, tmp_path / "aflw")
    assert [dict(c.data[0].options) for c, _, _ in seen] == [{"ratio": 0.5, "seed": 7 + k, "points": 5} for k in range(3)]
    assert all(d is None for _, _, d in seen)  # the reader splits by its own options
    cell = result["0.5"]["dcnet"]
    assert cell["failure_rate"] == pytest.approx(10.0) and cell["failure_rate_sd"] == pytest.approx(10.0)
    assert "10.00 +- 10.00" in (tmp_path / "aflw" / "scarcity.md").read_text()

    seen.clear()
    D.scarcity(base, exp, tmp_path / "synth")
    splits = [d[0] for _, _, d in seen]
    pool = base.data[0].n_train + base.data[0].n_test
    for train, test in splits:  # disjoint halves of the whole pool
        assert sorted(train.indices + test.indices) == list(range(pool)) and len(train) == pool // 2
    assert splits[0][0].indices == list(range(pool // 2))  # repeat 0: the pool's first half, as before
    assert len({tuple(t.indices) for t, _ in splits}) == 3

    seen.clear()  # the pool is the source's own faces: its render options are kept
    real = dataclasses.replace(base, data=(dataclasses.replace(base.data[0], glasses_frames="real", creases=0.5),))
    D.scarcity(real, exp, tmp_path / "real")
    pool_faces = seen[0][2][0][0].data
    assert pool_faces.glasses_frames == "real" and pool_faces.creases == 0.5

    with pytest.raises(FacemtlError, match="ratio and seed options"):
        D.scarcity(dataclasses.replace(base, data=(dataclasses.replace(base.data[0], name="mtfl", root="x"),)),
                   exp, tmp_path / "mtfl")


def test_the_aflw_protocol_file_names_its_training_config(tmp_path):
    path = SMOKE.parent / "dcnet_aflw_scarcity.yaml"
    cfg, exp = load_experiment(path, ["train.data.0.root=/data/aflw", "experiment.repeats=2"])
    assert cfg.data[0].name == "aflw" and cfg.data[0].root == "/data/aflw" and exp.repeats == 2
    assert exp.ratios == (0.1, 0.3, 0.5, 0.7, 0.9)
    (tmp_path / "exp.yaml").write_text("train: missing.yaml\nexperiment: {repeats: 3}\n")
    with pytest.raises(FacemtlError, match=r"exp.yaml:1: 'train' names .*missing.yaml, which is not a file"):
        load_experiment(tmp_path / "exp.yaml")
    (tmp_path / "train.yaml").write_text("schedule:\n  mode: joint\n  epochs: -1\n")
    (tmp_path / "exp.yaml").write_text("train: train.yaml\n")
    with pytest.raises(FacemtlError, match=r"train.yaml:3: bad value for 'schedule.epochs'"):
        load_experiment(tmp_path / "exp.yaml")


def test_task_weights_are_log_uniform_and_seeded():
    draws = sample_task_weights(["gender", "pose"], 2000, 1e-4, 1.0, seed=0)
    assert draws == sample_task_weights(["gender", "pose"], 2000, 1e-4, 1.0, seed=0)
    logs = np.log10([[d["gender"], d["pose"]] for d in draws])
    assert logs.min() >= -4 and logs.max() <= 0
    # log-uniform: each decade holds about a quarter of the draws
    counts = np.histogram(logs.ravel(), bins=4, range=(-4, 0))[0] / logs.size
    assert np.all(np.abs(counts - 0.25) < 0.03)
    assert draws != sample_task_weights(["gender", "pose"], 2000, 1e-4, 1.0, seed=1)


def test_variant_sets_model_tasks_and_weights():
    base, exp = load_experiment(SMOKE)
    single = variant(base, "single", 0.5)
    assert single.model.name == "single" and single.task_names == ("landmarks",)
    dc = variant(base, "dcnet", 0.5, {"pose": 0.01})
    assert dict(dc.schedule.loss_weights) == {"landmarks": 1.0, "gender": 0.5, "pose": 0.01}
    assert dict(dc.model.kwargs) == {"backbone": "alexnet", "input_size": 64} and dc.schedule.epochs == base.schedule.epochs


def test_bad_experiment_files_fail_with_file_and_line(tmp_path):
    text = SMOKE.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  trials: 2", "  trails: 2"))
    line = text.splitlines().index("  trials: 2") + 1
    with pytest.raises(FacemtlError, match=rf"bad.yaml:{line}: unknown key 'experiment.trails'"):
        load_experiment(bad)
    with pytest.raises(FacemtlError, match="train ratios must lie in \\(0, 1\\)"):
        load_experiment(SMOKE, ["experiment.ratios=[0.5, 1.5]"])
    with pytest.raises(FacemtlError, match="unknown model 'resnet' in 'experiment.compare_models'"):
        load_experiment(SMOKE, ["experiment.compare_models=[resnet]"])
    with pytest.raises(FacemtlError, match="need 'train.schedule.mode: joint'"):
        load_experiment(SMOKE, ["train.schedule.mode=hybrid"])
    with pytest.raises(FacemtlError, match="unknown key 'schedule.epoch'"):
        load_experiment(SMOKE, ["train.schedule.epoch=3"])


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    assert main(["experiment", "dcnet", "scarcity", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("facemtl: error: config file not found") and "\n" not in err


def test_finished_runs_are_reused(compared, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in compared.glob("*/metrics.json")}
    assert len(stamps) == 3
    assert main(["experiment", "dcnet", "compare", str(SMOKE), "--out", str(compared)]) == 0
    assert {p: p.stat().st_mtime_ns for p in compared.glob("*/metrics.json")} == stamps
    # a changed recipe is not reused
    assert main(["experiment", "dcnet", "compare", str(SMOKE), "--out", str(compared),
                 "--set", "experiment.compare_models=[single]", "--set", "train.schedule.lr=0.002"]) == 0  # fmt: skip
    assert (compared / "single" / "metrics.json").stat().st_mtime_ns != stamps[compared / "single" / "metrics.json"]
