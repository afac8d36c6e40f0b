"""Result files of the commands (predict, eval, export): checked before any work, written atomically.

- :func:`check_output_file` / :func:`check_output_dir`: a command checks every place it will
  write BEFORE loading or computing anything, so a read-only folder or a folder given as a file
  name is one line at the start, not a traceback after an hour of evaluation.
- :class:`AtomicTextFile`: a text file streamed to a temporary name in the same folder and
  moved into place only when complete; an abort (error, Ctrl-C) leaves the previous file
  untouched and no temporary behind. Whole files go through :mod:`facemtl.files`.
- :func:`dumps`: strict JSON: NaN and infinities become ``null`` (``json.dumps`` would write
  the bare tokens ``NaN``/``Infinity``, which are not JSON).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from facemtl.errors import FacemtlError
from facemtl.files import atomic_write_bytes


def _probe(folder: Path, what: str) -> None:
    """Create (and remove) a file in ``folder``: the only test that holds for read-only mounts,
    ACLs and root alike."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".facemtl-probe-", dir=folder)
    except OSError as exc:
        raise FacemtlError(f"{what}: cannot write into folder {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_dir(path, what: str) -> Path:
    """Create ``path`` (and parents) if needed and check that files can be written into it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FacemtlError(f"{what} {path}: is a file; expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FacemtlError(f"{what} {path}: cannot create the folder ({exc.strerror or exc})") from None
    _probe(path, f"{what} {path}")
    return path


def check_output_file(path, what: str) -> Path:
    """Check that ``path`` can be (re)placed: not a folder, its folder creatable and writable."""
    path = Path(path)
    if path.is_dir():
        raise FacemtlError(f"{what} {path}: is a folder; expected a file name")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise FacemtlError(f"{what} {path}: {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FacemtlError(f"{what} {path}: cannot create folder {folder} ({exc.strerror or exc})") from None
    _probe(folder, f"{what} {path}")
    return path


def _new_file_mode() -> int:
    """0o666 minus the umask, like any new file and like :mod:`facemtl.files` (``mkstemp``
    creates 0o600, which would hide results from the user's group)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:  # read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


class AtomicTextFile:
    """``with AtomicTextFile(path) as f: f.write(...)``: ``path`` appears, complete, only when the
    block ends without an exception; otherwise the old file stays and the temporary is removed."""

    def __init__(self, path, what: str = "output"):
        self.path = Path(path)
        self.what = what
        self._file = None
        self._tmp: str | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            raise FacemtlError(f"{self.what} {self.path}: cannot write ({exc.strerror or exc})") from None
        self._file = os.fdopen(fd, "w", encoding="utf-8")
        return self._file

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
                os.chmod(self._tmp, _new_file_mode())
            self._file.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
                self._tmp = None
        finally:
            if self._tmp is not None and os.path.exists(self._tmp):
                os.unlink(self._tmp)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/infinite float replaced by None and numpy scalars/arrays as Python values."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """Strict JSON (no NaN/Infinity tokens: missing values are null)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def write_png(path, image: np.ndarray) -> None:
    """Encode ``image`` (OpenCV channel order) as PNG and write it atomically."""
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise FacemtlError(f"cannot encode {path} as PNG (image of shape {image.shape}, dtype {image.dtype})")
    try:
        atomic_write_bytes(path, buf.tobytes())
    except OSError as exc:
        raise FacemtlError(f"cannot write {path} ({exc.strerror or exc})") from None
