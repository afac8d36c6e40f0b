"""Prediction speed on CPU: faces per second for 128x128 face crops, torch vs onnxruntime backends.

The model is a RANDOMLY INITIALISED iFAN with the paper's configuration (IFANConfig defaults:
128 px, FC-DenseNet growth 12, 3 layers per block, 5 blocks, iterations 2; landmarks + parsing +
emotion). ``--sources 3`` is the paper's hybrid model (one BN source per task, so ``source=None``
runs 3 streams); ``--sources 1`` predicts every task through one stream, which shows what the
per-source streams cost. Speed does not depend on the weights, so no training is needed; the
numbers are NOT accuracy numbers. The per-source batch-norm rows are made to differ (random
running statistics and affine parameters): with the identical rows of a fresh model the ONNX
exporter would merge the identical constants and onnxruntime the then identical streams,
measuring a one-stream model.

Per (sources, iterations, batch, backend, tasks):

* ``setup s``: building the predictor (onnxruntime: exporting the graph in memory and
  optimising it in a session; torch: nothing);
* ``model``: ``Predictor.forward`` on normalised crops (network + decode);
* ``predict``: the whole ``Predictor.stream`` path on 128x128 RGB images with
  ``detector="none"`` (crop warp, normalisation, network, mapping points and the parsing mask
  back to the image, softmax), i.e. what ``facemtl predict --detector none`` does per face
  minus file I/O;
* ``x torch``: model faces/s over the torch backend's for the same model, iterations, batch and
  tasks;
* ``x all``: model faces/s over the same backend's with every task, i.e. what reporting only
  ``tasks`` saves (``Predictor(tasks=...)``, ``facemtl predict --tasks``): at the last iteration
  only their streams and decoders run, and the up path only for a segmentation task; at Iter0
  that is the whole pass.

Then the point refiner (:mod:`facemtl.models.refiner`, random weights, width 24, as many stages as
``facemtl train-refiner`` trains) per backend: ``setup s`` (onnxruntime: exporting its graphs in memory
and opening their sessions) and faces/s of ``refine_points`` on one face of a 512x512 photo (per stage
cutting five patches, reading them and their mirror images, averaging), and on the same face six times
larger in a 3072x3072 photo (patches cut from the photo blurred against aliasing): what step 4a adds to
each face. ``--only-refiner`` skips the model table.

Every figure is for ONE pass per crop (``flip=False``): the predictor's default test-time flip
runs each crop and its mirror, so it predicts about half as many faces per second.

The calls of every (backend, tasks) alternate (see :func:`timed`) and each figure is a median.

Usage: python benchmarks/predict_speed.py [--threads 2] [--batches 1 32] [--iterations 0 2]
       [--backends torch onnxruntime] [--sources 3 1] [--tasks all landmarks] [--seconds 5] [--only-refiner]
The full default table takes several minutes on 2 cores (torch at batch 32, Iter2, is ~10 s per
forward); ``--batches 1 --seconds 2`` is a quick look, and
``--sources 3 --batches 1 --backends torch --iterations 0 2`` compares landmarks with all tasks.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

import facemtl
from facemtl.inference.predictor import BACKENDS, Predictor
from facemtl.models.norm import randomise_norms


def timed(fns: dict, n_faces: int, seconds: float) -> dict:
    """Faces per second of each function in ``fns``, from its MEDIAN call time. The functions are
    called in turn (round robin) until ``seconds`` per function have passed (at least one round),
    so that the backends share whatever load other processes put on the machine, and a median
    resists their bursts."""
    times: dict = {name: [] for name in fns}
    start = time.perf_counter()
    while not times[next(iter(fns))] or time.perf_counter() - start < seconds * len(fns):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: n_faces / statistics.median(ts) for name, ts in times.items()}


def paper_model(sources: int) -> torch.nn.Module:
    """The paper's iFAN (random weights) with ``sources`` BN sources; rows made to differ."""
    torch.manual_seed(0)
    return randomise_norms(facemtl.create_model("ifan", input_size=128, num_sources=sources).eval())


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--iterations", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    ap.add_argument("--sources", type=int, nargs="+", default=[3, 1], help="BN sources of the model (3: the paper's)")
    ap.add_argument("--tasks", nargs="+", default=["all", "landmarks"], metavar="T1,T2",
                    help="task sets to report, each comma-separated, or all (default: all landmarks)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure and backend")
    ap.add_argument("--only-refiner", action="store_true", help="time only the point refiner")
    args = ap.parse_args()
    task_sets = {name: None if name == "all" else name.split(",") for name in args.tasks}

    torch.set_num_threads(args.threads)  # the onnxruntime session takes the same number (Predictor default)
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    print(f"iFAN paper config (IFANConfig defaults, random init), 128x128 crops, torch {torch.__version__}, "
          f"onnxruntime {ort_version}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, load average {load_average():.1f} at start")
    width = max(9, *(len(name) for name in task_sets))
    if not args.only_refiner:
        print(f"{'sources':>7} {'iters':>5} {'batch':>5} {'backend':>11} {'tasks':>{width}} {'setup s':>7} "
              f"{'model faces/s':>13} {'predict faces/s':>15} {'x torch':>7} {'x all':>6}")
    rng = np.random.default_rng(0)
    for sources in [] if args.only_refiner else args.sources:
        model = paper_model(sources)
        for iterations in args.iterations:
            predictors, setup_s = {}, {}  # keyed by (backend, task set)
            for backend in args.backends:
                for name, tasks in task_sets.items():
                    start = time.perf_counter()
                    predictors[backend, name] = Predictor(model, {"input_size": 128}, detector="none",
                                                          iterations=iterations, backend=backend, tasks=tasks,
                                                          flip=False)
                    setup_s[backend, name] = time.perf_counter() - start
            for batch in args.batches:
                crops = torch.randn(batch, 3, 128, 128)
                images = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(batch)]
                for predictor in predictors.values():
                    predictor.batch_size = batch
                    predictor.forward(crops)  # warm-up (allocator, kernels)
                model_fps = timed({b: (lambda p=p, x=crops: p.forward(x)) for b, p in predictors.items()}, batch,
                                  args.seconds)
                predict_fps = timed({b: (lambda p=p, ims=images: list(p.stream(enumerate(ims))))
                                     for b, p in predictors.items()}, batch, args.seconds)
                for key in predictors:
                    backend, name = key
                    base, every = model_fps.get(("torch", name)), model_fps.get((backend, "all"))
                    ratio = f"{model_fps[key] / base:7.2f}" if base else f"{'-':>7}"
                    saved = f"{model_fps[key] / every:6.2f}" if every else f"{'-':>6}"
                    print(f"{sources:>7} {iterations:>5} {batch:>5} {backend:>11} {name:>{width}} "
                          f"{setup_s[key]:>7.1f} {model_fps[key]:>13.1f} {predict_fps[key]:>15.1f} {ratio} {saved}",
                          flush=True)
    refiner_speed(args.backends, args.seconds)
    print(f"load average {load_average():.1f} at the end (other processes on the machine skew the figures)")


