"""Time one update of each kind of the DEFAULT training run (facemtl.config.TrainConfig()) and
project the length of the whole run from its plan.

    python benchmarks/train_step_time.py [--threads 2] [--repeat 3] [--set KEY=VALUE ...]

Prints, per task, the wall and process-CPU seconds of a stage-1 update (Delta^t_0) and of
each stage-2 update (Delta^t_I, I = 1..ITER), then the projected run time. On a shared
machine wall time is inflated by other processes; CPU time / threads is the dedicated-core
estimate.
"""

from __future__ import annotations

import argparse
import time

import torch

from facemtl.config import load_config
from facemtl.engine.loop import Training


def _time_update(training: Training, k: int, repeat: int) -> tuple[float, float]:
    """Wall and CPU seconds of update k of the plan (the loop's own run_update; one warm-up call
    also draws and caches the batch)."""
    training.run_update(k)
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        training.run_update(k)
    return (time.perf_counter() - w0) / repeat, (time.process_time() - c0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    if cfg.schedule.mode != "hybrid":
        raise SystemExit("train_step_time.py times Algorithm 1's updates: use a hybrid config")
    torch.manual_seed(0)
    training = Training(cfg)
    plan, model = training.plan, training.model
    print(f"model {cfg.model.name} {dict(cfg.model.kwargs)}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"input {cfg.input_size}, torch threads {args.threads}")
    # the first update of each (stage, task, iteration) in the plan
    first: dict[tuple[int, int, int], int] = {}
    for k in range(plan.total):
        u = plan[k]
        first.setdefault((u.stage, u.task, u.iteration), k)
    stage1, per_task_round = [], []
    for t, task in enumerate(training.tasks):
        timings = {i: _time_update(training, k, args.repeat) for (st, tt, i), k in sorted(first.items()) if tt == t}
        batch = training.mode.streams[2 * t].batch_size
        print(f"{task.name:10s} batch {batch:3d}  " +
              "  ".join(f"I={i}: {w:6.2f} s wall / {c:6.2f} s cpu" for i, (w, c) in timings.items()))
        stage1.append(timings.get(0, (0.0, 0.0)))
        per_task_round.append(tuple(sum(timings[i][j] for i in timings if i > 0) for j in (0, 1)))
    s = cfg.schedule
    batches = plan.batches
    for j, label in ((0, "wall"), (1, "cpu/threads")):
        div = 1 if j == 0 else args.threads
        st1 = sum(s.pretrain_epochs * b * st[j] for b, st in zip(batches, stage1)) / div
        st2 = plan.rounds * sum(r[j] for r in per_task_round) / div
        print(f"projected ({label}): stage 1 {plan.stage1_total} updates {st1 / 60:.1f} min, stage 2 {plan.rounds} rounds "
              f"x {len(batches)} tasks x {plan.updates_per_task_round} = {plan.total - plan.stage1_total} updates "
              f"{st2 / 60:.1f} min, total {(st1 + st2) / 60:.1f} min (+ data rendering and evaluation)")


if __name__ == "__main__":
    main()
