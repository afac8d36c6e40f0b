"""benchmarks/posed_expressions.py: the labels file, the fetch, the rows and the report."""

import hashlib
import io
import sys
import tarfile
import urllib.request
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from facemtl.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import posed_expressions as pe  # noqa: E402

EMOTIONS = get_task("emotion").class_names


def test_labels_are_emotion_classes_and_tiles_cut_the_grid_without_overlap():
    doc = pe.labels()
    faces = doc["faces"]
    assert Counter(f["emotion"] for f in faces) == {"Neutral": 11, "Happy": 7, "Angry": 6, "Surprise": 5,
                                                    "Disgust": 4, "Fear": 1, "Sad": 1}
    assert all(f["emotion"] in EMOTIONS for f in faces)
    assert {f["image"].split("/")[0] for f in faces} == set(doc["sources"])
    assert len({(f["image"], f.get("tile")) for f in faces}) == len(faces)  # no face twice
    tiles = [f for f in faces if "crop" in f]
    assert len(tiles) == 11
    for f in tiles:  # tile rRcC of a 1920-px 5 x 5 grid: about 375 px a side, in its row and column
        x0, y0, x1, y1 = f["crop"]
        r, c = int(f["tile"][1]), int(f["tile"][3])
        assert 370 <= x1 - x0 <= 380 and 370 <= y1 - y0 <= 380
        assert (x0 + x1) // 2 // 384 == c and (y0 + y1) // 2 // 384 == r  # its centre in its fifth
        assert 0 <= x0 < x1 <= 1920 and 0 <= y0 < y1 <= 1920
    for name, source in doc["sources"].items():
        assert ("url" in source) != (name in pe.PIP_SOURCES)  # fetched by URL (and checked) or by pip


def _archive(path: Path, members: dict) -> bytes:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def test_fetch_checks_the_archives_and_unpacks_only_the_labelled_images(tmp_path, monkeypatch):
    doc = {"sources": {"a-1": {"url": "https://example.invalid/a-1.tar.gz"}, "b-2": {}},
           "faces": [{"image": "a-1/x.png", "emotion": "Happy"}, {"image": "b-2/y.jpg", "emotion": "Sad"}]}
    url_archive = _archive(tmp_path / "a.tar.gz", {"a-1/x.png": b"x", "a-1/other.png": b"o"})
    doc["sources"]["a-1"]["sha256"] = hashlib.sha256(url_archive).hexdigest()
    monkeypatch.setattr(pe, "labels", lambda: doc)

    def pip_download(folder, *packages):
        _archive(Path(folder) / "b.tar.gz", {"b-2/y.jpg": b"y", "b-2/setup.py": b""})
        return [Path(folder) / "b.tar.gz"]

    monkeypatch.setattr(pe, "download_sdists", pip_download)

    class Response:
        def __init__(self, data):
            self.data = data

        def read(self):
            return self.data

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(url_archive))
    pe.fetch(tmp_path / "out")
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.*")) == [
        "a-1/x.png", "b-2/y.jpg"]
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(b"changed"))
    with pytest.raises(SystemExit, match="sha256"):
        pe.fetch(tmp_path / "again")


def test_face_image_cuts_the_tile_and_says_how_to_fetch(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 30:50] = (0, 0, 255)  # red in RGB, written as BGR
    (tmp_path / "p").mkdir()
    cv2.imwrite(str(tmp_path / "p" / "grid.png"), image)
    tile = pe.face_image(tmp_path, {"image": "p/grid.png", "crop": [30, 10, 50, 20]})
    assert tile.shape == (10, 20, 3) and (tile == (255, 0, 0)).all()
    with pytest.raises(SystemExit, match="--fetch"):
        pe.face_image(tmp_path, {"image": "p/none.png"})


def test_rows_and_report_count_a_missed_face_as_wrong(capsys):
    faces = [{"image": "s-1/a.jpg", "tile": "r1c2", "crop": [0, 0, 1, 1], "emotion": "Happy"},
             {"image": "s-1/b.jpg", "emotion": "Neutral"}, {"image": "t-2/c.png", "emotion": "Neutral"}]
    happy = dict.fromkeys(EMOTIONS, 0.0) | {"Happy": 0.7, "Neutral": 0.3}
    rows = [pe.row(faces[0], happy), pe.row(faces[1], happy), pe.row(faces[2], None)]
    assert rows[0] == {"image": "a.jpg r1c2", "source": "s-1", "labelled": "Happy", "found": True,
                       "emotion": "Happy", "p_labelled": 0.7}
    assert rows[1]["emotion"] == "Happy" and rows[1]["p_labelled"] == 0.3
    assert rows[2] == {"image": "c.png", "source": "t-2", "labelled": "Neutral", "found": False}
    assert pe.by_source(rows) == "s-1 1/2, t-2 0/1"
    pe.report("m", rows)
    out = capsys.readouterr().out
    assert "found 2 of 3; emotion 1 of 2 clear expressions right" in out
    assert out.rstrip().endswith("right of all 3 (a missed face counts wrong): 1 (33%)")
    assert "c.png" in out and "missed" in out


def test_largest_face_is_chosen():
    from facemtl.inference.alignment import largest

    assert largest([[0, 0, 10, 10], [0, 0, 30, 20], [5, 5, 20, 20]]) == 1
    assert largest([]) is None


def test_options_errors(capsys, tmp_path, monkeypatch):
    with pytest.raises(SystemExit):
        pe.main(["bundled"])
    assert "give --photos DIR and at least one checkpoint or --fer FER_DIR" in capsys.readouterr().err
    from facemtl.inference.predictor import Predictor

    class LandmarksOnly:
        task_names = ("landmarks",)

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(lambda cls, path, **kw: LandmarksOnly()))
    with pytest.raises(SystemExit, match="run: the checkpoint has no emotion task \\(its tasks: landmarks\\)"):
        pe.main(["--photos", str(tmp_path), "run"])

