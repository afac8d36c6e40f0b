"""MTFL (Zhang et al., ECCV 2014): 5 landmarks + gender, smile, glasses, pose.

Layout: ``root/training.txt`` (10,000 faces), ``root/testing.txt`` (2,995) and the image
folders they name (``lfw_5590/``, ``net_7876/``, ``AFLW/``). One face per line:
``path x1..x5 y1..y5 gender smile glasses pose`` (all x first, then all y), whitespace
separated, lines may start with spaces, training paths use Windows backslashes.

Conversions: coordinates are Matlab-style 1-based in common loaders, so 1 is subtracted
(``one_based=False`` keeps them); the four attributes are 1-based in the file and 0-based
here, in the order of the standard tasks (gender 0 male / 1 female, smile 0 yes / 1 no,
glasses 0 yes / 1 no, pose 0 left profile .. 4 right profile).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facemtl.data.formats.common import (
    LazyDataset,
    annotation_lines,
    check_split,
    inside_root,
    need_dir,
    need_file,
    parse_floats,
    parse_int,
    split_existing,
    value_error,
)
from facemtl.data.images import read_image

DOWNLOAD = "MTFL (MTFL.zip)"
SPLITS = {"train": "training.txt", "test": "testing.txt"}
_ATTRS = (("gender", 2), ("smile", 2), ("glasses", 2), ("pose", 5))


def _trailing_numbers(fields: list[str]) -> int:
    """How many fields after the first (always the path) are numbers, counted from the end."""
    n = 0
    for f in reversed(fields[1:]):
        try:
            float(f)
        except ValueError:
            break
        n += 1
    return n


def parse_annotations(path: Path) -> list[dict]:
    """Index one MTFL list file; malformed lines raise FacemtlError with file and line."""
    records = []
    layout = "'path x1..x5 y1..y5 gender smile glasses pose' (15 fields)"
    for lineno, line, fields in annotation_lines(path):
        if len(fields) < 15:
            raise value_error(path, lineno, layout, line, why=f"{len(fields)} fields")
        numbers = _trailing_numbers(fields)
        if numbers > 14:
            # Else the extra number would join the path and the line read as a missing image.
            raise value_error(path, lineno, layout, line, why=f"{len(fields)} fields: a path and {numbers} numbers")
        name = " ".join(fields[:-14])  # a path with spaces keeps them
        first = len(fields) - 13  # 1-based field number of x1
        coords = parse_floats(fields[-14:-4], path, lineno, line, "10 numeric coordinates after the path",
                              first_field=first)
        attrs = {}
        for k, ((attr, n), field) in enumerate(zip(_ATTRS, fields[-4:])):
            attrs[attr] = parse_int(field, path, lineno, line, f"{attr} label (1-based)", 1, n,
                                    at=f"in field {first + 10 + k}") - 1
        records.append({"name": name.replace("\\", "/"), "xy": np.stack([coords[:5], coords[5:]], 1),
                        "line": lineno, **attrs})
    return records


def load(root, split: str = "train", one_based: bool = True, strict: bool = False, check_files: bool = True):
    """MTFL faces of ``split`` (train/test) as a lazy sequence of raw samples."""
    root = need_dir(Path(root), DOWNLOAD)
    check_split(split, tuple(SPLITS), "mtfl")
    ann = need_file(root / SPLITS[split], DOWNLOAD)
    records = parse_annotations(ann)
    for r in records:
        inside_root(root, r["name"], ann, r["line"])
    offset = 1.0 if one_based else 0.0
    records, missing = split_existing(records, lambda r: root / r["name"], check_files)

    def read(r):
        image = read_image(root / r["name"])
        return {
            "image": image,
            "landmarks": (r["xy"] - offset).astype(np.float32),
            "gender": r["gender"],
            "smile": r["smile"],
            "glasses": r["glasses"],
            "pose": r["pose"],
            "meta": {"dataset": "mtfl", "path": str(root / r["name"]), "id": r["name"], "point_set": "mtfl5",
                     "annotation": f"{ann}:{r['line']}"},
        }

    return LazyDataset(f"mtfl/{split}", records, read, strict, missing)
