"""The training loop: set a run up, make update k for k = start..total, keep its files.

The loop knows nothing of Algorithm 1 or joint training: a *mode*
(:class:`facemtl.engine.hybrid.HybridMode` or :class:`facemtl.engine.joint.JointMode`) owns the
plan (step k -> :class:`~facemtl.engine.schedule.Update`), the update step, the model arguments
it needs and the task-to-source map. The model is used only through its contract
(:mod:`facemtl.models.base`).

The torch RNG is seeded inside a forked RNG scope, so the caller's global state is untouched;
the state saved at every epoch end (and on Ctrl-C) lets ``resume=True`` continue with exactly
the losses an uninterrupted run would have had.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Sequence

import torch

from facemtl.config import TrainConfig, to_dict
from facemtl.data.sample import to_device
from facemtl.data.transforms import random_convolution, random_detail_loss
from facemtl.engine.hybrid import HybridMode
from facemtl.engine.joint import JointMode
from facemtl.engine.mixup import mix_batch
from facemtl.errors import FacemtlError


def source_commit() -> str | None:
    """The git commit of the source checkout facemtl runs from (``+dirty`` when tracked files
    differ from it), or None when it does not run from one (an installed wheel). Recorded in
    ``model.json`` as ``source_commit`` so a run names the code that trained it."""
    import subprocess

    package = Path(__file__).resolve().parents[1]
    root = package.parents[1]
    if package.parent.name != "src" or not (root / "pyproject.toml").is_file():
        return None  # not the src/facemtl of a checkout: a git repo around it would be another project's
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
        status = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0 or status.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def training_platform(device: torch.device, speed_paths: bool = True) -> dict:
    """What a run's numbers depend on besides the code, the config and the seed: library
    versions, the processor, the threads and the build of the compiled CPU kernels (None where
    they do not run: off the CPU, without the speed paths or a compiler). Recorded in
    ``model.json`` as ``platform``. Why: the plan is the same everywhere and the data nearly so, but
    another processor or build rounds the arithmetic differently (numpy's too: a rare rendered
    pixel), and over thousands of updates the weights part ways (README, "Synthetic faces and the
    bundled model")."""
    import platform

    import cv2
    import numpy

    from facemtl.models import cpu_kernels

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
           "opencv": cv2.__version__, "device": str(device), "cpu": cpu_kernels.cpu_name(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "cpu_kernels": cpu_kernels.build_description() if speed_paths and device.type == "cpu" else None}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def resolve_device(name: str) -> torch.device:
    """``config.device`` -> a torch device; a CUDA device that is not there is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FacemtlError(f"device {name!r}: this torch build sees no CUDA GPU (torch {torch.__version__}); use device: cpu or auto")
    return torch.device(name)


def make_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    o = config.optimiser
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one multi-tensor kernel per operation instead of a Python loop over ~130 tensors;
    # the same numbers bit for bit (torch's default picks it on CUDA only; measured on the CPU:
    # the default run's AdamW step 115 -> 5 ms with channels-last weights). fused (Adam, AdamW,
    # SGD; one kernel per tensor): the default run's CPU updates x1.03 over foreach
    # (benchmarks/train_step_time.py, fast with and without it side by side). It walks each
    # tensor's memory as flat: optimiser state must have its parameter's layout, which
    # checkpoint.restore_optimizer sees to (state is saved contiguous, weights may be channels-last).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    common = dict(lr=config.schedule.lr, weight_decay=o.weight_decay, foreach=True)
    fast = dict(lr=config.schedule.lr, weight_decay=o.weight_decay, fused=True) if fused else common
    if o.name == "rmsprop":  # no fused RMSprop in torch
        return torch.optim.RMSprop(params, alpha=o.alpha, eps=o.eps, momentum=o.momentum, **common)
    if o.name == "sgd":
        return torch.optim.SGD(params, momentum=o.momentum, **fast)
    if o.name == "adamw":
        return torch.optim.AdamW(params, eps=o.eps, **fast)
    return torch.optim.Adam(params, eps=o.eps, **fast)


def make_mode(config: TrainConfig, tasks) -> HybridMode | JointMode:
    return (HybridMode if config.schedule.mode == "hybrid" else JointMode)(config, tasks)


def model_kwargs(config: TrainConfig, tasks=None, mode=None) -> dict:
    """``create_model`` kwargs: the config's, the tasks, and what the builder names of the
    input size, the ImageNet weights and the mode's task-to-source map."""
    from facemtl.models.registry import builder_parameters

    tasks = config.build_tasks() if tasks is None else tasks
    mode = make_mode(config, tasks) if mode is None else mode
    kwargs = dict(config.model.kwargs)
    kwargs["tasks"] = list(tasks)
    accepted = builder_parameters(config.model.name)
    if "input_size" in accepted:
        kwargs.setdefault("input_size", config.input_size)
    if config.model.pretrained is not None:
        if "pretrained" not in accepted:
            raise FacemtlError(f"model.pretrained: model {config.model.name!r} cannot load ImageNet weights")
        kwargs["pretrained"] = config.model.pretrained
    kwargs.update({k: v for k, v in mode.model_arguments().items() if k in accepted})
    return kwargs


class Training:
    """A run's moving parts (tasks, sources, mode, model, optimiser, device) and
    :meth:`run_update`. Build it inside a seeded RNG scope: the model's initial weights and the
    updates draw from the global torch RNG. ``speed_paths``: on a CPU, train through
    :func:`facemtl.models.fc_densenet.use_speed_paths` (False: the eager reference path)."""

    def __init__(self, config: TrainConfig, datasets: Sequence | None = None, rank: int = 0, world: int = 1,
                 speed_paths: bool = True):
        from facemtl.data.mixing import build_sources
        from facemtl.models.registry import create_model

        self.config, self.world = config, world
        self.tasks = config.build_tasks()
        self.sources = build_sources(config, self.tasks, datasets)
        self.mode = make_mode(config, self.tasks)
        kwargs, start = model_kwargs(config, self.tasks, self.mode), None
        if config.model.init is not None:  # fine-tuning: the checkpoint's model, its weights
            from facemtl.models.checkpoint import load_initial

            *start, built = load_initial(config.model.init, config.model.name, dict(config.model.kwargs),
                                         config.input_size)  # start: (trained model, its model.json, path)
            kwargs = {**kwargs, **built}
        self.model = create_model(config.model.name, **kwargs)
        if [t.name for t in self.model.tasks] != [t.name for t in self.tasks]:
            raise FacemtlError(f"model {config.model.name!r} does not predict the configured tasks {list(config.task_names)}")
        used = self.model.task_sources
        if any(used) and tuple(used) != tuple(self.mode.task_sources):
            raise FacemtlError(f"model {config.model.name!r} predicts tasks through sources {list(used)}, "
                               f"but {self.mode.name} training feeds them sources {list(self.mode.task_sources)}")
        wanted, built = config.schedule.iterations, self.model.refinement_iterations
        if wanted is not None and wanted > built:  # else it fails only when stage 2 starts
            raise FacemtlError(f"bad value for 'schedule.iterations': {wanted}, but model {config.model.name!r} is built "
                               f"with {built} refinement iteration(s) (model.kwargs.iterations): set it to at most "
                               f"{built}, or null for the model's own")
        self.init = None  # model.json's record of the checkpoint the run started from
        kept = None  # data.N.keep: the starting model's predictions kept (facemtl.engine.keep)
        if start is not None:
            from facemtl.models.checkpoint import initialise_from

            self.init = initialise_from(self.model, *start, [source.tasks for source in config.data])
            if any(source.keep for source in config.data):  # the initial model's predictions kept
                from facemtl.engine.keep import KeptPredictions

                kept = self.mode.keep = KeptPredictions(start[0], [dict(source.keep) for source in config.data],
                                                        self.mode.task_sources, config.precision)
        self.mode.prepare(self.model, self.sources, rank, world)
        self.device = resolve_device(config.device)
        self.model.to(self.device)
        if kept is not None:
            kept.initial.to(self.device)
        self.speed_paths = speed_paths
        if speed_paths:
            # channels-last weights and batched feedback convolutions: the same numbers up to float
            # rounding, ~1.5x faster updates on a CPU (benchmarks/train_step_time.py --compare);
            # channels-last is also the layout GPU tensor cores want.
            from facemtl.models.fc_densenet import use_speed_paths

            use_speed_paths(self.model)
            if kept is not None:
                use_speed_paths(kept.initial)
        # channels-last images: the stem convolution would convert an NCHW batch in every
        # forward pass and again for its weight gradient (up to 6 copies an update at Iter2)
        self.image_layout = torch.channels_last if speed_paths else torch.contiguous_format
        if config.compile:
            self.model.compile()  # in place: parameter names and state_dict keys do not change
        self.optimizer = make_optimizer(self.model, config)
        self._batch: tuple | None = None  # ((stream, draw), batch as drawn)
        self._device_batch: dict | None = None  # the same on the device, images in image_layout

    @property
    def plan(self):
        return self.mode.plan

    def run_update(self, k: int):
        """Make update k of the plan; returns ``(update, log row, loss per task)``."""
        u = self.plan[k]
        for group in self.optimizer.param_groups:
            group["lr"] = u.lr
        key = (u.stream, u.draw)
        if self._batch is None or self._batch[0] != key:  # stage 2 reuses a batch for I = 1..ITER
            self._batch = (key, self.mode.streams[u.stream].batch(u.draw))
            batch = to_device(self._batch[1], self.device)
            src = self.config.data[self.mode.source_of(u)]
            first = k  # draws seeded by the first update of this batch: a run resumed mid-batch draws the same
            while first > 0 and (self.plan[first - 1].stream, self.plan[first - 1].draw) == key:
                first -= 1
            if src.low_detail > 0:  # its own generator: the other draws stay those of a run without it
                gen = torch.Generator().manual_seed(self.config.seed * 1_000_037 + first + 11)
                batch["image"] = random_detail_loss(batch["image"], src.low_detail, gen)
            if src.random_conv > 0:
                gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + first)
                batch["image"] = random_convolution(batch["image"], src.random_conv, gen)
            if src.mixup > 0:  # a generator of its own: the RandConv draws stay those of a run without mixup
                mix_batch(batch, src.mixup, torch.Generator().manual_seed(self.config.seed * 1_000_033 + first + 7))
            if batch["image"].dim() == 4:
                batch["image"] = batch["image"].contiguous(memory_format=self.image_layout)
            self._device_batch = batch
        row, losses = self.mode.update(self.model, self.optimizer, self._device_batch, u)
        return u, row, losses

    def describe_batch(self, shown: int = 4) -> str:
        """The last batch's source and samples (training-split positions, and the readers' ids or
        paths), for messages about that batch."""
        (stream_id, draw), batch = self._batch
        stream = self.mode.streams[stream_id]
        src = stream.source
        positions = [int(i) for i in stream.indices(draw)[2]]
        metas = batch.get("meta") or [{}] * len(positions)
        items = []
        for pos, meta in zip(positions[:shown], metas):
            ident = meta.get("id", meta.get("path")) if isinstance(meta, dict) else None
            items.append(f"{pos} ({ident})" if ident is not None else str(pos))
        more = f", ... ({len(positions)} in all)" if len(positions) > shown else ""
        style = src.description.get("style")
        what = f"{src.name}, style {style}" if style else src.name
        return f"source {src.index} ({what}), training samples {', '.join(items)}{more}"

    def model_file_info(self) -> dict:
        """``model.json``'s content beyond what the model knows of itself."""
        from facemtl.data.transforms import DEFAULT_CROP_MARGIN

        descriptions = [s.description for s in self.sources]
        return {
            "model": {"name": self.config.model.name, "config": self.model.builder_config()},
            "task_sources": list(self.mode.task_sources),
            "sources": descriptions,
            "input_size": self.config.input_size,
            # How inference should crop a detected face: as the real sources were cropped; synthetic
            # faces are framed like the default margin around the landmark box (measured 0.91-0.96).
            "crop": next((d["crop"] for d in descriptions if "crop" in d),
                         {"size": self.config.input_size, "margin": DEFAULT_CROP_MARGIN}),
            "source_commit": source_commit(),
            "platform": training_platform(self.device, self.speed_paths),
            **({"init": self.init} if self.init else {}),
        }

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and JSON of the resumable state (weights, optimiser, RNG)."""
        from facemtl.engine.checkpoint import optimizer_state

        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_tensors, opt_meta = optimizer_state(self.optimizer, "optimizer")
        tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        return tensors, {"optimizer": opt_meta, "total_steps": self.plan.total, "seed": self.config.seed,
                         "world_size": self.world}

    def restore(self, run_dir: Path) -> int:
        """Load a saved state; returns the step to continue from."""
        from facemtl.engine.checkpoint import load_train_state, restore_optimizer

        tensors, meta = load_train_state(run_dir)  # one save's pair; step, total_steps, optimizer checked
        saved_world = meta.get("world_size", 1)
        if saved_world != self.world:  # the batch shards (and so the plan) depend on it
            raise FacemtlError(f"--resume: the run was trained by {saved_world} process(es), this is {self.world}; "
                               f"resume with the same number (torchrun --nproc_per_node {saved_world} ...)")
        if meta["total_steps"] != self.plan.total:
            raise FacemtlError(f"--resume: the saved run plans {meta['total_steps']} steps, this config {self.plan.total}")
        weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise FacemtlError(f"{run_dir}: saved weights do not fit the model ({str(exc).splitlines()[0]})") from None
        restore_optimizer(self.optimizer, "optimizer", tensors, meta["optimizer"])
        rng = tensors.get("rng.torch")
        try:
            torch.set_rng_state(rng)
        except (RuntimeError, TypeError) as exc:
            raise FacemtlError(f"{run_dir}: the training state holds no usable torch RNG state 'rng.torch' "
                               f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        return meta["step"]


class _StopFlag:
    """SIGINT sets a flag; the loop saves a resumable state after the current update."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                if self.set:  # second Ctrl-C: stop now
                    raise KeyboardInterrupt
                self.set = True

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _check_writable(run_dir: Path) -> None:
    """The run folder must be a folder (or a new one) this process can write in: checked before
    any work, with a file that is gone at once."""
    import tempfile

    if run_dir.exists() and not run_dir.is_dir():
        raise FacemtlError(f"--out {run_dir}: is a file, expected a run folder")
    probe = run_dir
    while not probe.exists() and probe.parent != probe:  # the folder mkdir will write in
        probe = probe.parent
    if not probe.is_dir():
        raise FacemtlError(f"--out {run_dir}: {probe} is a file, expected a folder")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".facemtl-probe-"):
            pass
    except OSError as exc:
        raise FacemtlError(f"--out {run_dir}: cannot write in {probe} ({exc.strerror or exc})") from None


