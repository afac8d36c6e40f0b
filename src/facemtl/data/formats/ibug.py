"""300W / iBUG ``.pts`` files (68 points): afw, helen, lfpw, ibug.

Layout under ``root``: ``afw/``, ``helen/trainset``, ``helen/testset``, ``lfpw/trainset``,
``lfpw/testset``, ``ibug/``; every image (``.jpg``/``.png``) has a ``.pts`` beside it with the
same stem (file names may contain spaces, e.g. ``image_092 _01.jpg``).

Splits: ``train`` = afw + helen/trainset + lfpw/trainset (3,148), ``common`` = helen/testset +
lfpw/testset (554), ``challenging`` = ibug (135), ``full`` = common + challenging (689).

``.pts``: ``version: 1``, ``n_points: 68``, ``{``, 68 lines ``x y``, ``}``; coordinates are
1-based and 1 is subtracted. ``points=5`` gives the 5-point reduction (eye centres =
mean(36..41), mean(42..47); nose tip 30; mouth corners 48, 54) in MTFL order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facemtl.data.formats.common import (
    IMAGE_EXTS,  # noqa: F401  (re-exported: ibug.IMAGE_EXTS)
    LazyDataset,
    check_split,
    image_files,
    line_error,
    need_dir,
    parse_floats,
)
from facemtl.data.images import read_image
from facemtl.errors import FacemtlError

DOWNLOAD = "300W (ibug_300W_large_face_landmark_dataset / 300w images with .pts)"
SPLITS = {
    "train": ("afw", "helen/trainset", "lfpw/trainset"),
    "common": ("helen/testset", "lfpw/testset"),
    "challenging": ("ibug",),
}
SPLITS["full"] = SPLITS["common"] + SPLITS["challenging"]


def read_pts(path) -> np.ndarray:
    """(N, 2) float32 points of a ``.pts`` file, as stored (1-based)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        lines = [ln for ln in f.read().splitlines()]
    body = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    n = None
    pts = []
    inside = False
    for lineno, ln in body:
        s = ln.strip()
        if s.startswith("version"):
            continue
        if s.startswith("n_points"):
            try:
                n = int(s.split(":", 1)[1])
            except (IndexError, ValueError):
                raise line_error(path, lineno, "'n_points: N'", ln) from None
            continue
        if s == "{":
            inside = True
            continue
        if s == "}":
            inside = False
            break
        if not inside:
            raise line_error(path, lineno, "'version:', 'n_points:' or '{'", ln)
        fields = s.split()
        if len(fields) != 2:
            raise line_error(path, lineno, "two numbers 'x y'", ln)
        pts.append(parse_floats(fields, path, lineno, ln, "two numbers 'x y'", first_field=1))
    if n is None:
        raise FacemtlError(f"{path}: no 'n_points:' line")
    if inside or len(pts) != n:
        raise FacemtlError(f"{path}: expected {n} points between '{{' and '}}', found {len(pts)}")
    return np.array(pts, np.float32).reshape(-1, 2)


def five_points(lm68: np.ndarray) -> np.ndarray:
    """68 iBUG points -> 5 points in MTFL order (``docs/datasets.md``, "300W")."""
    lm68 = np.asarray(lm68, np.float32)
    return np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]]).astype(np.float32)


def load(root, split: str = "train", points: int = 68, strict: bool = False):
    """300W faces of ``split`` (train/common/challenging/full) as a lazy sequence of raw samples."""
    root = need_dir(Path(root), DOWNLOAD)
    check_split(split, tuple(SPLITS), "300w")
    if points not in (68, 5):
        raise FacemtlError(f"300w: points must be 68 or 5, got {points}")
    records = []
    missing = []
    for sub in SPLITS[split]:
        folder = need_dir(root / sub, DOWNLOAD)
        for img in image_files(folder):
            pts_path = img.with_suffix(".pts")
            if not pts_path.is_file():
                missing.append(str(pts_path))
                continue
            xy = read_pts(pts_path)
            if len(xy) != 68:
                raise FacemtlError(f"{pts_path}: expected 68 points, found {len(xy)}")
            records.append({"image": img, "xy": xy - 1.0, "subset": sub, "pts": pts_path})
    if missing:
        msg = f"300w/{split}: {len(missing)} image(s) without a .pts file (first: {missing[0]})"
        if strict:
            raise FacemtlError(msg)
        import warnings

        warnings.warn(msg, stacklevel=2)

    def read(r):
        xy = r["xy"] if points == 68 else five_points(r["xy"])
        return {
            "image": read_image(r["image"]),
            "landmarks": xy.astype(np.float32),
            "meta": {"dataset": "300w", "path": str(r["image"]), "id": r["image"].stem, "subset": r["subset"],
                     "annotation": str(r["pts"]),
                     "point_set": "ibug68" if points == 68 else "mtfl5"},
        }

    return LazyDataset(f"300w/{split}", records, read, strict)
