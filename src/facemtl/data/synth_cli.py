"""``facemtl synth``: export synthetic faces in real dataset formats, or draw a preview grid."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# cv2, numpy and the renderer are imported by the commands: the parser must stay light.
from facemtl.constants import SYNTH_STYLES as STYLES
from facemtl.errors import FacemtlError

# Helen class colours for overlays (RGB), index = class id.
CLASS_COLOURS = ((0, 0, 0), (230, 190, 150), (220, 40, 40), (40, 60, 220), (250, 150, 0), (0, 220, 230),
                 (80, 200, 80), (200, 60, 200), (30, 30, 40), (250, 120, 150), (120, 70, 20))
POSE_NAMES = ("left profile", "turned left", "frontal", "turned right", "right profile")
# Preview layout: each face is shown raw and annotated at CELL x CELL pixels whatever --size,
# COLS faces a row, and a label band under the pair, so the sheet's size depends only on --n.
CELL, GAP, PAD, COLS = 192, 4, 4, 4
FONT_SCALE, LINE_H = 0.55, 20
LABEL_LINES = 3


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
    exp.add_argument("--style", choices=STYLES, help="synthetic style (default studio)")
    exp.add_argument("--seed", type=_non_negative, help="random seed (default 0)")
    exp.add_argument("--size", type=_size, help="image side in pixels, >= 64 (default 128)")
    exp.add_argument("--out", type=Path, required=True,
                     help="output folder (new or empty; all or nothing: an interrupted export leaves it empty)")
    _add_source_arguments(exp)
    exp.set_defaults(func=run_export)

    pre = sub.add_parser("preview", help="draw a contact sheet of faces with landmarks, mask overlay and labels",
                         description="Draw N synthetic faces into one PNG: each face raw and annotated (parsing "
                         f"mask overlay, the 5 landmarks) at {CELL}x{CELL} pixels, with its labels (style and "
                         f"index, emotion, gender, smile, glasses, pose) under it, {COLS} faces a row. "
                         "16 faces make a PNG of about 1600x1100 pixels.")
    pre.add_argument("--out", type=Path, required=True, help="output image file (.png)")
    pre.add_argument("--n", type=_positive, default=16,
                     help="number of faces in total, shared in turn among the styles shown (default 16)")
    pre.add_argument("--style", choices=STYLES + ("all",), help="style or 'all' (default all)")
    pre.add_argument("--seed", type=_non_negative, help="random seed (default 0)")
    pre.add_argument("--size", type=_size,
                     help=f"side in pixels the faces are rendered at, >= 64; shown scaled to {CELL} (default 128)")
    _add_source_arguments(pre)
    pre.set_defaults(func=run_preview)


def _add_source_arguments(parser) -> None:
    parser.add_argument("--source", type=_non_negative, metavar="N",
                        help="draw the faces training source data.N of --config draws: its style, seed, input "
                        "size and render options (glasses frames, expression range, creases, brow drop, angry shout, pose, "
                        "features), as rendered, before training's random_conv; --style, "
                        "--seed and --size, when given, replace the source's")
    parser.add_argument("--config", metavar="YAML",
                        help="training config for --source: a YAML file, a run folder (its config.json) or "
                        "'bundled' (the bundled model's) (default: the built-in default run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value for --source as `facemtl train --set` does, e.g. "
                        "--set data.2.glasses_frames=real (repeatable)")


def faces_to_draw(args, style: str) -> tuple[str, int, int, dict]:
    """``(style, seed, size, render options)`` of the faces a command draws: its arguments' (``style``
    where none is given), or with ``--source N`` those training source N draws."""
    if args.source is None:
        if args.config or args.overrides:
            raise FacemtlError("--config and --set choose a training source's faces: give --source N with them")
        return args.style or style, args.seed or 0, args.size or 128, {}
    from facemtl.config import load_config
    from facemtl.data.mixing import render_options

    path = args.config
    if path == "bundled":
        from facemtl.models.checkpoint import bundled_model

        path = bundled_model()
    cfg = load_config(path, args.overrides)
    where = f"--source {args.source}" + (f" of {args.config}" if args.config else " of the default config")
    if args.source >= len(cfg.data):
        raise FacemtlError(f"{where}: the config has {len(cfg.data)} sources, data.0 to data.{len(cfg.data) - 1}")
    src = cfg.data[args.source]
    if src.name != "synth":
        raise FacemtlError(f"{where} reads the {src.name!r} dataset; only synthetic sources (name: synth) are drawn")
    return (args.style or src.style, src.seed if args.seed is None else args.seed, args.size or cfg.input_size,
            render_options(src))


def run_export(args) -> int:
    from facemtl.data.synth_export import export

    style, seed, size, options = faces_to_draw(args, "studio")
    try:
        n = export(args.format, args.out, n=args.n, style=style, seed=seed, size=size, options=options)
    except KeyboardInterrupt:
        print(f"interrupted: nothing written to {args.out} (an export keeps its files only once every face is "
              f"written); run the same command again", file=sys.stderr)
        raise
    of = "" if args.source is None else f" of source {args.source}"
    print(f"wrote {n} {style} faces{of} in {args.format} format to {args.out}")
    return 0


def annotate(sample: dict, cell: int = CELL):
    """The sample's image at ``cell`` x ``cell`` with a semi-transparent mask overlay and the landmarks (RGB)."""
    import cv2
    import numpy as np

    img = sample["image"]
    h, w = img.shape[:2]
    over = (0.55 * img + 0.45 * np.array(CLASS_COLOURS, np.uint8)[sample["parsing"]]).astype(np.uint8)
    over = _resized(over, cell)
    colours = [(0, 255, 0), (0, 255, 255), (255, 0, 0), (255, 255, 0), (255, 0, 255)]
    sx, sy = cell / w, cell / h
    for (x, y), col in zip(sample["landmarks"], colours):  # pixel centres map to pixel centres
        centre = (int(round((x + 0.5) * sx - 0.5)), int(round((y + 0.5) * sy - 0.5)))
        cv2.circle(over, centre, 3, col, -1, cv2.LINE_AA)
    return over


