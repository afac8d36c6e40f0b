"""Emotion images in one folder per class (generic; used for BNU-LSVED as in iFAN).

Layout: ``root/<class name>/<image files>``; class folders are matched case-insensitively
to ``classes``, and the label is the index in ``classes``. Without ``classes`` the class list
is the folder names, sorted (:func:`folder_classes`; like torchvision's ImageFolder: Python's
string order, so capitals first). Given ``classes``, a folder that matches no class is an error
(never guessed) and a class without a folder just has no images. Folders whose name starts
with a dot are not classes (``.ipynb_checkpoints`` and the like).

The label is stored under the raw key ``task`` (default ``emotion``, the standard task: pass
``classes=FER_CLASSES`` for FER2013's order). A training source gets both from its task (the
config's ``tasks:`` declaration, e.g. BNU-LSVED's seven classes, ``IFAN_BNU_CLASSES``, as iFAN
uses them), see :func:`facemtl.data.mixing.build_sources`.

Subject ids come from file names with ``subject_regex`` (its group ``subject``, or group 1;
default: the part before the first underscore, ``s012_0003.jpg`` -> ``s012``). A file the
regex does not match is an error naming it.

Split (iFAN section 4.2: "20% subjects in each emotion category as the testing set ... no
overlapping subjects in training and testing sets"): each class wants ``ceil(test_share * n)``
of its ``n`` subjects in test (at least 1 when n >= 2, always leaving one for training).
Subjects are visited in a seeded random order and a subject becomes a test subject when one
of its classes still wants more and none of its classes would lose its last training
subject. Every image of a test subject is ``test``, the rest ``train``: the split is
subject-disjoint overall; a class can end up with a few more test subjects than it wanted
when subjects span several classes. Split ``all`` gives every image.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from facemtl.data.formats.common import LazyDataset, check_split, image_files, need_dir
from facemtl.data.images import read_image
from facemtl.errors import FacemtlError
from facemtl.tasks import STANDARD_TASKS

DOWNLOAD = "emotion set (e.g. BNU-LSVED) arranged as one sub-folder per class"
FER_CLASSES = STANDARD_TASKS["emotion"].class_names
IFAN_BNU_CLASSES = ("Happy", "Surprised", "Disgusted", "Puzzled", "Concentrated", "Tired", "Distracted")
DEFAULT_SUBJECT_REGEX = r"^(?P<subject>[^_]+)_"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def _class_folders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def folder_classes(root) -> tuple[str, ...]:
    """The class list a folder tree gives when none is set: its sub-folder names, sorted."""
    root = need_dir(Path(root), DOWNLOAD)
    names = tuple(p.name for p in _class_folders(root))
    if not names:
        raise FacemtlError(f"emotion-folder: no class folders under {root} (expected one sub-folder per class)")
    lowered = [n.lower() for n in names]
    clash = sorted({n for n in names if lowered.count(n.lower()) > 1})
    if clash:
        # Folders match classes case-insensitively, so these would be one class.
        raise FacemtlError(f"emotion-folder: class folders {', '.join(clash)} under {root} differ only in case")
    return names


def index_folder(root: Path, classes, subject_regex: str) -> list[dict]:
    try:
        pattern = re.compile(subject_regex)
    except re.error as exc:
        raise FacemtlError(f"emotion-folder: bad subject_regex {subject_regex!r}: {exc}") from None
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    records = []
    for folder in _class_folders(root):
        label = lookup.get(folder.name.lower())
        if label is None:
            raise FacemtlError(f"emotion-folder: folder {folder} matches no class; expected one of "
                               f"{', '.join(classes)} (set classes= to the dataset's class list)")
        for f in image_files(folder, IMAGE_EXTS):
            m = pattern.search(f.name)
            if m is None:
                raise FacemtlError(f"emotion-folder: cannot read a subject id from {f} with "
                                   f"subject_regex {subject_regex!r}")
            subject = m.group("subject") if "subject" in pattern.groupindex else m.group(1 if pattern.groups else 0)
            records.append({"path": f, "emotion": label, "subject": subject})
    if not records:
        raise FacemtlError(f"emotion-folder: no images (.jpg/.png/.bmp) in class folders under {root}")
    return records


def test_subjects(records: list[dict], test_share: float, seed: int) -> set[str]:
    """Subjects held out for testing: about ``test_share`` of each class's subjects (module doc)."""
    by_subject: dict[str, set[int]] = {}
    for r in records:
        by_subject.setdefault(r["subject"], set()).add(r["emotion"])
    per_class: dict[int, int] = {}
    for classes in by_subject.values():
        for c in classes:
            per_class[c] = per_class.get(c, 0) + 1
    # Classes with one subject keep it for training; others want ceil(share * n), leaving >= 1 for training.
    want = {c: min(max(1, math.ceil(test_share * n)), n - 1) if n >= 2 else 0 for c, n in per_class.items()}
    taken = dict.fromkeys(per_class, 0)
    names = sorted(by_subject)
    chosen: set[str] = set()
    for i in np.random.default_rng(seed).permutation(len(names)):
        s = names[i]
        classes = by_subject[s]
        needed = any(taken[c] < want[c] for c in classes)
        keeps_train = all(taken[c] + 1 <= per_class[c] - 1 for c in classes)
        if needed and keeps_train:
            chosen.add(s)
            for c in classes:
                taken[c] += 1
    return chosen


def load(root, split: str = "train", classes=None, subject_regex: str = DEFAULT_SUBJECT_REGEX,
         test_share: float = 0.2, seed: int = 0, strict: bool = False, task: str = "emotion"):
    """Images of ``split`` (train/test/all) with labels under ``task`` (index in ``classes``,
    default: the folder names sorted), lazily."""
    root = need_dir(Path(root), DOWNLOAD)
    check_split(split, ("train", "test", "all"), "emotion-folder")
    if not 0.0 < test_share < 1.0:
        raise FacemtlError(f"emotion-folder: test_share must be in (0, 1), got {test_share}")
    if not isinstance(task, str) or not task or task in ("image", "meta"):
        raise FacemtlError(f"emotion-folder: task must be the name of the task the labels are for, got {task!r}")
    classes = folder_classes(root) if classes is None else tuple(classes)
    records = index_folder(root, classes, subject_regex)
    if split != "all":
        held_out = test_subjects(records, test_share, seed)
        records = [r for r in records if (r["subject"] in held_out) == (split == "test")]

    def read(r):
        return {"image": read_image(r["path"]), task: r["emotion"],
                "meta": {"dataset": "emotion-folder", "path": str(r["path"]), "id": r["path"].name,
                         "subject": r["subject"], "class_name": classes[r["emotion"]], "classes": classes}}

    return LazyDataset(f"emotion-folder/{split}", records, read, strict)
