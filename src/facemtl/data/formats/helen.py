"""Helen face parsing (Smith et al., CVPR 2013 labels): 11 classes.

Layout: ``images/<name>.jpg``, ``labels/<name>/<name>_lbl00.png .. _lbl10.png`` and the lists
``exemplars.txt`` (train, 2,000), ``tuning.txt`` (val, 230), ``testing.txt`` (test, 100) with
lines like ``1 , 100032540_1`` (the second comma-separated field, stripped; a line with a
single field is taken whole).

Classes 0..10: background, face skin, left brow, right brow, left eye, right eye, nose, upper
lip, inner mouth, lower lip, hair (the standard ``parsing`` task order).

Mask rule (each lbl image is an 8-bit soft mask): ``mask_rule="argmax"`` (default) labels a
pixel with the class of the largest of the 11 values, ties to the lower class id;
``mask_rule="threshold"`` starts from background and paints classes 1..10 in order where the
value is > 127, later classes overwriting earlier ones.

Class-map cache (``cache=True``, default): decoding 11 label PNGs per image is most of a Helen
read, so the combined class map is kept as one PNG under ``$FACEMTL_CACHE`` (default
``~/.cache/facemtl``) ``/helen-masks/``, keyed by the label files' paths, sizes and
modification times and the mask rule: an edited label file or another rule is a new key. A
cache folder that cannot be written is left alone (the maps are then combined on every read).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from facemtl.data.formats.common import (
    LazyDataset,
    annotation_lines,
    check_split,
    inside_root,
    line_error,
    need_dir,
    need_file,
    split_existing,
)
from facemtl.data.images import read_gray, read_image
from facemtl.errors import FacemtlError

DOWNLOAD = "Helen (SmithCVPR2013_dataset_resized: images/, labels/, exemplars.txt, tuning.txt, testing.txt)"
SPLITS = {"train": "exemplars.txt", "val": "tuning.txt", "test": "testing.txt"}
NUM_CLASSES = 11


def read_list(path: Path, root: Path | None = None) -> list[str]:
    """Image names of a list file; with ``root``, names that would lead outside it are errors."""
    names = []
    for lineno, line, _ in annotation_lines(path):
        parts = [p.strip() for p in line.split(",")]
        name = parts[1] if len(parts) >= 2 else parts[0]
        if not name or len(parts) > 2 or " " in name:
            raise line_error(path, lineno, "'<index> , <image name>'", line)
        if root is not None:
            inside_root(root, name, path, lineno)  # names images/<name>.jpg and labels/<name>/
        names.append(name)
    return names


def combine_masks(maps: np.ndarray, rule: str = "argmax") -> np.ndarray:
    """(11, H, W) uint8 soft masks -> (H, W) uint8 class map (module docstring)."""
    if rule == "argmax":
        # Running maximum: same result as maps.argmax(0) (ties -> lower class), faster on uint8.
        best = maps[0].copy()
        out = np.zeros(maps.shape[1:], np.uint8)
        for c in range(1, len(maps)):
            out[maps[c] > best] = c
            np.maximum(best, maps[c], out=best)
        return out
    if rule == "threshold":
        out = np.zeros(maps.shape[1:], np.uint8)
        for c in range(1, len(maps)):
            out[maps[c] > 127] = c
        return out
    raise FacemtlError(f"helen: mask_rule must be 'argmax' or 'threshold', got {rule!r}")


def cache_dir() -> Path:
    """Where combined class maps are kept (module docstring)."""
    return Path(os.environ.get("FACEMTL_CACHE") or Path.home() / ".cache" / "facemtl") / "helen-masks"


def _cache_key(files: list[Path], rule: str) -> str:
    h = hashlib.sha256(rule.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:32]


def _cached_class_map(files: list[Path], rule: str, combine) -> np.ndarray:
    """``combine()`` once per (files, rule): later reads decode one PNG instead of 11."""
    from facemtl.files import atomic_write_bytes

    path = cache_dir() / f"{_cache_key(files, rule)}.png"
    if path.is_file():
        hit = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if hit is not None and hit.ndim == 2:
            return hit
    out = combine()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, cv2.imencode(".png", out)[1].tobytes())
    except OSError:  # a read-only home: no cache, same result
        pass
    return out


def load(root, split: str = "train", mask_rule: str = "argmax", strict: bool = False, check_files: bool = True,
         cache: bool = True):
    """Helen images of ``split`` (train/val/test) with ``parsing`` masks, lazily; ``cache``: keep
    each image's combined class map (module docstring)."""
    root = need_dir(Path(root), DOWNLOAD)
    check_split(split, tuple(SPLITS), "helen")
    combine_masks(np.zeros((NUM_CLASSES, 1, 1), np.uint8), mask_rule)  # validate the rule now
    images = need_dir(root / "images", DOWNLOAD)
    labels = need_dir(root / "labels", DOWNLOAD)
    names = read_list(need_file(root / SPLITS[split], DOWNLOAD), root)
    names, missing = split_existing(names, lambda n: images / f"{n}.jpg", check_files)

    def read(name):
        image = read_image(images / f"{name}.jpg")
        files = [labels / name / f"{name}_lbl{c:02d}.png" for c in range(NUM_CLASSES)]
        for p in files:
            if not p.is_file():
                raise FacemtlError(f"label file not found: {p} (expected from the official {DOWNLOAD} download)")

        def combine() -> np.ndarray:
            maps = []
            for p in files:
                m = read_gray(p)
                if m.shape != image.shape[:2]:
                    raise FacemtlError(f"{p}: label size {m.shape[1]}x{m.shape[0]} differs from the image's "
                                       f"{image.shape[1]}x{image.shape[0]}")
                maps.append(m)
            return combine_masks(np.stack(maps), mask_rule)

        parsing = _cached_class_map(files, mask_rule, combine) if cache else combine()
        if parsing.shape != image.shape[:2]:  # a cached map of a since-replaced image of another size
            parsing = combine()
        return {
            "image": image,
            "parsing": parsing,
            "meta": {"dataset": "helen", "path": str(images / f"{name}.jpg"), "id": name},
        }

    return LazyDataset(f"helen/{split}", names, read, strict, missing)
