"""Fine-tuning: a run started from a trained checkpoint (``model.init``)."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from facemtl.cli import main
from facemtl.config import config_from_dict, load_config
from facemtl.engine.loop import Training, train
from facemtl.errors import FacemtlError
from facemtl.models.checkpoint import load_model
from facemtl.models.norm import SourceBatchNorm2d

TINY = dict(iterations=1, growth_rate=2, layers_per_block=1, num_blocks=3, stem_channels=4, up_channels=4,
            reencoder_channels=2, points_hidden=8, category_hidden=8)
SIZE = 64
LOGGING = {"log_every": 1, "tensorboard": False, "progress": False, "report": False}


def _config(sources, init=None, kwargs=TINY, size=SIZE, **schedule):
    model = {"name": "ifan", "kwargs": dict(kwargs)}
    if init is not None:
        model["init"] = str(init)
    data = [{"tasks": tasks, "style": style, "n_train": 4, "n_test": 2, "seed": i, "batch_size": 2}
            for i, (tasks, style) in enumerate(sources)]
    return config_from_dict({"model": model, "input_size": size, "data": data, "logging": LOGGING,
                             "schedule": {"pretrain_epochs": 1, "rounds": 1, "lr": 1e-3, **schedule}})


THREE = [(["landmarks"], "wild"), (["parsing"], "studio"), (["emotion"], "webcam")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny three-source iFAN after a few updates (its batch-norm rows differ by source)."""
    return train(_config(THREE), tmp_path_factory.mktemp("ft") / "run", quiet=True)


def test_a_run_starts_from_the_checkpoint_and_maps_each_source_batch_norm_by_task(trained):
    before, _ = load_model(trained)
    # two sources: landmarks + parsing from one, emotion from the other (the checkpoint's source 2)
    training = Training(_config([(["landmarks", "parsing"], "wild"), (["emotion"], "webcam")], init=trained))
    assert training.init["sources"] == [0, 2] and training.init["checkpoint"] == str(trained)
    old, new = before.state_dict(), training.model.state_dict()
    norms = {p for p, m in training.model.named_modules() if isinstance(m, SourceBatchNorm2d)}
    mapped = 0
    for key, tensor in new.items():
        if key.rpartition(".")[0] in norms:
            rows = old[key].shape[0] // 3  # statistics sets (one per refinement iteration) of 3 sources
            expected = torch.stack([old[key][k * 3 + s] for k in range(rows) for s in (0, 2)])
            assert torch.equal(tensor, expected), key
            mapped += 1
        else:
            assert torch.equal(tensor, old[key]), key
    assert mapped > 10
    # so the tasks read through the same rows predict as the checkpoint did
    model = training.model.eval()
    image = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = before(image)[-1], model(image)[-1]  # the last refinement iteration's outputs
    for task in ("landmarks", "emotion"):
        assert torch.allclose(a[task], b[task], atol=1e-5), task
    assert not torch.allclose(a["parsing"], b["parsing"], atol=1e-3)  # read through source 0's rows now


def test_fine_tuning_says_so_and_records_the_checkpoint_in_model_json(trained, tmp_path, capsys):
    run = train(_config(THREE, init=trained, pretrain_epochs=0), tmp_path / "tuned")
    out = capsys.readouterr()
    assert f"3 updates; weights from {trained}" in out.out + out.err
    info = json.loads((run / "model.json").read_text())
    start = json.loads((trained / "model.json").read_text())
    assert info["init"] == {"checkpoint": str(trained), "weights_sha256": start["weights_sha256"], "sources": [0, 1, 2]}
    assert info["weights_sha256"] != start["weights_sha256"]  # it trained
    assert not (run / "refiner.json").exists()  # the checkpoint's folder has no point refiner to carry
    # the model's builder config came from the checkpoint, even with model.kwargs left out
    config = _config(THREE, init=trained, kwargs={})
    assert Training(config).model.builder_config() == load_model(trained)[0].builder_config()


