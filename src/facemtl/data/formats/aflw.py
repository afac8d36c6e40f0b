"""AFLW (Koestinger et al. 2011): 21 landmarks with visibility, box, pose, gender, glasses.

Layout: ``aflw.sqlite`` and ``flickr/{0,2,3}/...`` in ``root`` (or in ``root/data``, the
official archive's layout). Tables are joined as ``docs/datasets.md`` ("AFLW") describes;
one raw sample per face (an image with several faces gives several samples).

* ``landmarks`` (21, 2) in feature_id order 1..21 (LeftBrowLeftCorner .. ChinCenter); only
  visible points have rows, so ``visibility`` (21,) marks them and invisible points hold the
  placeholder (0, 0): never read them without the mask. Coordinates are used as stored
  (treated as 0-based pixels; unconfirmed).
* ``box`` = facerect [x, y, x + w, y + h] (may extend past the image; kept as is).
* ``gender`` from sex ('m' -> 0 male, 'f' -> 1 female); ``glasses`` from facemetadata.glasses
  (1 -> 0 "glasses", 0 -> 1 "no_glasses", the standard task order).
* Angles: stored in radians (unconfirmed; values beyond +-2*pi would be degrees, so they are
  then taken as degrees) and given in degrees in ``meta["yaw"/"pitch"/"roll"]``; ``pose`` =
  the yaw's class of the standard ``pose`` task (:func:`facemtl.tasks.pose_from_yaw`);
  ``meta["pose_bins"]`` = the DCNet 30-degree bins of roll, pitch and yaw (common.angle_bin).
* Split: no official one. Faces are ordered by face_id, shuffled with ``seed`` and the first
  ``ratio`` share is ``train``, the rest ``test`` (DCNet trains on the first r% and tests on
  the rest, 0.1..0.9). ``all_visible=True`` keeps only faces with all 21 points (DCNet used
  faces "with visible landmarks"). Split ``all`` gives every face.
* ``points=5`` reduces the 21 points to the standard 5-point ``landmarks`` task in MTFL order:
  LeftEyeCenter, RightEyeCenter, NoseCenter, MouthLeftCorner, MouthRightCorner (assumes
  AFLW's "Left" is image-left, as in MTFL; unconfirmed), with their visibility.
* ``aflw21`` (21, 2) and ``aflw21_visibility`` (21,): the 21 points as their own task
  (:data:`facemtl.tasks.DATASET_TASKS` ``["aflw21"]``: point names, flip permutation), given
  whatever ``points`` is, so a source can train ``aflw21`` next to the 5-point ``landmarks``.
  Its NME is normalised by the distance between the eye centres (points ``left_eye`` and
  ``right_eye``, LeftEyeCenter and RightEyeCenter), Deep Collaboration's inter-ocular distance.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np

from facemtl.data.formats.common import (
    LazyDataset,
    angle_bin,
    check_split,
    find_first,
    inside_root,
    need_dir,
    parse_int,
    parse_number,
    split_existing,
)
from facemtl.data.images import read_image
from facemtl.errors import FacemtlError
from facemtl.tasks import DATASET_TASKS, STANDARD_TASKS, pose_from_yaw

DOWNLOAD = "AFLW (aflw.tar.gz: data/aflw.sqlite and data/flickr/)"
NUM_POINTS = 21
# Rows of the 5-point reduction in MTFL order: the aflw21 points named like the standard five,
# (7, 10, 14, 17, 19).
FIVE_POINTS = tuple(DATASET_TASKS["aflw21"].class_names.index(n) for n in STANDARD_TASKS["landmarks"].class_names)


def _number(v, where: str, what: str) -> float:
    """A finite number from an sqlite cell (int, float, text or NULL); ``where`` names table and face."""
    return parse_number("NULL" if v is None else v, where, None, what)


def _degrees(v, where: str, what: str) -> float:
    if v is None:
        return float("nan")  # no angle stored: no pose label
    v = _number(v, where, what)
    return v if abs(v) > 2 * math.pi else math.degrees(v)


def index_faces(db_path: Path) -> list[dict]:
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise FacemtlError(f"cannot open {db_path} as sqlite: {exc}") from None
    try:
        cur = con.cursor()
        faces = {}
        rows = cur.execute(
            "SELECT faces.face_id, faceimages.filepath, faceimages.width, faceimages.height "
            "FROM faces JOIN faceimages ON faces.file_id = faceimages.file_id ORDER BY faces.face_id"
        ).fetchall()
        for face_id, filepath, width, height in rows:
            faces[face_id] = {"face_id": int(face_id), "filepath": str(filepath), "wh": (width, height),
                              "xy": np.zeros((NUM_POINTS, 2), np.float32), "vis": np.zeros(NUM_POINTS, bool)}
        for face_id, fid, x, y in cur.execute("SELECT face_id, feature_id, x, y FROM featurecoords"):
            f = faces.get(face_id)
            if f is None:
                continue
            where = f"{db_path}: featurecoords of face_id {face_id}"
            k = parse_int("NULL" if fid is None else fid, where, None, "", "feature_id", 1, NUM_POINTS) - 1
            where += f", feature_id {k + 1}"
            f["xy"][k] = (_number(x, where, "a finite x"), _number(y, where, "a finite y"))
            f["vis"][k] = True
        for face_id, x, y, w, h in cur.execute("SELECT face_id, x, y, w, h FROM facerect"):
            if face_id in faces and "box" not in faces[face_id]:
                where = f"{db_path}: facerect of face_id {face_id}"
                x, y, w, h = (_number(v, where, f"a finite {n}") for v, n in zip((x, y, w, h), "xywh"))
                faces[face_id]["box"] = np.array([x, y, x + w, y + h], np.float32)
        for face_id, roll, pitch, yaw in cur.execute("SELECT face_id, roll, pitch, yaw FROM facepose"):
            if face_id in faces and "yaw" not in faces[face_id]:
                where = f"{db_path}: facepose of face_id {face_id}"
                faces[face_id].update(roll=_degrees(roll, where, "a finite roll or NULL"),
                                      pitch=_degrees(pitch, where, "a finite pitch or NULL"),
                                      yaw=_degrees(yaw, where, "a finite yaw or NULL"))
        for face_id, sex, glasses in cur.execute("SELECT face_id, sex, glasses FROM facemetadata"):
            if face_id in faces and "sex" not in faces[face_id]:
                faces[face_id].update(sex=sex, glasses=glasses)
    except sqlite3.Error as exc:
        raise FacemtlError(f"{db_path}: not an AFLW database ({exc}); expected tables faces, faceimages, "
                           "featurecoords, facerect, facepose, facemetadata") from None
    finally:
        con.close()
    return list(faces.values())


def load(root, split: str = "train", ratio: float = 0.8, seed: int = 0, all_visible: bool = False,
         points: int = 21, strict: bool = False, check_files: bool = True):
    """AFLW faces of ``split`` (train/test/all) as a lazy sequence of raw samples."""
    root = need_dir(Path(root), DOWNLOAD)
    if points not in (21, 5):
        raise FacemtlError(f"aflw: points must be 21 or 5, got {points}")
    rows = list(range(NUM_POINTS)) if points == 21 else list(FIVE_POINTS)
    check_split(split, ("train", "test", "all"), "aflw")
    if not 0.0 < ratio < 1.0:
        raise FacemtlError(f"aflw: ratio must be in (0, 1), got {ratio}")
    db = find_first(root, ("aflw.sqlite", "data/aflw.sqlite"), DOWNLOAD)
    image_root = find_first(db.parent, ("flickr",), DOWNLOAD, kind="dir")
    faces = index_faces(db)
    if all_visible:
        faces = [f for f in faces if f["vis"].all()]
    order = np.random.default_rng(seed).permutation(len(faces))
    n_train = int(round(ratio * len(faces)))
    if split == "train":
        faces = [faces[i] for i in order[:n_train]]
    elif split == "test":
        faces = [faces[i] for i in order[n_train:]]
    for f in faces:
        inside_root(image_root, f["filepath"], f"{db}: faceimages.filepath of face_id {f['face_id']}", None)
    faces, missing = split_existing(faces, lambda f: image_root / f["filepath"], check_files)

    def read(f):
        raw = {
            "image": read_image(image_root / f["filepath"]),
            "landmarks": f["xy"][rows].copy(),
            "visibility": f["vis"][rows].copy(),
            "aflw21": f["xy"].copy(),
            "aflw21_visibility": f["vis"].copy(),
            "meta": {"dataset": "aflw", "path": str(image_root / f["filepath"]), "id": f["face_id"],
                     "annotation": f"{db}: face_id {f['face_id']}",
                     "point_set": "aflw21" if points == 21 else "mtfl5"},
        }
        if "box" in f:
            raw["box"] = f["box"].copy()
        if f.get("sex") in ("m", "f"):
            raw["gender"] = 0 if f["sex"] == "m" else 1
        if f.get("glasses") in (0, 1):
            raw["glasses"] = 0 if f["glasses"] == 1 else 1
        if "yaw" in f:
            raw["meta"].update(yaw=f["yaw"], pitch=f["pitch"], roll=f["roll"])
            if math.isfinite(f["yaw"]):
                raw["pose"] = pose_from_yaw(f["yaw"])
                raw["meta"]["pose_bins"] = {k: angle_bin(f[k]) for k in ("roll", "pitch", "yaw") if math.isfinite(f[k])}
        return raw

    return LazyDataset(f"aflw/{split}", faces, read, strict, missing)
