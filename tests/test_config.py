import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from facemtl.config import (
    SourceConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    to_dict,
)
from facemtl.errors import FacemtlError


def test_defaults_are_the_three_source_ifan_run():
    cfg = TrainConfig()
    assert cfg.model.name == "ifan"
    assert cfg.task_names == ("parsing", "emotion", "landmarks")  # stage-1 order: landmarks last
    assert cfg.task_sources == (0, 1, 2)
    assert [s.style for s in cfg.data] == ["studio", "classroom", "snapshot"]
    assert cfg.optimiser.name == "adamw" and cfg.schedule.decay == "cosine" and cfg.schedule.warmup > 0
    # to_dict -> from_dict is the identity (config.json of a run reloads to the same config)
    assert config_from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(FacemtlError) as e:
        config_from_dict({"schedule": {"lrr": 0.1}})
    assert str(e.value) == "unknown key 'schedule.lrr' (did you mean 'schedule.lr'?)"
    with pytest.raises(FacemtlError, match=r"unknown key 'data.1.stlye' \(did you mean 'data.1.style'\?\)"):
        config_from_dict({"data": [{"tasks": ["landmarks"]}, {"tasks": ["parsing"], "stlye": "wild"}]})
    with pytest.raises(FacemtlError, match=r"unknown key 'zzz' \(expected one of: model, data"):
        config_from_dict({"zzz": 1})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"schedule": {"lr": "fast"}}, "bad value for 'schedule.lr': expected a number, got 'fast'"),
        ({"schedule": {"lr": -1}}, "bad value for 'schedule.lr': expected a positive number, got -1.0"),
        ({"schedule": {"decay": "step"}}, "bad value for 'schedule.decay': expected one of 'exponential', 'linear', 'cosine', 'constant', got 'step'"),
        ({"schedule": {"pretrain_epochs": 1.5}}, "bad value for 'schedule.pretrain_epochs': expected an integer, got 1.5"),
        ({"logging": {"tensorboard": "yes"}}, "bad value for 'logging.tensorboard': expected true or false, got 'yes'"),
        ({"data": [{"tasks": ["nose"]}]}, "bad value for 'data.0.tasks': expected task names among"),
        ({"data": [{"tasks": "landmarks"}]}, "bad value for 'data.0.tasks': expected a list of a string, got 'landmarks'"),
        ({"data": [{"name": "mtfl", "tasks": ["landmarks"]}]}, "bad value for 'data.0.root'"),
        ({"data": []}, "'data' must be a non-empty list of sources"),
        ({"model": {"kwargs": {"tasks": ["landmarks"]}}}, "['tasks'] come from the data section"),
        ({"data": [{"tasks": ["landmarks"]}, {"tasks": ["landmarks"]}]}, "task 'landmarks' is labelled by sources [0, 1]"),
        ({"schedule": {"mode": "joint"}}, "joint training takes exactly one source, got 3"),
        ({"schedule": {"loss_weights": {"pose": 1.0}}}, "bad value for 'schedule.loss_weights'"),
        ({"data": [{"tasks": ["landmarks"], "pose": {"tilt": [0, 1, 2]}}]},
         "bad value for 'data.0.pose': expected angles from yaw, pitch, roll, got 'tilt'"),
        ({"data": [{"tasks": ["landmarks"], "pose": {"roll": [0, 15]}}]},
         "bad value for 'data.0.pose.roll': expected [mean, sd, limit] in degrees (sd and limit >= 0), got [0.0, 15.0]"),
        ({"data": [{"name": "mtfl", "root": "/x", "tasks": ["landmarks"], "pose": {"roll": [0, 15, 45]}}]},
         "bad value for 'data.0.pose': expected no value: only synthetic sources draw head poses"),
        ({"data": [{"tasks": ["emotion"], "expression": [2.5, 0.6]}]},
         "bad value for 'data.0.expression': expected [low, high] expression strength (0 <= low <= high <= 4), got [2.5, 0.6]"),
        ({"data": [{"tasks": ["emotion"], "expression": "strong"}]},
         "bad value for 'data.0.expression': expected a list of a number or null, got 'strong'"),
        ({"data": [{"name": "mtfl", "root": "/x", "tasks": ["landmarks"], "expression": [1, 2]}]},
         "bad value for 'data.0.expression': expected no value: only synthetic sources draw expressions"),
        ({"data": [{"tasks": ["emotion"], "creases": 1.5}]},
         "bad value for 'data.0.creases': expected a probability in 0..1 or null, got 1.5"),
        ({"data": [{"name": "mtfl", "root": "/x", "tasks": ["landmarks"], "creases": 0.5}]},
         "bad value for 'data.0.creases': expected no value: only synthetic sources draw creases"),
        ({"data": [{"tasks": ["emotion"], "angry_shout": 2}]},
         "bad value for 'data.0.angry_shout': expected a probability in 0..1 or null, got 2"),
        ({"data": [{"name": "mtfl", "root": "/x", "tasks": ["landmarks"], "angry_shout": 0.5}]},
         "bad value for 'data.0.angry_shout': expected no value: only synthetic sources draw expressions"),
        ({"data": [{"tasks": ["emotion"], "brow_drop": 0.3}]},
         "bad value for 'data.0.brow_drop': expected a distance in 0..0.2 (fractions of the inter-ocular distance) "
         "or null, got 0.3"),
        ({"data": [{"name": "mtfl", "root": "/x", "tasks": ["landmarks"], "brow_drop": 0.1}]},
         "bad value for 'data.0.brow_drop': expected no value: only synthetic sources draw brows"),
        ({"data": [{"tasks": ["landmarks"], "glasses_frames": "large"}]},
         "bad value for 'data.0.glasses_frames': expected one of small, real or null, got 'large'"),
        ({"data": [{"name": "mtfl", "root": "/x", "tasks": ["landmarks"], "glasses_frames": "real"}]},
         "bad value for 'data.0.glasses_frames': expected no value: only synthetic sources draw glasses"),
    ],
)
def test_bad_values_name_the_key_and_what_was_expected(data, message):
    with pytest.raises(FacemtlError) as e:
        config_from_dict(data)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_overrides_parse_yaml_scalars_and_lists():
    cfg = load_config(None, ["schedule.lr=5e-4", "data.1.n_train=64", "data.0.tasks=[parsing]",
                             "logging.tensorboard=false", "schedule.rounds=null", "model.kwargs.growth_rate=6"])
    assert cfg.schedule.lr == 5e-4
    assert cfg.data[1].n_train == 64 and cfg.data[0].n_train == TrainConfig().data[0].n_train
    assert cfg.logging.tensorboard is False and cfg.schedule.rounds is None
    assert cfg.model.kwargs["growth_rate"] == 6 and cfg.model.kwargs["iterations"] == 2
    assert load_config(None, ["data.2.pose.roll=[0, 15, 45]"]).data[2].pose == {"roll": (0.0, 15.0, 45.0)}
    # the source list can be replaced whole
    cfg = load_config(None, ["data=[{tasks: [landmarks, gender]}]", "schedule.mode=joint"])
    assert cfg.task_names == ("landmarks", "gender") and cfg.schedule.mode == "joint"


