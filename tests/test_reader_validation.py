"""Reader validation: non-finite numbers, category labels out of range, labels far outside the
image, annotation paths leading out of the dataset folder, and messages that name the bad value.

Fixtures are written in each dataset's exact on-disk format (as in test_formats.py)."""

import contextlib
import os
import re
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_formats import make_aflw, make_celeba, make_helen, write_jpg, write_pts

from facemtl.data import load_dataset
from facemtl.data.formats import ibug
from facemtl.data.formats.common import OUTSIDE_MARGIN, inside_root, parse_floats, parse_int, parse_number
from facemtl.errors import FacemtlError

GOOD = "1 2 3 4 5 6 7 8 9 10 1 1 1 1"


def mtfl(root: Path, lines: str, image="a.jpg", w=40, h=30):
    write_jpg(root / image, w, h)
    (root / "training.txt").write_text(lines)
    return root


@contextlib.contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------- shared helpers


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_parse_number_rejects_non_finite(text):
    with pytest.raises(FacemtlError, match=rf"^f.txt:3: expected x; got '{re.escape(text)}' in field 2 "
                                           r"\(not a finite number\)$"):
        parse_number(text, "f.txt", 3, "x", "in field 2")
    assert parse_number(" -2.5 ", "f.txt", 3, "x") == -2.5


def test_parse_int_names_the_value_and_never_leaks_a_traceback():
    for text in ("nan", "inf", "1.5", "x", "3", "0"):
        with pytest.raises(FacemtlError, match=rf"^f.txt:7: expected pose in 1..2; got '{text}' in field 9"):
            parse_int(text, "f.txt", 7, "", "pose", 1, 2, at="in field 9")
    assert parse_int("2.0", "f.txt", 7, "", "pose", 1, 2) == 2
    np.testing.assert_array_equal(parse_floats(["1", "2"], "f.txt", 1, "", "two", first_field=3), [1, 2])


def test_inside_root_is_lexical_and_refuses_dot_dot(tmp_path):
    assert inside_root(tmp_path, "a/b c.jpg", "f.txt", 1) == tmp_path / "a/b c.jpg"
    for name in ("/etc/passwd", "../outside.png", "a/../../x.jpg", "a\\..\\..\\x.jpg", "\\x.jpg", "C:/x.jpg",
                 "a/../b.jpg", ""):
        with pytest.raises(FacemtlError, match=r"^f.txt:4: expected an image path inside the dataset folder "):
            inside_root(tmp_path, name, "f.txt", 4)


# ---------------------------------------------------------------- case 4: non-finite numbers, ranges


@pytest.mark.parametrize("bad, field", [("nan", 4), ("inf", 2), ("-inf", 11), ("1e999", 7)])
def test_mtfl_non_finite_coordinate_is_an_error_naming_the_field(tmp_path, bad, field):
    values = GOOD.split()
    values[field - 2] = bad
    mtfl(tmp_path, "a.jpg " + " ".join(values) + "\n")
    with pytest.raises(FacemtlError, match=rf"training.txt:1: expected 10 numeric coordinates after the path; "
                                           rf"got '{re.escape(bad)}' in field {field} \(not a finite number\)$"):
        load_dataset("mtfl", tmp_path, "train")


def test_mtfl_nan_attribute_is_an_error_not_a_traceback(tmp_path):
    mtfl(tmp_path, "a.jpg 1 2 3 4 5 6 7 8 9 10 1 nan 1 1\n")
    with pytest.raises(FacemtlError, match=r"training.txt:1: expected smile label \(1-based\) in 1..2; got 'nan' "
                                           r"in field 13 \(not a finite number\)$"):
        load_dataset("mtfl", tmp_path, "train")
    mtfl(tmp_path, "a.jpg 1 2 3 4 5 6 7 8 9 10 1 1 1.5 1\n")
    with pytest.raises(FacemtlError, match=r"expected glasses label \(1-based\) in 1..2; got '1.5' in field 14$"):
        load_dataset("mtfl", tmp_path, "train")


