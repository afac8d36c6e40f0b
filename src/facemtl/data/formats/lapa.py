"""LaPa (Liu et al., AAAI 2020): parsing (11 Helen-order classes) and 106 landmarks.

Layout: ``{train,val,test}/{images,labels,landmarks}``; ``labels/<stem>.png`` single channel
with values 0..10 in Helen's class order; ``landmarks/<stem>.txt``: a first line ``106`` then
106 lines ``x y`` (coordinates as stored, 0-based assumed; unconfirmed). No flip permutation
is defined for the 106 points (layout unverified), so flipping LaPa landmarks raises.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facemtl.data.formats.common import (
    IMAGE_EXTS,  # noqa: F401  (re-exported: lapa.IMAGE_EXTS)
    LazyDataset,
    check_split,
    image_files,
    line_error,
    need_dir,
    parse_floats,
)
from facemtl.data.images import read_gray, read_image
from facemtl.errors import FacemtlError

DOWNLOAD = "LaPa (LaPa.tar.gz: train/, val/, test/)"


def read_landmarks(path: Path) -> np.ndarray:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        lines = [ln for ln in f.read().splitlines()]
    if not lines:
        raise line_error(path, 1, "a point count line")
    try:
        n = int(lines[0].strip())
    except ValueError:
        raise line_error(path, 1, "a point count (106)", lines[0]) from None
    pts = []
    for lineno, ln in enumerate(lines[1:], 2):
        if not ln.strip():
            continue
        fields = ln.split()
        if len(fields) != 2:
            raise line_error(path, lineno, "two numbers 'x y'", ln)
        pts.append(parse_floats(fields, path, lineno, ln, "two numbers 'x y'", first_field=1))
    if len(pts) != n:
        raise FacemtlError(f"{path}: the first line says {n} points, found {len(pts)}")
    return np.array(pts, np.float32).reshape(-1, 2)


def load(root, split: str = "train", landmarks: bool = True, strict: bool = False):
    """LaPa images of ``split`` (train/val/test) with ``parsing`` (and ``landmarks``), lazily."""
    root = need_dir(Path(root), DOWNLOAD)
    check_split(split, ("train", "val", "test"), "lapa")
    base = need_dir(root / split, DOWNLOAD)
    images = need_dir(base / "images", DOWNLOAD)
    labels = need_dir(base / "labels", DOWNLOAD)
    lm_dir = need_dir(base / "landmarks", DOWNLOAD) if landmarks else None
    records = []
    for img in image_files(images):
        rec = {"image": img, "label": labels / f"{img.stem}.png"}
        if not rec["label"].is_file():
            raise FacemtlError(f"label file not found: {rec['label']} for {img} (official {DOWNLOAD} download)")
        if lm_dir is not None:
            lp = lm_dir / f"{img.stem}.txt"
            if not lp.is_file():
                raise FacemtlError(f"landmark file not found: {lp} for {img} (official {DOWNLOAD} download)")
            rec["xy"] = read_landmarks(lp)
            rec["pts"] = lp
        records.append(rec)

    def read(r):
        image = read_image(r["image"])
        mask = read_gray(r["label"])
        if mask.shape != image.shape[:2]:
            raise FacemtlError(f"{r['label']}: label size differs from its image {r['image']}")
        if mask.max() > 10:
            raise FacemtlError(f"{r['label']}: class ids must be 0..10, found {int(mask.max())}")
        raw = {"image": image, "parsing": mask,
               "meta": {"dataset": "lapa", "path": str(r["image"]), "id": r["image"].stem, "point_set": "lapa106"}}
        if "xy" in r:
            raw["landmarks"] = r["xy"].copy()
            raw["meta"]["annotation"] = str(r["pts"])
        return raw

    return LazyDataset(f"lapa/{split}", records, read, strict)