def _check_run_dir(run_dir: Path, config: TrainConfig, resume: bool) -> None:
    """What the run folder holds fits the call: a new run needs an empty or new folder (a
    folder with other files, a run killed before its first checkpoint included, would mix
    logs), ``resume`` a saved state and the same config."""
    from facemtl.engine.checkpoint import STATE_JSON
    from facemtl.files import FolderLock, read_json

    _check_writable(run_dir)
    if not resume:
        if (run_dir / STATE_JSON).exists():
            raise FacemtlError(f"{run_dir} already holds a run; use --resume to continue it or choose a new --out folder")
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()
                      if p.name != FolderLock.LOCK_NAME) if run_dir.is_dir() else []
        if held:
            shown = ", ".join(held[:6]) + (f", ... ({len(held)} in all)" if len(held) > 6 else "")
            raise FacemtlError(f"{run_dir} is not empty and holds no resumable run (it has {shown}): a new run "
                               "needs an empty or new --out folder")
        return
    if not (run_dir / STATE_JSON).exists():
        raise FacemtlError(f"nothing to resume in {run_dir}: no {STATE_JSON} (train without --resume to start)")
    saved = run_dir / "config.json"
    if not saved.exists():
        return
    old, new = read_json(saved, "run config"), to_dict(config)
    for section in ("model", "data", "schedule", "optimiser", "seed", "input_size"):
        if old.get(section) != new.get(section):
            raise FacemtlError(f"--resume: the config's '{section}' differs from the run's {saved} "
                               "(resume with the same config, or start a new run folder)")