def test_apply_overrides_does_not_touch_its_input_and_rejects_bad_items():
    base = {"schedule": {"lr": 0.1}}
    out = apply_overrides(base, ["schedule.lr=0.2"])
    assert base == {"schedule": {"lr": 0.1}} and out == {"schedule": {"lr": 0.2}}
    with pytest.raises(FacemtlError, match=r"bad --set 'schedule.lr': expected KEY=VALUE"):
        apply_overrides(base, ["schedule.lr"])
    with pytest.raises(FacemtlError, match=r"'data.7' is not a source index \(0..2\)"):
        load_config(None, ["data.7.n_train=3"])
    with pytest.raises(FacemtlError, match=r"'schedule.lr' is a value, not a section"):
        apply_overrides(base, ["schedule.lr.x=1"])


def test_a_run_folder_stands_for_its_config_json(tmp_path):
    import json

    from facemtl.config import to_dict

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FacemtlError) as e:
        load_config(run)
    assert str(e.value) == f"config {run} is a folder without a config.json; expected a YAML config file or a run folder"
    saved = load_config(None, ["data.2.glasses_frames=real", "input_size=96"])
    (run / "config.json").write_text(json.dumps(to_dict(saved)))
    assert load_config(run) == saved
    assert load_config(run, ["data.2.seed=5"]).data[2].seed == 5
    (run / "config.json").write_text('{"seed": 1,')  # facemtl writes it, so it reads as JSON
    with pytest.raises(FacemtlError, match=rf"^{re.escape(str(run / 'config.json'))}: malformed JSON"):
        load_config(run)