def refiner_speed(backends, seconds: float) -> None:
    """Print the point refiner's setup time and faces/s per backend (see the module docstring)."""
    from facemtl.engine.refiner import STAGE_GUESSES
    from facemtl.models.refiner import PointRefiner, RefinerCascade, refine_points

    torch.manual_seed(0)
    refiner = RefinerCascade([PointRefiner() for _ in STAGE_GUESSES]).eval()  # as many stages as the bundled one
    points = np.array([[200.0, 200.0], [300.0, 205.0], [250.0, 260.0], [210.0, 310.0], [290.0, 312.0]])
    readers, setup_s = {}, {}
    for backend in backends:
        start = time.perf_counter()
        if backend == "onnxruntime":
            from facemtl.inference.export import OnnxRefiner

            readers[backend] = [OnnxRefiner(stage, torch.get_num_threads()) for stage in refiner.stages]
        else:
            readers[backend] = refiner
        setup_s[backend] = time.perf_counter() - start
    # a small face, and the same face in a phone-sized photo (its patches are cut from a blurred photo)
    for side, zoom in ((512, 1), (3072, 6)):
        photo = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
        for reader in readers.values():
            refine_points(reader, photo, points * zoom)  # warm-up
        fps = timed({b: (lambda r=r: refine_points(r, photo, points * zoom)) for b, r in readers.items()}, 1, seconds)
        print(f"point refiner ({len(refiner.stages)} stages, random weights, width 24), one face of a {side}x{side} "
              f"photo per call (inter-ocular distance {100 * zoom} px):")
        print(f"{'backend':>11} {'setup s':>7} {'faces/s':>8} {'x torch':>7}")
        for backend, value in fps.items():
            ratio = f"{value / fps['torch']:7.2f}" if "torch" in fps else f"{'-':>7}"
            print(f"{backend:>11} {setup_s[backend]:>7.1f} {value:>8.1f} {ratio}", flush=True)


if __name__ == "__main__":
    main()