def load_run_config(run_dir) -> TrainConfig:
    """The resolved config a run was started with (``config.json`` in the run dir)."""
    from facemtl.config import load_config

    if not (Path(run_dir) / "config.json").exists():
        raise FacemtlError(f"nothing to resume in {run_dir}: no config.json")
    return load_config(run_dir)


class _RunFolder:
    """The run folder for one :func:`train` call (rank 0): locked, checked again under the
    lock, stale temporary files of interrupted writes removed. Until :attr:`started` is set, a
    failure (Ctrl-C included) removes what a new run wrote, so it leaves nothing half-made."""

    WRITTEN = ("config.json", "steps.csv", "epochs.csv", "tb")  # what start-up may have made

    def __init__(self, run_dir: Path, config: TrainConfig, resume: bool, rank: int):
        self.run_dir, self.config, self.resume, self.active = run_dir, config, resume, rank == 0
        self.started = False
        self.lock = None

    def __enter__(self) -> _RunFolder:
        from facemtl.files import FolderLock, remove_stale_temps

        from facemtl.engine.distributed import rank0_decides

        def take() -> None:
            self.created = not self.run_dir.exists()
            self.lock = FolderLock(self.run_dir, "facemtl train")
            try:
                self.lock.acquire()
                _check_run_dir(self.run_dir, self.config, self.resume)  # again: another run may have been quicker
                remove_stale_temps(self.run_dir)
            except BaseException:
                self._leave()
                raise

        rank0_decides(take if self.active else (lambda: None))
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.active and exc_type is not None and not self.started and not self.resume:
            import shutil

            for name in self.WRITTEN:
                path = self.run_dir / name
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    path.unlink(missing_ok=True)
        self._leave()

    def _leave(self) -> None:
        if self.lock is not None:
            held = self.lock.held
            self.lock.release()
            self.lock = None
            if held and self.created and not self.resume:
                try:
                    self.run_dir.rmdir()  # only if start-up left it empty
                except OSError:
                    pass


