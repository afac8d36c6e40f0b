"""Shared pieces of the format readers: error helpers, the lazy dataset.

Every reader indexes its annotation files once (paths and labels in memory) and decodes an
image only when an item is read (:func:`facemtl.data.images.read_image`), so ``len()`` never
touches pixels. Images that fail to decode are skipped and counted, with one summary warning
(``strict=True``: an error).

Values read from annotation files go through the helpers here, so every reader agrees: numbers
must be finite (:func:`parse_number`), category labels in range (:func:`parse_int`), image
paths inside the dataset folder (:func:`inside_root`); each failure is one FacemtlError naming
``file:line``, what was expected and the bad value itself. Point and box labels far outside
their image are reported when the item is read (:func:`outside_image`, ``LazyDataset.outside``).
"""

from __future__ import annotations

import math
import os
import re
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


def _shown(text: str, limit: int = 80) -> str:
    text = str(text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def line_error(path, lineno: int, expected: str, line: str = "") -> FacemtlError:
    got = f"; got {_shown(line)!r}" if line else ""
    return FacemtlError(f"{path}:{lineno}: expected {expected}{got}")


def value_error(path, lineno: int | None, expected: str, value, at: str = "", why: str = "") -> FacemtlError:
    """``file:line: expected ...; got 'value' in field N (why)``: the bad value itself, never a
    line cut short before it. ``lineno=None`` for sources without lines (``path`` says where)."""
    where = f"{path}:{lineno}" if lineno is not None else str(path)
    msg = f"{where}: expected {expected}; got {_shown(value)!r}"
    if at:
        msg += f" {at}"
    if why:
        msg += f" ({why})"
    return FacemtlError(msg)


def annotation_lines(path):
    """``(lineno, line, fields)`` for every non-blank line of a text annotation file (1-based)."""
    # utf-8-sig: a byte-order mark would otherwise stick to the first path or number.
    with open(path, encoding="utf-8-sig", errors="replace") as f:
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

    Items whose points or box lie far outside their image (:func:`outside_image`) are kept and
    counted in ``outside`` (index -> ``file:line: what``), with one warning per dataset: at the
    first such item under random access, with the count when an iteration ends.
    ``strict=True`` raises FacemtlError instead.
    """

    def __init__(self, name: str, records: list, load: Callable[[object], dict], strict: bool = False,
                 missing: Sequence[str] = ()):
        self.name = name
        self.records = records
        self._load = load
        self.strict = strict
        self.failed: dict[int, str] = {}
        self.outside: dict[int, str] = {}
        self._outside_warned = False
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
            raw = self._load(self.records[i])
        except DecodeError as exc:
            if self.strict:
                raise FacemtlError(f"{self.name}: cannot decode {exc}") from None
            self.failed[i] = str(exc)
            return None
        what = outside_image(raw)
        if what:
            meta = raw.get("meta") or {}
            where = meta.get("annotation") or meta.get("path") or f"item {i}"
            if self.strict:
                raise FacemtlError(f"{self.name}: {where}: {what}, more than {OUTSIDE_MARGIN:.0%} of its size "
                                   "outside the image")
            self.outside.setdefault(i, f"{where}: {what}")
        return raw

    def _warn_outside(self) -> None:
        if self.outside and not self._outside_warned:
            self._outside_warned = True
            warnings.warn(self.outside_summary(), stacklevel=3)

    def outside_summary(self) -> str:
        first = next(iter(self.outside.values()), "")
        return (f"{self.name}: {len(self.outside)} sample(s) read have labels more than {OUTSIDE_MARGIN:.0%} of "
                f"the image size outside the image (first: {first})")

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
                self._warn_outside()
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
        self._warn_outside()  # after the pass, so the warning has the count

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


def parse_number(text, path, lineno: int | None, what: str, at: str = "") -> float:
    """One finite number of an annotation file. ``nan``/``inf`` parse as floats but are errors
    here: they would otherwise reach training as a loss of NaN, blamed on the learning rate."""
    s = str(text).strip()
    try:
        v = float(s)
    except ValueError:
        raise value_error(path, lineno, what, s, at) from None
    if not math.isfinite(v):
        raise value_error(path, lineno, what, s, at, "not a finite number")
    return v


def parse_floats(fields: Sequence[str], path, lineno: int, line: str, what: str,
                 first_field: int | None = None, column: str | None = None) -> np.ndarray:
    """Finite numbers; an error names the bad value and its place: ``in field N`` (1-based field
    of the line, counting from ``first_field``) or ``in column C`` (value k when several)."""
    try:  # fast path (CelebA has 2 million numbers); the slow one below only finds the bad value
        out = np.array([float(f) for f in fields], dtype=np.float64)
        if np.isfinite(out).all():
            return out
    except ValueError:
        pass
    out = np.empty(len(fields), np.float64)
    for i, f in enumerate(fields):
        if first_field is not None:
            at = f"in field {first_field + i}"
        elif column is not None:
            at = f"in column {column}" + (f", value {i + 1}" if len(fields) > 1 else "")
        else:
            at = f"as value {i + 1} of {_shown(line)!r}"
        out[i] = parse_number(f, path, lineno, what, at)
    return out


def parse_int(field: str, path, lineno: int | None, line: str, what: str, lo: int, hi: int, at: str = "") -> int:
    """A category label: a whole number in ``lo..hi`` (``2`` or ``2.0``); anything else, ``nan``
    included, is an error naming the value."""
    expected = f"{what} in {lo}..{hi}"
    v = parse_number(field, path, lineno, expected, at)
    if v != int(v) or not lo <= v <= hi:
        raise value_error(path, lineno, expected, field, at)
    return int(v)


def inside_root(root: Path, name: str, path, lineno: int | None) -> Path:
    """``root / name`` for an image path read from an annotation file (``path:lineno``).

    The path must stay inside ``root``: absolute paths, drive letters and any ``..`` component
    are errors, checked on the text alone (no file is touched). ``..`` is refused even where it
    would normalise to a place inside ``root``, because after a symlinked folder the system
    resolves it against the link's target. Symlinks inside ``root`` are followed wherever they
    point: the user made them (a dataset on another disk), an annotation file cannot.
    """
    parts = re.split(r"[\\/]", name)
    if not name.strip() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise value_error(path, lineno, f"an image path inside the dataset folder {root} (relative, no '..')", name)
    return root / name


# A point or box corner further than this share of the image's width (height) beyond the
# image's left/right (top/bottom) edge is reported: a little outside is common (faces cut by
# the border), far outside means wrong units, a wrong base or swapped columns.
OUTSIDE_MARGIN = 0.5
_POINT_KEYS = (("landmarks", "visibility"), ("aflw21", "aflw21_visibility"))


def outside_image(raw: dict) -> str:
    """'' when the points and box of a raw sample lie within OUTSIDE_MARGIN of its image, else
    the first label that does not, e.g. ``landmarks point 2 at (-40, 12) in a 40x30 image``."""
    image = raw.get("image")
    if image is None:
        return ""
    h, w = image.shape[:2]
    lo = np.array([-OUTSIDE_MARGIN * w, -OUTSIDE_MARGIN * h])
    hi = np.array([(1 + OUTSIDE_MARGIN) * w, (1 + OUTSIDE_MARGIN) * h])
    for key, vis_key in _POINT_KEYS:
        if raw.get(key) is None:
            continue
        pts = np.asarray(raw[key], np.float64).reshape(-1, 2)
        bad = ((pts < lo) | (pts > hi)).any(1)
        if raw.get(vis_key) is not None:
            bad &= np.asarray(raw[vis_key], bool).reshape(-1)
        if bad.any():
            k = int(np.argmax(bad))
            return f"{key} point {k} at ({pts[k, 0]:g}, {pts[k, 1]:g}) in a {w}x{h} image"
    if raw.get("box") is not None:
        box = np.asarray(raw["box"], np.float64).reshape(2, 2)
        if ((box < lo) | (box > hi)).any():
            return f"box [{', '.join(f'{v:g}' for v in box.reshape(-1))}] in a {w}x{h} image"
    return ""