def test_aflw_sqlite_non_finite_and_bad_values(tmp_path):
    data = make_aflw(tmp_path)
    db = data / "aflw.sqlite"
    cases = [
        ("UPDATE featurecoords SET x = 9e999 WHERE face_id = 39342 AND feature_id = 3",
         r"featurecoords of face_id 39342, feature_id 3: expected a finite x; got 'inf' \(not a finite number\)"),
        ("UPDATE featurecoords SET y = NULL WHERE face_id = 39342 AND feature_id = 4",
         r"featurecoords of face_id 39342, feature_id 4: expected a finite y; got 'NULL'$"),
        ("UPDATE featurecoords SET x = 'abc' WHERE face_id = 39343 AND feature_id = 5",
         r"featurecoords of face_id 39343, feature_id 5: expected a finite x; got 'abc'"),
        ("UPDATE featurecoords SET feature_id = 22 WHERE face_id = 39343 AND feature_id = 5",
         r"featurecoords of face_id 39343: expected feature_id in 1..21; got '22'"),
        ("UPDATE facerect SET w = -9e999 WHERE face_id = 39341",
         r"facerect of face_id 39341: expected a finite w; got '-inf'"),
        ("UPDATE facepose SET yaw = 'left' WHERE face_id = 39341",
         r"facepose of face_id 39341: expected a finite yaw or NULL; got 'left'"),
    ]
    original = db.read_bytes()
    for sql, match in cases:
        db.write_bytes(original)
        con = sqlite3.connect(db)
        con.execute(sql)
        con.commit()
        con.close()
        with pytest.raises(FacemtlError, match=rf"aflw.sqlite: {match}"):
            load_dataset("aflw", tmp_path, "all")
    db.write_bytes(original)
    con = sqlite3.connect(db)
    con.execute("UPDATE facepose SET yaw = NULL WHERE face_id = 39341")  # no angle stored: no pose, no error
    con.commit()
    con.close()
    a = next(r for r in load_dataset("aflw", tmp_path, "all") if r["meta"]["id"] == 39341)
    assert "pose" not in a


def test_300w_pts_non_finite(tmp_path):
    p = tmp_path / "x.pts"
    p.write_text("version: 1\nn_points: 2\n{\n1 2\n3 nan\n}\n")
    with pytest.raises(FacemtlError, match=r"x.pts:5: expected two numbers 'x y'; got 'nan' in field 2 "
                                           r"\(not a finite number\)$"):
        ibug.read_pts(p)


def wflw_line(xy_value="1", flag="0", name="a.jpg"):
    fields = [xy_value] + ["1"] * 195 + ["1", "2", "30", "28"] + ["0", "0", "0", "0", flag, "0"] + [name]
    return " ".join(fields) + "\n"


def wflw(root: Path, line: str):
    ann = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    ann.mkdir(parents=True, exist_ok=True)
    write_jpg(root / "WFLW_images" / "a.jpg")
    (ann / "list_98pt_rect_attr_train.txt").write_text(line)


def test_wflw_non_finite_and_flag_out_of_range(tmp_path):
    wflw(tmp_path, wflw_line(xy_value="inf"))
    with pytest.raises(FacemtlError, match=r"list_98pt_rect_attr_train.txt:1: expected 196 coordinates and 4 box "
                                           r"values; got 'inf' in field 1 \(not a finite number\)"):
        load_dataset("wflw", tmp_path, "train")
    wflw(tmp_path, wflw_line(flag="2"))
    with pytest.raises(FacemtlError, match=r"train.txt:1: expected occlusion flag in 0..1; got '2' in field 205$"):
        load_dataset("wflw", tmp_path, "train")