class _RunFiles:
    """What a run writes (rank 0 only): model files, resumable state, config, metrics, logs."""

    def __init__(self, run_dir: Path, training: Training, rank: int, quiet: bool, resume_step: int | None = None):
        from facemtl.engine.logging import RunLogger

        self.run_dir, self.training, self.rank = run_dir, training, rank
        self.info = training.model_file_info()
        self.log = RunLogger(run_dir, rank, tensorboard=training.config.logging.tensorboard, quiet=quiet,
                             resume_step=resume_step)
        if resume_step is not None:
            self._keep_earlier_platforms()

    def _keep_earlier_platforms(self) -> None:
        """A run resumed on another platform: model.json keeps the earlier ones under
        ``platform_history`` (oldest first), and the user hears that from here on the losses can
        differ from an uninterrupted run's in float rounding."""
        import json

        try:
            saved = json.loads((self.run_dir / "model.json").read_text())
        except (OSError, ValueError):
            return
        earlier, now = saved.get("platform"), self.info["platform"]
        history = list(saved.get("platform_history", []))
        if earlier is not None and earlier != now:
            history.append(earlier)
            keys = list(now) + [k for k in earlier if k not in now]
            changed = ", ".join(f"{k} {earlier.get(k)} -> {now.get(k)}" for k in keys if earlier.get(k) != now.get(k))
            self.log.info(f"note: resuming on another platform ({changed}); from here on the numbers can differ "
                          "in float rounding from an uninterrupted run's")
        if history:
            self.info["platform_history"] = history

    def save(self, step: int, stage: int, epoch_losses: dict[str, list[float]] | None = None) -> None:
        """One checkpoint as one set of files (model, then training state, its JSON last): a write
        that fails leaves the previous checkpoint whole, and a pair from two saves is refused.
        ``epoch_losses``: the losses of the epoch in progress, which a resumed run averages on."""
        from facemtl.engine.checkpoint import train_state_files
        from facemtl.engine.distributed import average_buffers
        from facemtl.models.checkpoint import save_checkpoint

        average_buffers(self.training.model)  # every rank: the saved statistics summarise every shard
        if self.rank != 0:
            return
        tr = self.training
        tensors, meta = tr.state()
        save_checkpoint(self.run_dir, tr.model, {**self.info, "training": {"mode": tr.mode.name, "step": step,
                                                                             "total_steps": tr.plan.total}},
                        also=train_state_files(tensors, {"step": step, "stage": stage, **meta,
                                                         "epoch_losses": epoch_losses or {}}))

    def write_json(self, name: str, data: dict) -> None:
        from facemtl.files import atomic_write_json

        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.run_dir / name, data)

    def evaluate(self) -> dict:
        from facemtl.engine.distributed import average_buffers
        from facemtl.engine.evaluate import evaluate
        from facemtl.engine.logging import process_rank

        rank, world = process_rank()
        tr = self.training
        average_buffers(tr.model)
        return evaluate(tr.model, self.info, tr.sources, batch_size=tr.config.eval_batch_size, rank=rank, world_size=world,
                        precision=tr.config.precision)