def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from facemtl.config import SHIPPED_CONFIGS

    repo_configs = Path(__file__).resolve().parents[1] / "configs"
    assert repo_configs.resolve() == SHIPPED_CONFIGS  # one folder: the repository's configs/ links to the package's
    monkeypatch.chdir(tmp_path)  # no configs/ here: an installed facemtl without the repository
    by_name = load_config("finetune_bundled", ["data.2.root=/data"])
    assert by_name == load_config("finetune_bundled.yaml", ["data.2.root=/data"])
    assert by_name == load_config(repo_configs / "finetune_bundled.yaml", ["data.2.root=/data"])
    (tmp_path / "finetune_bundled.yaml").write_text("seed: 7\n")  # a file of that name here comes first
    assert load_config("finetune_bundled.yaml").seed == 7
    with pytest.raises(FacemtlError, match=r"config file not found: configs/nope.yaml \(or give the name of a config "
                       r"shipped with facemtl: control_emotion_ifan, .*finetune_bundled, .*ifan_synth_smoke\)$"):
        load_config("configs/nope.yaml")


def test_file_errors_give_file_and_line(tmp_path):
    with pytest.raises(FacemtlError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule:\n  lr: 0.1\n  epohcs: 3\n")
    with pytest.raises(FacemtlError) as e:
        load_config(bad)
    assert str(e.value) == f"{bad}:3: unknown key 'schedule.epohcs' (did you mean 'schedule.epochs'?)"
    broken = tmp_path / "broken.yaml"
    broken.write_text("schedule:\n  lr: [1, 2\n")
    with pytest.raises(FacemtlError, match=rf"{broken}:\d+: invalid YAML"):
        load_config(broken)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(FacemtlError, match="a config must be a mapping"):
        load_config(notmap)


def test_shipped_configs_load():
    smoke = load_config("configs/ifan_synth_smoke.yaml")
    assert smoke.input_size == 64 and len(smoke.data) == 3
    paper = load_config("configs/ifan_paper.yaml")
    assert {s.tasks[0]: s.batch_size for s in paper.data} == {"landmarks": 64, "parsing": 24, "emotion": 96}
    assert (paper.schedule.pretrain_epochs, paper.schedule.epochs) == (30, 200)
    assert (paper.schedule.lr, paper.schedule.lr_end, paper.schedule.pretrain_lr) == (1e-3, 1e-6, 1e-3)
    assert paper.model.kwargs["iterations"] == 2 and paper.optimiser.name == "rmsprop"
    assert paper.model.kwargs.get("pool", "avg") == "avg"  # the paper's network, not the default run's


def stage2_rounds(cfg) -> int:
    """The stage-2 rounds Algorithm 1 runs for ``cfg`` (HybridPlan's rule; one process, whose pass
    of a source is ``n_train // batch_size`` batches)."""
    from facemtl.engine.hybrid import HybridPlan

    s = cfg.schedule
    batches = tuple(source.n_train // source.batch_size for source in cfg.data)
    return HybridPlan(batches, s.pretrain_epochs, s.epochs, s.rounds, 1, s.pretrain_lr, s.lr, s.lr_end, s.decay).rounds


@pytest.mark.parametrize("task", ["landmarks", "parsing", "emotion"])
def test_single_task_configs_match_the_default_run(task):
    """A single-task baseline sees the same source, model and schedule as the default run."""
    single = load_config(f"configs/ifan_synth_single_{task}.yaml")
    default = TrainConfig()
    assert single.task_names == (task,)
    assert single.data[0] == default.data[default.task_sources[default.task_names.index(task)]]
    assert dict(single.model.kwargs) == dict(default.model.kwargs)
    assert (single.optimiser, single.input_size) == (default.optimiser, default.input_size)
    # as many stage-2 rounds as the default run, whose epoch is one pass of its largest source
    assert single.schedule == dataclasses.replace(default.schedule, rounds=stage2_rounds(default))


def test_landmark_ifan_control_is_the_bundled_run_on_its_landmark_source_alone():
    """configs/control_landmarks_ifan.yaml: the bundled model's network, input size, optimiser and
    landmark source, and as many landmark updates (its stage-2 rounds: one pass of its largest source)."""
    from facemtl.models.checkpoint import bundled_model

    bundled = load_config(bundled_model())
    control = load_config("configs/control_landmarks_ifan.yaml")
    assert control.task_names == ("landmarks",)
    assert control.data[0] == bundled.data[bundled.task_sources[bundled.task_names.index("landmarks")]]
    assert dict(control.model.kwargs) == dict(bundled.model.kwargs)
    assert (control.optimiser, control.input_size) == (bundled.optimiser, bundled.input_size)
    assert control.schedule == dataclasses.replace(bundled.schedule, rounds=stage2_rounds(bundled))


def test_configs_are_frozen():
    cfg = TrainConfig()
    with pytest.raises(Exception):
        cfg.seed = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.model.kwargs["iterations"] = 5  # type: ignore[index]
    assert isinstance(cfg.data[0], SourceConfig)


def test_model_kwargs_pass_input_size_and_pretrained_only_where_the_model_takes_them():
    from facemtl.engine.loop import model_kwargs

    joint = ["schedule.mode=joint", "data=[{name: synth, tasks: [landmarks, smile], style: wild}]"]
    cfg = load_config(None, [*joint, "model.name=hps", "model.kwargs={backbone: alexnet}", "input_size=96",
                             "model.pretrained=weights.safetensors"])
    kw = model_kwargs(cfg)
    assert kw["input_size"] == 96 and kw["pretrained"] == "weights.safetensors"
    assert model_kwargs(load_config(None, []))["input_size"] == 64  # iFAN builds its flattening decoders for it
    with pytest.raises(FacemtlError, match="model 'ifan' cannot load ImageNet weights"):
        model_kwargs(load_config(None, ["model.pretrained=weights.safetensors"]))


def test_device_is_validated_and_resolved():
    from facemtl.engine.loop import resolve_device

    with pytest.raises(FacemtlError, match=r"bad value for 'device': expected 'cpu', 'cuda', 'cuda:N' or 'auto', got 'gpu'"):
        load_config(None, ["device=gpu"])
    assert load_config(None, ["device=cuda:1"]).device == "cuda:1"
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FacemtlError, match="sees no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize("name", ["control_landmarks_resnet18", "control_emotion_resnet18", "control_parsing_unet"])
def test_control_configs_build_their_plain_model_and_match_the_source_they_control(name):
    """A plain control sees the source of the task it controls (same style, faces, split and
    batch) and its model predicts that task at the config's input size."""
    import facemtl
    from facemtl.engine.loop import model_kwargs

    cfg = load_config(f"configs/{name}.yaml")
    assert cfg.schedule.mode == "joint" and len(cfg.data) == 1
    (task,) = cfg.data[0].tasks
    default = TrainConfig()
    source = default.data[default.task_sources[default.task_names.index(task)]]
    # the bundled model draws its emotion source in the studio style (README), the default run in classroom
    style = "studio" if task == "emotion" else source.style
    assert (cfg.data[0].style, cfg.data[0].seed, cfg.data[0].n_train, cfg.data[0].n_test, cfg.data[0].batch_size) == \
        (style, source.seed, source.n_train, source.n_test, source.batch_size)
    model = facemtl.create_model(cfg.model.name, **model_kwargs(cfg)).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, cfg.input_size, cfg.input_size))[-1]
    assert list(out) == [task]