def test_celeba_non_finite_bad_attribute_and_identity(tmp_path):
    make_celeba(tmp_path)
    lm = tmp_path / "Anno" / "list_landmarks_align_celeba.txt"
    text = lm.read_text()
    lm.write_text(text.replace("000002.jpg 69  110", "000002.jpg nan  110"))
    with pytest.raises(FacemtlError, match=r"list_landmarks_align_celeba.txt:4: expected 10 numbers; got 'nan' in "
                                           r"field 2 \(not a finite number\)"):
        load_dataset("celeba", tmp_path, "train")
    lm.write_text(text)
    attr = tmp_path / "Anno" / "list_attr_celeba.txt"
    attr.write_text(attr.read_text().replace("000002.jpg -1", "000002.jpg 0"))
    with pytest.raises(FacemtlError, match=r"list_attr_celeba.txt:4: expected attribute 5_o_Clock_Shadow0 -1 or 1; "
                                           r"got '0' in field 2$"):
        load_dataset("celeba", tmp_path, "all")
    attr.write_text(attr.read_text().replace("000002.jpg 0", "000002.jpg -1"))
    ident = tmp_path / "Anno" / "identity_CelebA.txt"
    ident.write_text(ident.read_text().replace("2937", "x"))
    with pytest.raises(FacemtlError, match=r"identity_CelebA.txt:2: expected an identity number in 0..\d+; got 'x'"):
        load_dataset("celeba", tmp_path, "all")


AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,"
                    "valence,arousal\n")


def affectnet(root: Path, row: str):
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    write_jpg(root / "Manually_Annotated_Images" / "1" / "a.jpg")
    (lists / "training.csv").write_text(AFFECTNET_HEADER + row + "\n")


@pytest.mark.parametrize("row, match", [
    ("1/a.jpg,nan,4,20,21,1;2,1,0.5,0", r"expected a number face_x; got 'nan' in column face_x"),
    ("1/a.jpg,3,4,20,21,1;inf,1,0.5,0",
     r"expected facial_landmarks 'x;y;x;y;...'; got 'inf' in column facial_landmarks, value 2"),
    ("1/a.jpg,3,4,20,21,1;2,1,nan,0", r"expected a number valence; got 'nan' in column valence"),
    ("1/a.jpg,3,4,20,21,1;2,nan,0.5,0", r"expected expression in 0..10; got 'nan' in column expression"),
])
def test_affectnet_non_finite(tmp_path, row, match):
    affectnet(tmp_path, row)
    with pytest.raises(FacemtlError, match=rf"training.csv:2: {match}"):
        load_dataset("affectnet", tmp_path, "train")


def rafdb(root: Path, line: str, name="train_00001"):
    write_jpg(root / "Image" / "aligned" / f"{name}_aligned.jpg")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(line)


@pytest.mark.parametrize("label", ["nan", "0", "8", "2.5"])
def test_rafdb_label_out_of_range_or_not_a_number(tmp_path, label):
    rafdb(tmp_path, f"train_00001.jpg {label}\n")
    with pytest.raises(FacemtlError, match=rf"list_patition_label.txt:1: expected label in 1..7; got '{label}' "
                                           r"in field 2"):
        load_dataset("rafdb", tmp_path, "train")


def test_lapa_non_finite(tmp_path):
    from facemtl.data.formats import lapa

    p = tmp_path / "a.txt"
    p.write_text("2\n1 2\n-inf 3\n")
    with pytest.raises(FacemtlError, match=r"a.txt:3: expected two numbers 'x y'; got '-inf' in field 1"):
        lapa.read_landmarks(p)


def fer_rows(pixels: list[str], label="3", usage="Training"):
    return f"{label},{' '.join(pixels)},{usage}"


def test_fer2013_emotion_nan_is_an_error(tmp_path):
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n" + fer_rows(["0"] * 2304, label="nan") + "\n")
    with pytest.raises(FacemtlError, match=r"fer2013.csv:2: expected emotion 0..6; got 'nan'"):
        load_dataset("fer2013", tmp_path, "train")


# ---------------------------------------------------------------- case 4: labels outside the image