def test_a_run_keeps_the_point_refiner_saved_beside_its_checkpoint(trained, tmp_path, capsys):
    import shutil

    from facemtl.models.refiner import PointRefiner, save_refiner

    start = tmp_path / "start"
    shutil.copytree(trained, start)
    torch.manual_seed(0)
    save_refiner(start, PointRefiner(4), {"trained_on": "nothing"})
    run = train(_config(THREE, init=start / "model.json", pretrain_epochs=0), tmp_path / "tuned")
    for name in ("refiner.safetensors", "refiner.json"):
        assert (run / name).read_bytes() == (start / name).read_bytes()
    out = capsys.readouterr()
    assert f"the point refiner saved beside {start} is copied into the run" in out.out + out.err
    # a model without the five points has nothing for it to move: no copy
    emotion_only = train(_config([(["emotion"], "webcam")]), tmp_path / "emo", quiet=True)
    save_refiner(emotion_only, PointRefiner(4), {})
    again = train(_config([(["emotion"], "webcam")], init=emotion_only, pretrain_epochs=0), tmp_path / "emo2",
                  quiet=True)
    assert not (again / "refiner.json").exists()


@pytest.mark.parametrize("change, message", [
    (dict(sources=[(["landmarks"], "wild")]), "trains ['landmarks']; a run started from a checkpoint trains its tasks"),
    (dict(size=96), "reads 64-px faces; set input_size: 64"),
    (dict(kwargs={**TINY, "growth_rate": 3}), "built with growth_rate=2 (config: 3)"),
])
def test_a_run_that_cannot_start_from_the_checkpoint_says_why(trained, change, message):
    config = _config(change.pop("sources", THREE), init=trained, **change)
    with pytest.raises(FacemtlError, match="model.init: .*" + re.escape(message)):
        Training(config)


def test_a_missing_checkpoint_or_an_empty_init_is_refused(tmp_path):
    with pytest.raises(FacemtlError, match="model.init: checkpoint not found"):
        Training(_config(THREE, init=tmp_path / "nowhere"))
    with pytest.raises(FacemtlError, match="model.init"):
        _config(THREE, init=" ")
    with pytest.raises(FacemtlError, match="model.init and model.pretrained both set"):
        config_from_dict({"model": {"name": "hps", "init": "bundled", "pretrained": "w.safetensors"}})


def test_the_bundled_model_can_start_a_run():
    from facemtl.models.checkpoint import load_initial

    with pytest.raises(FacemtlError, match="reads 128-px faces; set input_size: 128"):
        load_initial("bundled", "ifan", {}, 64)
    model, info, path, kwargs = load_initial("bundled", "ifan", {}, 128)
    assert path.name == "default_model" and kwargs["iterations"] == info["model"]["config"]["iterations"]
    assert "tasks" not in kwargs and "num_sources" not in kwargs


def test_an_interrupted_fine_tuning_run_resumes_to_the_same_weights(trained, tmp_path):
    config = _config(THREE, init=trained, pretrain_epochs=0, rounds=2)
    full = train(config, tmp_path / "full", quiet=True)
    part = train(config, tmp_path / "part", quiet=True, stop_after=2)
    train(config, part, resume=True, quiet=True)
    a, b = load_model(full)[0].state_dict(), load_model(part)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((part / "model.json").read_text())["init"]["checkpoint"] == str(trained)


def test_the_shipped_fine_tuning_config_trains_from_the_bundled_model_keeping_its_emotions(tmp_path):
    """configs/finetune_bundled.yaml as a user runs it, made tiny (batch sizes, faces, one round):
    its landmark updates carry the keep term, the other sources' do not."""
    assert main(["synth", "export", "--format", "mtfl", "--n", "6", "--size", "128", "--style", "snapshot",
                 "--seed", "5", "--out", str(tmp_path / "mtfl")]) == 0
    tiny = [f"data.{i}.batch_size=2" for i in range(3)]
    tiny += [f"data.{i}.{k}=2" for i in (0, 1) for k in ("n_train", "n_test")]  # the synthetic sources
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "finetune_bundled.yaml",
                         [f"data.2.root={tmp_path / 'mtfl'}", "schedule.rounds=1", "schedule.warmup=0",
                          "eval_batch_size=4", "logging.log_every=1", "logging.report=false",
                          "logging.tensorboard=false", "logging.progress=false"] + tiny)
    assert config.data[2].keep == {"emotion": 0.3} and config.model.init == "bundled"
    run = train(config, tmp_path / "run", quiet=True)
    rows = list(csv.DictReader((run / "steps.csv").open()))
    keep = {r["task"]: [] for r in rows}
    for r in rows:
        keep[r["task"]].append(float(r["keep_loss"]))
    assert set(keep) == {"landmarks", "parsing", "emotion"}
    assert all(math.isfinite(x) and x >= 0 for x in keep["landmarks"]) and max(keep["landmarks"]) > 0
    assert all(math.isnan(x) for t in ("parsing", "emotion") for x in keep[t])