def _resized(img, cell: int):
    import cv2

    # Enlarged faces keep their pixels visible; shrunk ones are averaged, not aliased.
    inter = cv2.INTER_NEAREST if cell >= img.shape[0] else cv2.INTER_AREA
    return cv2.resize(img, (cell, cell), interpolation=inter)


def _labels(sample: dict, style: str, index: int) -> list[str]:
    """The label lines under a face (LABEL_LINES of them): who it is and what it is labelled."""
    from facemtl.data.synth import EMOTIONS

    # MTFL attributes, 0-based: gender 0 male / 1 female; smile and glasses 0 = yes.
    return [f"{style} #{index}: {EMOTIONS[sample['emotion']].lower()}",
            f"{'female' if sample['gender'] else 'male'}, {'smiling' if sample['smile'] == 0 else 'not smiling'}, "
            f"{'glasses' if sample['glasses'] == 0 else 'no glasses'}",
            f"pose: {POSE_NAMES[sample['pose']]}"]


def preview_faces(n: int, styles) -> list[tuple[str, int]]:
    """(style, index) of the ``n`` faces of a preview: the styles take turns, so every style shows
    from the first faces on, and one style shows the faces its export would write first."""
    return [(styles[k % len(styles)], k // len(styles)) for k in range(n)]


def preview_grid(n: int, styles, seed: int = 0, size: int = 128, options: dict | None = None):
    """A contact sheet of ``n`` faces in total: each raw next to its annotated copy, labels under them.
    ``options``: render options (:func:`facemtl.data.synth.render_face` keyword arguments)."""
    import cv2
    import numpy as np

    from facemtl.data.synth import render_face

    band = LABEL_LINES * LINE_H + 8
    tiles = []
    for style, i in preview_faces(n, styles):
        s = render_face(seed, i, style, size, **(options or {}))
        tile = np.full((CELL + band, 2 * CELL + GAP, 3), 255, np.uint8)
        tile[:CELL, :CELL] = _resized(s["image"], CELL)
        tile[:CELL, CELL + GAP:] = annotate(s, CELL)
        for k, line in enumerate(_labels(s, style, i)):  # in the band under the faces, never on them
            cv2.putText(tile, line, (4, CELL + (k + 1) * LINE_H), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE,
                        (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.pad(tile, ((PAD, PAD), (PAD, PAD), (0, 0)), constant_values=255))
    cols = min(COLS, len(tiles))
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
    return np.concatenate([np.concatenate(tiles[k:k + cols], 1) for k in range(0, len(tiles), cols)], 0)


def run_preview(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise FacemtlError(f"--out must be a .png file, got {out}")
    if out.exists() and out.is_dir():
        raise FacemtlError(f"--out {out} is a folder; expected a .png file path")
    if not out.parent.exists():
        raise FacemtlError(f"folder {out.parent} does not exist")
    import cv2

    style, seed, size, options = faces_to_draw(args, "all")
    grid = preview_grid(args.n, STYLES if style == "all" else (style,), seed, size, options)
    if not cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise FacemtlError(f"could not write {out}")
    print(f"wrote {out} ({args.n} faces, {grid.shape[1]}x{grid.shape[0]} pixels)")
    return 0