def test_mtfl_points_far_outside_are_reported_once_with_count_and_first_example(tmp_path):
    # 40 x 30 image: x beyond -20 / 60 or y beyond -15 / 45 is more than half the size outside.
    far = "a.jpg -30 2 3 4 5 6 7 8 9 10 1 1 1 1\n"
    near = "a.jpg -3 2 3 4 5 6 7 8 9 46 1 1 1 1\n"  # 0-based x -4, y 45: within the margin
    farther = "a.jpg 1 2 3 4 5 6 7 8 9 100 1 1 1 1\n"
    mtfl(tmp_path, far + near + farther)
    ds = load_dataset("mtfl", tmp_path, "train")
    with pytest.warns(UserWarning) as record:
        items = list(ds)
    assert len(items) == 3  # reported, not dropped
    msgs = [str(w.message) for w in record]
    assert len(msgs) == 1, msgs
    assert re.fullmatch(r"mtfl/train: 2 sample\(s\) read have labels more than 50% of the image size outside the "
                        r"image \(first: .*training.txt:1: landmarks point 0 at \(-31, 5\) in a 40x30 image\)", msgs[0])
    assert sorted(ds.outside) == [0, 2] and "training.txt:3: landmarks point 4 at (4, 99)" in ds.outside[2]
    with no_warnings():
        list(ds)  # once per dataset
    # Random access (how training reads): one warning at the first such item, none after.
    fresh = load_dataset("mtfl", tmp_path, "train")
    with pytest.warns(UserWarning, match=r"1 sample\(s\) read .*training.txt:1"):
        fresh[0]
    with no_warnings():
        fresh[1], fresh[2]
    assert len(fresh.outside) == 2
    with pytest.raises(FacemtlError, match=r"mtfl/train: .*training.txt:1: landmarks point 0 at \(-31, 5\) in a "
                                           r"40x30 image, more than 50% of its size outside the image"):
        load_dataset("mtfl", tmp_path, "train", strict=True)[0]
    assert OUTSIDE_MARGIN == 0.5  # docs/datasets.md states this margin


def test_points_slightly_outside_and_invisible_placeholders_are_not_reported(tmp_path):
    mtfl(tmp_path, "a.jpg -3 2 3 4 60 -10 7 8 9 40 1 1 1 1\n")  # a few pixels to a third outside
    with no_warnings():
        assert len(list(load_dataset("mtfl", tmp_path, "train"))) == 1
    make_aflw(tmp_path / "aflw")  # faces 39341 lacks points 1 and 13: placeholders (0, 0), never read
    with no_warnings():
        assert len(list(load_dataset("aflw", tmp_path / "aflw", "all"))) == 3


def test_aflw_visible_point_far_outside_names_the_face(tmp_path):
    data = make_aflw(tmp_path)
    con = sqlite3.connect(data / "aflw.sqlite")
    con.execute("UPDATE featurecoords SET x = 500 WHERE face_id = 39342 AND feature_id = 2")
    con.commit()
    con.close()
    ds = load_dataset("aflw", tmp_path, "all")
    with pytest.warns(UserWarning, match=r"aflw/all: 1 sample\(s\) .*aflw.sqlite: face_id 39342: landmarks point 1 "
                                         r"at \(500, 6\) in a 60x50 image"):
        list(ds)


def test_box_far_outside_is_reported(tmp_path):
    affectnet(tmp_path, "1/a.jpg,3,4,200,21,,1,0.5,0")  # 40 x 30 image, box to x = 203
    with pytest.warns(UserWarning, match=r"training.csv:2: box \[3, 4, 203, 25\] in a 40x30 image"):
        list(load_dataset("affectnet", tmp_path, "train"))


