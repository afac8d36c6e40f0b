"""Cost of iFAN: parameters, multiply-adds and CPU forward latency (paper section 1: the
integrated model should cost about a third of three separate single-task networks).

Rows:
* ``iFAN 3T, one stream``: ``model(x, source=0)``, the cost of a training step's forward or of
  inference when one BN source is enough;
* ``iFAN 3T, inference``: ``model(x)`` with 3 per-source BN streams (each task from its own
  source's stream, see facemtl.models.ifan), i.e. 3x the single-stream compute;
* ``3 x single-task``: three iFANs with one task each, iterations=0, summed.

Multiply-adds are counted with forward hooks on Conv2d and Linear (batch norm, pooling,
softmax and heat-map rendering are not counted) and reported per image.

    python benchmarks/model_cost.py                  # full table, batch 1 and 32 (~30 min on 2 cores)
    python benchmarks/model_cost.py --batches 1 --runs 5
    python benchmarks/model_cost.py --batches 32 --runs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn as nn

import facemtl

TASKS = ("landmarks", "parsing", "emotion")


def count_macs(model: nn.Module, x: torch.Tensor, **kwargs) -> float:
    """Multiply-adds of one forward, per image, from Conv2d/Linear forward hooks."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(x, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total / x.shape[0]


def latency_ms(model: nn.Module, x: torch.Tensor, runs: int, warmup: int = 1, **kwargs) -> float:
    """Median wall time of ``runs`` forwards after ``warmup`` untimed ones, in ms."""
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            model(x, **kwargs)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128, help="input side (default 128, the paper's)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes to time")
    ap.add_argument("--iterations", type=int, nargs="+", default=[0, 1, 2, 3], help="iFAN iterations to measure")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per cell (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before timing each cell")
    ap.add_argument("--macs-only", action="store_true", help="parameters and multiply-adds only, no timing")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.macs_only:
        args.batches = []
    torch.manual_seed(0)

    def row(name, models_kwargs, n_params):
        """models_kwargs: list of (model, forward kwargs); costs are summed over the list."""
        macs = sum(count_macs(m, torch.randn(1, 3, args.size, args.size), **kw) for m, kw in models_kwargs)
        cells = [name, f"{n_params / 1e6:.2f}", f"{macs / 1e9:.2f}"]
        for b in args.batches:
            x = torch.randn(b, 3, args.size, args.size)
            ms = sum(latency_ms(m, x, args.runs, args.warmup, **kw) for m, kw in models_kwargs)
            cells.append(f"{ms:.0f}")
        print("| " + " | ".join(cells) + " |", flush=True)
        return macs

    header = ["model", "params (M)", "GMACs / image"] + [f"latency b={b} (ms)" for b in args.batches]
    print(
        f"input {args.size}x{args.size}, torch threads {args.threads}, median of {args.runs} runs after "
        f"{args.warmup} warm-up; {os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f} "
        "(latency is only meaningful on an idle machine)\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))

    single = [facemtl.create_model("ifan", tasks=(t,), num_sources=1, iterations=0).eval() for t in TASKS]
    separate_macs = row("3 x single-task (iterations=0)", [(m, {"source": 0}) for m in single], sum(map(params, single)))
    integrated = facemtl.create_model("ifan", tasks=TASKS, num_sources=3, iterations=max(args.iterations)).eval()
    n = params(integrated)
    ratios = []
    for it in args.iterations:
        macs = row(f"iFAN 3T Iter{it}, one stream", [(integrated, {"source": 0, "iterations": it})], n)
        ratios.append((f"Iter{it} one stream", macs))
    for it in args.iterations:
        macs = row(f"iFAN 3T Iter{it}, inference (3 BN streams)", [(integrated, {"iterations": it})], n)
        ratios.append((f"Iter{it} 3 streams", macs))
    print("\nmulti-adds relative to 3 x single-task: " + ", ".join(f"{k} {v / separate_macs:.2f}" for k, v in ratios))
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
