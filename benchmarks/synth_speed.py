"""Faces per second of the synthetic generator on ONE core, per style.

Run: python benchmarks/synth_speed.py [--n 2000] [--size 128]
Target (issue): >= 1,000 faces/s per core at 128x128.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import torch  # noqa: E402

from facemtl.data.synth import STYLES, render_face  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="faces per style")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    render_face(0, 0, "studio", args.size)  # load the template and build tables once
    for style in STYLES:
        t0 = time.perf_counter()
        for i in range(args.n):
            render_face(1, i, style, args.size)
        dt = time.perf_counter() - t0
        print(f"{style:7s} {args.n / dt:8.1f} faces/s  ({dt / args.n * 1e3:.3f} ms/face, size {args.size}, 1 thread)")


if __name__ == "__main__":
    main()
