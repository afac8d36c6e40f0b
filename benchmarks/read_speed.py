"""Reader + crop throughput on one core: samples/s through ``load_dataset`` and ``FaceCrop``.

Writes two fixture datasets in a temporary folder, in the real formats and at real sizes:

* Helen-sized: ~500x500 JPEG faces with 11 label PNGs each (parsing), read with
  ``load_dataset("helen", ...)`` and cropped to 128x128 (with and without augmentation);
* MTFL-sized: ~250x250 JPEG faces with one annotation line each, read with
  ``load_dataset("mtfl", ...)`` and cropped to 128x128.

Helen is measured with its class-map cache off (11 label PNGs decoded per read) and on (one
cached PNG per read, after a first pass fills the cache); then whole training batches of the
Helen fixture through ``BatchStream`` with 1 and 2 reader threads (``reader_threads``),
wall-clock.

Run: ``python benchmarks/read_speed.py [--n 64] [--size 128]`` (prints the figures).
OpenCV is limited to one thread and the rates are per CPU-second of this process, so the
numbers are per core and hold on a busy machine (wall-clock rates are printed beside them).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from facemtl.data import load_dataset
from facemtl.data.transforms import FaceCrop


def _face_image(rng, h, w):
    """A smooth, JPEG-realistic image (noise compresses unrealistically badly)."""
    small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (0, 0), 2)


def write_helen(root: Path, n: int, rng) -> None:
    names = [f"{1000 + i}_1" for i in range(n)]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in names:
        h, w = int(rng.integers(480, 520)), int(rng.integers(480, 520))
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), _face_image(rng, h, w))
        (root / "labels" / name).mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.hypot((xx - w / 2) / (w / 3), (yy - h / 2) / (h / 2.5))
        for c in range(11):
            soft = np.clip(255 * (1 - np.abs(r - c / 11) * 6), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / "labels" / name / f"{name}_lbl{c:02d}.png"), soft)
    (root / "exemplars.txt").write_text("".join(f"{k} , {name}\n" for k, name in enumerate(names, 1)))


def write_mtfl(root: Path, n: int, rng) -> None:
    (root / "lfw_5590").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = f"img_{i:05d}.jpg"
        cv2.imwrite(str(root / "lfw_5590" / name), _face_image(rng, 250, 250))
        xs = [100, 150, 125, 105, 145]
        ys = [110, 110, 135, 160, 160]
        lines.append(f"lfw_5590\\{name} {' '.join(map(str, xs))} {' '.join(map(str, ys))} 1 2 2 3\n")
    (root / "training.txt").write_text("".join(lines))


def measure(ds, crop, repeats: int) -> tuple[float, float]:
    """(samples per CPU-second of this process, samples per wall-clock second)."""
    rng = np.random.default_rng(0)
    for i in range(min(3, len(ds))):  # warm-up (imports, caches)
        crop(ds[i], rng)
    cpu, wall = time.process_time(), time.perf_counter()
    count = 0
    for _ in range(repeats):
        for i in range(len(ds)):
            crop(ds[i], rng)
            count += 1
    return count / (time.process_time() - cpu), count / (time.perf_counter() - wall)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="images per fixture dataset (default 48)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over each dataset (default 2)")
    parser.add_argument("--size", type=int, default=128, help="crop size (default 128)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["FACEMTL_CACHE"] = str(tmp / "cache")  # a cold, private class-map cache
        write_helen(tmp / "helen", args.n, rng)
        write_mtfl(tmp / "mtfl", args.n, rng)
        t = time.perf_counter()
        helen = load_dataset("helen", tmp / "helen", "train", cache=False)
        mtfl = load_dataset("mtfl", tmp / "mtfl", "train")
        index_ms = (time.perf_counter() - t) * 1000
        print(f"indexing both annotation sets ({args.n} images each): {index_ms:.1f} ms")
        cached = load_dataset("helen", tmp / "helen", "train")
        for i in range(len(cached)):  # fill the cache
            cached[i]
        for name, ds in (("helen ~500x500, 11 label PNGs decoded per read (cache=False)", helen),
                         ("helen ~500x500, cached class map", cached), ("mtfl ~250x250", mtfl)):
            read_only = measure(ds, lambda raw, rng: raw, args.repeats)
            plain = measure(ds, FaceCrop(size=args.size), args.repeats)
            aug = measure(ds, FaceCrop(size=args.size, augment=True), args.repeats)
            print(f"{name}: samples per CPU-second (wall-clock in brackets; lower when the machine is shared)")
            for label, (per_cpu, per_wall) in (("read only", read_only), (f"read + FaceCrop({args.size})", plain),
                                               ("read + FaceCrop + augment", aug)):
                print(f"    {label:28s} {per_cpu:8.1f}   ({per_wall:.1f})")
        print("helen (cached) training batches of 16, read + FaceCrop + augment, wall-clock samples/s:")
        for threads in (1, 2):
            print(f"    reader_threads={threads}: {batch_rate(cached, args.size, threads):8.1f}")


def batch_rate(ds, size: int, threads: int) -> float:
    """Samples per wall-clock second of whole batches through ``BatchStream``."""
    from facemtl.data.mixing import BatchStream, Source
    from facemtl.tasks import get_tasks

    tasks = tuple(get_tasks(["parsing"]))
    src = Source(0, "helen", tasks, ds, [], 16, FaceCrop(size=size, augment=True, tasks=tasks), threads=threads)
    stream = BatchStream(src, seed=0, stream=0)
    stream.batch(0)  # warm-up
    n = max(1, stream.batches_per_pass) * 2
    t = time.perf_counter()
    for draw in range(1, n + 1):
        stream.batch(draw)
    return n * stream.batch_size / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
