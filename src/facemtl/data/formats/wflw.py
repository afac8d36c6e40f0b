"""WFLW (Wu et al. 2018): 98 landmarks, face box and six attribute flags.

Layout: ``WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,test}.txt``
(also found directly in ``root``) and images under ``WFLW_images/``. A line has 207 fields:
x0 y0 .. x97 y97, x_min y_min x_max y_max, six 0/1 flags (pose, expression, illumination,
make-up, occlusion, blur), then the image path (a path with spaces is rejoined).
Coordinates are used as stored (0-based assumed; unconfirmed). Points 96, 97 are the pupils.
The flags are in ``meta["flags"]`` (dict name -> 0/1). ``points=5`` reduces the 98 points to
the standard 5 (:func:`five_points`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facemtl.data.formats.common import (
    LazyDataset,
    annotation_lines,
    check_split,
    find_first,
    inside_root,
    line_error,
    need_dir,
    parse_floats,
    parse_int,
    split_existing,
)
from facemtl.data.images import read_image
from facemtl.errors import FacemtlError

DOWNLOAD = "WFLW (WFLW_images.tar.gz and WFLW_annotations.tar.gz)"
FLAGS = ("pose", "expression", "illumination", "make-up", "occlusion", "blur")
_N = 98 * 2 + 4 + 6


def parse_annotations(path: Path) -> list[dict]:
    records = []
    for lineno, line, fields in annotation_lines(path):
        if len(fields) < _N + 1:
            raise line_error(path, lineno, "207 fields: 196 coordinates, 4 box values, 6 flags, image path", line)
        nums = parse_floats(fields[:200], path, lineno, line, "196 coordinates and 4 box values", first_field=1)
        flags = {n: parse_int(v, path, lineno, line, f"{n} flag", 0, 1, at=f"in field {201 + k}")
                 for k, (n, v) in enumerate(zip(FLAGS, fields[200:206]))}
        records.append({"xy": nums[:196].reshape(98, 2).astype(np.float32), "box": nums[196:].astype(np.float32),
                        "flags": flags, "name": " ".join(fields[206:]), "line": lineno})
    return records


def five_points(lm98: np.ndarray) -> np.ndarray:
    """98 WFLW points -> 5 points in MTFL order: the eye centres as the means of each eye's
    outline (60..67, 68..75; the synthetic labels' and 300W's convention, not the pupils 96/97),
    the nose tip 54, the mouth corners 76 and 82."""
    lm98 = np.asarray(lm98, np.float32)
    return np.stack([lm98[60:68].mean(0), lm98[68:76].mean(0), lm98[54], lm98[76], lm98[82]]).astype(np.float32)


def load(root, split: str = "train", strict: bool = False, check_files: bool = True, points: int = 98):
    """WFLW faces of ``split`` (train/test) as a lazy sequence of raw samples (``points``: 98, or 5)."""
    root = need_dir(Path(root), DOWNLOAD)
    check_split(split, ("train", "test"), "wflw")
    if points not in (98, 5):
        raise FacemtlError(f"wflw: points must be 98 or 5, got {points}")
    name = f"list_98pt_rect_attr_{split}.txt"
    ann = find_first(root, (f"WFLW_annotations/list_98pt_rect_attr_train_test/{name}", f"list_98pt_rect_attr_train_test/{name}", name), DOWNLOAD)
    images = find_first(root, ("WFLW_images",), DOWNLOAD, kind="dir")
    records = parse_annotations(ann)
    for r in records:
        inside_root(images, r["name"], ann, r["line"])
    records, missing = split_existing(records, lambda r: images / r["name"], check_files)

    def read(r):
        return {
            "image": read_image(images / r["name"]),
            "landmarks": r["xy"].copy() if points == 98 else five_points(r["xy"]),
            "box": r["box"].copy(),
            "meta": {"dataset": "wflw", "path": str(images / r["name"]), "id": f"{r['name']}#{r['line']}",
                     "flags": dict(r["flags"]), "point_set": "wflw98" if points == 98 else "mtfl5",
                     "annotation": f"{ann}:{r['line']}"},
        }

    return LazyDataset(f"wflw/{split}", records, read, strict, missing)
