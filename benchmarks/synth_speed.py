"""Faces per second of the synthetic generator on ONE core, per style.

Run: python benchmarks/synth_speed.py [--n 2000] [--size 128] [--styles studio,snapshot]
         [--without eyes --without camera | --plain | --only smooth_shading,eyes] [--per-feature]
         [--split-sizes 96,192] [--opencv-share] [--fingerprint]
Target (issue): >= 1,000 faces/s per core at 128x128. ``--per-feature`` prints what each
realism feature costs (the time saved by switching it off), for the first style given.
``--split-sizes A,B`` times the first style at two sizes and splits the time per face into a
part that grows with the pixels and a fixed part (geometry, random draws, per-call overheads):
the fixed part bounds the faces/s that faster pixel operations alone could reach.
``--opencv-share`` times every OpenCV call the renderer makes (first style): the time inside
OpenCV bounds the faces/s that removing all Python and numpy work could reach.
``--fingerprint`` prints one SHA-1 over every style's ``--n`` faces (pixels, mask, landmarks,
labels, meta): run it before and after a speed change, on one machine, to show that the change
renders the very same faces (and so leaves the bundled model's training data as it was).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from facemtl.data.synth import ALL_FEATURES, FEATURES, STYLES, render_face  # noqa: E402


def rate(style: str, n: int, size: int, features) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to render ``n`` faces."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        render_face(1, i, style, size, features)
    return time.process_time() - c0, time.perf_counter() - t0


def fingerprint(style: str, n: int, size: int, features) -> str:
    """SHA-1 over faces 0..n-1 of seed 1 (the faces :func:`rate` times): image, mask and
    landmarks bytes, then the labels and meta as text."""
    digest = hashlib.sha1()
    for i in range(n):
        face = render_face(1, i, style, size, features)
        for key in ("image", "parsing", "landmarks"):
            digest.update(np.ascontiguousarray(face[key]).tobytes())
        labels = {k: v for k, v in face.items() if k not in ("image", "parsing", "landmarks")}
        digest.update(repr(sorted(labels.items())).encode())
    return digest.hexdigest()


def opencv_share(style: str, n: int, size: int, features) -> None:
    """Render ``n`` faces with every ``cv2`` function timed; print the time inside OpenCV per face."""
    spent, calls = collections.Counter(), collections.Counter()
    originals = {name: fn for name, fn in vars(cv2).items() if callable(fn) and type(fn).__name__ == "builtin_function_or_method"}

    def timed(name, fn):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t
                calls[name] += 1
        return call

    for name, fn in originals.items():
        setattr(cv2, name, timed(name, fn))
    try:
        wall = rate(style, n, size, features)[1]
    finally:
        for name, fn in originals.items():
            setattr(cv2, name, fn)
    inside = sum(spent.values())
    top = ", ".join(f"{k} {v / n * 1e3:.3f} ms ({calls[k] / n:.1f} calls)" for k, v in spent.most_common(6))
    print(f"{style}: {wall / n * 1e3:.3f} ms per face (wall, timers on), of it {inside / n * 1e3:.3f} ms inside "
          f"{sum(calls.values()) / n:.0f} OpenCV calls ({inside / wall:.0%}); with all Python and numpy work free "
          f"at most {n / inside:.0f} faces/s. Largest: {top}")


def two_sizes(text: str) -> tuple[int, int]:
    """``--split-sizes``: two different image sizes, e.g. ``96,192``."""
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two sizes as A,B (e.g. 96,192), got {text!r}") from None
    if a == b:
        raise argparse.ArgumentTypeError(f"the two sizes must differ, got {text!r}")
    return a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="faces per style")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--styles", default=",".join(STYLES), help="comma-separated styles (default all)")
    parser.add_argument("--without", action="append", default=[], choices=FEATURES, metavar="FEATURE",
                        help="switch a realism feature off (repeatable)")
    parser.add_argument("--plain", action="store_true", help="no realism features (the first renderer's look)")
    parser.add_argument("--only", default=None, help="comma-separated features to keep (the rest off)")
    parser.add_argument("--per-feature", action="store_true", help="also time each feature switched off")
    parser.add_argument("--split-sizes", default=None, metavar="A,B", type=two_sizes,
                        help="time the first style at sizes A and B: fixed vs per-pixel cost per face")
    parser.add_argument("--opencv-share", action="store_true",
                        help="time the OpenCV calls of the first style: the faces/s bound without Python/numpy work")
    parser.add_argument("--fingerprint", action="store_true",
                        help="print a SHA-1 of each style's faces (compare before/after a speed change)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    features = frozenset() if args.plain else ALL_FEATURES - set(args.without)
    if args.only is not None:
        features = frozenset(f for f in args.only.split(",") if f)
    styles = [s for s in args.styles.split(",") if s]
    render_face(0, 0, "studio", args.size, features)  # load the template and build tables once
    print(f"features: {'all' if features == ALL_FEATURES else ', '.join(sorted(features)) or 'none'}")
    for style in styles:
        dc, dt = rate(style, args.n, args.size, features)
        # CPU time is the fairer figure on a shared machine (wall time includes waiting for a core)
        print(f"{style:9s} {args.n / dc:8.1f} faces/s per CPU-second ({dc / args.n * 1e3:.3f} ms CPU/face); "
              f"wall {args.n / dt:.1f} faces/s; size {args.size}, 1 thread")
    if args.per_feature:
        base = rate(styles[0], args.n, args.size, features)[0] / args.n
        for name in FEATURES:
            if name in features:
                off = rate(styles[0], args.n, args.size, features - {name})[0] / args.n
                print(f"  {name:15s} costs {(base - off) * 1e3:+.3f} ms/face ({styles[0]})")
    if args.split_sizes:
        a, b = args.split_sizes
        ta, tb = (rate(styles[0], args.n, size, features)[0] / args.n for size in (a, b))
        per_pixel = (tb - ta) / (b * b - a * a)
        fixed = ta - per_pixel * a * a
        if fixed <= 0 or per_pixel <= 0:  # timing noise larger than the difference between the sizes
            print(f"{styles[0]}: {ta * 1e3:.3f} / {tb * 1e3:.3f} ms per face at {a} / {b} px: no split (noise "
                  f"exceeds the difference; use a larger --n or sizes further apart)")
        else:
            print(f"{styles[0]}: {fixed * 1e3:.3f} ms per face fixed + {per_pixel * 1e9:.1f} ns per pixel "
                  f"(from sizes {a} and {b}); at {args.size} px the pixels are "
                  f"{per_pixel * args.size ** 2 * 1e3:.3f} ms; with free pixel work at most {1 / fixed:.0f} faces/s")
    if args.opencv_share:
        opencv_share(styles[0], args.n, args.size, features)
    if args.fingerprint:
        for style in styles:
            print(f"fingerprint {style}: {fingerprint(style, args.n, args.size, features)} "
                  f"(faces 0..{args.n - 1} of seed 1, size {args.size})")


if __name__ == "__main__":
    main()
