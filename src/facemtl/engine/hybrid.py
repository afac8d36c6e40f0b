"""Cross-dataset hybrid training, iFAN Algorithm 1 (section 3.3), and the training loop.

Each task t has its own dataset D_t (its *source*; its index selects the per-source batch
norm, "task-dependent batch normalization", 3.3 / 4.3.3). Parameters fall in three roles:
shared theta_S (backbone, including its feedback inputs), decoder theta_t of each task, and the
interaction parameters theta_e (re-encoders and task integrator).

Stage 1, task-wise pre-training (Algorithm 1 lines 1-8): for each task in turn, ``EP`` epochs
over D_t; each batch makes one update Delta^t_0 of (theta_S, theta_t) with the model run at
iterations=0 (no task interaction yet) and the loss of task t alone.

Stage 2, batch-wise alternating fine-tuning (lines 9-16): each *round*, every task in turn
samples one batch from D_t and, for I = 1..ITER, makes the update Delta^t_I: forward with
``iterations=I``, loss ``sum_{i=0..I} l_t(iteration i)`` (Eq. 5 restricted to task t, i.e.
Eq. 6), update theta_S, theta_t and every theta_e. Gradients also reach the other tasks'
decoders (their predictions are re-encoded), but Eq. (6) does not optimise them: their
gradients are dropped before the step. Every task makes the same number of updates per round,
whatever its dataset size (the balance argument of 3.3). A stage-2 *epoch* is defined here as
``max_t floor(n_t / b_t)`` rounds (trailing partial batches are dropped): the number of rounds after which the source with the
most batches has been traversed once (smaller sources cycle through new shuffles meanwhile).
With ITER = 0 a round makes one Iter0 update per task.

The paper's optimiser is RMSprop (4.1.2) for both stages (``configs/ifan_paper.yaml``); the
default run uses AdamW (see :mod:`facemtl.config`): ``pretrain_lr`` in stage 1 (after a linear
warm-up of ``warmup`` updates at the start of each task, whose decoder starts untrained), then
``lr`` decaying to ``lr_end`` over the stage-2 rounds (after the same warm-up). Batches come from :mod:`facemtl.data.mixing`
(deterministic, sharded by rank); the torch RNG is seeded inside a forked RNG scope, so the
caller's global state is untouched; the state saved at every epoch end lets ``resume=True``
continue with exactly the losses an uninterrupted run would have had.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from facemtl.config import TrainConfig, config_from_dict, to_dict
from facemtl.data.sample import to_device
from facemtl.errors import FacemtlError
from facemtl.tasks import Task, get_tasks


@dataclass(frozen=True)
class Update:
    """One gradient update of the schedule."""

    step: int  # global index, 0-based
    stage: int  # 1 pre-training, 2 fine-tuning (Algorithm 1); 0 joint training
    task: int  # index of the task whose loss drives it (-1: all, joint)
    epoch: int  # epoch within the stage (stage 1: within the task)
    iteration: int  # I of Delta^t_I (-1: the model's own, joint)
    stream: int  # batch stream id
    draw: int  # batch number within the stream
    lr: float
    epoch_end: bool
    round: int  # stage-2 round (stage 1: batch index within the task's stage)


def lr_at(i: int, n: int, lr: float, lr_end: float, decay: str, warmup: int = 0) -> float:
    """Learning rate of update/round ``i`` of ``n``: a linear warm-up over the first ``warmup``
    (``lr / (warmup + 1)`` up to ``lr``), then ``lr`` decaying to ``lr_end`` at the last."""
    warmup = min(warmup, max(n - 1, 0))
    if i < warmup:
        return lr * (i + 1) / (warmup + 1)
    i, n = i - warmup, n - warmup
    if decay == "constant" or n <= 1:
        return lr
    f = i / (n - 1)
    if decay == "linear":
        return lr + (lr_end - lr) * f
    if decay == "cosine":
        return lr_end + (lr - lr_end) * 0.5 * (1.0 + math.cos(math.pi * f))
    return lr * (lr_end / lr) ** f


@dataclass(frozen=True)
class HybridPlan:
    """Algorithm 1 as a flat list of updates: step ``k`` -> :class:`Update` by arithmetic.

    ``batches[t]``: batches per pass of task t's source. Stage-1 batches of task t come from
    stream ``2t`` (pass e = epoch e), stage-2 batches from stream ``2t + 1`` (one draw per round).
    """

    batches: tuple[int, ...]
    pretrain_epochs: int
    epochs: int
    rounds_override: int | None
    iterations: int
    pretrain_lr: float
    lr: float
    lr_end: float
    decay: str
    warmup: int = 0  # updates of linear warm-up at the start of each task's stage 1 and of stage 2 (rounds)

    @property
    def updates_per_task_round(self) -> int:
        return max(self.iterations, 1)

    @property
    def stage1_total(self) -> int:
        return sum(self.pretrain_epochs * b for b in self.batches)

    @property
    def rounds_per_epoch(self) -> int:
        return max(self.batches)

    @property
    def rounds(self) -> int:
        return self.rounds_override if self.rounds_override is not None else self.epochs * self.rounds_per_epoch

    @property
    def total(self) -> int:
        return self.stage1_total + self.rounds * len(self.batches) * self.updates_per_task_round

    @property
    def stage_totals(self) -> dict[int, int]:
        return {1: self.stage1_total, 2: self.total - self.stage1_total}

    def __getitem__(self, k: int) -> Update:
        if not 0 <= k < self.total:
            raise IndexError(k)
        if k < self.stage1_total:
            start = 0
            for t, b in enumerate(self.batches):
                n = self.pretrain_epochs * b
                if k < start + n:
                    j = k - start
                    epoch, pos = divmod(j, b)
                    lr = lr_at(j, n, self.pretrain_lr, self.pretrain_lr, "constant", self.warmup)
                    return Update(k, 1, t, epoch, 0, 2 * t, j, lr, pos == b - 1, j)
                start += n
        k2 = k - self.stage1_total
        per_round = len(self.batches) * self.updates_per_task_round
        r, within = divmod(k2, per_round)
        t, i = divmod(within, self.updates_per_task_round)
        iteration = i + 1 if self.iterations > 0 else 0
        epoch = r // self.rounds_per_epoch
        last_of_round = within == per_round - 1
        epoch_end = last_of_round and ((r + 1) % self.rounds_per_epoch == 0 or r == self.rounds - 1)
        lr = lr_at(r, self.rounds, self.lr, self.lr_end, self.decay, self.warmup)
        return Update(k, 2, t, epoch, iteration, 2 * t + 1, r, lr, epoch_end, r)


# ---------------------------------------------------------------------------------------
# parameter roles and one update


@dataclass
class ParameterRoles:
    shared: list[nn.Parameter]
    decoders: list[list[nn.Parameter]]  # per task, in model.tasks order
    interaction: list[nn.Parameter]  # re-encoders + integrator

    def trainable(self, stage: int, task: int) -> set[int]:
        """ids of the parameters Delta^t_I may change: stage 1 (I = 0) theta_S and theta_t;
        stage 2 also every theta_e (Algorithm 1 lines 5 and 13)."""
        ids = {id(p) for p in self.shared} | {id(p) for p in self.decoders[task]}
        if stage == 2:
            ids |= {id(p) for p in self.interaction}
        return ids


def parameter_roles(model) -> ParameterRoles:
    """Split a model's parameters into shared / per-task decoder / interaction parameters.

    Uses ``model.decoders`` (a ModuleList aligned with ``model.tasks`` or a ModuleDict keyed by
    task name) and ``model.integrator`` (re-encoders and integrator; optional). Everything
    else is shared.
    """
    decoders = getattr(model, "decoders", None)
    names = [t.name for t in model.tasks]
    if isinstance(decoders, nn.ModuleDict) and set(decoders.keys()) >= set(names):
        per_task = [list(decoders[n].parameters()) for n in names]
    elif isinstance(decoders, nn.ModuleList) and len(decoders) == len(names):
        per_task = [list(d.parameters()) for d in decoders]
    else:
        raise FacemtlError(
            f"hybrid training needs a model with one decoder per task in 'model.decoders' "
            f"({type(model).__name__} has none); train it with schedule.mode: joint"
        )
    integrator = getattr(model, "integrator", None)
    interaction = list(integrator.parameters()) if isinstance(integrator, nn.Module) else []
    taken = {id(p) for ps in per_task for p in ps} | {id(p) for p in interaction}
    shared = [p for p in model.parameters() if id(p) not in taken]
    return ParameterRoles(shared, per_task, interaction)


def hybrid_update(model, optimizer, batch: dict, task: Task, source: int, iteration: int,
                  trainable: set[int], weight: float = 1.0) -> list[float]:
    """One update Delta^t_I (Eq. 6): forward at ``iterations=I`` on source ``source``'s BN
    stream, loss ``sum_{i<=I} l_t``, step only the ``trainable`` parameters.
    Returns the task's loss at each iteration 0..I."""
    model.train()
    outputs = model(batch["image"], source=source, iterations=iteration)
    visible = batch.get(f"{task.name}_visible")
    losses = [model.task_loss(task.name, out[task.name], batch[task.name], visible) for out in outputs[: iteration + 1]]
    loss = weight * sum(losses)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for p in model.parameters():
        if id(p) not in trainable:
            p.grad = None  # Eq. (6) does not optimise this parameter for task t
    optimizer.step()
    return [float(x.detach()) for x in losses]