def train(config: TrainConfig, out_dir, resume: bool = False, *, datasets: Sequence | None = None,
          stop_after: int | None = None, quiet: bool = False) -> Path:
    """Train as ``config`` says (Algorithm 1 or joint) into ``out_dir``; returns the run dir.

    ``resume``: continue from ``out_dir``'s training state. ``datasets``: optional
    ``(train, test)`` raw sequences per source instead of building them from the config.
    ``stop_after``: save a resumable state and return once this many updates (counted from
    step 0) are done. The run dir gets model.safetensors/json, train_state.*, config.json,
    steps.csv, epochs.csv, tb/ and metrics.json (test-split evaluation of the final model).

    Everything is checked before the first file is written: the config, the model and the
    sources (built first), and the folder (writable; new or empty for a new run, a saved state
    for ``resume``). The folder is locked while the run uses it (``run.lock``: a second run is
    refused), and a resumed run cuts its logs back to the checkpoint it continues from.
    """
    from facemtl.data.mixing import prerender_synthetic
    from facemtl.engine import distributed

    run_dir = Path(out_dir)
    rank, world = distributed.init_from_env(config.device)  # torchrun: join the other processes
    distributed.rank0_decides(lambda: _check_run_dir(run_dir, config, resume))  # before any work
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        # Builds the model and the sources, which check what the config alone cannot: no file yet.
        training = Training(config, datasets, rank, world)
        rendered = prerender_synthetic(training.sources, distributed.local_world_size_from_env())
        distributed.broadcast_parameters(training.model)
        with _RunFolder(run_dir, config, resume, rank) as folder:
            files = None
            try:
                start = training.restore(run_dir) if resume else 0
                files = _RunFiles(run_dir, training, rank, quiet, resume_step=start if resume else None)
                files.write_json("config.json", to_dict(config))
                pairs = ", ".join(f"{t.name}<-source {s}" for t, s in zip(training.tasks, training.mode.task_sources))
                files.log.info(f"facemtl train: {training.mode.name} training of {config.model.name} on {pairs}; "
                               f"{training.plan.total} updates" + (f", resuming at {start}" if start else "")
                               + (f"; weights from {training.init['checkpoint']}"
                                  if training.init and not start else ""))
                if rendered:
                    files.log.info(rendered)
                if training.init is not None and not resume and rank == 0:
                    from facemtl.models.refiner import carry_refiner

                    carried = carry_refiner(training.init["checkpoint"], run_dir, training.model)
                    if carried is not None:
                        files.log.info(f"facemtl train: the point refiner saved beside {carried} is copied into "
                                       "the run (facemtl predict and score use it; --refiner none: the model's "
                                       "own points)")
                folder.started = True
                finished, elapsed, step_times, stage = _run_updates(training, files, start, stop_after, quiet)
                if finished:
                    _finish(training, files, start, elapsed, step_times, stage)
                distributed.wait_for_all()
            finally:
                if files is not None:
                    files.log.close()
    return run_dir


