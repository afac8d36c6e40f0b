"""The model shipped inside the package (facemtl/assets/default_model): trained on synthetic
faces only, used by `facemtl predict` and `facemtl.load()` when no checkpoint is given."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import facemtl
from facemtl.cli import main
from facemtl.errors import FacemtlError
from facemtl.files import read_tensors, sha256_hex, tensors_bytes
from facemtl.models.checkpoint import bundled_model, ensemble_members

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT.parent / "shared" / "testdata" / "astronaut.png"
LABELS = json.loads((ROOT / "benchmarks" / "data" / "astronaut_5points.json").read_text())


def bundled_members() -> list[Path]:
    """The bundled model's checkpoint folders: itself, or its ensemble's members."""
    return ensemble_members(bundled_model())


def test_the_bundled_model_says_where_it_comes_from():
    sizes = []
    for member in bundled_members():
        info = json.loads((member / "model.json").read_text())
        prov = info["provenance"]
        assert "synthetic" in prov["trained_on"] and "facemtl train" in prov["command"]
        sizes.append((member / "model.safetensors").stat().st_size)
        assert [t["name"] for t in info["tasks"]] == ["parsing", "emotion", "landmarks"]
        assert info["stored"]["dtype"] == "float16"  # stored halved, as tools/bundle_model.py does
        halved = read_tensors(member / "model.safetensors", "bundled")
        assert {str(v.dtype) for k, v in halved.items() if not k.endswith(("running_mean", "running_var"))} \
            <= {"torch.float16", "torch.int64"}
    folder = sum(f.stat().st_size for f in bundled_model().rglob("*") if f.is_file())
    assert max(sizes) < 3e6 and folder < 7e6  # a few MB, the point refiner's stages included


@pytest.mark.skipif(not ASTRONAUT.exists(), reason="../shared/testdata/astronaut.png is not beside the checkout")
def test_predict_without_a_checkpoint_uses_the_bundled_model_on_a_real_photo(tmp_path):
    out = tmp_path / "faces.json"
    assert main(["predict", str(ASTRONAUT), "--json", str(out)]) == 0
    faces = json.loads(out.read_text())["images"][0]["faces"]
    assert len(faces) == 1
    points = np.asarray(faces[0]["landmarks"])
    truth = np.asarray(LABELS["landmarks"])
    nme = np.linalg.norm(points - truth, axis=1).mean() / np.linalg.norm(truth[0] - truth[1])
    # measured 4.1% with the point refiner, 5.2% without it (the face model alone; the models bundled
    # before: 3.8, 4.8 / 5.2%; hand labels carry ~3.5% of noise); pre-realism: 12%
    assert nme < 0.10
    assert faces[0]["emotion"]["label"] == "Happy"

    predictor = facemtl.load()  # the Python API takes the same model
    again = predictor(str(ASTRONAUT))
    np.testing.assert_allclose(np.asarray(again[0]["landmarks"]), points, atol=0.02)


def test_bundle_tool_stores_the_weights_in_float16_and_records_the_command_and_scores(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    import bundle_model

    run = fake_run(tmp_path / "run", seed=4)
    monkeypatch.setattr(bundle_model, "DEST", tmp_path / "dest")
    bundle_model.main([str(run)])
    trained = read_tensors(run / "model.safetensors", "trained")
    kept = read_tensors(tmp_path / "dest" / "model.safetensors", "bundled")
    assert kept["conv.weight"].dtype == torch.float16
    assert torch.equal(kept["conv.weight"], trained["conv.weight"].half())
    # running statistics and integers stay as trained
    assert kept["bn.running_var"].dtype == torch.float32
    assert torch.equal(kept["bn.running_var"], trained["bn.running_var"])
    assert torch.equal(kept["bn.num_batches_tracked"], trained["bn.num_batches_tracked"])
    info = json.loads((tmp_path / "dest" / "model.json").read_text())
    assert info["weights_sha256"] == sha256_hex((tmp_path / "dest" / "model.safetensors").read_bytes())
    assert info["stored"]["dtype"] == "float16"
    assert info["stored"]["trained_weights_sha256"] == sha256_hex((run / "model.safetensors").read_bytes())
    bundle_model.main([str(run), "--float32"])  # as trained, byte for byte
    assert (tmp_path / "dest" / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert "stored" not in json.loads((tmp_path / "dest" / "model.json").read_text())
    assert json.loads((tmp_path / "dest" / "config.json").read_text()) == {"seed": 4}  # the run's config, as it is
    prov = json.loads((tmp_path / "dest" / "model.json").read_text())["provenance"]
    assert prov["command"] == bundle_model.with_seed(bundle_model.COMMAND, 4) and prov["command"].endswith("--set seed=4")
    assert prov["commit_recorded_by"].startswith("the bundle tool")  # the run recorded none
    # the last refinement iteration's scores, rounded
    assert prov["synthetic_test_scores"] == {"landmarks_nme_percent": 7.18, "parsing_overall_f1_percent": 90.78,
                                             "emotion_accuracy_percent": 87.14}
    # the shipped model was made by the command the tool records, at each member's seed
    for member in bundled_members():
        info = json.loads((member / "model.json").read_text())
        seed = int(info["provenance"]["command"].rsplit("seed=", 1)[1])
        assert info["provenance"]["command"] == bundle_model.with_seed(bundle_model.COMMAND, seed)
        # and what the run itself recorded agrees with the command's options, not only its text
        emotion_source = info["sources"][1]
        assert emotion_source["style"] == "studio" and emotion_source["expression"] == [1.2, 2.5]
        assert info["input_size"] == 128 and info["provenance"]["platform"]["threads"] == 1  # OMP_NUM_THREADS=1


def test_the_bundled_model_has_a_point_refiner_trained_by_the_recorded_command():
    from facemtl.engine.refiner import STAGE_GUESSES, RefinerRecipe
    from facemtl.models.refiner import refiner_files

    files = refiner_files(bundled_model())
    assert len(files) == len(STAGE_GUESSES)  # every stage the command trains
    for stage, (weights, meta_path) in enumerate(files, 1):
        meta = json.loads(meta_path.read_text())
        assert "synthetic" in meta["trained_on"]
        # the command's defaults are the recipe it recorded, so the documented command makes this refiner
        assert meta["recipe"] == json.loads(json.dumps(dataclasses.asdict(RefinerRecipe.for_stage(stage))))
        assert meta["command"].startswith(f"facemtl train-refiner --out DIR --stage {stage} ")
        assert meta["stored"]["dtype"] == "float16" and weights.stat().st_size < 2.5e6
    assert len(facemtl.load().refiner.stages) == len(STAGE_GUESSES)
    assert facemtl.load(refiner="none").refiner is None


def test_bundle_tool_bundles_a_refiner_beside_the_model_and_drops_it_when_not_given(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    import bundle_model
    from facemtl.models.refiner import PATCH, PointRefiner, load_refiner, refiner_files, save_refiner

    dest = tmp_path / "dest"
    monkeypatch.setattr(bundle_model, "DEST", dest)
    save_refiner(tmp_path / "refiner", PointRefiner(4), {"command": "facemtl train-refiner"})
    save_refiner(tmp_path / "refiner", PointRefiner(4), {"command": "facemtl train-refiner"}, stage=2)
    bundle_model.main([str(fake_run(tmp_path / "run", 1)), "--refiner", str(tmp_path / "refiner"), "--float32"])
    for name in ("refiner.json", "refiner.safetensors", "refiner.stage2.json", "refiner.stage2.safetensors"):
        assert (dest / name).read_bytes() == (tmp_path / "refiner" / name).read_bytes()
    bundle_model.main([str(fake_run(tmp_path / "half", 1)), "--refiner", str(tmp_path / "refiner")])
    trained, bundled = load_refiner(tmp_path / "refiner"), load_refiner(dest)  # the halved stages load
    for stage, (weights, _) in zip(bundled.stages, refiner_files(dest)):
        assert stage.info["stored"]["dtype"] == "float16"
        assert weights.stat().st_size < 0.6 * (tmp_path / "refiner" / weights.name).stat().st_size
    patches = torch.rand(2, 3, PATCH, PATCH, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        for a, b in zip(trained.stages, bundled.stages):
            torch.testing.assert_close(b.every_point(patches), a.every_point(patches), atol=2e-3, rtol=0)
    bundle_model.main([str(fake_run(tmp_path / "again", 2))])
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.json", "model.safetensors"]
    (tmp_path / "broken").mkdir()
    with pytest.raises(FacemtlError, match="not found"):  # nothing replaced for a refiner that cannot be read
        bundle_model.main([str(fake_run(tmp_path / "third", 3)), "--refiner", str(tmp_path / "broken")])
    assert json.loads((dest / "config.json").read_text()) == {"seed": 2}


def fake_run(run: Path, seed: int) -> Path:
    run.mkdir(parents=True)
    weights = {"conv.weight": torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(seed)),
               "bn.running_var": torch.tensor([1e-7, 0.5, 2.0, 3.0]), "bn.num_batches_tracked": torch.tensor(7)}
    (run / "model.safetensors").write_bytes(tensors_bytes(weights))
    (run / "model.json").write_text(json.dumps({"format": "facemtl-checkpoint"}))
    (run / "config.json").write_text(json.dumps({"seed": seed}))
    scores = {"landmarks": {"nme": 7.184}, "parsing": {"overall": 90.776}, "emotion": {"accuracy": 87.143}}
    (run / "metrics.json").write_text(json.dumps({"iterations": {"0": {}, "2": scores, "1": {}}}))
    return run


def test_bundle_tool_makes_an_ensemble_of_several_runs_and_replaces_what_was_bundled(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    import bundle_model

    dest = tmp_path / "dest"
    monkeypatch.setattr(bundle_model, "DEST", dest)
    bundle_model.main([str(fake_run(tmp_path / "single", 1))])
    runs = [fake_run(tmp_path / f"run{s}", s) for s in (7, 8)]
    bundle_model.main([str(r) for r in runs])
    assert not {"model.json", "model.safetensors", "config.json"} & {p.name for p in dest.iterdir()}  # the single model left
    manifest = json.loads((dest / "ensemble.json").read_text())
    assert manifest["format"] == "facemtl-ensemble" and manifest["members"] == ["seed7", "seed8"]
    assert ensemble_members(dest) == [(dest / "seed7").resolve(), (dest / "seed8").resolve()]
    for s in (7, 8):
        member = read_tensors(dest / f"seed{s}" / "model.safetensors", "member")["conv.weight"]
        trained = read_tensors(tmp_path / f"run{s}" / "model.safetensors", "run")["conv.weight"]
        assert torch.equal(member, trained.half())
        prov = json.loads((dest / f"seed{s}" / "model.json").read_text())["provenance"]
        assert prov["command"] == bundle_model.with_seed(bundle_model.COMMAND, s)
    bundle_model.main([str(fake_run(tmp_path / "again", 2))])  # back to one model: the ensemble's files go
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.json", "model.safetensors"]
    with pytest.raises(SystemExit):  # two commands for three runs
        bundle_model.main([str(r) for r in runs] + [str(tmp_path / "again"), "--command", "a", "--command", "b"])


def test_bundle_tool_keeps_the_commit_the_run_was_trained_at(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "tools"))
    import bundle_model

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(tensors_bytes({"w": torch.zeros(2)}))
    platform = {"torch": "2.13.0+cpu", "cpu": "AMD EPYC", "cpu_kernels": None}
    earlier = [{**platform, "cpu": "another processor"}]  # the run was resumed on another machine
    (run / "model.json").write_text(json.dumps({"format": "facemtl-checkpoint", "source_commit": "abc123+dirty",
                                                "platform": platform, "platform_history": earlier}))
    scores = {"landmarks": {"nme": 7.0}, "parsing": {"overall": 90.0}, "emotion": {"accuracy": 87.0}}
    (run / "metrics.json").write_text(json.dumps({"iterations": {"2": scores}}))
    monkeypatch.setattr(bundle_model, "DEST", tmp_path / "dest")
    bundle_model.main([str(run)])
    info = json.loads((tmp_path / "dest" / "model.json").read_text())
    assert info["provenance"]["commit"] == "abc123+dirty"
    assert info["provenance"]["commit_recorded_by"] == "the training run"
    assert info["provenance"]["platform"] == platform and info["provenance"]["platform_history"] == earlier
    assert not {"source_commit", "platform", "platform_history"} & set(info)  # said once, under provenance


def test_runs_record_the_source_commit_they_were_trained_at():
    import subprocess

    from facemtl.engine.loop import source_commit

    commit = source_commit()
    if Path(facemtl.__file__).resolve().parents[1] != ROOT / "src":
        assert commit is None  # an installed copy: no checkout to name
        return
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("the checkout has no git history")
    assert commit in (head, head + "+dirty")


def test_the_shipped_config_is_the_one_the_recorded_command_makes():
    """default_model/config.json (what `facemtl synth --config bundled` draws from) is the config the
    provenance's command resolves to, field for field."""
    import shlex

    from facemtl.config import load_config

    for member in bundled_members():
        command = json.loads((member / "model.json").read_text())["provenance"]["command"]
        words = shlex.split(command)
        overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        assert len(overrides) == 7 and load_config(member) == load_config(None, overrides)
