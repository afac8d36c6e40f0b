"""Which part of a real face makes a model misread its emotion? A band swap between real posed
photos and synthetic faces, both in the training crop.

Why: trained on synthetic faces only, models read most real NEUTRAL faces of the posed set
(``posed_expressions.py``) as Disgust or Angry, while they read synthetic neutral faces right.
Neither grey photos, blur, sharpening, darker or thicker synthetic brows, nor any single
synthetic action unit at moderate strength moves them much (docs/evidence.md), so the cue
is something real faces have. Here each real face is cut to the training crop
(:func:`~facemtl.inference.alignment.upright_crop` of the model's own landmarks, the
checkpoint's margin) and one horizontal band of rows (forehead, brows, eyes, nose, mouth;
fractions of the crop) is swapped with synthetic faces of the same label cut the same way (the
training crop of their own five points; the renderer frames its faces lower and smaller), both
ways:

* a real band in synthetic faces: the band that carries the misreading turns synthetic neutral
  faces into Disgust / Angry;
* a synthetic band in real faces: the band whose real rows carry it gives the real faces back
  to Neutral;
* the seam control: each synthetic face with the band of another synthetic face. A swap
  leaves two seams across the whole crop (edges a model may read as creases); what the control
  misreads is the seam's part, and only misreadings beyond it speak of the real rows.

Each synthetic face gets the band of one real face, in turn (``--per-real`` faces per real one).
The model reads crops as the predictor does (its test-time flip); counts, not probabilities.

    python benchmarks/posed_expressions.py --fetch DIR       # once
    python benchmarks/band_swap.py --photos DIR [RUN_DIR | bundled ...] [--label Neutral]
        [--per-real 4] [--seed 7] [--style studio]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from emotion_reading import load_predictor, model_and_renderer_arguments, read_emotions

# Rows of the training crop (fractions of its side): where a 128-px crop has the hairline to
# the brows, brows, eyes, nose and mouth (neighbouring bands overlap by a few rows).
BANDS = {"forehead": (0.0, 0.125), "brows": (0.125, 0.30), "eyes": (0.28, 0.44), "nose": (0.44, 0.625),
         "mouth": (0.59, 0.78)}


def band_rows(band: tuple[float, float], size: int) -> slice:
    """The rows of a ``size``-pixel crop that ``band`` (fractions) covers."""
    return slice(int(round(band[0] * size)), int(round(band[1] * size)))


def swap_band(dst: np.ndarray, src: np.ndarray, rows: slice) -> np.ndarray:
    """A copy of the (N, S, S, 3) images ``dst`` with ``rows`` taken from ``src`` (cycled when shorter)."""
    out = dst.copy()
    out[:, rows] = src[np.arange(len(dst)) % len(src)][:, rows]
    return out


def real_crops(pred, photos: Path, label: str) -> tuple[np.ndarray, list[str]]:
    """Training crops (N, S, S, 3) of the posed set's faces labelled ``label`` that the model
    finds (the largest face), and their names."""
    from posed_expressions import face_image, labels

    from facemtl.data.transforms import warp_image
    from facemtl.inference.alignment import largest, upright_crop

    task = pred.recrop_task
    if task is None:
        raise SystemExit("band_swap needs a model with a 5-point landmark task (to cut the training crop)")
    crops, names = [], []
    for face in labels()["faces"]:
        if face["emotion"] != label:
            continue
        image = face_image(photos, face)
        result = pred.predict_image(image)
        i = largest([f["detection_box"] for f in result.faces])
        if i is not None:
            matrix, _ = upright_crop(result.faces[i][task.name], pred.input_size, pred.margin)
            crops.append(warp_image(image, matrix, pred.input_size))
            names.append(Path(face["image"]).name)
    if not crops:
        raise SystemExit(f"no face labelled {label!r} found in the posed set")
    return np.stack(crops), names


def synthetic_faces(n: int, size: int, seed: int, style: str, emotion: int, margin: float | None = None,
                    **options) -> np.ndarray:
    """The first ``n`` synthetic faces of ``seed`` whose emotion is ``emotion``, (n, S, S, 3), as
    rendered or, with ``margin``, cut as the real ones are: the training crop (``upright_crop``)
    of their own five points. ``options`` go to ``render_face`` (e.g. ``brow_drop``). Why the
    crop: the renderer frames its faces lower and smaller than that crop frames any face (eyes
    about 4 rows lower at 128 px), and rows swapped between differently framed faces move the
    parts (real eyes pasted higher, under synthetic brows, look like lowered brows: the first
    version of this benchmark did that)."""
    from facemtl.data.synth import render_face
    from facemtl.data.transforms import warp_image
    from facemtl.inference.alignment import upright_crop

    faces, index = [], 0
    while len(faces) < n:
        face = render_face(seed, index, style, size, **options)
        if face["emotion"] == emotion:
            faces.append(face["image"] if margin is None
                         else warp_image(face["image"], upright_crop(face["landmarks"], size, margin)[0], size))
        index += 1
    return np.stack(faces)


def tally(preds: np.ndarray, classes, label: str) -> str:
    """'Neutral 7/11: Disgust 3, Angry 1': how many read as ``label``, then the others, most first."""
    counts = Counter(classes[k] for k in preds)
    kept = counts.pop(label, 0)
    return f"{label} {kept}/{len(preds)}" + (": " + ", ".join(f"{c} {v}" for c, v in counts.most_common()) if counts else "")


def probe(pred, photos: Path, label: str, per_real: int, seed: int, style: str) -> list[str]:
    """The report's lines for one model."""
    classes = list(pred.model.task("emotion").class_names)
    if label not in classes:
        raise SystemExit(f"--label {label!r} is not one of the model's emotions: {', '.join(classes)}")
    real, _ = real_crops(pred, photos, label)
    synth = synthetic_faces(per_real * len(real), pred.input_size, seed, style, classes.index(label), pred.margin)
    others = np.roll(synth, 1, axis=0)  # each synthetic face gets the band of the next one: the seam alone
    lines = [f"real {label} faces as read: {tally(read_emotions(pred, real), classes, label)}",
             f"synthetic {label} faces ({style}, seed {seed}, in the same crop) as read: {tally(read_emotions(pred, synth), classes, label)}",
             f"{'band':9s} {'rows':7s} {'real band in synthetic faces':44s} {'seam control: another synthetic band':44s} "
             "synthetic band in real faces"]
    for name, band in BANDS.items():
        rows = band_rows(band, pred.input_size)
        into_synth = tally(read_emotions(pred, swap_band(synth, real, rows)), classes, label)
        seam = tally(read_emotions(pred, swap_band(synth, others, rows)), classes, label)
        into_real = tally(read_emotions(pred, swap_band(real, synth, rows)), classes, label)
        lines.append(f"{name:9s} {rows.start:3d}-{rows.stop:<3d} {into_synth:44s} {seam:44s} {into_real}")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_and_renderer_arguments(ap)
    ap.add_argument("--photos", type=Path, required=True, metavar="DIR", help="the folder posed_expressions.py --fetch filled")
    ap.add_argument("--label", default="Neutral", help="the real faces to probe, by their label (default Neutral)")
    ap.add_argument("--per-real", type=int, default=4, help="synthetic faces per real face (default 4)")
    args = ap.parse_args(argv)
    if args.per_real < 1:
        ap.error("--per-real must be >= 1")
    for ckpt in args.checkpoints:
        pred = load_predictor(ckpt)
        print(f"{ckpt}:")
        for line in probe(pred, args.photos, args.label, args.per_real, args.seed, args.style):
            print("  " + line, flush=True)


if __name__ == "__main__":
    main()
