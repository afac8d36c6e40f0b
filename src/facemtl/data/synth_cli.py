"""``facemtl synth``: export synthetic faces in real dataset formats, or draw a preview grid."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from facemtl.data.synth import EMOTIONS, STYLES, render_face
from facemtl.errors import FacemtlError

# Helen class colours for overlays (RGB), index = class id.
CLASS_COLOURS = np.array([[0, 0, 0], [230, 190, 150], [220, 40, 40], [40, 60, 220], [250, 150, 0], [0, 220, 230],
                          [80, 200, 80], [200, 60, 200], [30, 30, 40], [250, 120, 150], [120, 70, 20]], np.uint8)
POSE_NAMES = ("Lprof", "left", "front", "right", "Rprof")


def _whole_number(text: str, lo: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < lo:
        raise argparse.ArgumentTypeError(f"expected a number >= {lo}, got {value}")
    return value


def _positive(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative(text: str) -> int:
    return _whole_number(text, 0)


def _size(text: str) -> int:
    value = _positive(text)
    if value < 64:
        raise argparse.ArgumentTypeError(f"image size must be >= 64, got {value}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser("synth", help="synthetic faces: export datasets or preview them",
                                   description="Synthetic multi-task faces (facemtl.data.synth).")
    sub = parser.add_subparsers(dest="synth_command", metavar="ACTION", required=True)

    exp = sub.add_parser("export", help="write synthetic faces in a real dataset's on-disk format",
                         description="Write N synthetic faces as an MTFL, AFLW, CelebA, Helen or emotion-folder dataset.")
    exp.add_argument("--format", required=True, metavar="{mtfl,aflw,celeba,helen,emotion-folder}",
                     help="on-disk layout (see docs/datasets.md)")
    exp.add_argument("--n", type=int, required=True, help="number of faces (>= 1)")
    exp.add_argument("--style", choices=STYLES, default="studio", help="synthetic style (default studio)")
    exp.add_argument("--seed", type=_non_negative, default=0, help="random seed (default 0)")
    exp.add_argument("--size", type=_size, default=128, help="image side in pixels, >= 64 (default 128)")
    exp.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    exp.set_defaults(func=run_export)

    pre = sub.add_parser("preview", help="draw a grid of samples with landmarks and mask overlay",
                         description="Draw samples raw and annotated (landmarks, mask overlay, labels) into one PNG.")
    pre.add_argument("--out", type=Path, required=True, help="output image file (.png)")
    pre.add_argument("--n", type=_positive, default=16, help="samples per style (default 16)")
    pre.add_argument("--style", choices=STYLES + ("all",), default="all", help="style or 'all' (default all)")
    pre.add_argument("--seed", type=_non_negative, default=0, help="random seed (default 0)")
    pre.add_argument("--size", type=_size, default=128, help="image side in pixels (default 128)")
    pre.set_defaults(func=run_preview)


def run_export(args) -> int:
    from facemtl.data.synth_export import export

    n = export(args.format, args.out, n=args.n, style=args.style, seed=args.seed, size=args.size)
    print(f"wrote {n} {args.style} faces in {args.format} format to {args.out}")
    return 0


def annotate(sample: dict, scale: int = 2) -> np.ndarray:
    """The sample's image with a semi-transparent mask overlay, landmarks and a caption (RGB)."""
    img = sample["image"]
    h, w = img.shape[:2]
    over = (0.55 * img + 0.45 * CLASS_COLOURS[sample["parsing"]]).astype(np.uint8)
    over = cv2.resize(over, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    colours = [(0, 255, 0), (0, 255, 255), (255, 0, 0), (255, 255, 0), (255, 0, 255)]
    for (x, y), col in zip(sample["landmarks"], colours):
        cv2.circle(over, (int(round((x + 0.5) * scale - 0.5)), int(round((y + 0.5) * scale - 0.5))), 2, col, -1)
    return over


def _caption(sample: dict) -> str:
    return (f"{EMOTIONS[sample['emotion']]} {'F' if sample['gender'] else 'M'} "
            f"{'smile' if sample['smile'] == 0 else '-'} {'glasses' if sample['glasses'] == 0 else '-'} "
            f"{POSE_NAMES[sample['pose']]}")


def preview_grid(n: int, styles, seed: int = 0, size: int = 128, scale: int = 2) -> np.ndarray:
    """One row pair per style: raw image next to its annotated copy, with a caption."""
    cell = size * scale
    cap = 14
    cols = 4
    tiles = []
    for style in styles:
        for i in range(n):
            s = render_face(seed, i, style, size)
            raw = cv2.resize(s["image"], (cell, cell), interpolation=cv2.INTER_NEAREST)
            tile = np.full((cell + cap, 2 * cell + 4, 3), 255, np.uint8)
            tile[cap:, :cell] = raw
            tile[cap:, cell + 4:] = annotate(s, scale)
            text = f"{style} #{i} " + _caption(s)
            cv2.putText(tile, text, (2, cap - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(tile)
    rows = []
    for k in range(0, len(tiles), cols):
        row = tiles[k:k + cols]
        row += [np.full_like(tiles[0], 255)] * (cols - len(row))
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in row], 1))
    return np.concatenate(rows, 0)


def run_preview(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise FacemtlError(f"--out must be a .png file, got {out}")
    if out.exists() and out.is_dir():
        raise FacemtlError(f"--out {out} is a folder; expected a .png file path")
    if not out.parent.exists():
        raise FacemtlError(f"folder {out.parent} does not exist")
    styles = STYLES if args.style == "all" else (args.style,)
    grid = preview_grid(args.n, styles, args.seed, args.size)
    if not cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise FacemtlError(f"could not write {out}")
    print(f"wrote {out} ({len(styles) * args.n} samples)")
    return 0
