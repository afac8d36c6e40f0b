"""CelebA (Liu et al. 2015): 5 landmarks, 40 binary attributes, identity, official partition.

Layout (files searched in ``root``, ``root/Anno``, ``root/Eval``; images in ``root`` or
``root/Img``): ``img_align_celeba/`` (default) or ``img_celeba/`` (``aligned=False``),
``list_landmarks_align_celeba.txt`` / ``list_landmarks_celeba.txt``, ``list_attr_celeba.txt``,
``list_bbox_celeba.txt`` (in-the-wild images only), ``list_eval_partition.txt``,
``identity_CelebA.txt`` (optional).

Label files: a count line, a header line, then ``000001.jpg v v ...`` with repeated spaces.
Partition lines ``000001.jpg 0`` (0 train, 1 val, 2 test), no header.

Labels: ``landmarks`` (5, 2) in MTFL order (left eye, right eye, nose, left and right mouth
corners), coordinates as stored (0-based assumed; unconfirmed); ``attributes`` (40,) uint8
0/1 (file -1/1), names in ``meta["attribute_names"]``; the standard tasks taken from them:
``gender`` (Male 1 -> 0 male, -1 -> 1 female), ``smile`` (Smiling 1 -> 0), ``glasses``
(Eyeglasses 1 -> 0); ``box`` for in-the-wild images; ``meta["identity"]``.

Each of the 40 attributes is also a binary category task of its own, named by the attribute in
lower case (``Wearing_Hat`` -> ``wearing_hat``; :data:`TASKS`), usable on a ``celeba`` source
without a declaration (``tasks: [eyeglasses]``; the config accepts any case). Its classes are
``("no", "yes")``: label 1 when the file says 1, 0 when it says -1, the order of
``attributes`` (note: the MTFL-style ``gender``/``smile``/``glasses`` above count the other way).
"""

from __future__ import annotations

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
    split_existing,
    value_error,
)
from facemtl.data.images import read_image
from facemtl.errors import FacemtlError
from facemtl.tasks import Task

DOWNLOAD = "CelebA (Img/img_align_celeba.zip, Anno/, Eval/)"
SPLITS = {"train": 0, "val": 1, "test": 2}
_DIRS = ("", "Anno/", "Eval/")
# The 40 attributes of list_attr_celeba.txt, in the file's column order.
ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
ATTRIBUTE_CLASSES = ("no", "yes")
# Tasks this reader serves beyond the standard ones (facemtl.data.reader_tasks).
TASKS: dict[str, Task] = {a.lower(): Task(a.lower(), "category", 2, ATTRIBUTE_CLASSES) for a in ATTRIBUTES}


def _find(root: Path, name: str) -> Path:
    return find_first(root, [d + name for d in _DIRS], DOWNLOAD)


def read_table(path: Path, columns: int | None = None, header: bool = True, numeric: bool = False):
    """``name v v ...`` rows after an optional count line and header line -> (header names, rows,
    line number of each row), rows and line numbers keyed by image name."""
    rows: dict[str, list[str]] = {}
    linenos: dict[str, int] = {}
    names: list[str] = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        lines = f.read().splitlines()
    start = 0
    if header:
        if len(lines) < 2:
            raise line_error(path, 1, "a count line and a header line", lines[0] if lines else "")
        names = lines[1].split()
        start = 2
        columns = columns or len(names)
    for lineno, line in enumerate(lines[start:], start + 1):
        fields = line.split()
        if not fields:
            continue
        if columns is not None and len(fields) != columns + 1:
            raise line_error(path, lineno, f"an image name and {columns} values", line)
        rows[fields[0]] = (parse_floats(fields[1:], path, lineno, line, f"{columns} numbers", first_field=2)
                           if numeric else fields[1:])
        linenos[fields[0]] = lineno
    return names, rows, linenos


