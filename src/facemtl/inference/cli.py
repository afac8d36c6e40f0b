"""``facemtl predict`` (photos -> JSON, class-id masks, overlays) and ``facemtl export`` (ONNX)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from facemtl.data.transforms import DEFAULT_CROP_MARGIN
from facemtl.errors import FacemtlError
from facemtl.kinds import KINDS, kind_of

PREDICT_EPILOG = """\
output: one JSON object {"images": [{"path", "width", "height", "faces": [{"box": [x0, y0, x1, y1],
"landmarks": [[x, y], ...], "parsing": "<mask PNG>", "emotion": {"label", "probs": {name: p}}, ...}]}],
"errors": [{"path", "error"}]}, with only the tasks the model has; coordinates are original-image
pixels (pixel centres at integers). Segmentation masks are written as single-channel PNGs of class
ids at full image size, named <image stem>_face<i>_<task>.png, into --masks DIR, else into
<OUT stem>_masks/ next to the --json file, else into the --overlays folder; with none of these the
masks are not written and the field is left out. Mask paths in the JSON are relative to the JSON
file's folder (absolute when the JSON goes to stdout). Without --json the JSON goes to stdout.
An input that does not exist or is not an image is reported on stderr and skipped; the exit status
is then 1.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="run a checkpoint on photos: faces, landmarks, parsing masks, labels",
        description="Detect faces, crop them as training does, run the model (all refinement iterations,\n"
        "reporting the last) and map landmarks and parsing masks back to the original pixels.\n",
        epilog=PREDICT_EPILOG,
        formatter_class=_RawEpilog,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, metavar="RUN_OR_CKPT",
                   help="run folder, model.safetensors or model.json")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="write the results here (default: stdout)")
    p.add_argument("--overlays", type=Path, metavar="DIR", help="write one overlay PNG per image here")
    p.add_argument("--masks", type=Path, metavar="DIR", help="write the class-id mask PNGs here (see below)")
    p.add_argument("--detector", choices=("opencv", "none"), default="opencv",
                   help="opencv: OpenCV's Haar frontal-face cascade; none: each image is one face crop (default: opencv)")
    p.add_argument("--boxes", type=Path, metavar="BOXES.json",
                   help='face boxes per image: {"path/to/img.jpg": [[x0, y0, x1, y1], ...]}; keys are paths '
                   "(relative to the boxes file or the current folder) or bare file names; images it does not "
                   "list fall back to --detector")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="face crops per forward pass (default: 16)")
    p.add_argument("--iterations", type=int, metavar="N",
                   help="refinement iterations to run (default: all the model was trained with)")
    p.add_argument("--margin", type=float, help="crop margin per side, as a fraction of the face box "
                   f"(default: the checkpoint's, else {DEFAULT_CROP_MARGIN:g})")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=run_predict)

    e = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (needs pip install 'facemtl[onnx]')",
        description="Write an ONNX graph from a batch of normalised face crops (B, 3, S, S; dynamic batch) to "
        "every task's decoded output of the last refinement iteration (points normalised to the crop, "
        "segmentation logits, category logits), one output per task. The checkpoint's JSON is stored in the "
        "metadata (key facemtl_info).",
    )
    e.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="run folder, model.safetensors or model.json")
    e.add_argument("--onnx", required=True, type=Path, metavar="OUT.onnx", help="output file")
    e.add_argument("--iterations", type=int, metavar="N", help="refinement iterations to unroll (default: all)")
    e.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    e.add_argument("--check", action="store_true", help="run the file with onnxruntime and compare with PyTorch")
    e.set_defaults(func=run_export)


class _RawEpilog(argparse.HelpFormatter):
    """Keep the epilog's line breaks (the JSON layout) but wrap the options as usual."""

    def _fill_text(self, text, width, indent):
        return "".join(indent + line for line in text.splitlines(keepends=True))


# ---------------------------------------------------------------------------------------
# predict


def _expand(inputs: list[str]) -> tuple[list[Path], bool]:
    """Image paths in order (folders expanded), and whether any folder was given."""
    from facemtl.inference.predictor import find_images

    paths: list[Path] = []
    folder = False
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            folder = True
            paths.extend(find_images(p))
        else:
            paths.append(p)  # missing or unreadable files are reported when read
    return paths, folder


