"""Plain joint multi-task training on one source that labels several tasks at once (e.g. MTFL:
landmarks + gender, smile, glasses, pose), as Deep Collaboration's experiments train.

Each step draws one batch and minimises ``sum_t w_t * sum_I loss_t(iteration I)``: the
weighted sum of the per-task losses (Eq. 1 of iFAN, Eq. 5 when the model refines over
iterations; single-pass models return one iteration). Every parameter is updated. Losses are
always ``model.task_loss``, so models with their own head types train unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from facemtl.engine.distributed import average_gradients
from facemtl.engine.mixup import task_loss
from facemtl.engine.precision import autocast, to_float32
from facemtl.engine.schedule import Update, lr_at
from facemtl.tasks import Task


@dataclass(frozen=True)
class JointPlan:
    """Step ``k`` -> :class:`Update`: ``epochs`` passes over the source (or ``rounds`` steps)."""

    batches_per_pass: int
    epochs: int
    rounds: int | None
    lr: float
    lr_end: float
    decay: str
    warmup: int = 0

    @property
    def total(self) -> int:
        return self.rounds if self.rounds is not None else self.epochs * self.batches_per_pass

    @property
    def stage_totals(self) -> dict[int, int]:
        return {0: self.total}

    def __getitem__(self, k: int) -> Update:
        epoch = k // self.batches_per_pass
        last = k == self.total - 1 or (k + 1) % self.batches_per_pass == 0
        return Update(step=k, stage=0, task=-1, epoch=epoch, iteration=-1, stream=0, draw=k,
                      lr=lr_at(k, self.total, self.lr, self.lr_end, self.decay, self.warmup), epoch_end=last, round=k)


def joint_update(model, optimizer, batch: dict, tasks, weights, iterations: int | None,
                 precision: str = "fp32") -> dict[str, float]:
    """One step of joint training on source 0 (forward under ``precision``, losses in float32);
    returns each task's loss summed over iterations (unweighted)."""
    model.train()
    with autocast(batch["image"].device, precision):
        outputs = to_float32(model(batch["image"], source=0, iterations=iterations))
    total = 0.0
    logged: dict[str, float] = {}
    for task in tasks:
        loss = sum(task_loss(model, task.name, out[task.name], batch, batch.get(f"{task.name}_visible"))
                   for out in outputs)
        total = total + weights.get(task.name, 1.0) * loss
        logged[task.name] = float(loss.detach())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    average_gradients(model)  # several processes (torchrun): one model
    optimizer.step()
    return logged


class JointMode:
    """Joint training for the loop: ONE source, so every task learns from (and is predicted
    through the batch norm of) source 0; the model is built with exactly that map."""

    name = "joint"

    def __init__(self, config, tasks: tuple[Task, ...]):
        self.config, self.tasks = config, tasks
        self.task_sources = (0,) * len(tasks)
        self.streams: dict = {}
        self.plan: JointPlan | None = None

    def model_arguments(self) -> dict:
        return {"num_sources": 1, "task_sources": list(self.task_sources)}

    def source_of(self, u: Update) -> int:
        """The source every update draws from: the only one."""
        return 0

    def prepare(self, model, sources, rank: int, world: int) -> None:
        from facemtl.data.mixing import BatchStream

        sched = self.config.schedule
        self.streams[0] = BatchStream(sources[0], self.config.seed, 0, rank, world)
        self.plan = JointPlan(self.streams[0].batches_per_pass, sched.epochs, sched.rounds, sched.lr, sched.lr_end,
                              sched.decay, sched.warmup)

    def update(self, model, optimizer, batch: dict, u: Update) -> tuple[dict, dict[str, float]]:
        weights = self.config.schedule.loss_weights
        losses = joint_update(model, optimizer, batch, self.tasks, weights, self.config.schedule.iterations,
                              self.config.precision)
        row = {"stage": 0, "epoch": u.epoch, "lr": u.lr,
               "loss": sum(weights.get(n, 1.0) * v for n, v in losses.items()),
               **{f"{n}_loss": v for n, v in losses.items()}}
        return row, losses