def _run_updates(training: Training, files: _RunFiles, start: int, stop_after: int | None, quiet: bool):
    """Updates start..total (or until ``stop_after`` / Ctrl-C) with logs, epoch-end evaluation and
    checkpoints. Returns (finished, seconds, per-update seconds, last stage)."""
    from tqdm import tqdm

    config, plan, log = training.config, training.plan, files.log
    bar = tqdm(total=plan.total, initial=start, disable=files.rank != 0 or not config.logging.progress or quiet,
               desc=training.mode.name, dynamic_ncols=True, unit="upd")
    epoch_losses = _saved_epoch_losses(files.run_dir) if start and files.rank == 0 else {}
    shown = _BarLosses()
    t0, step_times, stage = time.perf_counter(), [], plan[start - 1].stage if start else 0
    try:
        with _StopFlag() as stop:
            for k in range(start, plan.total):
                ts = time.perf_counter()
                u, row, losses = training.run_update(k)
                stage = u.stage
                if not math.isfinite(row["loss"]):
                    raise FacemtlError(f"training diverged at update {k + 1}: the loss is {row['loss']} on the batch of "
                                       f"{training.describe_batch()}; try a lower schedule.lr")
                step_times.append(time.perf_counter() - ts)
                for name, value in _epoch_values(row, losses).items():
                    epoch_losses.setdefault(name, []).append(value)
                bar.update(1)
                bar.set_postfix_str(shown.update(u.stage, row, losses), refresh=False)
                if (k + 1) % config.logging.log_every == 0 or k == start:
                    log.step(k + 1, {**row, "step_seconds": step_times[-1]})
                if u.epoch_end:
                    erow = {n: sum(v) / len(v) for n, v in epoch_losses.items()}
                    if config.logging.eval_every_epoch:
                        erow.update(headline(files.evaluate(), training.tasks))
                    log.epoch(k + 1, u.stage, u.epoch, erow)
                    epoch_losses = {}
                    files.save(k + 1, u.stage)
                elif config.logging.checkpoint_every and (k + 1) % config.logging.checkpoint_every == 0:
                    files.save(k + 1, u.stage, epoch_losses)
                if stop_after is not None and k + 1 >= stop_after and k + 1 < plan.total:
                    files.save(k + 1, u.stage, epoch_losses)
                    log.info(f"stopped after update {k + 1} of {plan.total}; continue with --resume")
                    return False, time.perf_counter() - t0, step_times, stage
                if stop.set:
                    files.save(k + 1, u.stage, epoch_losses)
                    bar.close()
                    log.info(f"interrupted: saved a resumable state at update {k + 1} of {plan.total} in "
                             f"{files.run_dir}; continue with --resume")
                    raise KeyboardInterrupt
    finally:
        bar.close()
    return True, time.perf_counter() - t0, step_times, stage


