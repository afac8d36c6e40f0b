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
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(args.n):
            render_face(1, i, style, args.size)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        # CPU time is the fairer figure on a shared machine (wall time includes waiting for a core)
        print(f"{style:7s} {args.n / dc:8.1f} faces/s per CPU-second ({dc / args.n * 1e3:.3f} ms CPU/face); "
              f"wall {args.n / dt:.1f} faces/s; size {args.size}, 1 thread")


if __name__ == "__main__":
    main()
