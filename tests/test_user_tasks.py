"""Users' own tasks: the config's ``tasks:`` declarations, tasks a reader serves (CelebA's
attributes, AFLW's 21 points), classes from emotion folders, flips taken from the tasks,
checkpoints that carry them, and a short training run on a declared task."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facemtl.config import config_from_dict, load_config
from facemtl.data import load_dataset, reader_tasks
from facemtl.data.formats.celeba import ATTRIBUTES
from facemtl.data.mixing import build_sources
from facemtl.data.transforms import FaceCrop, hflip
from facemtl.errors import FacemtlError
from facemtl.tasks import DATASET_TASKS, POINT_SETS, STANDARD_TASKS, Task, define_task
from test_formats import make_aflw, write_jpg

BNU = ("Happy", "Surprised", "Disgusted", "Puzzled", "Concentrated", "Tired", "Distracted")


def make_folder(root: Path, classes, subjects=3, per_subject=1, size=16):
    """One PNG per subject and class: ``root/<class>/s<subject>_<k>.png``."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for s in range(subjects):
            for k in range(per_subject):
                img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                assert cv2.imwrite(str(root / c / f"s{s}_{k}.png"), img)
    return root


def one_source(source: dict, tasks: dict | None = None, **more) -> dict:
    data = {"data": [source], **more}
    if tasks is not None:
        data["tasks"] = tasks
    return data


# ---------------------------------------------------------------- declarations and build_tasks


def test_declared_category_task_is_built_and_read_by_emotion_folder(tmp_path):
    make_folder(tmp_path, ["Tired", "happy"])  # matched case-insensitively to the declared classes
    cfg = config_from_dict(one_source({"name": "emotion-folder", "root": str(tmp_path), "tasks": ["bnu"]},
                                      {"bnu": {"kind": "category", "classes": list(BNU)}}))
    (task,) = cfg.build_tasks()
    assert task == Task("bnu", "category", 7, BNU)
    (source,) = build_sources(cfg, (task,))
    raws = [*source.train, *source.test]
    assert len(raws) == 6
    for raw in raws:
        folder = Path(raw["meta"]["path"]).parent.name
        assert raw["bnu"] == {"Tired": 5, "happy": 0}[folder] and "emotion" not in raw
    sample = source.sample(0, np.random.default_rng(0))
    assert sample["bnu"].dtype == torch.long and sample["image"].shape == (3, 64, 64)


def test_classes_come_from_folder_names_like_image_folder(tmp_path):
    make_folder(tmp_path, ["Tired", "puzzled", "Happy"])
    (tmp_path / ".cache").mkdir()  # hidden folders are not classes
    cfg = config_from_dict(one_source({"name": "emotion-folder", "root": str(tmp_path), "tasks": ["mood"]},
                                      {"mood": {"kind": "category"}}))
    (task,) = cfg.build_tasks()
    assert task.class_names == ("Happy", "Tired", "puzzled")  # Python's sort: capitals first
    # The reader alone does the same when given no classes.
    ds = load_dataset("emotion-folder", tmp_path, "all")
    assert ds[0]["meta"]["classes"] == ("Happy", "Tired", "puzzled")
    assert sorted({r["emotion"] for r in ds.records}) == [0, 1, 2]
    # A classes option of the source names them (and orders the labels) instead.
    cfg = config_from_dict(one_source({"name": "emotion-folder", "root": str(tmp_path), "tasks": ["mood"],
                                       "options": {"classes": ["Puzzled", "Happy", "Tired"]}},
                                      {"mood": {"kind": "category"}}))
    assert cfg.build_tasks()[0].class_names == ("Puzzled", "Happy", "Tired")
    (source,) = build_sources(cfg, cfg.build_tasks())
    assert all(r["mood"] == {"puzzled": 0, "Happy": 1, "Tired": 2}[Path(r["meta"]["path"]).parent.name]
               for r in [*source.train, *source.test])


