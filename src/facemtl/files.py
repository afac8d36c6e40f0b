"""Files written atomically and read with one clear error: JSON and safetensors only.

Every file is written to a temporary name in the same folder, fsynced and moved into place
with ``os.replace``, so a crash leaves either the old or the new file, never half of one.
Several files that belong together (a checkpoint) are all written to their temporary names
before the first is moved into place, so a failed write (a full disk) leaves the previous set
whole; a JSON file can carry the SHA-256 of its tensors file (:func:`sha256_hex`,
``read_tensors(..., sha256=...)``) so that a pair from two different saves is refused.
Written files get the permissions the umask gives any new file (not ``mkstemp``'s 0600).
:class:`FolderLock` keeps two processes out of one folder. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from facemtl.errors import FacemtlError


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (another thread
    creating a file meanwhile would otherwise get the temporary umask)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_TEMP = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.tmp$")  # mkstemp(prefix=".NAME.", suffix=".tmp")


def _write_temp(path: Path, data: bytes) -> str:
    """``data`` in a new temporary file beside ``path`` (fsynced, umask permissions); its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; a written file should look like any other
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def atomic_write_files(files: Sequence[tuple[str | Path, bytes]]) -> None:
    """Write ``(path, data)`` pairs atomically as one set: every file goes to a temporary name
    first, and only when all are written are they moved into place, in the given order (put the
    file that marks the set complete last). A write that fails (a full disk: one
    :class:`FacemtlError` line) leaves every previous file as it was."""
    files = [(Path(p), d) for p, d in files]
    staged: list[tuple[str, Path]] = []
    current = files[0][0] if files else None
    try:
        for path, data in files:
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.append((_write_temp(path, data), path))
        for tmp, path in staged:
            current = path
            os.replace(tmp, path)
    except OSError as exc:
        raise FacemtlError(f"cannot write {current}: {exc.strerror or exc}") from None
    finally:
        for tmp, _ in staged:  # those not moved into place (after a failure)
            if os.path.exists(tmp):
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    for folder in {path.parent for path in (p for p, _ in files)}:
        try:  # make the renames themselves durable
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, replace)."""
    atomic_write_files([(path, data)])


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remove_stale_temps(folder: str | Path) -> list[str]:
    """Remove the temporary files an interrupted atomic write left in ``folder`` (only call it
    while no other process writes there, e.g. holding its :class:`FolderLock`); their names."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if _TEMP.match(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def tensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    # safetensors refuses shared storage; independent contiguous CPU copies are always fine.
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


# BatchNorm running statistics stay float32 when weights are stored halved: a variance near zero
# would lose its precision; they are few.
FULL_PRECISION_SUFFIXES = ("running_mean", "running_var")


def half_precision(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float16 copies of the floating-point tensors, for storage only (half the bytes; a relative rounding
    of at most 2**-11 for values above 6e-5, float16's smallest normal number); ``load_state_dict`` copies them back into float32 models, which compute as
    before. Integers and BatchNorm running statistics (:data:`FULL_PRECISION_SUFFIXES`) are kept."""
    return {k: v.half() if v.is_floating_point() and not k.endswith(FULL_PRECISION_SUFFIXES) else v
            for k, v in tensors.items()}


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FacemtlError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FacemtlError(f"{path}: malformed JSON ({exc})") from None
    except OSError as exc:
        raise FacemtlError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise FacemtlError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_tensors(path: Path, what: str, sha256: str | None = None, recorded_in: Path | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file; with ``sha256`` (as recorded in the JSON file ``recorded_in``), a file
    whose content has another hash is refused: the two files come from different saves."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FacemtlError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise FacemtlError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if sha256 is not None:
        got = sha256_hex(data)
        if got != sha256:
            raise FacemtlError(f"{path} does not belong with {recorded_in or 'its JSON file'}: its SHA-256 is "
                               f"{got[:16]}..., expected {str(sha256)[:16]}... as recorded there (the two files "
                               "come from different saves, e.g. a save interrupted between them)")
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FacemtlError(f"{path}: not a readable safetensors file ({exc})") from None


try:
    import fcntl
except ImportError:  # Windows: no flock; the holder's pid alone decides
    fcntl = None


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate it: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """``LOCK_NAME`` in a folder, holding ``{"pid", "host", "since"}`` of the process that uses
    the folder; ``with FolderLock(folder):`` or :meth:`acquire` / :meth:`release`.

    A lock whose process is gone is replaced: on this host, a pid that no longer runs (a run
    killed with SIGKILL never removes its lock); a lock of another host is never judged (its pid
    means nothing here), so it is refused with the way out. Where ``flock`` exists it is held on
    the lock file too, which makes taking a lock, stale or not, race-free between processes.
    """

    LOCK_NAME = "run.lock"

    def __init__(self, folder: str | Path, purpose: str = "facemtl"):
        self.folder, self.purpose = Path(folder), purpose
        self.path = self.folder / self.LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> FolderLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for _ in range(20):
                self._fd = self._take()
                if self._fd is not None:
                    return self
            raise FacemtlError(f"{self.path}: could not take the lock, another process keeps replacing it")
        except OSError as exc:
            raise FacemtlError(f"cannot lock {self.folder}: {exc.strerror or exc}") from None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding flock: nobody takes a file on its way out
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None

    def _take(self) -> int | None:
        """The open, locked lock file; None when it changed under us (try again)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL), 0o666)
        except FileExistsError:  # no flock: the holder's pid decides
            holder = self._holder()
            if holder is not None and not self._stale(holder):
                raise self._busy(holder) from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise self._busy(self._holder()) from None
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # released (unlinked) between our open and our flock
                    os.close(fd)
                    return None
                holder = self._parse(os.read(fd, 65536))
                # flock is free, but a pid that still runs on this host (say, a facemtl without
                # flock) keeps the folder: when in doubt, refuse and say how to go on.
                if holder is not None and not self._stale(holder):
                    raise self._busy(holder)
            mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "purpose": self.purpose}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json_bytes(mine))
            os.fsync(fd)
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _parse(raw: bytes) -> dict | None:
        try:
            holder = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str)
        return holder if ok else None

    def _holder(self) -> dict | None:
        try:
            return self._parse(self.path.read_bytes())
        except OSError:
            return None

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder["host"] != socket.gethostname():
            return False
        return holder["pid"] == os.getpid() or not _alive(holder["pid"])

    def _busy(self, holder: dict | None) -> FacemtlError:
        since = f", since {holder['since']}" if holder and "since" in holder else ""
        who = (f"{holder.get('purpose', 'a process')} (pid {holder['pid']} on {holder['host']}{since})"
               if holder else "another process")
        return FacemtlError(f"{self.folder} is in use by {who}: wait for it to end, or delete {self.path} "
                            "if that process is gone")
