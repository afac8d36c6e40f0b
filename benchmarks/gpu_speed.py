"""Speed of the paper-size iFAN on a GPU, against a plain PyTorch FC-DenseNet of the same size,
in one run; optionally a short paper-size training.

    python benchmarks/gpu_speed.py [--device cuda] [--precisions fp32 bf16] [--repeat 20]
        [--batches 1 256] [--train-seconds 180 | --train-epochs P E] [--json FILE] [--set KEY=VALUE ...]

The model is iFAN with the paper's configuration (IFANConfig defaults: 128 px, FC-DenseNet growth
12, 3 layers per block, 5 blocks, 2 iterations, one batch-norm source per task) in the ``paper``
budget of ``facemtl reproduce`` (synthetic sources at the paper's sizes and batch sizes: landmarks
64, parsing 24, emotion 96; RMSprop).

1. Training: every update kind of Algorithm 1, through the engine's own ``Training.run_update``
   (stage 1: Delta^t_0 per task; stage 2: Delta^t_I, I = 1, 2), per precision (fp32, bf16
   autocast) and layout (``eager``: NCHW; ``speed``: the engine's speed paths, channels-last
   weights and one feedback convolution per level; ``compiled``: those plus ``compile: true``):
   median ms per update and images/s, and the
   projected length of the paper's schedule (30 pre-training epochs per task, 200 stage-2
   epochs) from each kind's count in the plan. The plain FC-DenseNet (:class:`PlainFCDenseNet`:
   ``nn.BatchNorm2d``, no sources, no feedback; iFAN's backbone sizes and an 11-class per-pixel
   classifier) makes the same kind of update as iFAN's stage-1 parsing update (batch 24, cross
   entropy, RMSprop): what the backbone alone costs against what iFAN adds.
2. Inference: ``model(x, iterations=I)`` under ``torch.no_grad`` in eval mode, every task from its
   own source's stream (3 streams), at Iter0 and Iter2, per batch size: faces/s; the plain
   FC-DenseNet's forward beside it.
3. One real training run of the paper budget's 3T config (``facemtl train``'s engine, the last
   precision measured, the speed paths): 2 pre-training epochs and the stage-2 epochs that fit
   ``--train-seconds`` by part 1's times (or ``--train-epochs P E``); prints its wall time,
   updates/s and test metrics against the trivial baselines.

Times are medians of ``--repeat`` calls after warm-up calls, each call synchronised. Weights are
random (speed does not depend on them) except in part 3.

Measured (one NVIDIA H200, torch 2.11.0+cu130, cuDNN 9.19, 16 CPU cores; default arguments,
``--train-seconds 150``; 393 s in all), ms per update (images/s):

    update (batch)           fp32 eager     fp32 speed     bf16 eager     bf16 speed
    s1 parsing I=0 (24)      25.5 (943)     21.4 (1120)    22.3 (1074)    32.8 (731)
    s1 emotion I=0 (96)      41.6 (2307)    34.2 (2805)    39.8 (2411)    28.7 (3346)
    s1 landmarks I=0 (64)    29.8 (2150)    24.2 (2644)    28.6 (2237)    19.7 (3251)
    s2 parsing I=2 (24)      76.8 (312)     68.0 (353)     78.2 (307)     62.0 (387)
    s2 emotion I=2 (96)     210.2 (457)    168.0 (571)    193.6 (496)    135.1 (711)
    s2 landmarks I=2 (64)   148.3 (432)    118.2 (541)    134.6 (476)     95.1 (673)
    paper schedule, h         6.13           5.01           5.72           4.14
    plain FC-DenseNet parsing update (24): 16.4 ms fp32, 16.9 ms bf16 (626,220 parameters
    against iFAN's 1,559,000)

    inference faces/s, batch 1 / 256   fp32            bf16   (before evaluation-mode batch norm
                                                              stopped folding streams into channels)
    iFAN Iter0                         179 / 1,119     125 / 1,354
    iFAN Iter2                          48 / 353        40 / 426
    plain FC-DenseNet                  351 / 5,329     233 / 6,593

    part 3, bf16: 2 + 1 epochs, 1,470 updates in 131 s (rendering on 16 cores and evaluation
    included): landmark NME 9.11% (mean shape 20.29%), parsing overall F1 80.1, emotion accuracy
    50.7% (majority class 15.3%).

A narrow network (growth 12) at these batch sizes leaves the GPU waiting on kernel launches:
bf16 gains little and loses at batch 1. ``--precisions bf16 --layouts compiled`` was still
compiling its first update kinds after 310 s (stopped there): not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from facemtl.engine.loop import Training, train
from facemtl.engine.precision import autocast
from facemtl.experiments.reproduce import ifan_base
from train_step_time import _counts, _first_updates  # the benchmark beside this one

PAPER_STAGE1_EPOCHS, PAPER_STAGE2_EPOCHS = 30, 200


class PlainFCDenseNet(nn.Module):
    """FC-DenseNet (Jegou et al.) in plain PyTorch with iFAN's backbone sizes (see
    :mod:`facemtl.models.fc_densenet` for the layout) and a BN-ReLU-1x1 per-pixel classifier."""

    def __init__(self, classes: int = 11, stem: int = 48, growth: int = 12, layers: int = 3, blocks: int = 5,
                 up: int = 24):
        super().__init__()

        def unit(c_in, c_out, k):
            return nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True),
                                 nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False))

        def block(c_in):
            return nn.ModuleList(unit(c_in + i * growth, growth, 3) for i in range(layers))

        self.stem = nn.Conv2d(3, stem, 7, padding=3, bias=False)
        self.down, skips, c = nn.ModuleList(), [], stem
        for _ in range(blocks):
            self.down.append(block(c))
            c += layers * growth
            skips.append(c)
        self.up, self.transitions = nn.ModuleList(), nn.ModuleList()
        for j in range(blocks):
            self.up.append(block(c))
            self.transitions.append(nn.Sequential(unit(layers * growth, 4 * up, 1), nn.PixelShuffle(2),
                                                  nn.Conv2d(up, up, 3, padding=1, bias=False)))
            c = up + skips[blocks - 1 - j]
        self.classify = unit(c, classes, 1)

    @staticmethod
    def _dense(layers, h):
        new = []
        for layer in layers:
            new.append(layer(torch.cat([h, *new], 1) if new else h))
        return torch.cat(new, 1)

    def forward(self, x):
        h, skips = self.stem(x), []
        for layers in self.down:
            h = torch.cat([h, self._dense(layers, h)], 1)
            skips.append(h)
            h = F.avg_pool2d(h, 2)
        for layers, transition, skip in zip(self.up, self.transitions, reversed(skips)):
            h = torch.cat([transition(self._dense(layers, h)), skip], 1)
        return self.classify(h)


def timed(call, repeat: int, warmup: int = 3) -> float:
    """Median seconds of ``call()`` over ``repeat`` synchronised calls after ``warmup`` calls."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paper_config(args, precision: str, extra=()):
    return ifan_base("paper", [f"device={args.device}", f"precision={precision}", "logging.eval_every_epoch=false",
                               *args.overrides, *extra])


