"""``facemtl predict`` (photos -> JSON, class-id masks, overlays), ``facemtl score`` (a labelled dataset read
as predict reads photos, :mod:`facemtl.inference.score`) and ``facemtl export`` (ONNX)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Light imports only: building the parser (facemtl --help) must not load torch or cv2.
from facemtl.constants import DEFAULT_CROP_MARGIN, MAX_CROP_MARGIN, MAX_OPSET, MIN_OPSET, OPSET, RECROPS
from facemtl.errors import FacemtlError

PREDICT_EPILOG = """\
output: one JSON object {"images": [{"path", "width", "height", "faces": [{"box": [x0, y0, x1, y1],
"landmarks": [[x, y], ...], "parsing": "<mask PNG>", "emotion": {"label", "probs": {name: p}}, ...}]}],
"errors": [{"path", "error"} or {"path", "box", "error"}]}, with only the tasks the model has
(with --tasks, only those);
coordinates are original-image pixels (pixel centres at integers); a value that could not be
computed is null (never NaN). The --json file and every PNG are written atomically: an interrupted
run leaves the previous file as it was. Segmentation masks are written as single-channel PNGs of class
ids at full image size, named <image stem>_face<i>_<task>.png, into --masks DIR, else into
<OUT stem>_masks/ next to the --json file, else into the --overlays folder; with none of these the
masks are not written and the field is left out. Mask paths in the JSON are relative to the JSON
file's folder (absolute when the JSON goes to stdout). Without --json the JSON goes to stdout.
An input that does not exist, is not an image, is a broken symbolic link or a link loop (also
inside a folder), or has more than 100 megapixels (FACEMTL_MAX_IMAGE_PIXELS) is reported on stderr
and in "errors" and skipped; a face whose box is degenerate (not finite, outside the image, more
than 10 times its size) is left out and reported with its box. The exit status is then 1.
"""

# --detail's help, shared with the benchmarks that read real faces through the predictor
DETAIL_HELP = ("shrink each face crop to PX pixels a side and enlarge it back before the network, so the model "
               "sees no finer detail than that; 0: the crop as cut (default: the checkpoint's crop.detail when it "
               "has one, else 0)")
REFINER_HELP = ("point refiner: moves each of the five landmarks to where a small network finds it in a patch of the "
                "photo around it (trained on synthetic faces: facemtl train-refiner); auto: the one saved beside the "
                "checkpoint, as the bundled model's; none: the face model's own points; DIR: a refiner's folder "
                "(every stage in it), or one stage's .json (default: auto)")
RECROP_HELP = ("how a detected face's second crop is made (default passes): points: from its predicted landmarks, as "
               "training crops; turn: its calibrated box again, turned so the eyes are level, as a --boxes face "
               "(through the Haar detector 9 of 10 models read real faces a little better this way; "
               "docs/evidence.md) (default: points)")


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
    _predictor_arguments(p)
    p.add_argument("--json", type=Path, metavar="OUT.json",
                   help="write the results here, once every image is read: an interrupted run keeps the file as "
                        "it was (default: stdout)")
    p.add_argument("--overlays", type=Path, metavar="DIR", help="write one overlay PNG per image here")
    p.add_argument("--masks", type=Path, metavar="DIR", help="write the class-id mask PNGs here (see below)")
    p.add_argument("--boxes", type=Path, metavar="BOXES.json",
                   help='face boxes per image: {"path/to/img.jpg": [[x0, y0, x1, y1], ...]}; keys are paths '
                   "(relative to the boxes file or the current folder) or bare file names; images it does not "
                   "list fall back to --detector")
    p.add_argument("--tasks", type=_task_list, metavar="T1,T2",
                   help="comma-separated tasks to report, e.g. landmarks,emotion; the others are left out of "
                   "every output. Saves time: only these tasks' batch-norm streams and decoders run at the last "
                   "refinement iteration (earlier ones run every task, which the integrator reads), so with "
                   "--iterations 0 only their streams run at all (default: every task of the model)")
    p.set_defaults(func=run_predict)

    from facemtl.data import DATASETS  # light: the names only

    sc = subparsers.add_parser(
        "score",
        help="score a checkpoint on a labelled face dataset, read as predict reads photos",
        description="Run a checkpoint on the images of a labelled face dataset (any reader of docs/datasets.md) "
        "as `facemtl predict` runs it on photos: detect each face (or crop it from its labels, --crops labels), "
        "match the detection to the labelled face, and score the 5 points (NME, inter-ocular, in the original "
        "pixels; failures above 10%), the emotion (accuracy) and the parsing mask (F1 of pixel counts at the "
        "image's resolution, background outside the face crop) with the project's metrics. A labelled face the "
        "detector misses counts as a landmark failure, a wrong emotion and an all-background mask where the "
        "figures say so. Every figure is printed beside its trivial baseline on the same faces: the mean shape "
        "(for each face, the other faces' labelled points averaged in units of their squares), always answering "
        "the set's most common emotion, and an all-background mask and a mean face for parsing.",
    )
    sc.add_argument("dataset", choices=tuple(DATASETS), metavar="DATASET",
                    help=f"reader name: {', '.join(DATASETS)}")
    sc.add_argument("root", type=Path, metavar="ROOT", help="the dataset's folder, laid out as docs/datasets.md says")
    sc.add_argument("--split", help="split to score (default: test; 300w: full, its common and challenging "
                    "subsets; affectnet: val; emotion-folder: all, every image of the folders)")  # score.SPLITS
    sc.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                    help="a reader option (repeatable), e.g. --option points=5 for 300W, AFLW or WFLW (the model "
                    "predicts MTFL's 5 points); the reader names its options when one is wrong")
    sc.add_argument("--crops", choices=("detector", "labels"), default="detector",  # score.CROPS
                    help="detector: the face --detector finds (the first detection centred in the labelled face's "
                    "square; the largest where the set locates no face); labels: the square of the labelled "
                    "points (else of the labelled box) given as the face's box, the training crop (default: "
                    "detector)")
    sc.add_argument("--limit", type=int, metavar="N", help="score only the first N faces")
    _predictor_arguments(sc)
    sc.add_argument("--json", type=Path, metavar="OUT.json",
                    help="also write the results here, once every face is scored: the dataset, options, checkpoint "
                    "and crops, 'summary' (every figure printed, as fractions and F1 percentages) and 'faces', one "
                    "record per face (index, image id, found, labels, predictions, its NME); a value that could not "
                    "be computed is null")
    sc.add_argument("--overlays", type=Path, metavar="DIR",
                    help="write one PNG per face here, <index>.png (the index the summary's largest errors name): "
                    "the face's surroundings with each labelled point (green) joined to its prediction (red), "
                    "its NME and its emotion (labelled -> read)")
    sc.set_defaults(func=run_score)

    e = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (needs pip install 'facemtl[onnx]')",
        description="Write an ONNX graph from a batch of normalised face crops (B, 3, S, S; dynamic batch) to "
        "every task's decoded output of the last refinement iteration (points normalised to the crop, "
        "segmentation logits, category logits), one output per task. The checkpoint's JSON is stored in the "
        "metadata (key facemtl_info); how the predictor cuts a face's crops from a photo and maps the outputs "
        "back, with the checkpoint's numbers, under key crop. With a point refiner (by default the one beside "
        "the checkpoint, as the bundled model's), its graphs are written beside, one per stage, as "
        "OUT.refiner.onnx (stage 1) and OUT.refiner.stage2.onnx (stage 2, applied to stage 1's points): five "
        "uint8 patches of a face "
        "(B, 5, 48, 48, 3) to the five points' offsets (B, 5, 2); its metadata (key geometry) says how to cut "
        "the patches and read the offsets.",
    )
    e.add_argument("checkpoint", metavar="RUN_OR_CKPT",
                   help="run folder, model.safetensors or model.json; bundled: the model shipped with facemtl")
    e.add_argument("--onnx", required=True, type=Path, metavar="OUT.onnx", help="output file")
    e.add_argument("--iterations", type=int, metavar="N", help="refinement iterations to unroll (default: all)")
    e.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default: {OPSET})")
    e.add_argument("--refiner", default="auto", metavar="auto|none|DIR",
                   help="point refiner to export beside, as OUT.refiner.onnx (and OUT.refiner.stage2.onnx for a "
                   "second stage); auto: the one saved beside the "
                   "checkpoint, if any; none: no refiner; DIR: a refiner's folder or file (default: auto)")
    e.add_argument("--check", action="store_true", help="run the file(s) with onnxruntime and compare with PyTorch")
    e.set_defaults(func=run_export)



def _predictor_arguments(p) -> None:
    """The arguments that configure the :class:`~facemtl.inference.predictor.Predictor` (shared by
    ``predict`` and ``score``, which read photos the same way)."""
    p.add_argument("--checkpoint", metavar="RUN_OR_CKPT", action="append",
                   help="run folder, model.safetensors, model.json or ensemble folder (ensemble.json); given more "
                        "than once: an ensemble, every task's outputs averaged over the models (default: the bundled "
                        "model, trained on synthetic faces only; see README, 'Synthetic faces and the bundled model')")
    p.add_argument("--detector", choices=("opencv", "mediapipe", "none"), default="opencv",  # detect.DETECTORS
                   help="opencv: OpenCV's Haar frontal-face cascade (misses turned faces; also searches the image turned "
                   "by +-25 degrees (tilted heads) and drops windows it scores low (false faces); when it finds "
                   "none, searches the image padded (a face that fills the photo) and equalised too); "
                   "mediapipe: MediaPipe's BlazeFace, also finds turned and small faces, and looks again padded "
                   "when it finds none (needs pip install 'facemtl[detect]'); none: each "
                   "image is one face crop (default: opencv). Detected boxes are moved and scaled to the face "
                   "square training crops (calibrated per detector)")
    p.add_argument("--passes", type=int, choices=(1, 2), metavar="{1,2}",
                   help="crops per face: 2 re-crops each face from its predicted landmarks the way training crops, "
                   "turned so the eyes are level, and reports every task from that second crop; 1 keeps the first "
                   "crop (default: detected faces get the second crop only when their predicted eyes tilt by 5 "
                   "degrees or more; a --boxes face then gets its own box again, turned so the eyes are level; "
                   "--detector none gets one)")
    p.add_argument("--recrop", choices=RECROPS, default=RECROPS[0], help=RECROP_HELP)
    p.add_argument("--refiner", default="auto", metavar="auto|none|DIR", help=REFINER_HELP)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="test-time flip: run each face crop and its mirror image and average their outputs "
                   "(the mirror's left/right points and classes swapped back); --no-flip runs the model once "
                   "per crop, twice as fast (default: --flip)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="face crops per forward pass (default: 2 on the CPU, faster and lighter there; 16 on a GPU)")
    p.add_argument("--iterations", type=int, metavar="N",
                   help="refinement iterations to run (default: all the model was trained with)")
    p.add_argument("--margin", type=float, help="crop margin per side, as a fraction of the face box, "
                   f"0 to {MAX_CROP_MARGIN:g} (default: the checkpoint's, else {DEFAULT_CROP_MARGIN:g})")
    p.add_argument("--detail", type=int, metavar="PX", help=DETAIL_HELP)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps (default: cpu)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",  # predictor.BACKENDS
                   help="torch: the model run by PyTorch; onnxruntime: its ONNX graph (and the point refiner's; "
                   "exported in memory at start, no file written) in onnxruntime on the CPU, faster on CPU (needs "
                   "pip install 'facemtl[onnx]') (default: torch)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for the network (default: torch's default, one per core)")


def _task_list(text: str) -> list[str]:
    """``--tasks a,b`` -> ["a", "b"]; the names are checked against the model once it is loaded."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated task names, e.g. landmarks,emotion; got {text!r}")
    return names


