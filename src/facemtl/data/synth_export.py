"""Write synthetic faces in real datasets' on-disk formats (MTFL, AFLW, CelebA, Helen, emotion folders).

Layouts written, as ``docs/datasets.md`` describes the real ones (``out`` is created; it must
be new or an empty folder). An export is all or nothing: the files are written into
``out/.facemtl-partial`` and moved into ``out`` once every face is written, so an interrupted or
failed export leaves ``out`` empty (ready for the same command again), never a smaller dataset
that reads like a whole one:

* ``mtfl``: ``lfw_5590/synth_<index>.jpg`` (training) and ``AFLW/synth_<index>.jpg`` (testing),
  ``training.txt`` (first 80%, Windows backslash paths ``lfw_5590\\synth_000000.jpg``) and
  ``testing.txt`` (the rest, forward slashes). Line: ``path x1 .. x5 y1 .. y5 gender smile
  glasses pose`` with 1-based (Matlab) coordinates and 1-based attributes, as the real files.
* ``aflw``: ``aflw.sqlite`` and ``flickr/0/synth_<index>.jpg``. Tables: those the AFLW reader
  joins (the real database has more): ``faceimages(image_id, db_id, file_id, filepath, bw,
  width, height)`` with ``filepath = 0/synth_<index>.jpg``; ``faces(face_id, file_id, db_id)``,
  ``face_id = index + 1``; ``featurecoords(face_id, feature_id, x, y)``: the faces have only the
  5 points, so only the five AFLW features that are those points (LeftEyeCenter 8,
  RightEyeCenter 11, NoseCenter 15, MouthLeftCorner 18, MouthRightCorner 20), 0-based pixels
  (AFLW stores only visible points: the reader marks the other 16 invisible, and
  ``all_visible=True`` keeps no synthetic face); ``facerect(face_id, x, y, w, h,
  annot_type_id)``: the face square FaceCrop takes from the five points
  (:func:`facemtl.data.transforms.face_box`), in whole pixels as AFLW stores it;
  ``facepose(face_id, roll, pitch, yaw, annot_type_id)`` in radians (the synthetic
  convention: yaw > 0 turns the nose to image-right); ``facemetadata(face_id, sex, occluded,
  glasses, bw, annot_type_id)`` with sex ``m``/``f`` and glasses 1/0.
* ``celeba``: ``img_align_celeba/<index + 1:06d>.jpg``; ``Anno/list_landmarks_align_celeba.txt``
  (count line, header, ``000001.jpg lefteye_x lefteye_y .. rightmouth_y``, 0-based pixels as
  the reader takes them), ``Anno/list_attr_celeba.txt`` (all 40 columns: Male, Smiling and
  Eyeglasses from the synthetic labels, every other attribute -1), ``Anno/identity_CelebA.txt``
  (the synthetic subject) and ``Eval/list_eval_partition.txt`` (0 train, 1 val, 2 test: 10%
  each of val and test, each at least 1 once N >= 3, at the end; the rest train).
* ``helen``: ``images/<name>.jpg``, ``labels/<name>/<name>_lbl00.png .. _lbl10.png`` (8-bit,
  255 inside the class, PNG so masks stay exact), and ``exemplars.txt`` / ``tuning.txt`` /
  ``testing.txt`` with lines ``<k> , <name>``; ``name = synth_<index>`` (6 digits).
  Split: 5% testing, 10% tuning (each at least 1 once N >= 3), the rest exemplars.
* ``emotion-folder``: ``<EmotionName>/S<subject:03d>_<index:05d>.png``, one folder per FER2013
  class name (Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral); the subject id is the
  ``S...`` prefix before the underscore (several images share one subject).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from facemtl.data.formats.aflw import FIVE_POINTS
from facemtl.data.formats.celeba import ATTRIBUTES
from facemtl.data.synth import EMOTIONS, SyntheticFaces
from facemtl.data.transforms import face_box
from facemtl.errors import FacemtlError

FORMATS: tuple[str, ...] = ("mtfl", "aflw", "celeba", "helen", "emotion-folder")
PARTIAL = ".facemtl-partial"  # inside ``out``: an export in progress (see the module doc)


def prepare_out(out: Path) -> Path:
    """Create ``out`` (a new or empty folder) or raise FacemtlError saying why it cannot be used.
    The unfinished files of an export that was killed (:data:`PARTIAL`, alone in ``out``) go."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FacemtlError(f"output path {out} is an existing file; expected a new or empty folder")
    if out.is_dir() and [p.name for p in out.iterdir()] == [PARTIAL]:
        shutil.rmtree(out / PARTIAL)
    if out.is_dir() and any(out.iterdir()):
        raise FacemtlError(f"output folder {out} is not empty; choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".facemtl_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FacemtlError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None
    return out


def _write(path: Path, rgb_or_grey: np.ndarray, jpeg_quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rgb_or_grey if rgb_or_grey.ndim == 2 else cv2.cvtColor(rgb_or_grey, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), img, params):
        raise FacemtlError(f"could not write image {path}")


def _mtfl_line(path: str, s: dict) -> str:
    lm = s["landmarks"].astype(np.float64) + 1.0  # Matlab-style 1-based
    xs = " ".join(f"{v:.3f}" for v in lm[:, 0])
    ys = " ".join(f"{v:.3f}" for v in lm[:, 1])
    return f"{path} {xs} {ys} {s['gender'] + 1} {s['smile'] + 1} {s['glasses'] + 1} {s['pose'] + 1}\n"


def _aflw(out: Path, faces) -> None:
    """``faces``: (index, rendered face) pairs -> ``aflw.sqlite`` and ``flickr/0/*.jpg``."""
    con = sqlite3.connect(out / "aflw.sqlite")
    try:
        c = con.cursor()
        c.execute("CREATE TABLE faceimages(image_id INTEGER PRIMARY KEY, db_id TEXT, file_id TEXT, filepath TEXT, "
                  "bw INTEGER, width INTEGER, height INTEGER)")
        c.execute("CREATE TABLE faces(face_id INTEGER PRIMARY KEY, file_id TEXT, db_id TEXT)")
        c.execute("CREATE TABLE featurecoords(face_id INTEGER, feature_id INTEGER, x REAL, y REAL)")
        c.execute("CREATE TABLE facerect(face_id INTEGER, x INTEGER, y INTEGER, w INTEGER, h INTEGER, "
                  "annot_type_id INTEGER)")
        c.execute("CREATE TABLE facepose(face_id INTEGER, roll REAL, pitch REAL, yaw REAL, annot_type_id INTEGER)")
        c.execute("CREATE TABLE facemetadata(face_id INTEGER, sex TEXT, occluded INTEGER, glasses INTEGER, "
                  "bw INTEGER, annot_type_id INTEGER)")
        for i, s in faces:
            name, face_id = f"synth_{i:06d}.jpg", i + 1
            _write(out / "flickr" / "0" / name, s["image"])
            h, w = s["image"].shape[:2]
            c.execute("INSERT INTO faceimages VALUES (?,?,?,?,?,?,?)", (face_id, "synth", name, f"0/{name}", 0, w, h))
            c.execute("INSERT INTO faces VALUES (?,?,?)", (face_id, name, "synth"))
            c.executemany("INSERT INTO featurecoords VALUES (?,?,?,?)",
                          [(face_id, row + 1, float(x), float(y)) for row, (x, y) in zip(FIVE_POINTS, s["landmarks"])])
            x0, y0, x1, _ = face_box(landmarks=s["landmarks"])
            side = round(x1 - x0)
            c.execute("INSERT INTO facerect VALUES (?,?,?,?,?,?)", (face_id, round(x0), round(y0), side, side, 1))
            m = s["meta"]
            c.execute("INSERT INTO facepose VALUES (?,?,?,?,?)",
                      (face_id, *(float(np.radians(m[k])) for k in ("roll", "pitch", "yaw")), 1))
            c.execute("INSERT INTO facemetadata VALUES (?,?,?,?,?,?)",
                      (face_id, "m" if s["gender"] == 0 else "f", int(bool(m.get("occluded"))),
                       1 if s["glasses"] == 0 else 0, 0, 1))
        con.commit()
    finally:
        con.close()


def _celeba(out: Path, faces, n: int) -> None:
    """``faces``: (index, rendered face) pairs -> CelebA's aligned layout (see the module doc)."""
    n_eval = max(1, n // 10) if n >= 3 else 0  # each of val and test
    (out / "Anno").mkdir()
    (out / "Eval").mkdir()
    lm_cols = " ".join(f"{p}_{a}" for p in ("lefteye", "righteye", "nose", "leftmouth", "rightmouth") for a in "xy")
    with open(out / "Anno" / "list_landmarks_align_celeba.txt", "w", newline="\n") as lms, \
            open(out / "Anno" / "list_attr_celeba.txt", "w", newline="\n") as attrs, \
            open(out / "Anno" / "identity_CelebA.txt", "w", newline="\n") as ids, \
            open(out / "Eval" / "list_eval_partition.txt", "w", newline="\n") as parts:
        lms.write(f"{n}\n{lm_cols}\n")
        attrs.write(f"{n}\n{' '.join(ATTRIBUTES)}\n")
        for i, s in faces:
            name = f"{i + 1:06d}.jpg"
            _write(out / "img_align_celeba" / name, s["image"])
            lms.write(name + "".join(f" {v:8.3f}" for v in s["landmarks"].astype(np.float64).reshape(-1)) + "\n")
            on = {"Male": s["gender"] == 0, "Smiling": s["smile"] == 0, "Eyeglasses": s["glasses"] == 0}
            attrs.write(name + "".join(f" {1 if on.get(a) else -1:2d}" for a in ATTRIBUTES) + "\n")
            ids.write(f"{name} {s['meta']['subject']}\n")
            parts.write(f"{name} {2 if i >= n - n_eval else 1 if i >= n - 2 * n_eval else 0}\n")


def export(fmt: str, out, n: int, style: str = "studio", seed: int = 0, size: int = 128,
           progress: bool = True, options: dict | None = None) -> int:
    """Render faces ``0..n-1`` of ``(seed, style, size)`` into ``out`` in format ``fmt``, all or
    nothing (see the module doc); returns n.

    ``options``: render options (:class:`facemtl.data.synth.SyntheticFaces` keyword arguments, e.g.
    a training source's from :func:`facemtl.data.mixing.render_options`); default: the style's own."""
    if fmt not in FORMATS:
        raise FacemtlError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if int(n) < 1:
        raise FacemtlError(f"--n must be >= 1, got {n}")
    faces = SyntheticFaces(n, style, seed, size, **(options or {}))  # validates everything before touching the disk
    out = prepare_out(Path(out))
    work = out / PARTIAL
    work.mkdir()
    try:
        # the bar is closed however the writing ends, so a message after an interruption starts a new line
        with tqdm(range(int(n)), desc=f"synth {fmt}", unit="face", disable=not progress) as bar:
            _write_faces(fmt, work, faces, int(n), bar)
        for entry in sorted(work.iterdir()):
            entry.rename(out / entry.name)
        work.rmdir()
    except BaseException:  # interrupted or failed: leave ``out`` as it was, empty
        shutil.rmtree(work, ignore_errors=True)
        raise
    return int(n)


def _write_faces(fmt: str, out: Path, faces: SyntheticFaces, n: int, bar) -> None:
    """Faces ``0..n-1`` of ``faces`` (indices from ``bar``, a progress bar over them) in format
    ``fmt`` into the folder ``out``."""
    if fmt == "mtfl":
        n_train = n - n // 5
        with open(out / "training.txt", "w", newline="\n") as train, open(out / "testing.txt", "w", newline="\n") as test:
            for i in bar:
                s = faces[i]
                name = f"synth_{i:06d}.jpg"
                if i < n_train:
                    _write(out / "lfw_5590" / name, s["image"])
                    train.write(_mtfl_line(f"lfw_5590\\{name}", s))
                else:
                    _write(out / "AFLW" / name, s["image"])
                    test.write(_mtfl_line(f"AFLW/{name}", s))
    elif fmt == "aflw":
        _aflw(out, ((i, faces[i]) for i in bar))
    elif fmt == "celeba":
        _celeba(out, ((i, faces[i]) for i in bar), n)
    elif fmt == "helen":
        n_test = max(1, n // 20) if n >= 3 else 0
        n_tune = max(1, n // 10) if n >= 3 else 0
        lists = {"exemplars.txt": [], "tuning.txt": [], "testing.txt": []}
        for i in bar:
            s = faces[i]
            name = f"synth_{i:06d}"
            _write(out / "images" / f"{name}.jpg", s["image"])
            for c in range(11):
                _write(out / "labels" / name / f"{name}_lbl{c:02d}.png", np.where(s["parsing"] == c, 255, 0).astype(np.uint8))
            key = "testing.txt" if i >= n - n_test else "tuning.txt" if i >= n - n_test - n_tune else "exemplars.txt"
            lists[key].append(name)
        for fname, names in lists.items():
            with open(out / fname, "w", newline="\n") as f:
                f.writelines(f"{k} , {name}\n" for k, name in enumerate(names, 1))
    else:
        for name in EMOTIONS:
            (out / name).mkdir(exist_ok=True)
        for i in bar:
            s = faces[i]
            _write(out / EMOTIONS[s["emotion"]] / f"S{s['meta']['subject']:03d}_{i:05d}.png", s["image"])
