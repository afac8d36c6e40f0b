"""FER2013 (Goodfellow et al. 2013): 48x48 gray faces in one CSV, 7 emotions.

``fer2013.csv`` columns ``emotion, pixels, Usage`` (some copies have leading spaces in the
column names: names are stripped, matched in any case; a byte-order mark is ignored).
``pixels`` = 2,304 space-separated 0..255 values, row major. Usage: Training -> ``train``,
PublicTest -> ``val``, PrivateTest -> ``test``.
Images are returned as 48x48x3 RGB (the gray value repeated). Labels are FER2013's order
(0 Angry .. 6 Neutral), the standard ``emotion`` task order. The CSV is indexed once (label
and byte offset of each row; the ~300 MB of pixel text stays on disk); a row's pixels are
read and parsed when its item is read. Fields may be double-quoted; none may contain commas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facemtl.data.formats.common import DecodeError, LazyDataset, check_split, find_first, line_error, need_dir
from facemtl.errors import FacemtlError

DOWNLOAD = "FER2013 (Kaggle challenges-in-representation-learning fer2013.tar.gz: fer2013.csv)"
USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}


def load(root, split: str = "train", strict: bool = False):
    """FER2013 faces of ``split`` (train/val/test) as a lazy sequence of raw samples."""
    root = Path(root)
    if root.is_file():
        path = root
    else:
        path = find_first(need_dir(root, DOWNLOAD), ("fer2013.csv", "fer2013/fer2013.csv"), DOWNLOAD)
    check_split(split, tuple(USAGE), "fer2013")
    records = []  # (line number, label, byte offset of the line): the pixels stay on disk
    with open(path, "rb") as f:
        head = f.readline()
        # utf-8-sig: a byte-order mark would stick to the first name; byte offsets still count it.
        names = [h.strip().strip('"') for h in head.decode("utf-8-sig", "replace").strip().split(",")]
        header = [h.lower() for h in names]  # names match case-insensitively (Usage, usage, USAGE)
        if not head.strip():
            raise line_error(path, 1, "a header 'emotion,pixels,Usage'")
        cols = {}
        for need in ("emotion", "pixels", "usage"):
            if need not in header:
                raise FacemtlError(f"{path}:1: expected columns emotion, pixels, Usage (any case); "
                                   f"got {', '.join(names)}, no {need}")
            cols[need] = header.index(need)
        usages = set(USAGE.values())
        lineno, offset = 1, len(head)
        for raw_line in f:
            lineno += 1
            line_offset, offset = offset, offset + len(raw_line)
            text = raw_line.decode("utf-8", "replace").strip()
            if not text:
                continue
            row = [c.strip().strip('"') for c in text.split(",")]
            if len(row) != len(header):
                raise line_error(path, lineno, f"{len(header)} comma-separated columns", text)
            usage = row[cols["usage"]]
            if usage not in usages:
                raise line_error(path, lineno, "Usage Training, PublicTest or PrivateTest", usage)
            label = row[cols["emotion"]]
            if label not in {"0", "1", "2", "3", "4", "5", "6"}:
                raise line_error(path, lineno, "emotion 0..6", label)
            if usage == USAGE[split]:
                records.append((lineno, int(label), line_offset))
    pixel_col = cols["pixels"]

    def read(rec):
        lineno, label, line_offset = rec
        with open(path, "rb") as f:
            f.seek(line_offset)
            pixels = f.readline().decode("utf-8", "replace").split(",")[pixel_col].strip().strip('"')
        texts = pixels.split()
        expected = "2304 pixel values 0..255"
        if len(texts) != 48 * 48:
            raise DecodeError(f"{path}:{lineno}: expected {expected}; got {len(texts)} values")
        try:
            values = np.array(texts, dtype=np.int64)
            bad = np.flatnonzero((values < 0) | (values > 255))
        except ValueError:
            bad = [k for k, t in enumerate(texts) if not (t.isascii() and t.isdigit())]
        if len(bad):
            k = int(bad[0])  # the first bad value and where it is, not just the count
            raise DecodeError(f"{path}:{lineno}: expected {expected}; got {texts[k]!r} at pixel {k + 1} "
                              f"(row {k // 48 + 1}, column {k % 48 + 1})")
        gray = values.astype(np.uint8).reshape(48, 48)
        return {"image": np.repeat(gray[:, :, None], 3, axis=2), "emotion": label,
                "meta": {"dataset": "fer2013", "path": str(path), "id": lineno, "usage": USAGE[split]}}

    return LazyDataset(f"fer2013/{split}", records, read, strict)