# ---------------------------------------------------------------- case 11: paths outside the dataset


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.png", "lfw_5590\\..\\..\\outside.png"])
def test_mtfl_path_outside_the_root_is_an_error_and_never_opened(tmp_path, name, monkeypatch):
    root = tmp_path / "mtfl"
    root.mkdir()
    write_jpg(tmp_path / "outside.png")  # a real image: before the check it was read
    (root / "training.txt").write_text(f"{name} {GOOD}\n")
    import facemtl.data.formats.mtfl as mtfl_module

    opened = []
    monkeypatch.setattr(mtfl_module, "read_image", lambda p: opened.append(p))
    for check_files in (True, False):
        with pytest.raises(FacemtlError, match=rf"training.txt:1: expected an image path inside the dataset folder "
                                               rf".*; got '{re.escape(name.replace(chr(92), '/'))}'$"):
            load_dataset("mtfl", root, "train", check_files=check_files)
    assert opened == []


def test_helen_name_outside_the_root_is_an_error(tmp_path):
    make_helen(tmp_path / "helen")
    write_jpg(tmp_path / "secret.jpg")
    (tmp_path / "helen" / "tuning.txt").write_text("1 , ../../secret\n")
    with pytest.raises(FacemtlError, match=r"tuning.txt:1: expected an image path inside the dataset folder .*; "
                                           r"got '../../secret'"):
        load_dataset("helen", tmp_path / "helen", "val")


def test_other_readers_refuse_paths_outside_the_root(tmp_path):
    wflw(tmp_path / "w", wflw_line(name="../../a.jpg"))
    with pytest.raises(FacemtlError, match=r"train.txt:1: expected an image path inside .*; got '../../a.jpg'"):
        load_dataset("wflw", tmp_path / "w", "train")
    affectnet(tmp_path / "a", "/etc/passwd,3,4,20,21,,1,0.5,0")
    with pytest.raises(FacemtlError, match=r"training.csv:2: expected an image path inside .*; got '/etc/passwd'"):
        load_dataset("affectnet", tmp_path / "a", "train")
    rafdb(tmp_path / "r", "train_1/../../../x.jpg 1\n")
    with pytest.raises(FacemtlError, match=r"list_patition_label.txt:1: expected an image path inside"):
        load_dataset("rafdb", tmp_path / "r", "train")
    make_celeba(tmp_path / "c")
    part = tmp_path / "c" / "Eval" / "list_eval_partition.txt"
    part.write_text(part.read_text() + "../../x.jpg 0\n")
    with pytest.raises(FacemtlError, match=r"list_eval_partition.txt:4: expected an image path inside .*"
                                           r"got '../../x.jpg'"):
        load_dataset("celeba", tmp_path / "c", "train")
    data = make_aflw(tmp_path / "f")
    con = sqlite3.connect(data / "aflw.sqlite")
    con.execute("UPDATE faceimages SET filepath = '../../../x.jpg' WHERE file_id = 'image00013.jpg'")
    con.commit()
    con.close()
    with pytest.raises(FacemtlError, match=r"aflw.sqlite: faceimages.filepath of face_id 39342: expected an image "
                                           r"path inside .*; got '../../../x.jpg'"):
        load_dataset("aflw", tmp_path / "f", "all")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlinked_folder_inside_the_root_is_followed(tmp_path):
    # A dataset whose image folder is a link to another disk: the user made the link, so it is allowed.
    elsewhere = tmp_path / "other_disk" / "lfw_5590"
    write_jpg(elsewhere / "a.jpg")
    root = tmp_path / "mtfl"
    root.mkdir()
    try:
        os.symlink(elsewhere, root / "lfw_5590")
    except OSError:
        pytest.skip("cannot create symlinks here")
    (root / "training.txt").write_text(f"lfw_5590\\a.jpg {GOOD}\n")
    assert load_dataset("mtfl", root, "train")[0]["image"].shape == (30, 40, 3)


# ---------------------------------------------------------------- case 12: messages


def test_mtfl_message_shows_the_bad_field_of_a_long_line(tmp_path):
    name = "lfw_5590\\" + "A_very_long_name_" * 6 + "0001.jpg"
    mtfl(tmp_path, f"{name} 1 2 3 4 5 6 7 8 9 10 1 1 1 x\n")
    with pytest.raises(FacemtlError, match=r"training.txt:1: expected pose label \(1-based\) in 1..5; got 'x' in "
                                           r"field 15$"):
        load_dataset("mtfl", tmp_path, "train")