def load(root, split: str = "train", aligned: bool = True, strict: bool = False, check_files: bool = True):
    """CelebA images of ``split`` (train/val/test/all) as a lazy sequence of raw samples."""
    root = need_dir(Path(root), DOWNLOAD)
    check_split(split, (*SPLITS, "all"), "celeba")
    img_dir = find_first(root, ("img_align_celeba", "Img/img_align_celeba") if aligned else ("img_celeba", "Img/img_celeba"),
                         DOWNLOAD, kind="dir")
    lm_path = _find(root, "list_landmarks_align_celeba.txt" if aligned else "list_landmarks_celeba.txt")
    _, lms, lm_lines = read_table(lm_path, 10, numeric=True)
    attr_path = _find(root, "list_attr_celeba.txt")
    attr_names, attrs, attr_lines = read_table(attr_path, 40)
    part_path = _find(root, "list_eval_partition.txt")
    _, parts, part_lines = read_table(part_path, 1, header=False)
    boxes = {}
    if not aligned:
        _, boxes, _ = read_table(_find(root, "list_bbox_celeba.txt"), 4, numeric=True)
    ids = {}
    try:
        id_path = _find(root, "identity_CelebA.txt")
    except FacemtlError:
        id_path = None  # identities are optional
    if id_path is not None:
        _, ids, id_lines = read_table(id_path, 1, header=False)
    idx = {n: i for i, n in enumerate(attr_names)}
    for needed in ("Male", "Smiling", "Eyeglasses"):
        if needed not in idx:
            raise FacemtlError(f"{attr_path}: header lacks the {needed!r} column")
    # Attribute tasks present in this file's header (a renamed column gives no task, not a wrong one).
    task_columns = {n.lower(): i for i, n in enumerate(attr_names) if n.lower() in TASKS}
    records = []
    for name, (p,) in parts.items():
        if p not in ("0", "1", "2"):
            raise value_error(part_path, part_lines[name], f"the partition of {name}: 0, 1 or 2", p, "in field 2")
        if split != "all" and int(p) != SPLITS[split]:
            continue
        inside_root(img_dir, name, part_path, part_lines[name])
        if name not in lms or name not in attrs:
            raise FacemtlError(f"{part_path}:{part_lines[name]}: {name} is in the partition file but not in "
                               f"{lm_path.name} / {attr_path.name}")
        xy = lms[name].reshape(5, 2)
        a = attrs[name]
        bad = next((k for k, v in enumerate(a) if v not in ("1", "-1")), None)
        if bad is not None:
            column = attr_names[bad] if bad < len(attr_names) else f"{bad + 1}"
            raise value_error(attr_path, attr_lines[name], f"attribute {column} -1 or 1", a[bad], f"in field {bad + 2}")
        rec = {"name": name, "xy": xy.astype(np.float32), "attr": np.array([v == "1" for v in a], np.uint8),
               "annotation": f"{lm_path}:{lm_lines[name]}"}
        if name in boxes:
            x, y, w, h = boxes[name]
            rec["box"] = np.array([x, y, x + w, y + h], np.float32)
        if name in ids:
            rec["identity"] = parse_int(ids[name][0], id_path, id_lines[name], "", "an identity number", 0, 2**31 - 1,
                                        at="in field 2")
        records.append(rec)
    records, missing = split_existing(records, lambda r: img_dir / r["name"], check_files)

    def read(r):
        attr = r["attr"]
        raw = {
            "image": read_image(img_dir / r["name"]),
            "landmarks": r["xy"].copy(),
            "attributes": attr.copy(),
            "gender": 0 if attr[idx["Male"]] else 1,
            "smile": 0 if attr[idx["Smiling"]] else 1,
            "glasses": 0 if attr[idx["Eyeglasses"]] else 1,
            "meta": {"dataset": "celeba", "path": str(img_dir / r["name"]), "id": r["name"], "point_set": "mtfl5",
                     "annotation": r["annotation"],
                     "attribute_names": tuple(attr_names)},
        }
        for task_name, i in task_columns.items():
            raw[task_name] = int(attr[i])
        if "box" in r:
            raw["box"] = r["box"].copy()
        if "identity" in r:
            raw["meta"]["identity"] = r["identity"]
        return raw

    return LazyDataset(f"celeba/{split}", records, read, strict, missing)
