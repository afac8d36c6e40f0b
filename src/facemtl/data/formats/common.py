"""Shared pieces of the format readers: image decoding, error helpers, the lazy dataset.

Every reader indexes its annotation files once (paths and labels in memory) and decodes an
image only when an item is read, so ``len()`` never touches pixels. Images that fail to
decode are skipped and counted, with one summary warning (``strict=True``: an error).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from facemtl.errors import FacemtlError

# Flip permutations of the non-standard point sets (tasks.py convention: point i becomes
# perm[i] after a horizontal flip), keyed by the ``meta["point_set"]`` the readers set.
_IBUG68 = (
    tuple(range(16, -1, -1))  # jaw 0..16 reversed
    + (26, 25, 24, 23, 22, 21, 20, 19, 18, 17)  # brows
    + (27, 28, 29, 30, 35, 34, 33, 32, 31)  # nose bridge, nostrils
    + (45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40)  # eyes
    + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55)  # outer lips
    + (64, 63, 62, 61, 60, 67, 66, 65)  # inner lips
)
_AFLW21 = (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 16, 15, 14, 13, 12, 19, 18, 17, 20)
# WFLW 98: contour 0..32, brows 33..50, nose 51..59, eyes 60..75, mouth 76..95, pupils 96/97.
_WFLW98 = (
    tuple(range(32, -1, -1))
    + (46, 45, 44, 43, 42, 50, 49, 48, 47, 37, 36, 35, 34, 33, 41, 40, 39, 38)
    + (51, 52, 53, 54, 59, 58, 57, 56, 55)
    + (72, 71, 70, 69, 68, 75, 74, 73, 64, 63, 62, 61, 60, 67, 66, 65)
    + (82, 81, 80, 79, 78, 77, 76, 87, 86, 85, 84, 83, 92, 91, 90, 89, 88, 95, 94, 93)
    + (97, 96)
)
POINT_SET_FLIPS: dict[str, tuple[int, ...]] = {
    "mtfl5": (1, 0, 2, 4, 3),
    "ibug68": _IBUG68,
    "aflw21": _AFLW21,
    "wflw98": _WFLW98,
    # LaPa 106: layout not verified here, so no flip permutation (flipping raises).
}

# Flip permutations of masks that are not standard tasks (CelebAMask-HQ's 19 classes:
# l_eye<->r_eye, l_brow<->r_brow, l_ear<->r_ear).
MASK_FLIPS: dict[str, tuple[int, ...]] = {
    "parsing19": (0, 1, 2, 3, 5, 4, 7, 6, 9, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18),
}

# Pose bins from a yaw angle (degrees): 30-degree bins, MTFL's five pose classes.
# [-inf, -45) left profile, [-45, -15) left, [-15, 15) frontal, [15, 45) right, [45, inf) right profile.
# Which sign of yaw is "left" is the source's convention (unconfirmed for AFLW).
YAW_BIN_EDGES = (-45.0, -15.0, 15.0, 45.0)


def yaw_to_pose(yaw_degrees: float) -> int:
    return int(np.searchsorted(YAW_BIN_EDGES, yaw_degrees, side="right"))


def angle_bin(degrees: float, width: float = 30.0) -> int:
    """30-degree wide bins from -180: bin k covers [-180 + k*width, -180 + (k+1)*width) (DCNet AFLW)."""
    return int(np.floor((degrees + 180.0) / width))


def need_dir(path: Path, download: str) -> Path:
    if not path.is_dir():
        raise FacemtlError(f"folder not found: {path} (expected from the official {download} download)")
    return path


def need_file(path: Path, download: str) -> Path:
    if not path.is_file():
        raise FacemtlError(f"file not found: {path} (expected from the official {download} download)")
    return path


def find_first(root: Path, candidates: Sequence[str], download: str, kind: str = "file") -> Path:
    """First existing ``root / c``; the error names every place looked at."""
    for c in candidates:
        p = root / c
        if (kind == "file" and p.is_file()) or (kind == "dir" and p.is_dir()):
            return p
    looked = ", ".join(str(root / c) for c in candidates)
    raise FacemtlError(f"{kind} not found: expected {looked} (from the official {download} download)")


def line_error(path, lineno: int, expected: str, line: str = "") -> FacemtlError:
    shown = line.strip()
    if len(shown) > 80:
        shown = shown[:77] + "..."
    got = f"; got {shown!r}" if line else ""
    return FacemtlError(f"{path}:{lineno}: expected {expected}{got}")


def annotation_lines(path):
    """``(lineno, line, fields)`` for every non-blank line of a text annotation file (1-based)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if fields:
                yield lineno, line, fields


IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def image_files(folder: Path, exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """Files of ``folder`` with an image extension (any case), sorted by name."""
    return [p for p in sorted(folder.iterdir()) if p.suffix.lower() in exts]


def check_split(split: str, splits: Sequence[str], dataset: str) -> str:
    if split not in splits:
        raise FacemtlError(f"{dataset}: unknown split {split!r}; expected one of {', '.join(splits)}")
    return split


def _decode(path, flag: int) -> np.ndarray | None:
    """``cv2.imdecode`` of a file's bytes (np.fromfile: works with spaces/unicode), or None."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, flag)


def read_image(path) -> np.ndarray | None:
    """RGB uint8 (H, W, 3) or None if the file cannot be decoded (works with spaces/unicode)."""
    img = _decode(path, cv2.IMREAD_COLOR)
    if img is None:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_gray(path) -> np.ndarray | None:
    """Single-channel uint8 (H, W) or None."""
    return _decode(path, cv2.IMREAD_GRAYSCALE)


class DecodeError(Exception):
    """Raised by a reader's load function when an image (or mask) cannot be decoded."""


class LazyDataset(Sequence):
    """Indexed records; ``load(record) -> raw sample`` decodes on access.

    An item whose image fails to decode is skipped: indexing returns the next decodable
    record (its own labels, never the failed one's), iteration leaves it out, and a summary
    warning counts the skipped files when an iteration ends (or immediately per new failure
    under random access). ``strict=True`` raises FacemtlError instead.
    """

    def __init__(self, name: str, records: list, load: Callable[[object], dict], strict: bool = False,
                 missing: Sequence[str] = ()):
        self.name = name
        self.records = records
        self._load = load
        self.strict = strict
        self.failed: dict[int, str] = {}
        self.missing = list(missing)  # images listed in annotations but absent on disk (skipped)
        if self.missing:
            msg = (f"{name}: {len(self.missing)} annotated image(s) not found on disk and skipped "
                   f"(first: {self.missing[0]})")
            if strict:
                raise FacemtlError(msg)
            warnings.warn(msg, stacklevel=3)

    def __len__(self) -> int:
        return len(self.records)

    def _try(self, i: int) -> dict | None:
        try:
            return self._load(self.records[i])
        except DecodeError as exc:
            if self.strict:
                raise FacemtlError(f"{self.name}: cannot decode {exc}") from None
            self.failed[i] = str(exc)
            return None

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.name}: index {i} out of range for {n} samples")
        for step in range(n):
            j = (i + step) % n
            if j in self.failed:
                continue
            before = len(self.failed)
            raw = self._try(j)
            if raw is not None:
                return raw
            if len(self.failed) > before:
                warnings.warn(self.summary(), stacklevel=2)
        raise FacemtlError(f"{self.name}: no image could be decoded ({self.summary()})")

    def __iter__(self):
        before = len(self.failed)
        for j in range(len(self)):
            if j in self.failed:
                continue
            raw = self._try(j)
            if raw is not None:
                yield raw
        if len(self.failed) > before:
            warnings.warn(self.summary(), stacklevel=2)

    def summary(self) -> str:
        first = next(iter(self.failed.values()), "")
        return (f"{self.name}: skipped {len(self.failed)} of {len(self)} image(s) that failed to decode"
                + (f" (first: {first})" if first else ""))


def split_existing(records: list, path_of: Callable[[object], Path], check: bool = True) -> tuple[list, list[str]]:
    """Keep records whose image exists; return (kept, missing paths)."""
    if not check:
        return records, []
    kept, missing = [], []
    for r in records:
        p = path_of(r)
        if os.path.isfile(p):
            kept.append(r)
        else:
            missing.append(str(p))
    return kept, missing


def load_image(path) -> np.ndarray:
    img = read_image(path)
    if img is None:
        raise DecodeError(str(path))
    return img


def load_gray(path) -> np.ndarray:
    mask = read_gray(path)
    if mask is None:
        raise DecodeError(str(path))
    return mask


def parse_floats(fields: Sequence[str], path, lineno: int, line: str, what: str) -> np.ndarray:
    try:
        return np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError:
        raise line_error(path, lineno, what, line) from None


def parse_int(field: str, path, lineno: int, line: str, what: str, lo: int, hi: int) -> int:
    try:
        v = int(field)
    except ValueError:
        try:
            f = float(field)
        except ValueError:
            raise line_error(path, lineno, what, line) from None
        if f != int(f):
            raise line_error(path, lineno, what, line) from None
        v = int(f)
    if not lo <= v <= hi:
        raise line_error(path, lineno, f"{what} in {lo}..{hi}", line)
    return v
