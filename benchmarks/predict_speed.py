"""Prediction speed on CPU: faces per second for 128x128 face crops.

The model is a RANDOMLY INITIALISED iFAN with the paper's configuration (IFANConfig defaults:
FC-DenseNet growth 12, 3 layers per block, 5 blocks; landmarks + parsing + emotion, one BN
source per task, so ``source=None`` runs 3 stacked streams). Speed does not depend on the
weights, so no training is needed; the numbers are NOT accuracy numbers.

Two measurements per (batch size, iterations):

* ``model``: ``Predictor.forward`` on normalised crops (network + decode);
* ``predict``: the whole ``Predictor.stream`` path on 128x128 RGB images with
  ``detector="none"`` (crop warp, normalisation, network, mapping points and the parsing mask
  back to the image, softmax), i.e. what ``facemtl predict --detector none`` does per face
  minus file I/O.

Usage: python benchmarks/predict_speed.py [--threads 2] [--batches 1 32] [--iterations 0 2] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

import facemtl
from facemtl.inference.predictor import Predictor


def timed(fn, n_faces: int, seconds: float) -> float:
    """Faces per second of ``fn``: repeated until ``seconds`` have passed (at least once)."""
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return runs * n_faces / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--iterations", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = facemtl.create_model("ifan").eval()  # paper config, random weights
    info = {"input_size": 128}
    n_params = sum(p.numel() for p in model.parameters())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"iFAN paper config (random init, {n_params / 1e6:.2f} M parameters), 128x128 crops, "
          f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"load average {load:.1f} at start")
    print(f"{'batch':>5} {'iters':>5} {'model faces/s':>14} {'predict faces/s':>16}")
    rng = np.random.default_rng(0)
    for iterations in args.iterations:
        predictor = Predictor(model, info, detector="none", iterations=iterations)
        for batch in args.batches:
            predictor.batch_size = batch
            crops = torch.randn(batch, 3, 128, 128)
            images = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(batch)]
            predictor.forward(crops)  # warm-up (allocator, oneDNN kernels)
            model_fps = timed(lambda: predictor.forward(crops), batch, args.seconds)
            predict_fps = timed(lambda: list(predictor.stream((i, im) for i, im in enumerate(images))), batch,
                                args.seconds)
            print(f"{batch:>5} {iterations:>5} {model_fps:>14.1f} {predict_fps:>16.1f}", flush=True)


if __name__ == "__main__":
    main()
