"""Cross-dataset hybrid training, iFAN Algorithm 1 (section 3.3): its plan, its update and the
training mode the loop (:mod:`facemtl.engine.loop`) runs it through.

Each task t has its own dataset D_t (its *source*; its index selects the per-source batch
norm, "task-dependent batch normalization", 3.3 / 4.3.3). Parameters fall in three roles, which
the model names (``model.parameter_groups()``, :mod:`facemtl.models.base`): shared theta_S
(backbone, including its feedback inputs), decoder theta_t of each task, and the interaction
parameters theta_e (re-encoders and task integrator).

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
(deterministic, sharded by rank).
"""

from __future__ import annotations

from dataclasses import dataclass

from facemtl.engine.distributed import average_gradients
from facemtl.engine.mixup import task_loss
from facemtl.engine.precision import autocast, to_float32
from facemtl.engine.schedule import Update, lr_at
from facemtl.tasks import Task


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


def hybrid_update(model, optimizer, batch: dict, task: Task, source: int, iteration: int,
                  trainable: set[int], weight: float = 1.0, precision: str = "fp32", keep=None) -> list[float]:
    """One update Delta^t_I (Eq. 6): forward at ``iterations=I`` on source ``source``'s BN
    stream (under ``precision``, :mod:`facemtl.engine.precision`), loss ``sum_{i<=I} l_t``
    in float32 (plus ``keep.loss``, :class:`facemtl.engine.keep.KeptPredictions`, when given),
    step only the ``trainable`` parameters.
    Returns the task's loss at each iteration 0..I."""
    model.train()
    with autocast(batch["image"].device, precision):
        # only task t is read at iteration I: the model may skip the other decoders there
        outputs = to_float32(model(batch["image"], source=source, iterations=iteration, tasks=(task.name,)))
    visible = batch.get(f"{task.name}_visible")
    losses = [task_loss(model, task.name, out[task.name], batch, visible) for out in outputs[: iteration + 1]]
    loss = weight * sum(losses)
    kept = keep.loss(model, batch["image"], source) if keep is not None else None
    if kept is not None:
        loss = loss + kept
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for p in model.parameters():
        if id(p) not in trainable:
            p.grad = None  # Eq. (6) does not optimise this parameter for task t
    average_gradients(model)  # several processes (torchrun): one model
    optimizer.step()
    return [float(x.detach()) for x in losses]


class HybridMode:
    """Algorithm 1 for the loop: one source per task (``config.task_sources``, the ONE
    task-to-source map: the model's batch-norm streams, the batch streams and model.json all
    take it from here), the plan, and update k."""

    name = "hybrid"

    def __init__(self, config, tasks: tuple[Task, ...]):
        self.config, self.tasks = config, tasks
        self.task_sources = tuple(config.task_sources)
        self.num_sources = len(config.data)
        self.iterations = 0
        self.streams: dict = {}
        self.plan: HybridPlan | None = None
        self.keep = None  # a fine-tuning run's KeptPredictions (data.N.keep), set by the loop

    def model_arguments(self) -> dict:
        return {"num_sources": self.num_sources, "task_sources": list(self.task_sources)}

    def source_of(self, u: Update) -> int:
        """The source update ``u`` draws its batch from (its task's)."""
        return self.task_sources[u.task]

    def prepare(self, model, sources, rank: int, world: int) -> None:
        """Batch streams (stage 1 of task t: stream 2t, stage 2: 2t + 1), the plan and the
        parameters each (stage, task) may update."""
        from facemtl.data.mixing import BatchStream

        sched = self.config.schedule
        groups = model.parameter_groups()
        self.iterations = sched.iterations if sched.iterations is not None else model.refinement_iterations
        for t, s in enumerate(self.task_sources):
            for stream in (2 * t, 2 * t + 1):
                self.streams[stream] = BatchStream(sources[s], self.config.seed, stream, rank, world)
        self.plan = HybridPlan(tuple(self.streams[2 * t].batches_per_pass for t in range(len(self.tasks))),
                               sched.pretrain_epochs, sched.epochs, sched.rounds, self.iterations,
                               sched.pretrain_lr, sched.lr, sched.lr_end, sched.decay, sched.warmup)
        self.trainable = {(st, t): groups.trainable(st, t) for st in (1, 2) for t in range(len(self.tasks))}

    def update(self, model, optimizer, batch: dict, u: Update) -> tuple[dict, dict[str, float]]:
        """Make update ``u``; returns its log row (fixed columns: the loss at each iteration) and
        the loss of each task it trained."""
        task = self.tasks[u.task]
        weight = self.config.schedule.loss_weights.get(task.name, 1.0)
        losses = hybrid_update(model, optimizer, batch, task, self.task_sources[u.task], u.iteration,
                               self.trainable[(u.stage, u.task)], weight, self.config.precision, self.keep)
        nan = float("nan")
        row = {"stage": u.stage, "epoch": u.epoch, "task": task.name, "iteration": u.iteration, "lr": u.lr,
               "loss": sum(losses),
               **{f"loss_iter{i}": (losses[i] if i < len(losses) else nan) for i in range(self.iterations + 1)}}
        if self.keep is not None:  # a column in every row of such a run (the log's columns are fixed)
            row["keep_loss"] = self.keep.last
        return row, {task.name: sum(losses)}