def test_mtfl_field_count_is_reported_not_a_missing_image(tmp_path):
    mtfl(tmp_path, f"a.jpg {GOOD} 1\n")  # 16 fields: the extra number would have joined the path
    with pytest.raises(FacemtlError, match=r"training.txt:1: expected 'path x1..x5 y1..y5 gender smile glasses pose' "
                                           r"\(15 fields\); got 'a.jpg 1 2 .*' \(16 fields: a path and 15 numbers\)$"):
        load_dataset("mtfl", tmp_path, "train")
    mtfl(tmp_path, "a.jpg 1 2 3 4 5 6 7 8 9 10 1 1 1\n")
    with pytest.raises(FacemtlError, match=r"\(15 fields\); got 'a.jpg 1 2 .*' \(14 fields\)$"):
        load_dataset("mtfl", tmp_path, "train")
    # A path with spaces still reads (its last part is not a number).
    mtfl(tmp_path, f"img 2.jpg {GOOD}\n", image="img 2.jpg")
    assert load_dataset("mtfl", tmp_path, "train")[0]["meta"]["id"] == "img 2.jpg"


def test_fer2013_bom_and_header_case(tmp_path):
    row = fer_rows([str(k % 256) for k in range(2304)])
    (tmp_path / "fer2013.csv").write_bytes(("\ufeffemotion,pixels,Usage\n" + row + "\n").encode("utf-8"))
    ds = load_dataset("fer2013", tmp_path, "train")
    assert len(ds) == 1 and ds[0]["emotion"] == 3 and ds[0]["image"][0, 5, 0] == 5
    (tmp_path / "fer2013.csv").write_text("Emotion,PIXELS,usage\n" + row + "\n")
    assert len(load_dataset("fer2013", tmp_path, "train")) == 1  # names match in any case
    (tmp_path / "fer2013.csv").write_text("emotion,pixel,Usage\n" + row + "\n")
    with pytest.raises(FacemtlError, match=r"fer2013.csv:1: expected columns emotion, pixels, Usage \(any case\); "
                                           r"got emotion, pixel, Usage, no pixels$"):
        load_dataset("fer2013", tmp_path, "train")


@pytest.mark.parametrize("k, value, match", [
    (16, "-3", r"got '-3' at pixel 17 \(row 1, column 17\)"),
    (100, "256", r"got '256' at pixel 101 \(row 3, column 5\)"),
    (2303, "1.5", r"got '1.5' at pixel 2304 \(row 48, column 48\)"),
])
def test_fer2013_bad_pixel_says_which_and_where(tmp_path, k, value, match):
    pixels = ["7"] * 2304
    pixels[k] = value
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n" + fer_rows(pixels) + "\n")
    with pytest.raises(FacemtlError, match=rf"fer2013.csv:2: expected 2304 pixel values 0..255; {match}$"):
        load_dataset("fer2013", tmp_path, "train", strict=True)[0]
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n" + fer_rows(["1", "2"]) + "\n")
    with pytest.raises(FacemtlError, match=r"fer2013.csv:2: expected 2304 pixel values 0..255; got 2 values$"):
        load_dataset("fer2013", tmp_path, "train", strict=True)[0]


def test_bom_in_text_annotation_files(tmp_path):
    write_jpg(tmp_path / "a.jpg")
    (tmp_path / "training.txt").write_bytes(f"\ufeffa.jpg {GOOD}\n".encode())
    assert load_dataset("mtfl", tmp_path, "train")[0]["meta"]["id"] == "a.jpg"
    p = tmp_path / "x.pts"
    write_pts(p, [(1, 2)])
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    np.testing.assert_allclose(ibug.read_pts(p), [[1, 2]])