def training_speed(args, precision: str, layout: str) -> dict:
    torch.manual_seed(0)
    extra = ["compile=true"] if layout == "compiled" else []
    training = Training(paper_config(args, precision, extra), speed_paths=layout != "eager")
    plan = training.plan
    first, counts = _first_updates(plan), _counts(plan)
    rows, total, t0 = [], 0.0, time.perf_counter()
    for key, k in sorted(first.items()):
        seconds = timed(lambda: training.run_update(k), args.repeat, args.warmup)
        stage, t, i = key
        batch = training.mode.streams[2 * t].batch_size
        rows.append({"stage": stage, "task": training.tasks[t].name, "iteration": i, "batch": batch,
                     "ms": seconds * 1e3, "images_per_s": batch / seconds, "count": counts[key]})
        total += counts[key] * seconds
    return {"precision": precision, "layout": layout, "updates": rows, "plan_updates": plan.total,
            "parameters": sum(p.numel() for p in training.model.parameters()),
            "measure_s": time.perf_counter() - t0,  # with compile: mostly the compilation
            "plan_hours": total / 3600}


def plain_training_speed(args, precision: str, batch: int = 24) -> dict:
    torch.manual_seed(0)
    model = PlainFCDenseNet().to(args.device, memory_format=torch.channels_last)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, foreach=True)
    x = torch.randn(batch, 3, 128, 128, device=args.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 11, (batch, 128, 128), device=args.device)

    def update():
        with autocast(args.device, precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = timed(update, args.repeat, args.warmup)
    return {"precision": precision, "batch": batch, "ms": seconds * 1e3, "images_per_s": batch / seconds,
            "parameters": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def inference_speed(args, precision: str, compiled: bool = False) -> list[dict]:
    torch.manual_seed(0)
    training = Training(paper_config(args, precision), speed_paths=True)
    model = training.model.eval()
    plain = PlainFCDenseNet().to(args.device, memory_format=torch.channels_last).eval()
    if compiled:
        model.compile()
        plain.compile()
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, 128, 128, device=args.device).contiguous(memory_format=torch.channels_last)
        for name, call in [*[(f"iFAN Iter{i}", lambda i=i: model(x, iterations=i)) for i in (0, 2)],
                           ("plain FC-DenseNet", lambda: plain(x))]:
            def run(call=call):
                with autocast(args.device, precision):
                    call()
            seconds = timed(run, args.repeat, args.warmup)
            rows.append({"precision": precision, "model": name + (" compiled" if compiled else ""), "batch": batch,
                         "ms": seconds * 1e3,
                         "faces_per_s": batch / seconds})
    return rows


def epochs_for(seconds: float, speed: dict, pretrain_epochs: int = 2) -> int:
    """Stage-2 epochs that fit ``seconds`` after ``pretrain_epochs`` pre-training epochs, by the
    measured update times and the paper plan's counts (30 stage-1 and 200 stage-2 epochs)."""
    stage1 = sum(u["count"] * u["ms"] for u in speed["updates"] if u["stage"] == 1) / 1e3 / PAPER_STAGE1_EPOCHS
    stage2 = sum(u["count"] * u["ms"] for u in speed["updates"] if u["stage"] == 2) / 1e3 / PAPER_STAGE2_EPOCHS
    return max(1, int((seconds - pretrain_epochs * stage1) // stage2))


def short_training(args, precision: str, p: int, e: int) -> dict:
    cfg = paper_config(args, precision, [f"schedule.pretrain_epochs={p}", f"schedule.epochs={e}",
                                                f"schedule.warmup={min(30, 10 * p)}", "logging.tensorboard=false"])
    out = Path(tempfile.mkdtemp(prefix="gpu_speed_run_"))
    t0 = time.perf_counter()
    train(cfg, out / "run", quiet=True)
    wall = time.perf_counter() - t0
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    last = metrics["iterations"][str(max(int(i) for i in metrics["iterations"]))]
    base = metrics.get("baselines", {})
    with open(out / "run" / "steps.csv") as f:
        updates = int(f.readlines()[-1].split(",")[0])
    return {"precision": precision, "pretrain_epochs": p, "epochs": e, "wall_s": wall, "updates": updates,
            "landmarks_nme": last["landmarks"]["nme"], "mean_shape_nme": base["landmarks"]["mean_shape_nme"],
            "parsing_overall_f1": last["parsing"]["overall"], "emotion_accuracy": last["emotion"]["accuracy"],
            "majority_accuracy": base["emotion"]["majority_accuracy"], "run_dir": str(out / "run")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--layouts", nargs="+", default=["eager", "speed"], choices=["eager", "speed", "compiled"],
                    help="compiled: the speed paths plus compile: true (nn.Module.compile; also times inference "
                         "compiled); the warm-up calls compile")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls before the timed ones")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override the paper budget's config (a smaller model for a check on a CPU)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    ap.add_argument("--train-seconds", type=float, default=180,
                    help="part 3's length in updates' time: 2 pre-training epochs and the stage-2 epochs that fit, by "
                         "part 1's times (0: skip part 3)")
    ap.add_argument("--train-epochs", nargs=2, type=int, metavar=("P", "E"), help="part 3's epochs instead")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes per update kind: pick the fastest kernels once
        print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    else:
        print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    result: dict = {"device": args.device, "torch": torch.__version__, "training": [], "plain_training": [],
                    "inference": []}

    failed: list[str] = []

    def part(name: str, fn) -> None:
        """Run one measurement; a failure is printed and the next one still runs."""
        try:
            fn()
        except Exception:  # noqa: BLE001 - a benchmark reports every part it can
            traceback.print_exc()
            print(f"FAILED: {name}", flush=True)
            failed.append(name)
        result["failed"] = failed
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))

    def ifan_training(precision: str, layout: str) -> None:
        r = training_speed(args, precision, layout)
        result["training"].append(r)
        cells = "\n".join(f"   stage {u['stage']} {u['task']:9s} I={u['iteration']} batch {u['batch']:3d}: {u['ms']:7.1f} ms "
                          f"{u['images_per_s']:7.0f} images/s" for u in r["updates"])
        print(f"iFAN {precision} {layout} ({r['parameters']:,} parameters; {r['measure_s']:.0f} s to measure):\n{cells}\n   paper schedule ({r['plan_updates']} updates): "
              f"{r['plan_hours']:.2f} h of updates per 3T run", flush=True)

    def plain_training(precision: str) -> None:
        p = plain_training_speed(args, precision)
        result["plain_training"].append(p)
        print(f"plain FC-DenseNet {precision} ({p['parameters']:,} parameters), parsing-style update batch "
              f"{p['batch']}: {p['ms']:.1f} ms {p['images_per_s']:.0f} images/s", flush=True)

    def inference(precision: str, compiled: bool) -> None:
        for r in inference_speed(args, precision, compiled):
            result["inference"].append(r)
            print(f"{precision} {r['model']:27s} batch {r['batch']:4d}: {r['ms']:8.2f} ms {r['faces_per_s']:9.0f} faces/s",
                  flush=True)

    def training_run() -> None:
        precision = args.precisions[-1]
        speed = [r for r in result["training"] if r["precision"] == precision]
        if args.train_epochs:
            p, e = args.train_epochs
        elif speed:
            p, e = 2, epochs_for(args.train_seconds, speed[-1])
        else:
            raise RuntimeError("no update times of part 1 to size the run by: give --train-epochs")
        print(f"\n3. paper-size training, {precision}, {p} pre-training + {e} stage-2 epochs (synthetic sources "
              f"prerendered on {os.cpu_count()} cores)", flush=True)
        r = short_training(args, precision, p, e)
        result["short_training"] = r
        print(f"wall {r['wall_s']:.0f} s for {r['updates']} updates ({r['updates'] / r['wall_s']:.1f} updates/s, "
              f"rendering and evaluation included)")
        print(f"test, last iteration: landmarks NME {r['landmarks_nme']:.2f}% (mean shape {r['mean_shape_nme']:.2f}%), "
              f"parsing overall F1 {r['parsing_overall_f1']:.1f} (all-background 0), emotion accuracy "
              f"{r['emotion_accuracy']:.1f}% (majority class {r['majority_accuracy']:.1f}%)", flush=True)

    print("\n1. training updates (median ms, images/s); projected paper schedule = sum of kind x count")
    for precision in args.precisions:
        for layout in args.layouts:
            part(f"training {precision} {layout}", lambda: ifan_training(precision, layout))
        part(f"plain training {precision}", lambda: plain_training(precision))
    if args.device.startswith("cuda"):
        print(f"peak GPU memory so far {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print("\n2. inference (no_grad, eval, all tasks, 3 streams): median ms per call, faces/s")
    for precision in args.precisions:
        for compiled in sorted({layout == "compiled" for layout in args.layouts}):
            part(f"inference {precision}{' compiled' if compiled else ''}", lambda: inference(precision, compiled))
    if args.train_seconds > 0 or args.train_epochs:
        part("training run", training_run)
    if failed:
        raise SystemExit(f"failed parts: {', '.join(failed)}")


if __name__ == "__main__":
    main()