class _Names:
    """Unique file stems per run (two photos called face.jpg in different folders)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, path: Path) -> str:
        stem, n = path.stem, 2
        name = stem
        while name in self.used:
            name, n = f"{stem}-{n}", n + 1
        self.used.add(name)
        return name


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise FacemtlError(f"cannot write {path}")


def _face_json(face: dict, tasks, mask_paths: dict[str, str]) -> dict:
    out: dict = {"box": [round(v, 2) for v in face["box"]]}
    for task in tasks:
        value = kind_of(task).to_json(task, face[task.name], mask_paths.get(task.name))
        if value is not None:
            out[task.name] = value
    return out


def run_predict(args) -> int:
    from tqdm import tqdm

    from facemtl.inference.detect import BoxFile
    from facemtl.inference.predictor import Predictor
    from facemtl.inference.render import draw_overlay

    box_file = BoxFile(args.boxes) if args.boxes else None
    predictor = Predictor.from_checkpoint(args.checkpoint, detector=args.detector, batch_size=args.batch_size,
                                          iterations=args.iterations, margin=args.margin, device=args.device)
    tasks = predictor.tasks
    paths, folder = _expand(args.inputs)

    json_dir = args.json.parent if args.json else None
    mask_dir = args.masks
    if mask_dir is None and args.json is not None:
        mask_dir = args.json.parent / f"{args.json.stem}_masks"
    if mask_dir is None:
        mask_dir = args.overlays
    mask_tasks = [t for t in tasks if kind_of(t) is KINDS["segmentation"]]

    out = _open_output(args.json) if args.json else sys.stdout
    names = _Names()
    errors: list[dict] = []
    n_faces = 0
    bar = tqdm(total=len(paths), unit="img", desc="predict", disable=not (folder or len(paths) > 1), file=sys.stderr,
               dynamic_ncols=True)
    try:
        out.write('{"images": [')
        first = True
        items = ((p, p) for p in paths)
        boxes_for = box_file.lookup if box_file else None
        for res in predictor.stream(items, boxes_for=boxes_for, keep_images=args.overlays is not None):
            bar.update(1)
            path: Path = res.key
            if res.error:
                bar.write(f"facemtl: error: {res.error}", file=sys.stderr)
                errors.append({"path": str(path), "error": res.error})
                continue
            stem = names(path)
            faces_json = []
            for i, face in enumerate(res.faces):
                mask_paths: dict[str, str] = {}
                if mask_dir is not None:
                    for task in mask_tasks:
                        mp = mask_dir / f"{stem}_face{i}_{task.name}.png"
                        _write_png(mp, face[task.name])
                        mask_paths[task.name] = _relative(mp, json_dir)
                faces_json.append(_face_json(face, tasks, mask_paths))
            n_faces += len(res.faces)
            if args.overlays is not None:
                overlay = draw_overlay(res.image, res.faces, tasks)
                _write_png(args.overlays / f"{stem}.png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            record = {"path": str(path), "width": res.width, "height": res.height, "faces": faces_json}
            out.write(("\n  " if first else ",\n  ") + json.dumps(record))
            first = False
        out.write("\n], \"errors\": " + json.dumps(errors) + "}\n")
    finally:
        bar.close()
        if out is not sys.stdout:
            out.close()
    done = len(paths) - len(errors)
    summary = f"facemtl predict: {n_faces} face(s) in {done} image(s)"
    if errors:
        summary += f"; {len(errors)} input(s) skipped"
    if args.json:
        summary += f"; results in {args.json}"
    print(summary, file=sys.stderr)
    if not paths:
        print("facemtl: error: no images found in the given inputs", file=sys.stderr)
        return 1
    return 1 if errors else 0


def _open_output(path: Path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise FacemtlError(f"cannot write {path}: {exc.strerror or exc}") from None


def _relative(path: Path, base: Path | None) -> str:
    if base is None:
        return str(path.resolve())
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


# ---------------------------------------------------------------------------------------
# export


def run_export(args) -> int:
    from facemtl.models.checkpoint import load_model
    from facemtl.inference.export import export_onnx, require_onnx

    require_onnx()  # fail before loading anything when the extra is missing
    model, info = load_model(args.checkpoint)
    path = export_onnx(model, info, args.onnx, iterations=args.iterations, opset=args.opset)
    print(f"facemtl export: wrote {path} (outputs: {', '.join(t.name for t in model.tasks)})", file=sys.stderr)
    if args.check:
        from facemtl.inference.export import compare_with_torch

        worst = compare_with_torch(model, path, iterations=args.iterations, size=int(info.get("input_size", 128)))
        print("facemtl export: onnxruntime vs PyTorch, largest difference per output: "
              + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()), file=sys.stderr)
    return 0