def test_the_standard_emotion_task_keeps_fer_order_on_emotion_folders(tmp_path):
    make_folder(tmp_path, ["Sad", "Happy"])
    cfg = config_from_dict(one_source({"name": "emotion-folder", "root": str(tmp_path), "tasks": ["emotion"]}))
    (source,) = build_sources(cfg, cfg.build_tasks())
    labels = {Path(r["meta"]["path"]).parent.name: r["emotion"] for r in [*source.train, *source.test]}
    assert labels == {"Happy": 3, "Sad": 4}


def test_emotion_folder_class_errors(tmp_path):
    with pytest.raises(FacemtlError, match="no class folders under"):
        load_dataset("emotion-folder", tmp_path, "all")
    make_folder(tmp_path, ["Happy", "happy"])
    with pytest.raises(FacemtlError, match="class folders Happy, happy under .* differ only in case"):
        load_dataset("emotion-folder", tmp_path, "all")
    with pytest.raises(FacemtlError, match="task must be the name of the task"):
        load_dataset("emotion-folder", tmp_path, "all", classes=["happy"], task="")


def test_points_and_segmentation_declarations():
    cfg = config_from_dict({
        "tasks": {
            "eyes3": {"kind": "points", "classes": ["left_eye", "right_eye", "nose"],
                      "left_right": [["left_eye", "right_eye"]]},
            "tips": {"kind": "points", "points": 3, "flip": [2, 1, 0]},
            "ears": {"kind": "segmentation", "classes": ["background", "left_ear", "right_ear"],
                     "left_right": [["left_ear", "right_ear"]]},
            "unused": {"kind": "category", "classes": ["a", "b"]},
        },
        "data": [{"tasks": ["eyes3", "tips"]}, {"tasks": ["ears", "landmarks"]}],
    })
    eyes3, tips, ears, landmarks = cfg.build_tasks()
    assert eyes3 == Task("eyes3", "points", 3, ("left_eye", "right_eye", "nose"), (1, 0, 2))
    assert eyes3.eye_indices == (0, 1)  # the NME normaliser, found by name
    assert tips == Task("tips", "points", 3, (), (2, 1, 0)) and tips.eye_indices == ()
    assert ears.flip == (0, 2, 1) and landmarks is STANDARD_TASKS["landmarks"]
    assert cfg.task_names == ("eyes3", "tips", "ears", "landmarks")


def test_dataset_tasks_are_known_by_name():
    cfg = config_from_dict({"data": [{"tasks": ["aflw21"], "augment": False}]})
    assert cfg.build_tasks() == (DATASET_TASKS["aflw21"],)


