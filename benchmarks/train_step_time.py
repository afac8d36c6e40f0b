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
from facemtl.data.mixing import BatchStream, build_sources
from facemtl.engine.hybrid import HybridPlan, hybrid_update, make_optimizer, model_kwargs, parameter_roles
from facemtl.models.registry import create_model
from facemtl.tasks import get_tasks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    tasks = get_tasks(cfg.task_names)
    sources = build_sources(cfg, tasks)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, **model_kwargs(cfg))
    iters = cfg.schedule.iterations if cfg.schedule.iterations is not None else model.config.iterations
    roles = parameter_roles(model)
    opt = make_optimizer(model, cfg)
    print(f"model {cfg.model.name} {dict(cfg.model.kwargs)}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"input {cfg.input_size}, torch threads {args.threads}")
    per_task_round = []
    stage1 = []
    batches = []
    for t, task in enumerate(tasks):
        src = cfg.task_sources[t]
        stream = BatchStream(sources[src], cfg.seed, 2 * t)
        batches.append(stream.batches_per_pass)
        t0 = time.perf_counter()
        batch = stream.batch(0)
        t_data = time.perf_counter() - t0
        timings = {}
        for stage, its in ((1, [0]), (2, list(range(1, iters + 1)))):
            for i in its:
                hybrid_update(model, opt, batch, task, src, i, roles.trainable(stage, t))  # warm-up
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.repeat):
                    hybrid_update(model, opt, batch, task, src, i, roles.trainable(stage, t))
                timings[i] = ((time.perf_counter() - w0) / args.repeat, (time.process_time() - c0) / args.repeat)
        print(f"{task.name:10s} batch {stream.batch_size:3d}  first batch (render) {t_data:6.2f} s  " +
              "  ".join(f"I={i}: {w:6.2f} s wall / {c:6.2f} s cpu" for i, (w, c) in timings.items()))
        stage1.append(timings[0])
        per_task_round.append(tuple(sum(timings[i][k] for i in range(1, iters + 1)) for k in (0, 1)))
    s = cfg.schedule
    plan = HybridPlan(tuple(batches), s.pretrain_epochs, s.epochs, s.rounds, iters, s.pretrain_lr, s.lr, s.lr_end, s.decay, s.warmup)
    for k, label in ((0, "wall"), (1, "cpu/threads")):
        div = 1 if k == 0 else args.threads
        st1 = sum(s.pretrain_epochs * b * st[k] for b, st in zip(batches, stage1)) / div
        st2 = plan.rounds * sum(r[k] for r in per_task_round) / div
        print(f"projected ({label}): stage 1 {plan.stage1_total} updates {st1 / 60:.1f} min, stage 2 {plan.rounds} rounds "
              f"x {len(tasks)} tasks x {max(iters, 1)} = {plan.total - plan.stage1_total} updates {st2 / 60:.1f} min, "
              f"total {(st1 + st2) / 60:.1f} min (+ data rendering and evaluation)")


if __name__ == "__main__":
    main()
