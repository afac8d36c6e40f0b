"""Format readers: tiny fixtures written in each dataset's exact on-disk format, read back value by value."""

import re
import sqlite3
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from facemtl.data import DATASETS, load_dataset
from facemtl.data.formats import affectnet, celebamask_hq, ibug, rafdb
from facemtl.errors import FacemtlError

# Fixture coordinates are arbitrary values checked for pass-through, often far outside the tiny
# fixture images; the out-of-image report itself is tested in test_reader_validation.py.
pytestmark = pytest.mark.filterwarnings("ignore:.*labels more than 50% of the image size outside the image")


def write_jpg(path: Path, w=40, h=30, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(path.suffix or ".jpg", img)
    assert ok
    buf.tofile(str(path))
    return img


def write_png(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    buf.tofile(str(path))


# ---------------------------------------------------------------- MTFL

MTFL_TRAIN = (
    " lfw_5590\\Aaron_Eckhart_0001.jpg 11 31 21 13 29 10 11 20 26 27 1 2 2 3\n"
    "\n"
    "net_7876\\img 2.jpg 5.5 25 15 7 23 8 9 15 20 21 2 1 1 5\n"
)


@pytest.fixture
def mtfl_root(tmp_path):
    write_jpg(tmp_path / "lfw_5590" / "Aaron_Eckhart_0001.jpg")
    write_jpg(tmp_path / "net_7876" / "img 2.jpg", seed=1)
    write_jpg(tmp_path / "AFLW" / "0001-image20056.jpg", seed=2)
    (tmp_path / "training.txt").write_text(MTFL_TRAIN)
    (tmp_path / "testing.txt").write_text("AFLW/0001-image20056.jpg 1 2 3 4 5 6 7 8 9 10 1 1 1 1\n")
    return tmp_path


def test_mtfl_reads_values(mtfl_root):
    ds = load_dataset("mtfl", mtfl_root, "train")
    assert len(ds) == 2
    a = ds[0]
    # x1..x5 then y1..y5, 1-based -> 0-based.
    np.testing.assert_allclose(a["landmarks"], [[10, 9], [30, 10], [20, 19], [12, 25], [28, 26]])
    assert a["landmarks"].dtype == np.float32
    assert (a["gender"], a["smile"], a["glasses"], a["pose"]) == (0, 1, 1, 2)
    assert a["image"].shape == (30, 40, 3) and a["image"].dtype == np.uint8
    assert a["meta"]["path"].endswith("lfw_5590/Aaron_Eckhart_0001.jpg")
    b = ds[1]  # path with a space, backslash
    np.testing.assert_allclose(b["landmarks"][0], [4.5, 7])
    assert (b["gender"], b["smile"], b["glasses"], b["pose"]) == (1, 0, 0, 4)
    t = load_dataset("mtfl", mtfl_root, "test", one_based=False)
    np.testing.assert_allclose(t[0]["landmarks"][:, 0], [1, 2, 3, 4, 5])
    np.testing.assert_allclose(t[0]["landmarks"][:, 1], [6, 7, 8, 9, 10])


def test_mtfl_image_is_rgb(mtfl_root):
    img = np.zeros((10, 10, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    cv2.imwrite(str(mtfl_root / "AFLW" / "0001-image20056.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = load_dataset("mtfl", mtfl_root, "test")[0]["image"]
    assert out[..., 0].mean() > 150 and out[..., 2].mean() < 50


@pytest.mark.parametrize(
    "line, match",
    [
        ("a.jpg 1 2 3\n", r"training.txt:1: expected 'path x1..x5"),
        ("a.jpg 1 2 3 4 5 6 7 8 9 x 1 1 1 1\n", r"training.txt:1: expected 10 numeric coordinates"),
        ("a.jpg 1 2 3 4 5 6 7 8 9 10 3 1 1 1\n", r"training.txt:1: expected gender label \(1-based\) in 1..2"),
        ("\n a.jpg 1 2 3 4 5 6 7 8 9 10 1 1 1 6\n", r"training.txt:2: expected pose label \(1-based\) in 1..5"),
    ],
)
def test_mtfl_malformed_lines(tmp_path, line, match):
    (tmp_path / "training.txt").write_text(line)
    with pytest.raises(FacemtlError, match=match):
        load_dataset("mtfl", tmp_path, "train")


def test_missing_folder_and_file_errors(tmp_path):
    with pytest.raises(FacemtlError, match=r"folder not found: .*nope.*official MTFL"):
        load_dataset("mtfl", tmp_path / "nope", "train")
    with pytest.raises(FacemtlError, match=r"file not found: .*training.txt.*official MTFL"):
        load_dataset("mtfl", tmp_path, "train")
    with pytest.raises(FacemtlError, match="unknown split 'val'"):
        load_dataset("mtfl", tmp_path, "val")
    with pytest.raises(FacemtlError, match="unknown dataset 'mtlf'"):
        load_dataset("mtlf", tmp_path, "train")
    with pytest.raises(FacemtlError, match="unknown option.*colour.*one_based"):
        load_dataset("mtfl", tmp_path, "train", colour=True)


def test_undecodable_image_skipped_with_warning_or_error_when_strict(mtfl_root):
    (mtfl_root / "lfw_5590" / "Aaron_Eckhart_0001.jpg").write_bytes(b"not a jpeg")
    ds = load_dataset("mtfl", mtfl_root, "train")
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 image\(s\) that failed to decode"):
        items = list(ds)
    assert len(items) == 1 and items[0]["pose"] == 4  # the good one, with its own labels
    # Random access to the broken index gives the next decodable sample (never the broken one's labels).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ds[0]["meta"]["id"] == "net_7876/img 2.jpg"
    strict = load_dataset("mtfl", mtfl_root, "train", strict=True)
    with pytest.raises(FacemtlError, match="cannot decode .*Aaron_Eckhart_0001.jpg"):
        strict[0]


def test_missing_images_are_counted(mtfl_root):
    (mtfl_root / "net_7876" / "img 2.jpg").unlink()
    with pytest.warns(UserWarning, match=r"1 annotated image\(s\) not found on disk"):
        ds = load_dataset("mtfl", mtfl_root, "train")
    assert len(ds) == 1
    with pytest.raises(FacemtlError, match="not found on disk"):
        load_dataset("mtfl", mtfl_root, "train", strict=True)


def test_len_does_not_decode(mtfl_root, monkeypatch):
    import facemtl.data.formats.mtfl as mtfl

    calls = []
    monkeypatch.setattr(mtfl, "read_image", lambda p: calls.append(p))
    ds = load_dataset("mtfl", mtfl_root, "train")
    assert len(ds) == 2 and calls == []
    ds[0]  # reading an item is what decodes (so the patch above is the reader's decoder)
    assert len(calls) == 1


def test_read_image_decodes_any_path_and_names_the_file_it_cannot_read(tmp_path):
    from facemtl.data.images import DecodeError, read_gray, read_image

    written = write_jpg(tmp_path / "ü dir" / "a face.png", 12, 8)  # PNG: exact pixels back
    rgb = read_image(tmp_path / "ü dir" / "a face.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 12, 3)
    np.testing.assert_array_equal(rgb, written[:, :, ::-1])  # written BGR, read RGB
    assert read_gray(tmp_path / "ü dir" / "a face.png").shape == (8, 12)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    for path, why in ((tmp_path / "missing.jpg", "no such file"), (tmp_path, "is a folder"),
                      (tmp_path / "broken.jpg", r"not an image OpenCV can read \(expected JPEG, PNG")):
        with pytest.raises(DecodeError, match=f"^{re.escape(str(path))}: {why}"):
            read_image(path)
    assert issubclass(DecodeError, FacemtlError)  # one line on the command line, no traceback


# ---------------------------------------------------------------- AFLW


def make_aflw(root: Path):
    data = root / "data"
    write_jpg(data / "flickr" / "0" / "image00002.jpg", 60, 50)
    write_jpg(data / "flickr" / "2" / "image00013.jpg", 60, 50, seed=1)
    con = sqlite3.connect(data / "aflw.sqlite")
    c = con.cursor()
    c.execute("CREATE TABLE faceimages(image_id, db_id, file_id, filepath, bw, width, height)")
    c.execute("CREATE TABLE faces(face_id, file_id, db_id)")
    c.execute("CREATE TABLE facepose(face_id, roll, pitch, yaw, annot_type_id)")
    c.execute("CREATE TABLE facerect(face_id, x, y, w, h, annot_type_id)")
    c.execute("CREATE TABLE facemetadata(face_id, sex, occluded, glasses, bw, annot_type_id)")
    c.execute("CREATE TABLE featurecoords(face_id, feature_id, x, y)")
    c.executemany("INSERT INTO faceimages VALUES (?,?,?,?,?,?,?)",
                  [(1, 1, "image00002.jpg", "0/image00002.jpg", 0, 60, 50),
                   (2, 1, "image00013.jpg", "2/image00013.jpg", 0, 60, 50)])
    c.executemany("INSERT INTO faces VALUES (?,?,?)", [(39341, "image00002.jpg", 1), (39342, "image00013.jpg", 1),
                                                       (39343, "image00013.jpg", 1)])
    c.executemany("INSERT INTO facepose VALUES (?,?,?,?,?)",
                  [(39341, 0.1, -0.2, np.radians(-30), 1), (39342, 0, 0, np.radians(50), 1), (39343, 0, 0, 0.0, 1)])
    c.executemany("INSERT INTO facerect VALUES (?,?,?,?,?,?)",
                  [(39341, -5, 3, 40, 42, 1), (39342, 10, 10, 30, 30, 1), (39343, 1, 1, 20, 20, 1)])
    c.executemany("INSERT INTO facemetadata VALUES (?,?,?,?,?,?)",
                  [(39341, "f", 0, 1, 0, 1), (39342, "m", 0, 0, 0, 1), (39343, "m", 0, 0, 0, 1)])
    coords = [(39341, fid, 10.0 + fid, 20.0 + fid) for fid in range(1, 22) if fid not in (1, 13)]
    coords += [(39342, fid, 5.0, 6.0) for fid in range(1, 22)]
    coords += [(39343, fid, 7.0, 8.0) for fid in range(1, 22)]
    c.executemany("INSERT INTO featurecoords VALUES (?,?,?,?)", coords)
    con.commit()
    con.close()
    return data


def test_aflw_values_visibility_and_pose(tmp_path):
    make_aflw(tmp_path)
    ds = load_dataset("aflw", tmp_path, "all")
    assert len(ds) == 3
    a = next(r for r in ds if r["meta"]["id"] == 39341)
    assert a["landmarks"].shape == (21, 2) and a["visibility"].dtype == bool
    assert not a["visibility"][0] and not a["visibility"][12] and a["visibility"].sum() == 19
    np.testing.assert_allclose(a["landmarks"][1], [12, 22])  # feature_id 2
    np.testing.assert_allclose(a["box"], [-5, 3, 35, 45])
    assert a["gender"] == 1 and a["glasses"] == 0  # 'f', glasses=1 -> class 0 "glasses"
    assert a["meta"]["yaw"] == pytest.approx(-30) and a["pose"] == 1  # [-45, -15): left
    assert a["meta"]["pitch"] == pytest.approx(np.degrees(-0.2))
    assert a["meta"]["pose_bins"]["yaw"] == 5  # (-30 + 180) // 30
    b = next(r for r in ds if r["meta"]["id"] == 39342)
    assert b["pose"] == 4 and b["gender"] == 0 and b["glasses"] == 1
    assert b["image"].shape == (50, 60, 3)
    five = load_dataset("aflw", tmp_path, "all", points=5)
    f = next(r for r in five if r["meta"]["id"] == 39341)
    np.testing.assert_allclose(f["landmarks"][0], [18, 28])  # LeftEyeCenter, feature 8
    assert f["visibility"].all() and f["meta"]["point_set"] == "mtfl5"


def test_aflw_split_is_seeded_and_disjoint(tmp_path):
    make_aflw(tmp_path)
    tr = load_dataset("aflw", tmp_path, "train", ratio=0.67, seed=3)
    te = load_dataset("aflw", tmp_path, "test", ratio=0.67, seed=3)
    ids_tr = [r["meta"]["id"] for r in tr]
    ids_te = [r["meta"]["id"] for r in te]
    assert len(ids_tr) == 2 and len(ids_te) == 1 and not set(ids_tr) & set(ids_te)
    assert ids_tr == [r["meta"]["id"] for r in load_dataset("aflw", tmp_path, "train", ratio=0.67, seed=3)]
    vis = load_dataset("aflw", tmp_path, "all", all_visible=True)
    assert len(vis) == 2
    with pytest.raises(FacemtlError, match="ratio must be in"):
        load_dataset("aflw", tmp_path, "train", ratio=1.5)
    (tmp_path / "data" / "aflw.sqlite").unlink()
    with pytest.raises(FacemtlError, match="aflw.sqlite.*official AFLW"):
        load_dataset("aflw", tmp_path, "train")


# ---------------------------------------------------------------- CelebA


def make_celeba(root: Path):
    for i in (1, 2, 3):
        write_jpg(root / "img_align_celeba" / f"{i:06d}.jpg", 36, 44, seed=i)
    (root / "Anno").mkdir()
    (root / "Eval").mkdir()
    (root / "Anno" / "list_landmarks_align_celeba.txt").write_text(
        "3\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        "000001.jpg 69  109  106  113   77  142   73  152  108  154\n"
        "000002.jpg 69  110  107  112   81  135   70  151  108  153\n"
        "000003.jpg 76  112  104  106  108  128   74  156   98  158\n")
    names = ["5_o_Clock_Shadow"] * 15 + ["Eyeglasses"] + ["x"] * 4 + ["Male"] + ["y"] * 10 + ["Smiling"] + ["z"] * 8
    names = [n if n in ("Eyeglasses", "Male", "Smiling") else f"{n}{i}" for i, n in enumerate(names)]
    assert len(names) == 40

    def row(male, smile, glasses):
        v = ["-1"] * 40
        v[20], v[31], v[15] = male, smile, glasses
        return "  ".join(v)

    (root / "Anno" / "list_attr_celeba.txt").write_text(
        "3\n" + " ".join(names) + "\n"
        f"000001.jpg {row('1', '-1', '1')}\n000002.jpg {row('-1', '1', '-1')}\n000003.jpg {row('1', '1', '-1')}\n")
    (root / "Eval" / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n")
    (root / "Anno" / "identity_CelebA.txt").write_text("000001.jpg 2880\n000002.jpg 2937\n000003.jpg 8692\n")


def test_celeba_values_and_partition(tmp_path):
    make_celeba(tmp_path)
    tr = load_dataset("celeba", tmp_path, "train")
    assert len(tr) == 1 and len(load_dataset("celeba", tmp_path, "val")) == 1
    a = tr[0]
    np.testing.assert_allclose(a["landmarks"], [[69, 109], [106, 113], [77, 142], [73, 152], [108, 154]])
    assert (a["gender"], a["smile"], a["glasses"]) == (0, 1, 0)
    assert a["attributes"].shape == (40,) and a["attributes"].sum() == 2
    assert a["meta"]["identity"] == 2880
    te = load_dataset("celeba", tmp_path, "test")[0]
    assert (te["gender"], te["smile"], te["glasses"]) == (0, 0, 1)


def test_celeba_malformed(tmp_path):
    make_celeba(tmp_path)
    p = tmp_path / "Anno" / "list_landmarks_align_celeba.txt"
    p.write_text(p.read_text().replace("000002.jpg 69  110", "000002.jpg 69"))
    with pytest.raises(FacemtlError, match=r"list_landmarks_align_celeba.txt:4: expected an image name and 10 values"):
        load_dataset("celeba", tmp_path, "train")


# ---------------------------------------------------------------- 300W


def write_pts(path: Path, pts):
    body = "\n".join(f"{x} {y}" for x, y in pts)
    path.write_text(f"version: 1\nn_points:  {len(pts)}\n{{\n{body}\n}}\n")


def test_300w_pts_split_and_five_points(tmp_path):
    pts = np.stack([np.arange(68) + 1.0, np.arange(68) * 2 + 1.0], 1)
    for sub, name in (("afw", "1.jpg"), ("helen/trainset", "a.jpg"), ("lfpw/trainset", "b.png"),
                      ("helen/testset", "c.jpg"), ("lfpw/testset", "d.jpg"), ("ibug", "image_092 _01.jpg")):
        write_jpg(tmp_path / sub / name)
        write_pts((tmp_path / sub / name).with_suffix(".pts"), pts)
    assert len(load_dataset("300w", tmp_path, "train")) == 3
    assert len(load_dataset("300w", tmp_path, "common")) == 2
    ch = load_dataset("300w", tmp_path, "challenging")
    assert len(ch) == 1 and len(load_dataset("300w", tmp_path, "full")) == 3
    s = ch[0]
    assert s["meta"]["id"] == "image_092 _01"
    np.testing.assert_allclose(s["landmarks"][:3], [[0, 0], [1, 2], [2, 4]])  # 1-based -> 0-based
    five = load_dataset("300w", tmp_path, "challenging", points=5)[0]["landmarks"]
    np.testing.assert_allclose(five[0], [38.5, 77])  # mean of 36..41 (0-based x = index)
    np.testing.assert_allclose(five[2], [30, 60])
    np.testing.assert_allclose(five[3:], [[48, 96], [54, 108]])


def test_300w_malformed_pts(tmp_path):
    p = tmp_path / "x.pts"
    p.write_text("version: 1\nn_points: 68\n{\n1 2\n3\n}\n")
    with pytest.raises(FacemtlError, match=r"x.pts:5: expected two numbers 'x y'"):
        ibug.read_pts(p)
    p.write_text("version: 1\nn_points: 3\n{\n1 2\n}\n")
    with pytest.raises(FacemtlError, match="expected 3 points .* found 1"):
        ibug.read_pts(p)
    with pytest.raises(FacemtlError, match=r"folder not found: .*afw"):
        load_dataset("300w", tmp_path, "train")


# ---------------------------------------------------------------- WFLW


def test_wflw_line_layout(tmp_path):
    ann = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    ann.mkdir(parents=True)
    write_jpg(tmp_path / "WFLW_images" / "0--Parade" / "0_Parade_marchingband_1_849.jpg")
    xy = np.stack([np.arange(98) * 0.5, np.arange(98) + 0.25], 1)
    fields = [f"{v:.3f}" for v in xy.reshape(-1)] + ["1", "2", "30", "40"] + ["0", "1", "0", "0", "1", "0"]
    fields.append("0--Parade/0_Parade_marchingband_1_849.jpg")
    (ann / "list_98pt_rect_attr_train.txt").write_text(" ".join(fields) + "\n")
    s = load_dataset("wflw", tmp_path, "train")[0]
    np.testing.assert_allclose(s["landmarks"], xy, atol=1e-3)
    np.testing.assert_allclose(s["box"], [1, 2, 30, 40])
    assert s["meta"]["flags"] == {"pose": 0, "expression": 1, "illumination": 0, "make-up": 0, "occlusion": 1, "blur": 0}
    five = load_dataset("wflw", tmp_path, "train", points=5)[0]
    assert five["meta"]["point_set"] == "mtfl5"
    np.testing.assert_allclose(five["landmarks"], [xy[60:68].mean(0), xy[68:76].mean(0), xy[54], xy[76], xy[82]],
                               atol=1e-3)
    with pytest.raises(FacemtlError, match="points must be 98 or 5"):
        load_dataset("wflw", tmp_path, "train", points=68)
    (ann / "list_98pt_rect_attr_test.txt").write_text(" ".join(fields[:150]) + "\n")
    with pytest.raises(FacemtlError, match=r"list_98pt_rect_attr_test.txt:1: expected 207 fields"):
        load_dataset("wflw", tmp_path, "test")


# ---------------------------------------------------------------- Helen


def make_helen(root: Path, names=("100032540_1", "2_b")):
    for i, name in enumerate(names):
        write_jpg(root / "images" / f"{name}.jpg", 20, 16, seed=i)
        maps = np.zeros((11, 16, 20), np.uint8)
        maps[0] = 200
        maps[1, 4:12, 4:16] = 220  # skin
        maps[4, 6:8, 5:8] = 250  # left eye (beats skin by argmax)
        maps[10, 0:3, :] = 130  # hair, weak: argmax loses to background 200, threshold > 127 wins
        for c in range(11):
            write_png(root / "labels" / name / f"{name}_lbl{c:02d}.png", maps[c])
    (root / "exemplars.txt").write_text(f"1 , {names[0]}\n\n2 , {names[1]} \n")
    (root / "tuning.txt").write_text(f"1 , {names[1]}\n")
    (root / "testing.txt").write_text(f"1 , {names[0]}\n")


def test_helen_masks_argmax_and_threshold(tmp_path):
    make_helen(tmp_path)
    ds = load_dataset("helen", tmp_path, "train")
    assert len(ds) == 2 and len(load_dataset("helen", tmp_path, "val")) == 1
    m = ds[0]["parsing"]
    assert m.shape == (16, 20) and m.dtype == np.uint8
    assert m[0, 0] == 0 and m[5, 10] == 1 and m[6, 5] == 4 and m[1, 1] == 0
    t = load_dataset("helen", tmp_path, "test", mask_rule="threshold")[0]["parsing"]
    assert t[1, 1] == 10 and t[6, 5] == 4 and t[5, 10] == 1 and t[15, 0] == 0
    with pytest.raises(FacemtlError, match="mask_rule"):
        load_dataset("helen", tmp_path, "test", mask_rule="max")


def test_helen_class_map_cache(tmp_path, monkeypatch):
    from facemtl.data.formats import helen

    monkeypatch.setenv("FACEMTL_CACHE", str(tmp_path / "cache"))
    make_helen(tmp_path / "h")
    fresh = load_dataset("helen", tmp_path / "h", "train", cache=False)[0]["parsing"]
    first = load_dataset("helen", tmp_path / "h", "train")[0]["parsing"]
    assert len(list(helen.cache_dir().glob("*.png"))) == 1
    decoded = []
    monkeypatch.setattr(helen, "read_gray", lambda p: decoded.append(p) or pytest.fail("decoded a label PNG"))
    again = load_dataset("helen", tmp_path / "h", "train")[0]["parsing"]  # from the cache: no label decoded
    np.testing.assert_array_equal(first, fresh)
    np.testing.assert_array_equal(again, fresh)
    monkeypatch.undo()
    monkeypatch.setenv("FACEMTL_CACHE", str(tmp_path / "cache"))
    # another rule is another key; an edited label file is a new key too
    thr = load_dataset("helen", tmp_path / "h", "train", mask_rule="threshold")[0]["parsing"]
    assert thr[1, 1] == 10 and fresh[1, 1] == 0
    maps = np.zeros((16, 20), np.uint8)
    maps[:, :] = 255
    import os
    label = tmp_path / "h" / "labels" / "100032540_1" / "100032540_1_lbl09.png"
    write_png(label, maps)
    os.utime(label, ns=(1, 1))  # a different modification time even on a coarse clock
    edited = load_dataset("helen", tmp_path / "h", "train")[0]["parsing"]
    assert (edited == 9).all()


def test_helen_missing_label_and_bad_list(tmp_path):
    make_helen(tmp_path)
    (tmp_path / "labels" / "2_b" / "2_b_lbl07.png").unlink()
    with pytest.raises(FacemtlError, match=r"label file not found: .*2_b_lbl07.png"):
        load_dataset("helen", tmp_path, "val")[0]
    (tmp_path / "tuning.txt").write_text("1 , a , b\n")
    with pytest.raises(FacemtlError, match=r"tuning.txt:1: expected '<index> , <image name>'"):
        load_dataset("helen", tmp_path, "val")


# ---------------------------------------------------------------- LaPa


def test_lapa(tmp_path):
    base = tmp_path / "train"
    write_jpg(base / "images" / "a_1.jpg", 12, 10)
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:6] = 7
    write_png(base / "labels" / "a_1.png", mask)
    (base / "landmarks").mkdir()
    pts = np.arange(212, dtype=float).reshape(106, 2) / 10
    (base / "landmarks" / "a_1.txt").write_text("106\n" + "\n".join(f"{x} {y}" for x, y in pts) + "\n")
    s = load_dataset("lapa", tmp_path, "train")[0]
    np.testing.assert_array_equal(s["parsing"], mask)
    np.testing.assert_allclose(s["landmarks"], pts, atol=1e-6)
    (base / "landmarks" / "a_1.txt").write_text("106\n1 2\n")
    with pytest.raises(FacemtlError, match="says 106 points, found 1"):
        load_dataset("lapa", tmp_path, "train")


# ---------------------------------------------------------------- CelebAMask-HQ


def test_celebamask_hq_painting_order_mapping_and_split(tmp_path):
    write_jpg(tmp_path / "CelebA-HQ-img" / "0.jpg", 16, 16)
    write_jpg(tmp_path / "CelebA-HQ-img" / "1.jpg", 16, 16, seed=1)
    anno = tmp_path / "CelebAMask-HQ-mask-anno" / "0"
    skin = np.zeros((8, 8), np.uint8)
    skin[1:7, 1:7] = 255
    eye_g = np.zeros((8, 8), np.uint8)
    eye_g[2:4, 1:7] = 255
    l_eye = np.zeros((8, 8), np.uint8)
    l_eye[2:4, 2:3] = 255
    hat = np.zeros((8, 8), np.uint8)
    hat[0, :] = 255
    for i in (0, 1):
        write_png(anno / f"{i:05d}_skin.png", skin)
        write_png(anno / f"{i:05d}_eye_g.png", eye_g)
        write_png(anno / f"{i:05d}_l_eye.png", l_eye)
        write_png(anno / f"{i:05d}_hat.png", hat)
    (tmp_path / "CelebA-HQ-to-CelebA-mapping.txt").write_text("idx orig_idx orig_file\n0 119613 119614.jpg\n1 99094 099095.jpg\n")
    (tmp_path / "list_eval_partition.txt").write_text("099095.jpg 0\n119614.jpg 2\n")
    tr = load_dataset("celebamask-hq", tmp_path, "train")
    assert len(tr) == 1 and tr[0]["meta"]["id"] == 1
    s = load_dataset("celebamask-hq", tmp_path, "test")[0]
    assert s["parsing19"].shape == (16, 16)  # mask upsampled to the image, nearest
    m19 = s["parsing19"][::2, ::2]
    assert m19[5, 5] == 1 and m19[2, 4] == 3 and m19[2, 2] == 4 and m19[0, 3] == 14 and m19[7, 7] == 0
    m = s["parsing"][::2, ::2]
    assert m[5, 5] == 1 and m[2, 4] == 1 and m[2, 2] == 4 and m[0, 3] == 0
    np.testing.assert_array_equal(celebamask_hq.TO_HELEN[[2, 6, 7, 10, 11, 12, 13]], [6, 2, 3, 8, 7, 9, 10])
    small = load_dataset("celebamask-hq", tmp_path, "test", image_size=8)[0]
    assert small["image"].shape == (8, 8, 3) and small["parsing"].shape == (8, 8)


# ---------------------------------------------------------------- FER2013, RAF-DB, AffectNet


def test_fer2013_columns_with_spaces_and_usage(tmp_path):
    rows = []
    for i, usage in enumerate(["Training", "PublicTest", "PrivateTest", "Training"]):
        px = " ".join(str((i * 7 + k) % 256) for k in range(2304))
        rows.append(f"{i % 7},{px},{usage}")
    (tmp_path / "fer2013.csv").write_text("emotion, pixels, Usage\n" + "\n".join(rows) + "\n")
    tr = load_dataset("fer2013", tmp_path, "train")
    assert len(tr) == 2 and len(load_dataset("fer2013", tmp_path, "val")) == 1
    s = tr[1]
    assert s["emotion"] == 3 and s["image"].shape == (48, 48, 3)
    assert s["image"][0, 0, 0] == 21 and s["image"][0, 1, 2] == 22 and s["image"][1, 0, 1] == (21 + 48) % 256
    te = load_dataset("fer2013", tmp_path / "fer2013.csv", "test")[0]
    assert te["emotion"] == 2
    # Windows line ends and quoted fields: same values (rows are re-read from their byte offsets).
    (tmp_path / "fer2013.csv").write_text("emotion, pixels, Usage\r\n" + "\r\n".join(
        r.replace(",", ',"', 1).replace(",Tr", '",Tr').replace(",Pu", '",Pu').replace(",Pr", '",Pr') for r in rows) + "\r\n",
        newline="")
    crlf = load_dataset("fer2013", tmp_path, "train")[1]
    np.testing.assert_array_equal(crlf["image"], s["image"])
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n9,1 2,Training\n")
    with pytest.raises(FacemtlError, match=r"fer2013.csv:2: expected emotion 0..6"):
        load_dataset("fer2013", tmp_path, "train")
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n1,1 2,Training\n")
    with pytest.warns(UserWarning, match="failed to decode"):
        assert list(load_dataset("fer2013", tmp_path, "train")) == []


def test_rafdb_label_map(tmp_path):
    lines = []
    for i, lab in enumerate(range(1, 8), 1):
        write_jpg(tmp_path / "Image" / "aligned" / f"train_{i:05d}_aligned.jpg", seed=i)
        lines.append(f"train_{i:05d}.jpg {lab}")
    lines.append("test_0001.jpg 4")
    write_jpg(tmp_path / "Image" / "aligned" / "test_0001_aligned.jpg")
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    tr = load_dataset("rafdb", tmp_path, "train")
    # Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral -> FER indices
    assert [s["emotion"] for s in tr] == [5, 2, 1, 3, 4, 0, 6]
    from facemtl.tasks import STANDARD_TASKS

    names = STANDARD_TASKS["emotion"].class_names
    assert [names[rafdb.RAF_TO_FER[k]] for k in range(1, 8)] == ["Surprise", "Fear", "Disgust", "Happy", "Sad",
                                                                  "Angry", "Neutral"]
    te = load_dataset("rafdb", tmp_path, "test")
    assert len(te) == 1 and te[0]["emotion"] == 3 and te[0]["meta"]["raf_label"] == 4
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("train_1.jpg 8\n")
    with pytest.raises(FacemtlError, match=r"list_patition_label.txt:1: expected label in 1..7"):
        load_dataset("rafdb", tmp_path, "train")


def test_affectnet_map_drop_and_contempt(tmp_path):
    lists = tmp_path / "Manually_Annotated_file_lists"
    lists.mkdir()
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    rows = []
    for expr in range(11):
        name = f"{expr}/img{expr}.jpg"
        write_jpg(tmp_path / "Manually_Annotated_Images" / name, seed=expr)
        rows.append(f"{name},3,4,20,21,1.5;2.5;3;4,{expr},0.5,-0.25")
    (lists / "training.csv").write_text(header + "\n".join(rows) + "\n")
    ds = load_dataset("affectnet", tmp_path, "train")
    assert [s["emotion"] for s in ds] == [6, 3, 4, 5, 2, 1, 0]
    assert ds.dropped == {"contempt": 1, "none": 1, "uncertain": 1, "no-face": 1}
    s = ds[0]
    np.testing.assert_allclose(s["box"], [3, 4, 23, 25])
    np.testing.assert_allclose(s["landmarks"], [[1.5, 2.5], [3, 4]])
    assert s["meta"]["valence"] == 0.5 and s["meta"]["arousal"] == -0.25
    keep = load_dataset("affectnet", tmp_path, "train", contempt="keep")
    assert len(keep) == 8 and keep[7]["emotion"] == 7
    assert affectnet.AFFECTNET_TO_FER == {0: 6, 1: 3, 2: 4, 3: 5, 4: 2, 5: 1, 6: 0}
    (lists / "validation.csv").write_text(header + "a.jpg,1,2,3,4,,12,0,0\n")
    with pytest.raises(FacemtlError, match=r"validation.csv:2: expected expression in 0..10"):
        load_dataset("affectnet", tmp_path, "val")


# ---------------------------------------------------------------- emotion folder


def make_emotion_folder(root: Path, classes=("Happy", "Sad"), subjects=10, per_subject=2):
    for c in classes:
        for s in range(subjects):
            for k in range(per_subject):
                write_jpg(root / c / f"s{s:03d}_{k:04d}.jpg", 8, 8, seed=s)


def test_emotion_folder_subject_disjoint_split(tmp_path):
    make_emotion_folder(tmp_path, ("happy", "Sad", "Neutral"))
    from facemtl.data.formats.emotion_folder import FER_CLASSES

    tr = load_dataset("emotion-folder", tmp_path, "train", seed=1, classes=FER_CLASSES)
    te = load_dataset("emotion-folder", tmp_path, "test", seed=1, classes=FER_CLASSES)
    assert len(tr) + len(te) == 60
    subj_tr = {r["subject"] for r in tr.records}
    subj_te = {r["subject"] for r in te.records}
    assert not subj_tr & subj_te
    for label in (3, 4, 6):  # FER order: Happy 3, Sad 4, Neutral 6
        n_test = len({r["subject"] for r in te.records if r["emotion"] == label})
        assert n_test == 2  # 20% of 10 subjects per class
    assert {r["emotion"] for r in tr.records} == {3, 4, 6}
    same = load_dataset("emotion-folder", tmp_path, "test", seed=1, classes=FER_CLASSES)
    assert [r["path"] for r in same.records] == [r["path"] for r in te.records]
    s = te[0]
    assert s["meta"]["subject"] in subj_te and s["image"].shape == (8, 8, 3)


def test_emotion_folder_custom_classes_and_errors(tmp_path):
    make_emotion_folder(tmp_path, ("Puzzled", "Tired"), subjects=3, per_subject=1)
    from facemtl.data.formats.emotion_folder import FER_CLASSES, IFAN_BNU_CLASSES

    ds = load_dataset("emotion-folder", tmp_path, "all", classes=IFAN_BNU_CLASSES)
    assert sorted({s["emotion"] for s in ds}) == [3, 5]
    with pytest.raises(FacemtlError, match="folder .*Puzzled matches no class"):
        load_dataset("emotion-folder", tmp_path, "all", classes=FER_CLASSES)
    with pytest.raises(FacemtlError, match="cannot read a subject id from .*s000_0000.jpg"):
        load_dataset("emotion-folder", tmp_path, "all", classes=IFAN_BNU_CLASSES, subject_regex=r"^subj(\d+)")
    ds = load_dataset("emotion-folder", tmp_path, "all", classes=IFAN_BNU_CLASSES, subject_regex=r"^s(?P<subject>\d)")
    assert {r["subject"] for r in ds.records} == {"0"}


def test_every_registered_reader_has_fixture_coverage(tmp_path, monkeypatch):
    """Every reader in the registry reads samples from a fixture written by a test of this module.

    The covered set is observed, not listed: the fixture tests that need only ``tmp_path`` are run
    again with each registered reader wrapped, recording which readers returned at least one sample
    (and the test's own value checks then passed). A reader registered without such a fixture test,
    or one that reads nothing from its fixture, makes this fail."""
    import functools
    import inspect
    import sys

    import facemtl.data as data

    original = data.dataset_loader
    read: set[str] = set()

    def recording_loader(name):
        load = original(name)

        @functools.wraps(load)  # keeps the signature load_dataset checks options against
        def wrapped(root, split, **options):
            ds = load(root, split, **options)
            if len(ds) > 0:
                read.add(str(name).lower())
            return ds

        return wrapped

    monkeypatch.setattr(data, "dataset_loader", recording_loader)
    module = sys.modules[__name__]
    ran = []
    for test_name, fn in sorted(vars(module).items()):
        if (test_name.startswith("test_") and test_name != "test_every_registered_reader_has_fixture_coverage"
                and inspect.isfunction(fn) and list(inspect.signature(fn).parameters) == ["tmp_path"]):
            (tmp_path / test_name).mkdir()
            fn(tmp_path / test_name)
            ran.append(test_name)
    assert len(ran) >= 10, ran
    missing = sorted(set(DATASETS) - read)
    assert not missing, f"registered readers with no fixture test reading samples through them: {missing}"
    assert read == set(DATASETS)


def test_readers_feed_facecrop_and_to_sample(mtfl_root):
    from facemtl.data.sample import to_sample
    from facemtl.data.transforms import FaceCrop
    from facemtl.tasks import get_tasks

    raw = load_dataset("mtfl", mtfl_root, "train")[0]
    out = FaceCrop(size=32)(raw)
    s = to_sample(out, get_tasks(["landmarks", "gender", "pose"]))
    assert s["image"].shape == (3, 32, 32)
    assert 0 < float(s["landmarks"].min()) and float(s["landmarks"].max()) < 1
    assert int(s["pose"]) == 2


# ---------------------------------------------------------------- synthetic exporter read back


def test_synth_export_mtfl_read_back(tmp_path):
    from facemtl.cli import main
    from facemtl.data.synth import render_face

    out = tmp_path / "mtfl"
    assert main(["synth", "export", "--format", "mtfl", "--n", "5", "--size", "64", "--seed", "3",
                 "--out", str(out)]) == 0
    tr, te = load_dataset("mtfl", out, "train"), load_dataset("mtfl", out, "test")
    assert (len(tr), len(te)) == (4, 1)
    for i, raw in enumerate([*tr, *te]):
        ref = render_face(3, i, "studio", 64)
        np.testing.assert_allclose(raw["landmarks"], ref["landmarks"], atol=1e-3)
        for key in ("gender", "smile", "glasses", "pose"):
            assert raw[key] == ref[key], key
        assert raw["image"].shape == ref["image"].shape
        assert np.abs(raw["image"].astype(int) - ref["image"].astype(int)).mean() < 8  # JPEG


def test_synth_export_helen_read_back(tmp_path):
    from facemtl.cli import main
    from facemtl.data.synth import render_face

    out = tmp_path / "helen"
    assert main(["synth", "export", "--format", "helen", "--n", "4", "--size", "64", "--out", str(out)]) == 0
    seen = []
    for split in ("train", "val", "test"):
        for raw in load_dataset("helen", out, split):
            i = int(raw["meta"]["id"].split("_")[1])
            np.testing.assert_array_equal(raw["parsing"], render_face(0, i, "studio", 64)["parsing"])
            seen.append(i)
    assert sorted(seen) == [0, 1, 2, 3]


def test_synth_export_emotion_folder_read_back(tmp_path):
    from facemtl.cli import main
    from facemtl.data.synth import render_face

    out = tmp_path / "emo"
    assert main(["synth", "export", "--format", "emotion-folder", "--n", "12", "--size", "64", "--out", str(out)]) == 0
    from facemtl.data.formats.emotion_folder import FER_CLASSES

    all_ = load_dataset("emotion-folder", out, "all", classes=FER_CLASSES)  # the exporter's labels: FER order
    assert len(all_) == 12
    for raw in all_:
        i = int(Path(raw["meta"]["path"]).stem.split("_")[1])
        ref = render_face(0, i, "studio", 64)
        assert raw["emotion"] == ref["emotion"]
        assert raw["meta"]["subject"] == f"S{ref['meta']['subject']:03d}"
        np.testing.assert_array_equal(raw["image"], ref["image"])  # PNG: exact
    tr, te = load_dataset("emotion-folder", out, "train"), load_dataset("emotion-folder", out, "test")
    assert len(tr) + len(te) == 12
    assert not {r["subject"] for r in tr.records} & {r["subject"] for r in te.records}


# ---------------------------------------------------------------- real-data configs


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_real_data_configs_load_and_their_reader_options_are_accepted(tmp_path, mtfl_root):
    from facemtl.config import load_config
    from facemtl.data.formats.emotion_folder import IFAN_BNU_CLASSES

    make_helen(tmp_path / "helen")
    make_emotion_folder(tmp_path / "emo", IFAN_BNU_CLASSES[:2], subjects=5, per_subject=1)
    make_aflw(tmp_path / "aflw")
    roots = {
        "ifan_mtfl_helen_emotion": [mtfl_root, tmp_path / "helen", tmp_path / "emo"],
        "dcnet_mtfl": [mtfl_root],
        "dcnet_aflw": [tmp_path / "aflw"],
    }
    for name, paths in roots.items():
        sets = [f"data.{i}.root={p}" for i, p in enumerate(paths)]
        cfg = load_config(CONFIGS / f"{name}.yaml", sets)
        assert len(cfg.data) == len(paths)
        from facemtl.data.mixing import source_options

        by_name = {t.name: t for t in cfg.build_tasks()}
        for src in cfg.data:
            # the options the trainer gives the reader (a declared task's classes and label key)
            options = source_options(src.name, [by_name[t] for t in src.tasks],
                                     {k: v for k, v in src.options.items() if k != "margin"})
            for split in (src.train_split, src.test_split):
                ds = load_dataset(src.name, src.root, split, **options)
                assert len(ds) >= 1, (name, src.name, split)
                raw = ds[0]
                assert all(t in raw for t in src.tasks), (name, src.name, split, src.tasks)
        if name.startswith("dcnet"):
            assert cfg.model.name == "dcnet" and cfg.model.kwargs["backbone"] == "resnet18"
        # The model section builds (the trainer's kwargs: tasks and sources from the data section).
        from facemtl.engine.loop import model_kwargs
        from facemtl.models.registry import create_model

        model = create_model(cfg.model.name, **model_kwargs(cfg))
        assert [t.name for t in model.tasks] == list(cfg.task_names)
        # Without roots the configs are rejected with the source named.
        with pytest.raises(FacemtlError, match=r"data.0.root"):
            load_config(CONFIGS / f"{name}.yaml", ["data.0.root="])
