"""Run logs: per-step and per-epoch CSV files, TensorBoard scalars, console messages.

Only rank 0 writes (files and console); other ranks get a logger whose methods do nothing,
so training code never branches on the rank itself. CSV files are appended to, so a resumed
run continues the same files; their columns are fixed by the first row written (a row with a
column the header lacks is refused, never silently cut). A resumed run first cuts the CSVs
back to the checkpoint's step and has TensorBoard hide later events (``purge_step``): the
updates between the last checkpoint and a kill are made again, and logged once.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

from facemtl.errors import FacemtlError


def process_rank() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when it is initialised, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Csv:
    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] | None = None
        if path.exists() and path.stat().st_size:
            with path.open(newline="") as f:
                self.columns = next(csv.reader(f), None)

    def write(self, row: dict) -> None:
        new = self.columns is None
        if new:
            self.columns = list(row)
        extra = [k for k in row if k not in self.columns]
        if extra:
            raise FacemtlError(f"{self.path}: its header ({','.join(self.columns)}) lacks this run's column(s) "
                               f"{', '.join(extra)}: the file belongs to another run")
        try:
            with self.path.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.columns)
                if new:
                    w.writeheader()
                w.writerow({k: _fmt(v) for k, v in row.items()})
        except OSError as exc:
            raise FacemtlError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def truncate(self, step: int, drop=lambda row: False) -> None:
        """Keep the header and the whole rows up to ``step`` (column ``step``), minus ``drop``."""
        from facemtl.files import atomic_write_bytes

        if self.columns is None:
            return
        with self.path.open(newline="", encoding="utf-8", errors="replace") as f:
            rows = list(csv.reader(f))
        kept = [r for r in rows[1:] if len(r) == len(self.columns) and _int(r[0]) is not None
                and _int(r[0]) <= step and not drop(dict(zip(self.columns, r)))]
        if len(kept) == len(rows) - 1:
            return
        buf = io.StringIO()
        csv.writer(buf).writerows([self.columns, *kept])
        atomic_write_bytes(self.path, buf.getvalue().encode("utf-8"))


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _fmt(v):
    # 9 significant digits: a float32 loss reads back exactly, so epochs.csv's means can be checked
    # against the steps.csv rows they average
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.9g}"
    return v


class RunLogger:
    """``steps.csv`` / ``epochs.csv`` / TensorBoard (``tb/``) in ``run_dir``; no-op off rank 0.
    ``resume_step``: the checkpoint a resumed run continues from; later rows are cut (the final
    evaluation's rows too: they are written again at the end)."""

    def __init__(self, run_dir, rank: int = 0, tensorboard: bool = True, quiet: bool = False,
                 resume_step: int | None = None):
        self.active = rank == 0
        self.quiet = quiet
        self._tb = None
        if not self.active:
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._steps = _Csv(self.run_dir / "steps.csv")
        self._epochs = _Csv(self.run_dir / "epochs.csv")
        if resume_step is not None:
            self._steps.truncate(resume_step)
            self._epochs.truncate(resume_step, drop=lambda row: row.get("stage") == "final")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # Steps are logged 1-based (update k is step k + 1): hide what follows the checkpoint.
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def step(self, step: int, row: dict) -> None:
        if not self.active:
            return
        self._steps.write({"step": step, **row})
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("stage", "epoch"):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def epoch(self, step: int, stage, epoch, values: dict) -> None:
        """Per-epoch values, one CSV row per value (``step,stage,epoch,name,value``): the
        names differ between stages and tasks, so a long table keeps one fixed header."""
        if not self.active:
            return
        for name, v in values.items():
            self._epochs.write({"step": step, "stage": stage, "epoch": epoch, "name": name, "value": v})
            if self._tb is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(f"epoch/{name}", v, step)

    def info(self, message: str) -> None:
        if self.active and not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