def _epoch_values(row: dict, losses: dict[str, float]) -> dict[str, float]:
    """What one update adds to its epoch's means in epochs.csv: each task's loss (steps.csv's
    ``loss`` or ``<task>_loss``) and, in refinement updates (iFAN stage 2 at I >= 1), the task's
    loss at each iteration (steps.csv's ``loss_iter<i>``), easier to read than their sum."""
    out = {f"mean_{name}_loss": value for name, value in losses.items()}
    if row.get("iteration", 0) > 0 and "task" in row:
        for key, value in row.items():
            if key.startswith("loss_iter") and math.isfinite(value):
                out[f"mean_{row['task']}_{key}"] = value
    return out


def _saved_epoch_losses(run_dir: Path) -> dict[str, list[float]]:
    """The losses of the epoch a resumed run continues, as its state saved them (states saved
    before they were kept have none: that epoch's means then cover only the resumed updates)."""
    from facemtl.engine.checkpoint import STATE_JSON
    from facemtl.files import read_json

    saved = read_json(run_dir / STATE_JSON, "training state").get("epoch_losses", {})
    if not isinstance(saved, dict) or not all(
            isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for v in saved.values()):
        raise FacemtlError(f"{run_dir / STATE_JSON}: 'epoch_losses' must map names to lists of numbers")
    return {str(k): [float(x) for x in v] for k, v in saved.items()}