class _RawEpilog(argparse.HelpFormatter):
    """Keep the epilog's line breaks (the JSON layout) but wrap the options as usual."""

    def _fill_text(self, text, width, indent):
        return "".join(indent + line for line in text.splitlines(keepends=True))


# ---------------------------------------------------------------------------------------
# predict


def _expand(inputs: list[str]) -> tuple[list[Path], bool, list[tuple[Path, str]]]:
    """Image paths in order (folders expanded), whether any folder was given, and the inputs
    that lead nowhere (broken symbolic links, loops) as ``(path, reason)``."""
    from facemtl.inference.predictor import link_problem, find_images

    paths: list[Path] = []
    problems: list[tuple[Path, str]] = []
    folder = False
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            folder = True
            paths.extend(find_images(p, problems))
        elif p.is_symlink() and link_problem(p) is not None:
            problems.append((p, link_problem(p)))
        else:
            paths.append(p)  # missing or unreadable files are reported when read
    return paths, folder, problems


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


def _face_json(face: dict, tasks, mask_paths: dict[str, str]) -> dict:
    from facemtl.kinds import kind_of

    out: dict = {"box": [round(v, 2) for v in face["box"]]}
    if "detection_score" in face:
        out["detection_score"] = round(face["detection_score"], 3)
    for task in tasks:
        value = kind_of(task).to_json(task, face[task.name], mask_paths.get(task.name))
        if value is not None:
            out[task.name] = value
    return out


