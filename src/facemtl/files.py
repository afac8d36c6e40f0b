"""Files written atomically and read with one clear error: JSON and safetensors only.

Every file is written to a temporary name in the same folder, fsynced and moved into place
with ``os.replace``, so a crash leaves either the old or the new file, never half of one.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from facemtl.errors import FacemtlError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def tensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    # safetensors refuses shared storage; independent contiguous CPU copies are always fine.
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FacemtlError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FacemtlError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FacemtlError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes())
    except FileNotFoundError:
        raise FacemtlError(f"{what} not found: {path}") from None
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FacemtlError(f"{path}: not a readable safetensors file ({exc})") from None
