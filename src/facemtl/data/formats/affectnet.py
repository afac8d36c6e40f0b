"""AffectNet (Mollahosseini et al. 2017), manually annotated part, relabelled to FER2013's order.

Layout: ``Manually_Annotated_file_lists/{training,validation}.csv`` (or in ``root``) and
images under ``Manually_Annotated_Images/`` (or ``Manually_Annotated/Manually_Annotated_Images``).
Columns: subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks
(``x;y;x;y;...``, 68 points), expression, valence, arousal.

Expressions 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger map to FER2013's
order (``AFFECTNET_TO_FER``: 0->6, 1->3, 2->4, 3->5, 4->2, 5->1, 6->0). 8 None, 9 Uncertain and
10 No-Face are dropped. 7 Contempt has no FER2013 class: ``contempt="drop"`` (default) drops
those faces; ``contempt="keep"`` keeps them with ``emotion`` = 7, an 8th class, for use with an
8-class emotion task (never mixed silently into the 7-class one). The number of dropped rows
per reason is in ``dataset.dropped``. ``box`` from face_x/y/width/height; ``landmarks`` the
68 points (iBUG order assumed; coordinates as stored); valence/arousal in ``meta``.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from facemtl.data.formats.common import (
    LazyDataset,
    check_split,
    find_first,
    inside_root,
    line_error,
    need_dir,
    parse_floats,
    parse_int,
    parse_number,
    split_existing,
)
from facemtl.data.images import read_image
from facemtl.errors import FacemtlError

DOWNLOAD = "AffectNet (Manually_Annotated_file_lists.zip, Manually_Annotated_compressed.zip)"
AFFECTNET_TO_FER = {0: 6, 1: 3, 2: 4, 3: 5, 4: 2, 5: 1, 6: 0}
FILES = {"train": "training.csv", "val": "validation.csv"}
_COLUMNS = ("subdirectory_filepath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks", "expression")


def load(root, split: str = "train", contempt: str = "drop", strict: bool = False, check_files: bool = True):
    """AffectNet faces of ``split`` (train/val) as a lazy sequence of raw samples."""
    root = need_dir(Path(root), DOWNLOAD)
    check_split(split, tuple(FILES), "affectnet")
    if contempt not in ("drop", "keep"):
        raise FacemtlError(f"affectnet: contempt must be 'drop' or 'keep', got {contempt!r}")
    ann = find_first(root, (f"Manually_Annotated_file_lists/{FILES[split]}", FILES[split]), DOWNLOAD)
    img_dir = find_first(root, ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images"),
                         DOWNLOAD, kind="dir")
    records = []
    dropped: Counter = Counter()
    with open(ann, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        missing_cols = [c for c in _COLUMNS if c not in header]
        if missing_cols:
            raise FacemtlError(f"{ann}:1: expected columns {', '.join(_COLUMNS)}; missing {', '.join(missing_cols)}")
        col = {c: header.index(c) for c in _COLUMNS}
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            line = ",".join(row)
            if len(row) < len(header):
                raise line_error(ann, lineno, f"{len(header)} comma-separated columns", line)
            expr = parse_int(row[col["expression"]], ann, lineno, line, "expression", 0, 10, at="in column expression")
            if expr >= 8:
                dropped[("none", "uncertain", "no-face")[expr - 8]] += 1
                continue
            if expr == 7 and contempt == "drop":
                dropped["contempt"] += 1
                continue
            x, y, w, h = (parse_number(row[col[c]], ann, lineno, f"a number {c}", f"in column {c}")
                          for c in ("face_x", "face_y", "face_width", "face_height"))
            lm_text = row[col["facial_landmarks"]].strip()
            xy = None
            if lm_text:
                vals = parse_floats(lm_text.split(";"), ann, lineno, line, "facial_landmarks 'x;y;x;y;...'",
                                    column="facial_landmarks")
                if len(vals) % 2:
                    raise line_error(ann, lineno, "an even number of facial_landmarks values", line)
                xy = vals.reshape(-1, 2).astype(np.float32)
            meta = {}
            for extra in ("valence", "arousal"):
                if extra in header:
                    meta[extra] = parse_number(row[header.index(extra)], ann, lineno, f"a number {extra}",
                                               f"in column {extra}")
            file = row[col["subdirectory_filepath"]].strip().replace("\\", "/")
            inside_root(img_dir, file, ann, lineno)
            records.append({"file": file, "annotation": f"{ann}:{lineno}",
                            "emotion": 7 if expr == 7 else AFFECTNET_TO_FER[expr], "expr": expr,
                            "box": np.array([x, y, x + w, y + h], np.float32), "xy": xy, "meta": meta})
    records, missing = split_existing(records, lambda r: img_dir / r["file"], check_files)

    def read(r):
        raw = {"image": read_image(img_dir / r["file"]), "emotion": r["emotion"], "box": r["box"].copy(),
               "meta": {"dataset": "affectnet", "path": str(img_dir / r["file"]), "id": r["file"],
                        "affectnet_label": r["expr"], "annotation": r["annotation"], **r["meta"]}}
        if r["xy"] is not None:
            raw["landmarks"] = r["xy"].copy()
            if len(r["xy"]) == 68:
                raw["meta"]["point_set"] = "ibug68"
        return raw

    ds = LazyDataset(f"affectnet/{split}", records, read, strict, missing)
    ds.dropped = dict(dropped)
    return ds