# ---------------------------------------------------------------------------------------
# the training loop


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
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.schedule.lr, alpha=o.alpha, eps=o.eps,
                                   momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=config.schedule.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=config.schedule.lr, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=config.schedule.lr, eps=o.eps, weight_decay=o.weight_decay)


def model_kwargs(config: TrainConfig) -> dict:
    from facemtl.models.registry import builder_parameters

    kwargs = dict(config.model.kwargs)
    kwargs["tasks"] = list(config.task_names)
    accepted = builder_parameters(config.model.name)
    if "input_size" in accepted:  # e.g. Deep Collaboration's one-pixel coordinate bins
        kwargs.setdefault("input_size", config.input_size)
    if config.model.pretrained is not None:
        if "pretrained" not in accepted:
            raise FacemtlError(f"model.pretrained: model {config.model.name!r} cannot load ImageNet weights")
        kwargs["pretrained"] = config.model.pretrained
    if config.schedule.mode == "hybrid":
        kwargs["num_sources"] = len(config.data)
        kwargs["task_sources"] = list(config.task_sources)
    return kwargs


def _checkpoint_config(model, config: TrainConfig) -> dict:
    """create_model kwargs for model.json: the model's resolved config when it has one."""
    cfg = getattr(model, "config", None)
    if dataclasses.is_dataclass(cfg):
        out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        return json.loads(json.dumps(out, default=list))
    return model_kwargs(config)


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


