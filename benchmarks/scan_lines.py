"""How much each real photo looks like a frame of analog video: the ratio of its row-to-row to its
column-to-column second differences over the middle of the photo (:func:`scan_line_ratio`).
Interlaced scan lines raise the first, a horizontally band-limited video signal lowers the second,
so video frames read well above 1 and still photos near it. Per source of the posed set
(``posed_expressions.py``) and of the real set (``real_faces.py``): photos, median, range.

Run: python benchmarks/scan_lines.py [--posed DIR] [--real DIR]
(the folders those two benchmarks' ``--fetch`` fill). Why: the posed set's CK+ lab frames are where
seeds of one recipe part ways most, and they alone are read better once shrunk and enlarged back
(docs/evidence.md, "Fine detail"); this says what sets those frames apart.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def scan_line_ratio(grey: np.ndarray) -> float:
    """Mean |second difference| down the columns over mean |second difference| along the rows,
    over the middle of a (H, W) grey image (the outer quarter cut away on every side: borders,
    captions and time stamps stay out)."""
    g = np.asarray(grey, np.float64)
    h, w = g.shape
    g = g[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
    across_rows = np.abs(g[1:-1] - 0.5 * (g[:-2] + g[2:])).mean()
    along_rows = np.abs(g[:, 1:-1] - 0.5 * (g[:, :-2] + g[:, 2:])).mean()
    return float(across_rows / max(along_rows, 1e-9))


def photo_ratios(folder: Path, images: list[str], fetch: str) -> dict[str, list[float]]:
    """{source (the path's first part): [ratio per photo]} for the distinct ``images`` under
    ``folder``; ``fetch`` names the benchmark whose ``--fetch`` fills it."""
    from expression_legibility import grey_of
    from facemtl.data.images import read_image

    out = collections.defaultdict(list)
    for name in sorted(set(images)):
        if not (folder / name).is_file():
            raise SystemExit(f"{folder / name} not found: run python benchmarks/{fetch} --fetch {folder}")
        out[name.split("/")[0]].append(scan_line_ratio(grey_of(read_image(folder / name))))
    return out


def report(title: str, ratios: dict[str, list[float]]) -> None:
    print(f"{title}:")
    for source, values in ratios.items():
        v = np.array(values)
        print(f"  {source:40s} {len(v):3d} photos, ratio median {np.median(v):.2f}, range {v.min():.2f}-{v.max():.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posed", type=Path, metavar="DIR", help="the folder posed_expressions.py --fetch filled")
    ap.add_argument("--real", type=Path, metavar="DIR", help="the folder real_faces.py --fetch filled")
    args = ap.parse_args(argv)
    if not (args.posed or args.real):
        ap.error("give --posed DIR and/or --real DIR")
    if args.posed:
        from posed_expressions import labels

        report("posed set", photo_ratios(args.posed, [f["image"] for f in labels()["faces"]], "posed_expressions.py"))
    if args.real:
        from real_faces import faces_by_image

        report("real set", photo_ratios(args.real, list(faces_by_image()), "real_faces.py"))


if __name__ == "__main__":
    main()