class _BarLosses:
    """The progress bar's losses, running means: each task's loss on its own scale (one number
    would mix a landmark loss of 1e-2 with cross entropies of 1) and, in refinement updates
    (iFAN stage 2), the task's loss at each iteration, e.g. ``landmarks I0 0.12 I1 0.10``,
    rather than their sum."""

    def __init__(self) -> None:
        self.stage = None
        self.means: dict[tuple[str, int | None], float] = {}

    def update(self, stage, row: dict, losses: dict[str, float]) -> str:
        if stage != self.stage:  # a new stage shows its own numbers, not a blend with the last
            self.stage, self.means = stage, {}
        if row.get("iteration", 0) > 0 and "task" in row:
            values = {(row["task"], int(k[len("loss_iter"):])): v for k, v in row.items()
                      if k.startswith("loss_iter") and math.isfinite(v)}
        else:
            values = {(name, None): v for name, v in losses.items()}
        for key, value in values.items():
            old = self.means.get(key)
            self.means[key] = value if old is None else 0.9 * old + 0.1 * value
        parts: dict[str, list[str]] = {}
        for (name, i), value in self.means.items():
            parts.setdefault(name, []).append(f"{value:.3g}" if i is None else f"I{i} {value:.3g}")
        losses_text = ", ".join(f"{name} {' '.join(p)}" for name, p in parts.items())
        return losses_text if stage == 0 else f"stage {stage}: {losses_text}"  # stage 0: joint training, no stages


def _finish(training: Training, files: _RunFiles, start: int, elapsed: float, step_times: list[float], stage: int) -> None:
    """Final checkpoint, test-split evaluation, metrics.json and the summary tables."""
    from facemtl.engine.evaluate import format_tables

    plan = training.plan
    files.save(plan.total, stage)
    result = files.evaluate()
    if files.rank != 0:
        return
    files.write_json("metrics.json", result)
    files.log.epoch(plan.total, "final", "", headline(result, training.tasks))
    files.log.info(_summary(plan, start, elapsed, step_times) + "\n\n" + format_tables(result, training.tasks))
    if training.config.logging.report:
        from facemtl.experiments.report import write_run_report

        # the trained model and its sources as they are: nothing re-read from disk or re-rendered
        report = write_run_report(files.run_dir, result, (training.model, files.info, training.sources))
        files.log.info(f"report: {report}")


def headline(result: dict, tasks) -> dict:
    """One number per task and iteration for logs: NME, overall F1, accuracy."""
    from facemtl.kinds import kind_of

    out = {}
    for i, per_task in result["iterations"].items():
        for task in tasks:
            r = per_task.get(task.name)
            if r is not None:
                key = kind_of(task).headline
                out[f"{task.name}_{key}_iter{i}"] = r[key]
    return out


def _summary(plan, start: int, elapsed: float, step_times: list[float]) -> str:
    done = plan.total - start
    mean = sum(step_times) / len(step_times) if step_times else float("nan")
    totals = plan.stage_totals
    parts = "" if set(totals) == {0} else " (" + ", ".join(f"stage {s}: {n}" for s, n in totals.items()) + ")"
    return (f"trained {done} updates{parts} in {elapsed:.1f} s, {mean * 1000:.0f} ms per update "
            f"(data + forward + backward)")
