"""Shared pieces of the format readers: error helpers, the lazy dataset.

Every reader indexes its annotation files once (paths and labels in memory) and decodes an
image only when an item is read (:func:`facemtl.data.images.read_image`), so ``len()`` never
touches pixels. Images that fail to decode are skipped and counted, with one summary warning
(``strict=True``: an error).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from facemtl.data.images import DecodeError
from facemtl.errors import FacemtlError

# Flip permutations are label-schema knowledge and live with the tasks (facemtl.tasks:
# DATASET_TASKS, and POINT_SETS keyed by the ``meta["point_set"]`` readers set).


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
