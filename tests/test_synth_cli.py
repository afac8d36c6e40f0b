"""`facemtl synth export|preview`: files read back by small independent parsers, and bad arguments."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facemtl.cli import main
from facemtl.data.synth import EMOTIONS, render_face

SIZE = 64


def _export(tmp_path, fmt, n, style="wild", seed=4):
    out = tmp_path / fmt
    rc = main(["synth", "export", "--format", fmt, "--n", str(n), "--style", style, "--seed", str(seed),
               "--size", str(SIZE), "--out", str(out)])
    assert rc == 0
    return out


def test_mtfl_export_reads_back(tmp_path):
    out = _export(tmp_path, "mtfl", 10)
    rows = {}
    for list_name in ("training.txt", "testing.txt"):
        for line in (out / list_name).read_text().splitlines():
            f = line.split()
            assert len(f) == 15, line
            rows[f[0]] = (list_name, [float(v) for v in f[1:11]], [int(v) for v in f[11:]])
    assert len(rows) == 10
    train = [p for p, r in rows.items() if r[0] == "training.txt"]
    test = [p for p, r in rows.items() if r[0] == "testing.txt"]
    assert len(train) == 8 and len(test) == 2
    assert all("\\" in p and "/" not in p for p in train)
    assert all("/" in p and "\\" not in p for p in test)
    for path, (_, coords, attrs) in rows.items():
        i = int(re.search(r"(\d+)\.jpg$", path).group(1))
        s = render_face(4, i, "wild", SIZE)
        xs, ys = np.array(coords[:5]) - 1, np.array(coords[5:]) - 1  # x1..x5 then y1..y5, 1-based
        np.testing.assert_allclose(np.stack([xs, ys], 1), s["landmarks"], atol=1e-3)
        assert attrs == [s["gender"] + 1, s["smile"] + 1, s["glasses"] + 1, s["pose"] + 1]
        assert all(1 <= a for a in attrs) and attrs[3] <= 5
        img = Image.open(out / path.replace("\\", "/"))
        assert img.format == "JPEG" and img.size == (SIZE, SIZE)


def test_helen_export_reads_back(tmp_path):
    out = _export(tmp_path, "helen", 20, style="studio")
    names = {}
    for list_name in ("exemplars.txt", "tuning.txt", "testing.txt"):
        for line in (out / list_name).read_text().splitlines():
            k, name = line.split(",")
            assert k.strip().isdigit()
            names[name.strip()] = list_name
    assert len(names) == 20
    assert sorted(names.values()).count("testing.txt") == 1 and sorted(names.values()).count("tuning.txt") == 2
    for name in list(names)[:6]:
        i = int(name.rsplit("_", 1)[1])
        s = render_face(4, i, "studio", SIZE)
        assert Image.open(out / "images" / f"{name}.jpg").format == "JPEG"
        cls = np.zeros((SIZE, SIZE), np.uint8)
        for c in range(1, 11):  # threshold > 127 in class order, later classes overwrite
            m = np.asarray(Image.open(out / "labels" / name / f"{name}_lbl{c:02d}.png"))
            assert m.dtype == np.uint8 and m.ndim == 2 and set(np.unique(m)) <= {0, 255}
            cls[m > 127] = c
        np.testing.assert_array_equal(cls, s["parsing"])
        bg = np.asarray(Image.open(out / "labels" / name / f"{name}_lbl00.png"))
        np.testing.assert_array_equal(bg > 127, s["parsing"] == 0)


def test_emotion_folder_export_reads_back(tmp_path):
    out = _export(tmp_path, "emotion-folder", 14, style="webcam")
    found = 0
    for folder in out.iterdir():
        assert folder.name in EMOTIONS
        for f in folder.iterdir():
            match = re.fullmatch(r"S(\d+)_(\d+)\.png", f.name)
            assert match, f.name
            subject, i = int(match.group(1)), int(match.group(2))
            s = render_face(4, i, "webcam", SIZE)
            assert EMOTIONS[s["emotion"]] == folder.name and s["meta"]["subject"] == subject
            np.testing.assert_array_equal(np.asarray(Image.open(f).convert("RGB")), s["image"])  # PNG: lossless
            found += 1
    assert found == 14


def test_aflw_export_reads_back_through_the_aflw_reader(tmp_path):
    import sqlite3

    from facemtl.data import load_dataset
    from facemtl.data.transforms import face_box

    out = _export(tmp_path, "aflw", 10, seed=2)  # seed 2: every pose class, both genders and glasses
    con = sqlite3.connect(out / "aflw.sqlite")
    # only the five features the synthetic points are: eye centres, nose centre, mouth corners
    assert {r[0] for r in con.execute("SELECT DISTINCT feature_id FROM featurecoords")} == {8, 11, 15, 18, 20}
    assert con.execute("SELECT COUNT(*) FROM featurecoords").fetchone()[0] == 5 * 10
    con.close()
    full = load_dataset("aflw", out, "all")  # 21 points: the reader's visibility mask
    five = load_dataset("aflw", out, "all", points=5)
    assert len(full) == len(five) == 10
    for r21, r in zip(full, five):
        i = r["meta"]["id"] - 1  # face_id = index + 1
        assert r["meta"]["path"].endswith(f"flickr/0/synth_{i:06d}.jpg")
        s = render_face(2, i, "wild", SIZE)
        assert r21["visibility"].sum() == 5 and list(np.nonzero(r21["visibility"])[0]) == [7, 10, 14, 17, 19]
        np.testing.assert_array_equal(r21["landmarks"][r21["visibility"]], s["landmarks"])
        np.testing.assert_array_equal(r["landmarks"], s["landmarks"])  # 0-based, as the reader takes them
        assert r["visibility"].all() and r["meta"]["point_set"] == "mtfl5"
        assert (r["gender"], r["glasses"], r["pose"]) == (s["gender"], s["glasses"], s["pose"])
        for k in ("yaw", "pitch", "roll"):  # stored in radians, read back in degrees
            assert r["meta"][k] == pytest.approx(s["meta"][k], abs=1e-9)
        # facerect: FaceCrop's five-point face square in whole pixels
        np.testing.assert_allclose(r["box"], face_box(landmarks=s["landmarks"]), atol=1.0)
        assert r["box"][2] - r["box"][0] == r["box"][3] - r["box"][1]
        assert r["image"].shape == (SIZE, SIZE, 3)
    assert {r["pose"] for r in five} == set(range(5))
    assert {r["gender"] for r in five} == {r["glasses"] for r in five} == {0, 1}
    tr, te = load_dataset("aflw", out, "train", ratio=0.7), load_dataset("aflw", out, "test", ratio=0.7)
    assert (len(tr), len(te)) == (7, 3)
    assert len(load_dataset("aflw", out, "all", all_visible=True)) == 0  # no synthetic face has all 21 points


def test_celeba_export_reads_back_through_the_celeba_reader(tmp_path):
    from facemtl.data import load_dataset
    from facemtl.data.formats.celeba import ATTRIBUTES

    out = _export(tmp_path, "celeba", 12, seed=2)  # seed 2: both values of Male, Smiling, Eyeglasses
    header = (out / "Anno" / "list_attr_celeba.txt").read_text().splitlines()[1].split()
    assert tuple(header) == ATTRIBUTES
    sizes = {split: len(load_dataset("celeba", out, split)) for split in ("train", "val", "test", "all")}
    assert sizes == {"train": 10, "val": 1, "test": 1, "all": 12}
    seen = []
    for r in load_dataset("celeba", out, "all"):
        i = int(Path(r["meta"]["path"]).stem) - 1  # 000001.jpg is face 0
        s = render_face(2, i, "wild", SIZE)
        np.testing.assert_allclose(r["landmarks"], s["landmarks"], atol=5e-4)  # written with 3 decimals
        assert (r["gender"], r["smile"], r["glasses"]) == (s["gender"], s["smile"], s["glasses"])
        on = {a for a, v in zip(ATTRIBUTES, r["attributes"]) if v}
        assert on == {a for a, yes in (("Male", s["gender"] == 0), ("Smiling", s["smile"] == 0),
                                       ("Eyeglasses", s["glasses"] == 0)) if yes}
        assert r["eyeglasses"] == int(s["glasses"] == 0)  # the attribute task: 1 = yes
        assert r["meta"]["identity"] == s["meta"]["subject"]
        assert Image.open(r["meta"]["path"]).format == "JPEG" and r["image"].shape == (SIZE, SIZE, 3)
        seen.append(tuple(r["attributes"]))
    assert len(seen) == 12 and all(len(set(column)) == 2 for column in np.array(seen)[:, [15, 20, 31]].T)


def _tile_size():
    from facemtl.data import synth_cli as C

    return 2 * C.CELL + C.GAP + 2 * C.PAD, C.CELL + C.LABEL_LINES * C.LINE_H + 8 + 2 * C.PAD


def test_preview_n_counts_faces_in_total_and_labels_stay_under_the_faces(tmp_path, capsys):
    import cv2

    from facemtl.data.synth import STYLES
    from facemtl.data.synth_cli import CELL, COLS, LABEL_LINES, PAD

    out = tmp_path / "grid.png"
    assert main(["synth", "preview", "--out", str(out), "--n", "7", "--style", "all", "--size", str(SIZE)]) == 0
    assert "(7 faces" in capsys.readouterr().out
    img = np.asarray(Image.open(out).convert("RGB"))
    tile_w, tile_h = _tile_size()
    assert img.shape == (2 * tile_h, COLS * tile_w, 3)  # 7 faces: rows of 4, the 8th place blank
    assert (img[tile_h:, 3 * tile_w:] == 255).all()
    for k in range(7):  # the styles take turns: studio #0, wild #0, ..., classroom #0, studio #1, wild #1
        y, x = (k // COLS) * tile_h + PAD, (k % COLS) * tile_w + PAD
        face = render_face(0, k // len(STYLES), STYLES[k % len(STYLES)], SIZE)["image"]
        np.testing.assert_array_equal(img[y:y + CELL, x:x + CELL],  # nothing drawn over the face
                                      cv2.resize(face, (CELL, CELL), interpolation=cv2.INTER_NEAREST))
        band = img[y + CELL:y + tile_h - 2 * PAD, x:x + tile_w - 2 * PAD].min(axis=2) < 128
        inked = np.flatnonzero(band.any(axis=1))
        runs = np.split(inked, np.flatnonzero(np.diff(inked) > 1) + 1)
        # one run of ink per label line, each tall enough to read, none cut off at the band's edges
        assert len(runs) == LABEL_LINES and all(len(r) >= 10 for r in runs), [len(r) for r in runs]
        assert not band[0].any() and not band[-1].any() and not band[:, -1].any()


def test_preview_help_states_the_png_size_it_writes(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "preview", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    w, h = map(int, re.search(r"16 faces make a PNG of about (\d+)x(\d+) pixels", text).groups())
    tile_w, tile_h = _tile_size()
    assert abs(4 * tile_w - w) <= 0.05 * w and abs(4 * tile_h - h) <= 0.05 * h
    assert "number of faces in total" in text


@pytest.mark.parametrize("args, message", [
    (["--format", "coco", "--n", "3"], "unknown export format 'coco'"),
    (["--format", "mtfl", "--n", "0"], "--n must be >= 1"),
])
def test_bad_export_arguments_exit_with_one_line(tmp_path, capsys, args, message):
    assert main(["synth", "export", *args, "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert err.strip() == f"facemtl: error: {err.strip().split('error: ', 1)[1]}" and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_bad_size_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "export", "--format", "mtfl", "--n", "2", "--size", "32", "--out", str(tmp_path / "x")])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "image size must be >= 64, got 32" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_non_empty_out_folder_is_refused_by_the_real_command(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    res = subprocess.run([sys.executable, "-m", "facemtl", "synth", "export", "--format", "helen", "--n", "2",
                          "--out", str(full)], capture_output=True, text=True)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "not empty" in lines[0] and "Traceback" not in res.stderr
    assert sorted(p.name for p in full.iterdir()) == ["keep.txt"]


def test_file_out_path_is_refused(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["synth", "export", "--format", "mtfl", "--n", "2", "--out", str(a_file)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "existing file" in err[0]
    assert Path(a_file).read_text() == "x"


def test_preview_rejects_non_png_out(tmp_path, capsys):
    assert main(["synth", "preview", "--out", str(tmp_path / "grid.jpg"), "--n", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"facemtl: error: --out must be a .png file, got {tmp_path / 'grid.jpg'}"]
    assert not (tmp_path / "grid.jpg").exists()


# data.1 (the default config's emotion source, classroom) with render options of its own
SOURCE_ARGS = ["--source", "1", "--set", "input_size=64", "--set", "data.1.seed=9",
               "--set", "data.1.glasses_frames=real", "--set", "data.1.expression=[1.5,2.5]"]


def _source_faces(n, seed=9):
    """What training draws for that source, built here from the options written out by hand."""
    from facemtl.data.synth import SyntheticFaces

    return SyntheticFaces(n, style="classroom", seed=seed, size=SIZE, glasses_frames="real", expression=(1.5, 2.5))


def test_export_with_source_writes_the_faces_that_training_source_draws(tmp_path, capsys):
    out = tmp_path / "emo"
    assert main(["synth", "export", "--format", "emotion-folder", "--n", "6", "--out", str(out), *SOURCE_ARGS]) == 0
    assert "wrote 6 classroom faces of source 1" in capsys.readouterr().out
    written = {int(f.stem.split("_")[1]): (f.parent.name, np.asarray(Image.open(f).convert("RGB")))
               for f in out.glob("*/*.png")}
    expected = _source_faces(6)
    assert sorted(written) == list(range(6))
    for i, (emotion, image) in written.items():  # PNG: the very pixels
        assert emotion == EMOTIONS[expected[i]["emotion"]]
        np.testing.assert_array_equal(image, expected[i]["image"])
    # the source's options changed the faces: the style's plain faces are not these
    assert any((render_face(9, i, "classroom", SIZE)["image"] != expected[i]["image"]).any() for i in range(6))


def test_preview_with_source_shows_that_sources_faces_and_seed_replaces_its_seed(tmp_path):
    import cv2

    from facemtl.data.synth_cli import CELL, COLS, PAD

    out = tmp_path / "grid.png"
    assert main(["synth", "preview", "--out", str(out), "--n", "3", *SOURCE_ARGS, "--seed", "4"]) == 0
    img = np.asarray(Image.open(out).convert("RGB"))
    tile_w = img.shape[1] // min(COLS, 3)
    expected = _source_faces(3, seed=4)
    for k in range(3):  # one style: faces 0, 1, 2 of the source's stream
        x = k * tile_w + PAD
        np.testing.assert_array_equal(img[PAD:PAD + CELL, x:x + CELL],
                                      cv2.resize(expected[k]["image"], (CELL, CELL), interpolation=cv2.INTER_NEAREST))


@pytest.mark.parametrize("args, message", [
    (["--source", "5"], "--source 5 of the default config: the config has 3 sources, data.0 to data.2"),
    (["--source", "0", "--set", "data.0.name=helen", "--set", "data.0.root=x"],
     "--source 0 of the default config reads the 'helen' dataset; only synthetic sources (name: synth) "
     "are drawn"),
    (["--set", "data.0.seed=1"], "--config and --set choose a training source's faces: give --source N with them"),
])
def test_bad_source_arguments_exit_with_one_line(tmp_path, capsys, args, message):
    assert main(["synth", "export", "--format", "mtfl", "--n", "2", "--out", str(tmp_path / "x"), *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"facemtl: error: {message}"]
    assert not (tmp_path / "x").exists()


def test_config_bundled_draws_the_bundled_models_training_faces(tmp_path):
    """--config bundled: the shipped config.json (its emotion source: studio, seed 3, stronger expressions)."""
    import cv2

    from facemtl.data.synth import SyntheticFaces
    from facemtl.data.synth_cli import CELL, PAD

    out = tmp_path / "grid.png"
    assert main(["synth", "preview", "--out", str(out), "--n", "1", "--source", "1", "--config", "bundled"]) == 0
    face = SyntheticFaces(1, style="studio", seed=3, size=128, expression=(1.2, 2.5))[0]["image"]
    img = np.asarray(Image.open(out).convert("RGB"))
    np.testing.assert_array_equal(img[PAD:PAD + CELL, PAD:PAD + CELL],
                                  cv2.resize(face, (CELL, CELL), interpolation=cv2.INTER_NEAREST))


def test_an_interrupted_export_leaves_the_folder_empty_and_the_same_command_then_works(tmp_path, monkeypatch,
                                                                                         capsys):
    from facemtl.data import synth_export

    out = tmp_path / "mtfl"
    args = ["synth", "export", "--format", "mtfl", "--n", "6", "--style", "wild", "--seed", "4", "--size",
            str(SIZE), "--out", str(out)]
    write, calls = synth_export._write, []

    def interrupted(path, image, *a):
        calls.append(path)
        if len(calls) == 4:  # Ctrl-C while the fourth image is written
            raise KeyboardInterrupt
        write(path, image, *a)

    monkeypatch.setattr(synth_export, "_write", interrupted)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"interrupted: nothing written to {out}" in err and "run the same command again" in err
    assert out.is_dir() and list(out.iterdir()) == []  # no 3-face dataset that reads like a whole one
    monkeypatch.setattr(synth_export, "_write", write)
    assert main(args) == 0
    assert len((out / "training.txt").read_text().splitlines()) == 5  # 80% of 6, rounded as the writer does
    assert len((out / "testing.txt").read_text().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["AFLW", "lfw_5590", "testing.txt", "training.txt"]


def test_an_export_killed_midway_is_cleared_by_the_next_one_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch,
                                                                                           capsys):
    from facemtl.data import synth_export
    from facemtl.errors import FacemtlError

    out = tmp_path / "faces"
    (out / synth_export.PARTIAL / "Happy").mkdir(parents=True)  # what a killed export leaves
    (out / synth_export.PARTIAL / "Happy" / "S000_00000.png").write_bytes(b"half")
    assert synth_export.export("emotion-folder", out, 3, "studio", 1, SIZE, progress=False) == 3
    assert synth_export.PARTIAL not in [p.name for p in out.iterdir()]
    assert sum(1 for _ in out.rglob("*.png")) == 3

    def full_disk(path, image, *a):
        raise FacemtlError(f"could not write image {path}")

    monkeypatch.setattr(synth_export, "_write", full_disk)
    other = tmp_path / "other"
    with pytest.raises(FacemtlError, match="could not write image"):
        synth_export.export("celeba", other, 3, "studio", 1, SIZE, progress=False)
    assert list(other.iterdir()) == []