def test_a_synthetic_source_s_pose_reaches_its_faces():
    from facemtl.data.mixing import build_sources

    cfg = load_config(None, ["input_size=64", "data.2.pose.roll=[0, 15, 45]", "data.2.n_train=4", "data.2.n_test=2"])
    src = build_sources(cfg, cfg.build_tasks())[2]
    assert src.train.pose == src.test.pose == {"roll": (0.0, 15.0, 45.0)}
    assert src.description["pose"] == {"roll": [0.0, 15.0, 45.0]}
    assert build_sources(cfg, cfg.build_tasks())[1].train.pose is None


def test_a_synthetic_source_s_expression_range_reaches_its_faces():
    from facemtl.data.mixing import build_sources

    cfg = load_config(None, ["input_size=64", "data.1.expression=[0.6, 2.5]", "data.1.n_train=4", "data.1.n_test=2"])
    assert cfg.data[1].expression == (0.6, 2.5)
    sources = build_sources(cfg, cfg.build_tasks())
    assert sources[1].train.expression == sources[1].test.expression == (0.6, 2.5)
    assert sources[1].description["expression"] == [0.6, 2.5]
    assert sources[0].train.expression is None and "expression" not in sources[0].description


@pytest.mark.parametrize("option,value,default", [("creases", 0.5, None), ("brow_drop", 0.1, None),
                                                  ("glasses_frames", "real", "small"), ("angry_shout", 0.5, None)])
def test_a_synthetic_source_s_face_option_reaches_its_faces(option, value, default):
    from facemtl.data.mixing import build_sources

    cfg = load_config(None, ["input_size=64", f"data.1.{option}={value}", "data.1.n_train=4", "data.1.n_test=2"])
    sources = build_sources(cfg, cfg.build_tasks())
    assert getattr(sources[1].train, option) == getattr(sources[1].test, option) == value
    assert sources[1].description[option] == value
    assert getattr(sources[0].train, option) == default and option not in sources[0].description