@pytest.mark.parametrize(
    "data, message",
    [
        (one_source({"tasks": ["x"]}, {"x": {"classes": ["a", "b"]}}),
         "'tasks.x' needs a 'kind': one of points, segmentation, category"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "boxes"}}),
         "bad value for 'tasks.x.kind': expected one of 'points', 'segmentation', 'category' or null, got 'boxes'"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "category", "class": ["a", "b"]}}),
         "unknown key 'tasks.x.class' (did you mean 'tasks.x.classes'?)"),
        ({"tasks": ["x"]}, "'tasks' must be a mapping of task names to declarations"),
        (one_source({"tasks": ["emotion"]}, {"emotion": {"kind": "category", "classes": ["a", "b"]}}),
         "bad task name 'emotion' under 'tasks': 'emotion' is a standard task the toolkit defines"),
        (one_source({"tasks": ["aflw21"]}, {"aflw21": {"kind": "points", "points": 21, "flip": list(range(21))}}),
         "'aflw21' is a dataset task the toolkit defines"),
        (one_source({"tasks": ["landmarks"]}, {"my-task": {"kind": "category", "classes": ["a", "b"]}}),
         "bad task name 'my-task' under 'tasks': expected letters, digits and underscores"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "category", "classes": ["a"]}}),
         "bad value for 'tasks.x.classes': expected a list of at least 2 class names, got ['a']"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "category"}}),
         "bad value for 'tasks.x.classes': expected a list of at least 2 class names, got []"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "category", "classes": ["a", "A"]}}),
         "bad value for 'tasks.x.classes': expected names that differ (case-insensitively)"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "category", "classes": [False, True]}}),
         "bad value for 'tasks.x.classes': expected a list of a string, got [False, True]"),  # YAML's no/yes
        (one_source({"tasks": ["x"]}, {"x": {"kind": "points"}}),
         "bad value for 'tasks.x.points': expected the number of points (or their names under 'classes')"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "points", "points": 3, "classes": ["a", "b"]}}),
         "bad value for 'tasks.x.points': expected 2, the number of point names under 'classes', got 3"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "points", "points": 0}}),
         "bad value for 'tasks.x.points': expected a positive integer, got 0"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "category", "classes": ["a", "b"], "points": 2}}),
         "bad value for 'tasks.x.points': expected no 'points' for a category task"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "points", "points": 3, "flip": [0, 0, 1]}}),
         "bad value for 'tasks.x.flip': expected a permutation of 0..2, got [0, 0, 1]"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "points", "points": 3, "flip": [1, 2, 0]}}),
         "bad value for 'tasks.x.flip': expected its own inverse"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "points", "classes": ["l", "r"], "flip": [1, 0],
                                              "left_right": [["l", "r"]]}}),
         "bad value for 'tasks.x.flip': expected either 'flip' or 'left_right', not both"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "segmentation", "classes": ["bg", "l", "r"],
                                              "left_right": [["l", "right"]]}}),
         "bad value for 'tasks.x.left_right': expected pairs of two different names from 'classes'"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "points", "points": 2, "left_right": [["a", "b"]]}}),
         "bad value for 'tasks.x.left_right': expected pairs of names listed under 'classes' (or use 'flip')"),
        (one_source({"tasks": ["x"]}, {"x": {"kind": "points", "points": 4}}),
         "'tasks.x' needs 'flip' (the flip permutation of its points) or 'left_right' (pairs of point names): "
         "data.0 augments"),
        (one_source({"name": "emotion-folder", "root": "/nowhere", "tasks": ["x"], "options": {"classes": ["b", "a"]}},
                    {"x": {"kind": "category", "classes": ["a", "b"]}}),
         "bad value for 'data.0.options.classes': expected the classes of task 'x' (a, b) or no classes option"),
        (one_source({"tasks": ["mood"]}), "bad value for 'data.0.tasks': expected task names among landmarks"),
        (one_source({"tasks": ["mood"]}, {"x": {"kind": "category", "classes": ["a", "b"]}}),
         "x (declared under 'tasks'), got 'mood'"),
        (one_source({"name": "celeba", "root": "/nowhere", "tasks": ["eyeglasses"]},
                    {"eyeglasses": {"kind": "category", "classes": ["a", "b"]}}),
         "the 'celeba' reader of data.0 serves a task 'eyeglasses'; declare yours under another name"),
        (one_source({"name": "mtfl", "root": "/nowhere", "tasks": ["eyeglasses"]}),
         "bad value for 'data.0.tasks'"),  # CelebA's attributes belong to CelebA sources only
    ],
)
def test_declaration_errors_name_the_key_and_what_was_expected(data, message):
    with pytest.raises(FacemtlError) as e:
        config_from_dict(data)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_declaration_errors_give_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "tasks:\n"
        "  bnu:\n"
        "    kind: category\n"
        "    classes: [Happy]\n"
        "data:\n"
        "  - {name: synth, tasks: [bnu]}\n"
    )
    with pytest.raises(FacemtlError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:4: bad value for 'tasks.bnu.classes': expected a list of at least 2")
    path.write_text("tasks:\n  bnu:\n    kind: category\n    classes: [a, b]\n    flip: [1, 0]\n"
                    "data:\n  - {name: synth, tasks: [bnu, smile]}\n")
    cfg = load_config(path, ["tasks.bnu.classes=[a, b, c]", "tasks.bnu.flip=[2, 1, 0]"])
    assert cfg.build_tasks()[0] == Task("bnu", "category", 3, ("a", "b", "c"), (2, 1, 0))


def test_folder_classes_are_checked_when_the_tasks_are_built(tmp_path):
    make_folder(tmp_path, ["a", "b"])
    cfg = config_from_dict(one_source({"name": "emotion-folder", "root": str(tmp_path), "tasks": ["x"]},
                                      {"x": {"kind": "category", "left_right": [["a", "c"]]}}))
    with pytest.raises(FacemtlError, match=r"^bad value for 'tasks.x.left_right': expected pairs of two"):
        cfg.build_tasks()


# ---------------------------------------------------------------- CelebA attributes by name


def make_celeba(root: Path):
    for i in (1, 2, 3):
        write_jpg(root / "img_align_celeba" / f"{i:06d}.jpg", 40, 48, seed=i)
    (root / "list_landmarks_align_celeba.txt").write_text(
        "3\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        + "".join(f"{i:06d}.jpg 14 18 26 18 20 25 15 32 25 32\n" for i in (1, 2, 3)))

    def row(hat, glasses):
        v = ["-1"] * 40
        v[ATTRIBUTES.index("Wearing_Hat")], v[ATTRIBUTES.index("Eyeglasses")] = hat, glasses
        return " ".join(v)

    (root / "list_attr_celeba.txt").write_text(
        "3\n" + " ".join(ATTRIBUTES) + "\n"
        f"000001.jpg {row('1', '-1')}\n000002.jpg {row('-1', '1')}\n000003.jpg {row('1', '1')}\n")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 0\n000003.jpg 2\n")


def test_celeba_attribute_is_a_binary_task_by_name(tmp_path):
    make_celeba(tmp_path)
    assert len(reader_tasks("celeba")) == 40 and reader_tasks("celeba")["5_o_clock_shadow"].num_outputs == 2
    cfg = config_from_dict(one_source({"name": "celeba", "root": str(tmp_path), "tasks": ["Wearing_Hat", "eyeglasses",
                                                                                        "glasses"]}))
    assert cfg.data[0].tasks == ("wearing_hat", "eyeglasses", "glasses")
    hat, eyeglasses, glasses = cfg.build_tasks()
    assert hat == Task("wearing_hat", "category", 2, ("no", "yes")) and glasses is STANDARD_TASKS["glasses"]
    raws = {r["meta"]["id"]: r for r in load_dataset("celeba", tmp_path, "all")}
    assert [raws[f"{i:06d}.jpg"]["wearing_hat"] for i in (1, 2, 3)] == [1, 0, 1]
    assert [raws[f"{i:06d}.jpg"]["eyeglasses"] for i in (1, 2, 3)] == [0, 1, 1]
    assert [raws[f"{i:06d}.jpg"]["glasses"] for i in (1, 2, 3)] == [1, 0, 0]  # the MTFL-style task counts the other way
    (source,) = build_sources(cfg, (hat, eyeglasses, glasses))
    sample = source.sample(0, np.random.default_rng(1))
    assert {"wearing_hat", "eyeglasses", "glasses"} <= set(sample) and sample["wearing_hat"].dtype == torch.long


# ---------------------------------------------------------------- AFLW's 21 points


def test_aflw_serves_its_21_points_as_the_aflw21_task(tmp_path):
    make_aflw(tmp_path)
    raws = {r["meta"]["id"]: r for r in load_dataset("aflw", tmp_path, "all", points=5)}
    a = raws[39341]
    assert a["landmarks"].shape == (5, 2) and a["visibility"].shape == (5,)
    assert a["aflw21"].shape == (21, 2) and a["aflw21_visibility"].sum() == 19
    assert not a["aflw21_visibility"][0] and not a["aflw21_visibility"][12]
    np.testing.assert_allclose(a["aflw21"][7], a["landmarks"][0])  # LeftEyeCenter is the 5-point left eye
    cfg = config_from_dict(one_source({"name": "aflw", "root": str(tmp_path), "tasks": ["landmarks", "aflw21"],
                                       "options": {"points": 5}}))
    landmarks, aflw21 = cfg.build_tasks()
    assert aflw21 is DATASET_TASKS["aflw21"] and aflw21.num_outputs == 21
    # NME of aflw21 is normalised by the distance between the eye centres (Deep Collaboration 4.1).
    assert aflw21.eye_indices == (7, 10)
    assert [aflw21.class_names[i] for i in aflw21.eye_indices] == ["left_eye", "right_eye"]
    # Flipping moves the visibility with the points: LeftBrowLeftCorner (missing) becomes RightBrowRightCorner.
    crop = FaceCrop(size=32, flip=True, tasks=(landmarks, aflw21))
    for seed in range(10):
        out = crop(a, np.random.default_rng(seed))
        if out["meta"]["flipped"]:
            assert not out["aflw21_visibility"][5] and out["aflw21_visibility"][0]
            assert out["visibility"].shape == (5,)
            break
    else:
        pytest.fail("no flip in 10 seeds")
    unflipped = FaceCrop(size=32)(a)
    np.testing.assert_array_equal(unflipped["aflw21_visibility"], a["aflw21_visibility"])


def test_aflw21_trains_next_to_five_point_landmarks(tmp_path):
    make_aflw(tmp_path)
    cfg = config_from_dict(one_source({"name": "aflw", "root": str(tmp_path), "tasks": ["landmarks", "aflw21"],
                                       "options": {"points": 5, "ratio": 0.5}}))
    (source,) = build_sources(cfg, cfg.build_tasks())
    sample = source.sample(0, None)
    assert sample["landmarks_visible"].shape == (5,) and sample["aflw21_visible"].shape == (21,)


def test_dataset_flips_swap_left_and_right_names():
    def mirrored(name: str) -> str:
        return name.replace("left", "\0").replace("right", "left").replace("\0", "right")

    for task in (*DATASET_TASKS.values(), STANDARD_TASKS["landmarks"], STANDARD_TASKS["parsing"]):
        names, flip = task.class_names, task.flip
        assert [flip[flip[i]] for i in range(task.num_outputs)] == list(range(task.num_outputs)), task.name
        if task.name == "parsing19":  # CelebAMask-HQ's own names: l_/r_ (but l_lip is the lower lip)
            swapped = {names[i]: names[flip[i]] for i in range(task.num_outputs) if flip[i] != i}
            assert swapped == {"l_eye": "r_eye", "r_eye": "l_eye", "l_brow": "r_brow", "r_brow": "l_brow",
                               "l_ear": "r_ear", "r_ear": "l_ear"}
            continue
        for i, name in enumerate(names):
            if not any(c.isdigit() for c in name):  # numbered contour points pair up in reverse
                assert names[flip[i]] == mirrored(name), (task.name, name)
    assert POINT_SETS["aflw21"] is DATASET_TASKS["aflw21"] and POINT_SETS["mtfl5"] is STANDARD_TASKS["landmarks"]


# ---------------------------------------------------------------- flips from the tasks being trained


def test_flips_come_from_the_declared_tasks():
    turn = define_task("head_turn", "category", ["left", "frontal", "right"], left_right=[["left", "right"]])
    tips = define_task("tips", "points", ["left_tip", "right_tip"], left_right=[["left_tip", "right_tip"]])
    raw = {"image": np.zeros((20, 20, 3), np.uint8), "head_turn": 0, "tips": np.array([[4.0, 10.0], [15.0, 10.0]]),
           "box": np.array([0, 0, 20, 20], np.float32)}
    crop = FaceCrop(size=20, margin=0.0, flip=True, tasks=(turn, tips))
    for seed in range(10):
        out = crop(raw, np.random.default_rng(seed))
        if out["meta"]["flipped"]:
            assert out["head_turn"] == 2
            assert out["tips"][0, 0] < out["tips"][1, 0]  # the left tip is still on the left
            break
    else:
        pytest.fail("no flip in 10 seeds")
    # Without the task, a points array has no flip: an error, never a silently wrong label.
    with pytest.raises(FacemtlError, match="cannot flip 'tips'"):
        hflip(raw, {})
    # Known tasks need not be passed: CelebAMask-HQ's parsing19 is relabelled by its own flip.
    mask = np.zeros((20, 20), np.uint8)
    mask[5, 2] = 4  # l_eye
    out = hflip({"image": raw["image"], "parsing19": mask}, {})
    assert out["parsing19"][5, 17] == 5  # r_eye


def test_flip_tables_left_the_format_readers():
    import facemtl.data.formats.common as common

    assert not hasattr(common, "POINT_SET_FLIPS") and not hasattr(common, "MASK_FLIPS")


# ---------------------------------------------------------------- checkpoints and a short run

SMALL_IFAN = dict(iterations=1, growth_rate=2, layers_per_block=1, num_blocks=3, stem_channels=4, up_channels=4,
                  reencoder_channels=2, points_hidden=8, category_hidden=8)


def _checkpoint_functions():
    try:
        from facemtl.models.checkpoint import load_model, save_checkpoint
    except ImportError:
        from facemtl.engine.checkpoint import load_model, save_checkpoint
    return save_checkpoint, load_model


def test_checkpoint_carries_declared_tasks(tmp_path):
    from facemtl.models.registry import create_model

    save_checkpoint, load_model = _checkpoint_functions()
    bnu = define_task("bnu", "category", BNU)
    tips = define_task("tips", "points", ["left_eye", "right_eye", "chin"], left_right=[["left_eye", "right_eye"]])
    torch.manual_seed(0)
    model = create_model("ifan", tasks=[bnu, tips, "parsing"], num_sources=1, **SMALL_IFAN).eval()
    save_checkpoint(tmp_path, model, {"model": {"name": "ifan", "config": {"tasks": [bnu, tips, "parsing"],
                                                                           "num_sources": 1, **SMALL_IFAN}},
                                      "input_size": 64})
    loaded, info = load_model(tmp_path)
    assert tuple(loaded.tasks) == (bnu, tips, STANDARD_TASKS["parsing"])
    assert loaded.tasks[1].flip == (1, 0, 2) and loaded.tasks[1].eye_indices == (0, 1)
    saved = {t["name"]: t for t in json.loads((tmp_path / "model.json").read_text())["tasks"]}
    assert saved["bnu"]["class_names"] == list(BNU) and saved["tips"]["flip_permutation"] == [1, 0, 2]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[-1]["bnu"], loaded(x)[-1]["bnu"])


def test_training_on_a_declared_task_from_an_emotion_folder(tmp_path, one_thread):
    from facemtl.engine import train

    make_folder(tmp_path / "faces", ["calm", "happy", "tired"], subjects=5, size=32)
    cfg = config_from_dict({
        "model": {"name": "ifan", "kwargs": {**SMALL_IFAN, "pool": "max"}},
        "tasks": {"mood": {"kind": "category"}},
        "data": [{"name": "emotion-folder", "root": str(tmp_path / "faces"), "tasks": ["mood"], "batch_size": 4}],
        "input_size": 32,
        "schedule": {"pretrain_epochs": 1, "epochs": 1, "warmup": 0},
        "eval_batch_size": 8,
        "logging": {"log_every": 1, "tensorboard": False, "progress": False},
    })
    run = train(cfg, tmp_path / "run", quiet=True)
    _, load_model = _checkpoint_functions()
    model, info = load_model(run)
    assert model.tasks[0] == Task("mood", "category", 3, ("calm", "happy", "tired"))
    steps = (run / "steps.csv").read_text().splitlines()
    assert len(steps) > 3 and all(",mood," in line for line in steps[1:])
    assert "mood" in json.dumps(json.loads((run / "metrics.json").read_text()))