def _ensure_config_matches(run_dir: Path, config: TrainConfig) -> None:
    saved = run_dir / "config.json"
    if not saved.exists():
        return
    old = json.loads(saved.read_text())
    new = to_dict(config)
    for section in ("model", "data", "schedule", "optimiser", "seed", "input_size"):
        if old.get(section) != new.get(section):
            raise FacemtlError(
                f"--resume: the config's '{section}' differs from the run's {saved} "
                "(resume with the same config, or start a new run folder)"
            )


def load_run_config(run_dir) -> TrainConfig:
    """The resolved config a run was started with (``config.json`` in the run dir)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FacemtlError(f"nothing to resume in {run_dir}: no config.json")
    return config_from_dict(json.loads(path.read_text()), path=str(path))


def train(config: TrainConfig, out_dir, resume: bool = False, *, datasets: Sequence | None = None,
          stop_after: int | None = None, quiet: bool = False) -> Path:
    """Train as ``config`` says (Algorithm 1 or joint) into ``out_dir``; returns the run dir.

    ``resume``: continue from ``out_dir``'s training state. ``datasets``: optional
    ``(train, test)`` raw sequences per source instead of building them from the config.
    ``stop_after``: save a resumable state and return once this many updates (counted from
    step 0) are done. The run dir gets model.safetensors/json, train_state.*, config.json,
    steps.csv, epochs.csv, tb/ and metrics.json (test-split evaluation of the final model).
    """
    from tqdm import tqdm

    from facemtl.data.mixing import BatchStream, build_sources
    from facemtl.engine import checkpoint as ckpt
    from facemtl.engine.evaluate import evaluate, format_tables
    from facemtl.engine.joint import JointPlan, joint_update
    from facemtl.engine.logging import RunLogger, process_rank
    from facemtl.models.registry import create_model

    run_dir = Path(out_dir)
    rank, world = process_rank()
    if resume:
        if not (run_dir / ckpt.STATE_JSON).exists():
            raise FacemtlError(f"nothing to resume in {run_dir}: no {ckpt.STATE_JSON} (train without --resume to start)")
        _ensure_config_matches(run_dir, config)
    elif (run_dir / ckpt.STATE_JSON).exists():
        raise FacemtlError(f"{run_dir} already holds a run; use --resume to continue it or choose a new --out folder")
    tasks = get_tasks(config.task_names)
    sources = build_sources(config, tasks, datasets)
    sched = config.schedule
    hybrid = sched.mode == "hybrid"
    weights = dict(sched.loss_weights)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = create_model(config.model.name, **model_kwargs(config))
        if not hasattr(model, "tasks") or [t.name for t in model.tasks] != list(config.task_names):
            raise FacemtlError(f"model {config.model.name!r} does not predict the configured tasks {list(config.task_names)}")
        tasks = tuple(model.tasks)
        iterations = sched.iterations
        if iterations is None:
            iterations = getattr(getattr(model, "config", None), "iterations", 0)
        if hybrid:
            roles = parameter_roles(model)
            task_src = list(config.task_sources)
            streams = {}
            for t in range(len(tasks)):
                for s in (2 * t, 2 * t + 1):
                    streams[s] = BatchStream(sources[task_src[t]], config.seed, s, rank, world)
            plan = HybridPlan(tuple(streams[2 * t].batches_per_pass for t in range(len(tasks))),
                              sched.pretrain_epochs, sched.epochs, sched.rounds, iterations,
                              sched.pretrain_lr, sched.lr, sched.lr_end, sched.decay, sched.warmup)
            trainable = {(st, t): roles.trainable(st, t) for st in (1, 2) for t in range(len(tasks))}
        else:
            streams = {0: BatchStream(sources[0], config.seed, 0, rank, world)}
            plan = JointPlan(streams[0].batches_per_pass, sched.epochs, sched.rounds, sched.lr, sched.lr_end, sched.decay,
                             sched.warmup)
            joint_iters = sched.iterations
        device = resolve_device(config.device)
        model.to(device)
        optimizer = make_optimizer(model, config)

        start = 0
        if resume:
            tensors, meta = ckpt.load_train_state(run_dir)
            weights_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            try:
                model.load_state_dict(weights_sd, strict=True)
            except RuntimeError as exc:
                raise FacemtlError(f"{run_dir}: saved weights do not fit the model ({str(exc).splitlines()[0]})") from None
            ckpt.restore_optimizer(optimizer, "optimizer", tensors, meta["optimizer"])
            torch.set_rng_state(tensors["rng.torch"])
            start = int(meta["step"])
            if meta.get("total_steps") != plan.total:
                raise FacemtlError(f"--resume: the saved run plans {meta.get('total_steps')} steps, this config {plan.total}")

        info = {
            "model": {"name": config.model.name, "config": _checkpoint_config(model, config)},
            "task_sources": list(config.task_sources) if hybrid else [0] * len(tasks),
            "sources": [s.description for s in sources],
            "input_size": config.input_size,
            # How inference should crop a detected face: as the real sources were cropped; synthetic
            # faces are framed like a 0.25 margin around the landmark box (measured 0.91-0.96).
            "crop": next((s.description["crop"] for s in sources if "crop" in s.description),
                         {"size": config.input_size, "margin": 0.25}),
        }

        def save(step: int, stage: int) -> None:
            if rank != 0:
                return
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
            opt_t, opt_meta = ckpt.optimizer_state(optimizer, "optimizer")
            tensors.update(opt_t)
            tensors["rng.torch"] = torch.get_rng_state()
            ckpt.save_checkpoint(run_dir, model, {**info, "training": {"mode": sched.mode, "step": step,
                                                                         "total_steps": plan.total}})
            ckpt.save_train_state(run_dir, tensors, {"step": step, "stage": stage, "total_steps": plan.total,
                                                     "optimizer": opt_meta, "seed": config.seed})

        log = RunLogger(run_dir, rank, tensorboard=config.logging.tensorboard, quiet=quiet)
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_json(run_dir / "config.json", to_dict(config))
        log.info(f"facemtl train: {sched.mode} training of {config.model.name} on "
                 f"{', '.join(f'{t.name}<-source {s}' for t, s in zip(tasks, info['task_sources']))}; "
                 f"{plan.total} updates" + (f", resuming at {start}" if start else ""))

        bar = tqdm(total=plan.total, initial=start, disable=rank != 0 or not config.logging.progress or quiet,
                   desc=sched.mode, dynamic_ncols=True, unit="upd")
        epoch_sums: dict[str, list[float]] = {}
        last_batch: tuple | None = None
        t0 = time.perf_counter()
        step_times: list[float] = []
        finished = True
        u = None
        try:
            with _StopFlag() as stop:
                for k in range(start, plan.total):
                    u = plan[k]
                    for group in optimizer.param_groups:
                        group["lr"] = u.lr
                    ts = time.perf_counter()
                    key = (u.stream, u.draw)
                    if last_batch is None or last_batch[0] != key:
                        last_batch = (key, streams[u.stream].batch(u.draw))
                    batch = to_device(last_batch[1], device)
                    if hybrid:
                        task = tasks[u.task]
                        losses = hybrid_update(model, optimizer, batch, task, task_src[u.task], u.iteration,
                                               trainable[(u.stage, u.task)], weights.get(task.name, 1.0))
                        # Fixed columns (CSV header comes from the first row): loss at each iteration.
                        row = {"stage": u.stage, "epoch": u.epoch, "task": task.name, "iteration": u.iteration,
                               "lr": u.lr, "loss": sum(losses),
                               **{f"loss_iter{i}": (losses[i] if i < len(losses) else float("nan"))
                                  for i in range(max(iterations, 0) + 1)}}
                        epoch_sums.setdefault(f"{task.name}_loss", []).append(sum(losses))
                    else:
                        losses_t = joint_update(model, optimizer, batch, tasks, weights, joint_iters)
                        row = {"stage": 0, "epoch": u.epoch, "lr": u.lr,
                               "loss": sum(weights.get(n, 1.0) * v for n, v in losses_t.items()),
                               **{f"{n}_loss": v for n, v in losses_t.items()}}
                        for n, v in losses_t.items():
                            epoch_sums.setdefault(f"{n}_loss", []).append(v)
                    if not math.isfinite(row["loss"]):
                        raise FacemtlError(f"training diverged at update {k + 1}: the loss is {row['loss']}; try a lower schedule.lr")
                    step_times.append(time.perf_counter() - ts)
                    bar.update(1)
                    bar.set_postfix(stage=u.stage, loss=f"{row['loss']:.4g}", refresh=False)
                    if (k + 1) % config.logging.log_every == 0 or k == start:
                        log.step(k + 1, {**row, "step_seconds": step_times[-1]})
                    if u.epoch_end:
                        erow = {f"mean_{n}": sum(v) / len(v) for n, v in epoch_sums.items()}
                        if config.logging.eval_every_epoch:
                            res = evaluate(model, info, sources, batch_size=config.eval_batch_size, rank=rank,
                                           world_size=world)
                            erow.update(_headline(res, tasks))
                        log.epoch(k + 1, u.stage, u.epoch, erow)
                        epoch_sums = {}
                        save(k + 1, u.stage)
                    elif config.logging.checkpoint_every and (k + 1) % config.logging.checkpoint_every == 0:
                        save(k + 1, u.stage)
                    if stop_after is not None and k + 1 >= stop_after and k + 1 < plan.total:
                        save(k + 1, u.stage)
                        finished = False
                        log.info(f"stopped after update {k + 1} of {plan.total}; continue with --resume")
                        break
                    if stop.set:
                        save(k + 1, u.stage)
                        bar.close()
                        log.info(f"interrupted: saved a resumable state at update {k + 1} of {plan.total} in "
                                 f"{run_dir}; continue with --resume")
                        raise KeyboardInterrupt
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
        if start == plan.total:
            finished = True
        if finished:
            save(plan.total, u.stage if u is not None else 0)
            result = evaluate(model, info, sources, batch_size=config.eval_batch_size, rank=rank, world_size=world)
            if rank == 0:
                ckpt.atomic_write_json(run_dir / "metrics.json", result)
                summary = _summary(plan, start, elapsed, step_times)
                log.epoch(plan.total, "final", "", _headline(result, tasks))
                log.info(summary + "\n\n" + format_tables(result, tasks))
        log.close()
    return run_dir


def _headline(result: dict, tasks) -> dict:
    """One number per task and iteration for logs: NME, overall F1, accuracy."""
    out = {}
    for i, per_task in result["iterations"].items():
        for task in tasks:
            r = per_task.get(task.name)
            if r is None:
                continue
            key = {"points": "nme", "segmentation": "overall", "category": "accuracy"}[task.kind]
            out[f"{task.name}_{key}_iter{i}"] = r[key]
    return out


def _summary(plan, start: int, elapsed: float, step_times: list[float]) -> str:
    done = plan.total - start
    mean = sum(step_times) / len(step_times) if step_times else float("nan")
    parts = ", ".join(f"stage {s}: {n}" for s, n in plan.stage_totals.items())
    return (f"trained {done} updates ({parts}) in {elapsed:.1f} s, {mean * 1000:.0f} ms per update "
            f"(data + forward + backward)")