def _check_predict_args(args) -> None:
    """Every argument and output place, checked before a model or an image is loaded."""
    from facemtl.inference.predictor import resolve_device
    from facemtl.models.checkpoint import check_crop_margin
    from facemtl.outputs import check_output_dir, check_output_file

    if args.margin is not None:
        check_crop_margin(args.margin, "--margin")
    if args.detail is not None and args.detail < 0:
        raise FacemtlError(f"--detail must be 0 (the crop as cut) or a side in pixels, got {args.detail}")
    if args.batch_size is not None and args.batch_size < 1:
        raise FacemtlError(f"--batch-size must be a positive number of face crops, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise FacemtlError(f"--threads must be a positive number, got {args.threads}")
    device = resolve_device(args.device, "--device")
    if args.backend == "onnxruntime":
        from facemtl.inference.export import require_onnx

        if device.type != "cpu":
            raise FacemtlError(f"--backend onnxruntime runs on the CPU; drop --device {args.device} "
                               "or use --backend torch")
        require_onnx("--backend onnxruntime")
    if args.json is not None:
        check_output_file(args.json, "--json")
    for name in ("overlays", "masks"):  # predict's folders (score writes none)
        if getattr(args, name, None) is not None:
            check_output_dir(getattr(args, name), f"--{name}")


def run_predict(args) -> int:
    import contextlib

    import cv2
    import torch
    from tqdm import tqdm

    from facemtl.inference.detect import BoxFile
    from facemtl.inference.render import draw_overlay
    from facemtl.kinds import KINDS, kind_of
    from facemtl.outputs import AtomicTextFile, check_output_dir, dumps, write_png

    _check_predict_args(args)
    box_file = BoxFile(args.boxes) if args.boxes else None
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # the command owns its process; onnxruntime follows it
    predictor = _load_predictor(args, args.tasks)
    tasks = predictor.tasks
    paths, folder, problems = _expand(args.inputs)

    json_dir = args.json.parent if args.json else None
    mask_dir = args.masks
    mask_tasks = [t for t in tasks if kind_of(t) is KINDS["segmentation"]]
    if mask_dir is None and args.json is not None:
        mask_dir = args.json.parent / f"{args.json.stem}_masks"
        if mask_tasks:
            check_output_dir(mask_dir, "masks folder")
    if mask_dir is None:
        mask_dir = args.overlays

    names = _Names()
    errors: list[dict] = []
    n_faces = n_skipped = n_left_out = n_read = 0
    bar = tqdm(total=len(paths), unit="img", desc="predict", disable=not (folder or len(paths) > 1), file=sys.stderr,
               dynamic_ncols=True)
    for path, reason in problems:
        bar.write(f"facemtl: error: {path}: {reason}", file=sys.stderr)
        errors.append({"path": str(path), "error": reason})
    # The JSON goes to a temporary file moved into place at the end: an abort keeps the old one.
    output = AtomicTextFile(args.json, "--json") if args.json else contextlib.nullcontext(sys.stdout)
    try:
        with output as out:
            out.write('{"images": [')
            first = True
            items = ((p, p) for p in paths)
            boxes_for = box_file.lookup if box_file else None
            for res in predictor.stream(items, boxes_for=boxes_for, keep_images=args.overlays is not None):
                bar.update(1)
                n_read += 1
                path: Path = res.key
                if res.error:
                    bar.write(f"facemtl: error: {res.error}", file=sys.stderr)
                    errors.append({"path": str(path), "error": res.error})
                    n_skipped += 1
                    continue
                for bad in res.face_errors:  # this face is left out; the image's others go on
                    bar.write(f"facemtl: error: {path}: {bad['error']}", file=sys.stderr)
                    errors.append({"path": str(path), "box": bad["box"], "error": bad["error"]})
                    n_left_out += 1
                stem = names(path)
                faces_json = []
                for i, face in enumerate(res.faces):
                    mask_paths: dict[str, str] = {}
                    if mask_dir is not None:
                        for task in mask_tasks:
                            mp = mask_dir / f"{stem}_face{i}_{task.name}.png"
                            write_png(mp, face[task.name])
                            mask_paths[task.name] = _relative(mp, json_dir)
                    faces_json.append(_face_json(face, tasks, mask_paths))
                n_faces += len(res.faces)
                if args.overlays is not None:
                    overlay = draw_overlay(res.image, res.faces, tasks)
                    write_png(args.overlays / f"{stem}.png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                record = {"path": str(path), "width": res.width, "height": res.height, "faces": faces_json}
                out.write(("\n  " if first else ",\n  ") + dumps(record))
                first = False
            out.write("\n], \"errors\": " + dumps(errors) + "}\n")
    except KeyboardInterrupt:
        if args.json:
            bar.close()
            kept = "kept as it was" if args.json.exists() else "not written"
            print(f"interrupted after {n_read} of {len(paths)} image(s): {args.json} {kept} (it is written only "
                  f"once every image is read)", file=sys.stderr)
        raise
    finally:
        bar.close()
    done = len(paths) - n_skipped
    summary = f"facemtl predict: {n_faces} face(s) in {done} image(s)"
    if n_skipped + len(problems):
        summary += f"; {n_skipped + len(problems)} input(s) skipped"
    if n_left_out:
        summary += f"; {n_left_out} face(s) left out"
    if args.json:
        summary += f"; results in {args.json}"
    print(summary, file=sys.stderr)
    if not paths and not problems:
        print("facemtl: error: no images found in the given inputs", file=sys.stderr)
        return 1
    return 1 if errors else 0


def _checkpoints(args) -> list:
    """--checkpoint's values, the bundled model when none is given (set on ``args``)."""
    if args.checkpoint is None:
        from facemtl.models.checkpoint import bundled_model

        args.checkpoint = [bundled_model()]
    return args.checkpoint


def _load_predictor(args, tasks):
    """The predictor the arguments of :func:`_predictor_arguments` describe (the bundled model
    when no --checkpoint is given), reporting only ``tasks`` (None: all)."""
    from facemtl.inference.predictor import Predictor

    return Predictor.from_checkpoint(_checkpoints(args), detector=args.detector, batch_size=args.batch_size,
                                     iterations=args.iterations, margin=args.margin, device=args.device,
                                     backend=args.backend, passes=args.passes, tasks=tasks,
                                     flip=args.flip, detail=args.detail, recrop=args.recrop, refiner=args.refiner)


def run_score(args) -> int:
    import itertools

    import torch
    from tqdm import tqdm

    import cv2

    from facemtl.config import apply_overrides
    from facemtl.data import load_dataset
    from facemtl.inference import score
    from facemtl.inference.render import draw_scored_face
    from facemtl.models.checkpoint import ensemble_members, read_model_info
    from facemtl.outputs import AtomicTextFile, dumps, write_png

    _check_predict_args(args)
    if args.limit is not None and args.limit < 1:
        raise FacemtlError(f"--limit must be a positive number of faces, got {args.limit}")
    options = apply_overrides({}, args.options)
    if args.split is None:
        args.split = score.SPLITS.get(args.dataset, score.DEFAULT_SPLIT)
    samples = load_dataset(args.dataset, args.root, args.split, **options)
    total = len(samples) if args.limit is None else min(args.limit, len(samples))
    if total == 0:
        raise FacemtlError(f"{args.dataset} at {args.root}, split {args.split!r}: no faces to score")
    first = samples[0]  # a set labels its faces alike: what it lacks is said before the model loads
    why = score.unscorable(first, args.dataset)
    if why:
        raise FacemtlError(why)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = [t["name"] for t in read_model_info(ensemble_members(_checkpoints(args))[0])["tasks"]]
    # only the tasks the set labels run at the last iteration
    labels = score.labelled(first)
    given = {score.POINTS_TASK: "landmarks" in first, score.EMOTION_TASK: labels["emotion"] is not None,
             score.PARSING_TASK: labels["parsing"] is not None}
    wanted = [n for n in names if given.get(n)]
    if not wanted:
        raise FacemtlError(f"the checkpoint's tasks ({', '.join(names)}) include none the set labels "
                           f"({', '.join(n for n in score.TASKS if given[n])}): nothing to score")
    predictor = _load_predictor(args, wanted)
    checkpoints = ", ".join(str(c) for c in args.checkpoint)
    title = (f"facemtl score {args.dataset} {args.root} (split {args.split}; {checkpoints}; crops: "
             + ("labels" if args.crops == "labels" else "whole images" if args.detector == "none"
                else f"detector {args.detector}") + ")")
    bar = tqdm(total=total, unit="face", desc="score", file=sys.stderr, dynamic_ncols=True)
    rows: list[dict] = []
    try:
        overlays = args.overlays is not None
        for row in score.score_faces(predictor, itertools.islice(samples, total), args.crops, keep_images=overlays):
            image = row.pop("image", None)
            if overlays and image is not None:
                tile = draw_scored_face(image, row)
                write_png(args.overlays / f"{row['index']:05d}.png", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
            rows.append(row)
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        if rows:  # what was scored is not lost: its figures, marked as partial
            print(score.format_summary(score.summary(rows), f"{title}\nINTERRUPTED: the first {len(rows)} of "
                                                              f"{total} face(s) only"))
        print(f"interrupted after {len(rows)} of {total} face(s)" + (f"; {args.json} not written" if args.json else ""),
              file=sys.stderr)
        raise
    finally:
        bar.close()
    result = score.summary(rows)
    print(score.format_summary(result, title))
    if args.json is not None:
        record = {"dataset": args.dataset, "root": str(args.root), "split": args.split, "options": options,
                  "checkpoint": [str(c) for c in args.checkpoint], "crops": args.crops, "detector": args.detector,
                  "refiner": args.refiner if predictor.refiner is not None else "none", "summary": result,
                  "faces": [score.row_json(r) for r in rows]}
        with AtomicTextFile(args.json, "--json") as out:
            out.write(dumps(record) + "\n")
    return 0


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
    from facemtl.files import atomic_write_files
    from facemtl.inference.export import (check_opset, onnx_model, refiner_onnx_model, refiner_onnx_path,
                                          require_onnx)
    from facemtl.inference.predictor import check_refiner_fits, resolve_refiner
    from facemtl.models.checkpoint import bundled_model, load_model
    from facemtl.outputs import check_output_file

    require_onnx()  # fail before loading anything when the extra is missing
    check_opset(args.opset)
    if args.onnx.suffix.lower() != ".onnx":
        raise FacemtlError(f"--onnx output must end in .onnx, got {args.onnx}")
    check_output_file(args.onnx, "--onnx")
    checkpoint = bundled_model() if args.checkpoint == "bundled" else args.checkpoint
    model, info = load_model(checkpoint)
    refiner = resolve_refiner(args.refiner, checkpoint, model)
    stages = list(refiner.stages) if refiner is not None else []
    if stages:
        check_refiner_fits(model)
        for k in range(1, len(stages) + 1):
            check_output_file(refiner_onnx_path(args.onnx, k), "the refiner's graph")
    files = [(args.onnx, onnx_model(model, info, args.iterations, args.opset))]
    files += [(refiner_onnx_path(args.onnx, k), refiner_onnx_model(stage, args.opset, k, len(stages)))
              for k, stage in enumerate(stages, 1)]
    # every graph built before any is written, and written as one set: all or nothing
    atomic_write_files([(path, proto.SerializeToString()) for path, proto in files])
    print(f"facemtl export: wrote {args.onnx} (outputs: {', '.join(t.name for t in model.tasks)}; how to crop faces "
          "for it: its metadata, key crop)", file=sys.stderr)
    for k, (path, _) in enumerate(files[1:], 1):
        print(f"facemtl export: wrote {path} (point refiner stage {k} of {len(stages)}: patches -> offsets; how to "
              "cut them: its metadata, key geometry)", file=sys.stderr)
    if args.check:
        from facemtl.inference.export import compare_refiner_with_torch, compare_with_torch

        worst = compare_with_torch(model, args.onnx, iterations=args.iterations, size=int(info.get("input_size", 128)))
        for k, (stage, (path, _)) in enumerate(zip(stages, files[1:]), 1):
            worst[f"refiner stage {k} offsets"] = compare_refiner_with_torch(stage, path)
        print("facemtl export: onnxruntime vs PyTorch, largest difference per output: "
              + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()), file=sys.stderr)
    return 0
