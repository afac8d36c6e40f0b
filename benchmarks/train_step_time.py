"""Time one update of each kind of the DEFAULT training run (facemtl.config.TrainConfig()) and
project the length of the whole run from its plan.

    python benchmarks/train_step_time.py [--threads 2] [--repeat 3] [--fast] [--set KEY=VALUE ...]
    python benchmarks/train_step_time.py --compare [--repeat 5] [--variants eager,channels_last,batched_feedback,allocator,fast]

Prints, per task, the wall and process-CPU seconds of a stage-1 update (Delta^t_0) and of
each stage-2 update (Delta^t_I, I = 1..ITER), then the projected run time. On a shared
machine wall time is inflated by other processes; CPU time / threads is the dedicated-core
estimate. ``--fast`` times the run with the CPU speed paths below.

``--compare`` times today's eager path and the CPU speed paths side by side. Each variant
lives in its own child process (the allocator setting is per process, and each child's CPU
time is its own), all built from the same seed; the parent asks them in turn for update k
(A B A B ...: a load that comes and goes hits every variant alike) and prints, per update
kind, the best of ``--repeat`` wall / CPU times, the ratio to the first variant, the ratio of
the projected run and the relative difference of the variants' first loss (same weights,
same batch: float rounding only). Variants:

* ``eager``: the eager reference (NCHW, glibc's default malloc, a per-tensor optimiser step);
* ``channels_last``: :func:`facemtl.models.fc_densenet.use_channels_last` on the model;
* ``batched_feedback``: one feedback convolution per level (``FCDenseNet.batched_feedback``);
* ``allocator``: :func:`keep_freed_memory` in the process;
* ``foreach``: the optimiser's multi-tensor (``foreach=True``) step (the other variants step
  tensor by tensor, as the engine did before);
* ``fused_step``: the engine's optimiser step: fused (``fused=True``) for Adam, AdamW and SGD,
  multi-tensor for RMSprop, which has no fused kernel;
* ``last_only``: the update asks the model only for its task at the last iteration
  (``tasks=(t,)``: iFAN skips the other decoders there and, for landmark and emotion updates,
  the up path); the other variants compute every task, as the engine did before;
* ``fast``: :func:`facemtl.models.fc_densenet.use_speed_paths` (channels-last, batched
  feedback and the kernels of :mod:`facemtl.models.cpu_kernels`), the allocator, the fused
  optimiser step and ``last_only``: what the engine runs today;
* ``compiled``: ``fast`` plus ``compile: true`` (``nn.Module.compile()``, TorchInductor); the
  warm-up call of each update kind compiles (its time is printed apart).

Measured (2-core AMD EPYC VM shared with other jobs, best of 5, ``--compare --variants
eager,channels_last,batched_feedback,allocator,fast``), projected default run, wall:

    threads 2: channels_last x1.44, batched_feedback x1.10, allocator x1.15, fast x1.52
               (per update x1.39 .. x1.81: stage-1 emotion 96.9 -> 56.5 ms)
    threads 1: channels_last x1.46, batched_feedback x1.05, allocator x1.09, fast x1.79
    (these before foreach and last_only existed; with them, on the idle machine, ``--compare
    --repeat 5``: fast x1.81 at 2 threads, 9.20 -> 5.08 min; per update x1.42 .. x2.84,
    stage-1 emotion 100.1 -> 35.2 ms, stage-2 emotion I=2 392.6 -> 235.6 ms)
    ``--compare --variants eager,fast,compiled --repeat 3`` on the idle machine (another day):
    fast x1.63, compiled x1.69 (10.32 / 6.32 / 6.11 min of updates), but compiling took 575 s of
    warm-up calls and dynamo's recompile limit (8 graphs) was hit at the ninth update kind
    (landmarks I=2 ran uncompiled): on this model and a CPU, compile does not pay.

With the fused optimiser step (its state restored in its weight's layout), the concatenating batch
norm and the pooling kernel of :mod:`facemtl.models.cpu_kernels` and channels-last batches
(2026-12-01, idle machine, ``--compare --repeat 5``, five runs of that code): fast x2.12, x2.06,
x2.14, x1.99, x2.04 (eager 10.1-11.6 min, fast 5.1-5.6 min of updates); side by side against the
previous version's fast path (below) x1.04 before the last pooling change.

Before that: with the fused batch norm + ReLU kernel, the dense blocks' fewer concatenations, a channels-last
feedback pyramid and cheaper segmentation losses (2026-12-01, idle machine, ``--compare --repeat
5``, five runs of the final code): fast x1.92, x1.93, x1.90, x1.90, x1.95 (eager 10.1-11.5 min,
fast 5.3-6.0 min of updates); earlier runs the same day with part of these changes gave
x1.93-2.09, and before them x1.68 (10.46 -> 6.23 min): the VM's speed moves both variants by
about +-4% between runs. How much batch norm could give was measured first by replacing it, in
the fast variant only, with a per-channel multiply-add (x1.87) and with nothing (x2.32).

Profile (torch.profiler, self CPU, eager, all nine update kinds): convolution ~65% (backward
~46%: oneDNN reorders NCHW to a blocked layout and back on every call), batch norm ~10%,
concatenation ~4%, max pooling ~4%, optimiser <1%; forward 55%, backward 44%. With the speed
paths at 2 threads before the fused kernel: convolution ~40%, batch norm ~30% (PyTorch's
channels-last batch norm does not get faster with a second thread, the NCHW one does),
concatenation ~6%; with it: convolution ~55%, fused batch norm + ReLU ~15%, concatenation ~5%. Rendering the
synthetic faces is not in the timed updates (batches are cached per source) and costs ~1.5 ms
per face once per run (8,192 training faces: ~12 s of a ~6-10 min run).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import resource
import time

import torch

from facemtl.config import load_config
from facemtl.engine.loop import Training
from facemtl.engine.memory import keep_freed_memory
from facemtl.models.fc_densenet import FCDenseNet, use_channels_last, use_speed_paths

# --compare's variants: the switches each one turns on
VARIANTS = {
    "eager": (),
    "channels_last": ("channels_last",),
    "batched_feedback": ("batched_feedback",),
    "allocator": ("allocator",),
    "foreach": ("foreach",),
    "last_only": ("last_only",),
    "fused_step": ("fused_step",),
    "fast": ("speed_paths", "allocator", "fused_step", "last_only"),
    "compiled": ("speed_paths", "allocator", "fused_step", "last_only", "compile"),
}


def _build(cfg, variant: str = "eager") -> Training:
    switches = VARIANTS[variant]
    if "allocator" in switches:
        keep_freed_memory()
    torch.manual_seed(0)
    training = Training(cfg, speed_paths=False)  # the eager reference; the variant's switches below
    if "speed_paths" in switches:  # what Training(speed_paths=True) does
        use_speed_paths(training.model)
        training.image_layout = torch.channels_last
    if "channels_last" in switches:
        use_channels_last(training.model)
    if "batched_feedback" in switches:
        for module in training.model.modules():
            if isinstance(module, FCDenseNet):
                module.batched_feedback = True
    for group in training.optimizer.param_groups:  # the engine's step is fused (where torch has one)
        if group.get("fused") and "fused_step" not in switches:
            group["fused"] = False
        if not group.get("fused"):  # as it was, a Python loop over the tensors, unless "foreach"
            # or the engine's step without a fused kernel (RMSprop)
            group["foreach"] = "foreach" in switches or "fused_step" in switches
    if "compile" in switches:  # what `compile: true` does (engine/loop.py); the warm-up call compiles
        training.model.compile()
    if "last_only" not in switches:  # the model computes every task at the last iteration, as it did
        model = training.model
        model.forward = functools.partial(_every_task, type(model).forward, model)
    return training


def _every_task(forward, model, images, source=None, iterations=None, tasks=None):
    return forward(model, images, source, iterations)


def _first_updates(plan) -> dict[tuple[int, int, int], int]:
    """The first update of each (stage, task, iteration) in the plan."""
    first: dict[tuple[int, int, int], int] = {}
    for k in range(plan.total):
        u = plan[k]
        first.setdefault((u.stage, u.task, u.iteration), k)
    return first


def _counts(plan) -> dict[tuple[int, int, int], int]:
    """How many updates of each (stage, task, iteration) the plan makes."""
    counts: dict[tuple[int, int, int], int] = {}
    for k in range(plan.total):
        u = plan[k]
        key = (u.stage, u.task, u.iteration)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _time_update(training: Training, k: int, repeat: int) -> tuple[float, float]:
    """Wall and CPU seconds of update k of the plan (the loop's own run_update; one warm-up call
    also draws and caches the batch)."""
    training.run_update(k)
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        training.run_update(k)
    return (time.perf_counter() - w0) / repeat, (time.process_time() - c0) / repeat


def _variant_process(conn, variant: str, config, overrides, threads: int) -> None:
    """Child of --compare: build the run as ``variant``, then make update k for every k received
    (None ends); answers (wall s, cpu s, loss, peak resident memory in KiB)."""
    torch.set_num_threads(threads)
    training = _build(load_config(config, overrides), variant)
    plan = training.plan
    conn.send((plan.total, _first_updates(plan), _counts(plan), [t.name for t in training.tasks]))
    while (k := conn.recv()) is not None:
        w0, c0 = time.perf_counter(), time.process_time()
        _, row, _ = training.run_update(k)
        conn.send((time.perf_counter() - w0, time.process_time() - c0, row["loss"],
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def compare(args) -> None:
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or len(set(variants)) != len(variants):
        raise SystemExit(f"--variants: distinct names among {list(VARIANTS)}, got {variants}")
    ctx = mp.get_context("spawn")
    children = {}
    try:
        for v in variants:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_variant_process, args=(child, v, args.config, args.overrides, args.threads))
            proc.start()
            children[v] = (proc, parent)
        for v in variants:
            total_updates, first, counts, task_names = children[v][1].recv()
        total, first_loss, peak = _compare_runs(args, variants, children, first, counts, task_names)
    finally:
        for proc, conn in children.values():
            try:
                conn.send(None)
            except OSError:  # that child is gone (its error is printed above)
                pass
            proc.join()
    base = variants[0]
    print(f"projected run ({total_updates} updates, each kind x its count in the plan):")
    for v in variants:
        w, c = total[v]
        print(f"  {v:16s} {w / 60:6.2f} min wall, {c / 60:6.2f} min cpu: x{total[base][0] / w:.2f} wall, "
              f"x{total[base][1] / c:.2f} cpu against {base}; peak memory {peak[v] / 1024:.0f} MiB")
    ref = first_loss[base]
    print("first update's loss, relative difference to " + base + ": " +
          ", ".join(f"{v} {abs(first_loss[v] - ref) / max(abs(ref), 1e-12):.1e}" for v in variants if v != base))


def _compare_runs(args, variants, children, first, counts, task_names):
    """The interleaved measurements of --compare; returns the projected totals, the first
    losses and the peak memory of each variant."""
    base = variants[0]
    print(f"--compare: {', '.join(variants)}; torch threads {args.threads}; best of {args.repeat} interleaved "
          f"repetitions (after one warm-up), wall / process-CPU ms per update")
    print(f"{'update':24s}" + "".join(f"{v:>26s}" for v in variants))
    total = {v: [0.0, 0.0] for v in variants}
    warmup = {v: 0.0 for v in variants}
    first_loss: dict[str, float] = {}
    peak: dict[str, int] = {}
    for key, k in sorted(first.items()):
        times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for r in range(args.repeat + 1):
            for v in variants:
                children[v][1].send(k)
                wall, cpu, loss, peak[v] = children[v][1].recv()
                first_loss.setdefault(v, loss)
                if r:
                    times[v].append((wall, cpu))
                else:
                    warmup[v] += wall
        best = {v: (min(t[0] for t in ts), min(t[1] for t in ts)) for v, ts in times.items()}
        cells = []
        for v in variants:
            for j in (0, 1):
                total[v][j] += counts[key] * best[v][j]
            w, c = best[v]
            ratio = "" if v == base else f" x{best[base][0] / w:.2f}"
            cells.append(f"{w * 1e3:7.1f} / {c * 1e3:7.1f}{ratio:>6s}")
        stage, t, i = key
        label = f"stage {stage} {task_names[t]} I={i}"
        print(f"{label:24s}" + "".join(f"{c:>26s}" for c in cells), flush=True)
    print("first (warm-up) call of every update kind, wall: " +
          ", ".join(f"{v} {warmup[v]:.1f} s" for v in variants) + " (with compile: the compilation)")
    return total, first_loss, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--fast", action="store_true", help="time the run with the CPU speed paths")
    ap.add_argument("--compare", action="store_true", help="time eager and speed-path variants side by side")
    ap.add_argument("--variants", default="eager,fast", help=f"with --compare: among {','.join(VARIANTS)}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    if cfg.schedule.mode != "hybrid":
        raise SystemExit("train_step_time.py times Algorithm 1's updates: use a hybrid config")
    if args.compare:
        compare(args)
        return
    training = _build(cfg, "fast" if args.fast else "eager")
    plan, model = training.plan, training.model
    print(f"model {cfg.model.name} {dict(cfg.model.kwargs)}: {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"input {cfg.input_size}, torch threads {args.threads}{', speed paths' if args.fast else ''}")
    first = _first_updates(plan)
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
