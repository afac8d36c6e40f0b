"""How high the brows sit over the eyes in synthetic faces and in real photos, and whether a model
reads lowered brows as anger or disgust.

Why: trained on synthetic faces only, models read most real neutral faces as Disgust or Angry.
The renderer's anger and disgust lower the brows, so if real brows sit lower over the eyes at
rest than synthetic ones, a real neutral face looks like a synthetic frown.

The **brow-eye gap**: per side, the mean row of the brow's mask pixels to the mean row of the
eye's, averaged over both sides and divided by the distance between the two eyes' centres
(the inter-ocular distance of the masks). Measured on

* synthetic faces, from the renderer's own masks, per emotion (``--brow-drop``: also with the
  renderer's per-subject lower brows, ``render_face(brow_drop=...)``);
* the real set of ``real_faces.py`` (``--real-photos``): its part outlines (traced from a
  face-mesh fit, not by hand), and each model's own parsing of the same faces cut to its
  training crop by their labelled five points;
* the posed set of ``posed_expressions.py`` (``--posed-photos``): each model's parsing of the
  faces it finds, in its training crop;

and, per model, how it reads synthetic neutral faces whose brows sit lower (``brow_drop`` limits
0, 0.1 and 0.2: each subject's brows lowered by its own draw up to the limit).

    python benchmarks/brow_height.py [RUN_DIR | bundled ...] [--real-photos DIR] [--posed-photos DIR]
        [--n 300] [--seed 7] [--style studio] [--brow-drop 0.12]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from emotion_reading import load_predictor, model_and_renderer_arguments, read_emotions

BROWS, EYES = (2, 3), (4, 5)  # Helen ids: left/right brow, left/right eye (one side each, in order)
READ_DROPS = (0.0, 0.1, 0.2)


def brow_eye_gap(mask: np.ndarray) -> float:
    """The brow-eye gap of one (H, W) Helen mask (see the module docstring); NaN when a brow or an
    eye has fewer than 3 pixels."""
    centres = []
    for brow, eye in zip(BROWS, EYES):
        b, e = np.argwhere(mask == brow), np.argwhere(mask == eye)
        if len(b) < 3 or len(e) < 3:
            return float("nan")
        centres.append((b.mean(0), e.mean(0)))
    iod = float(np.linalg.norm(centres[0][1] - centres[1][1]))
    return float(np.mean([e[0] - b[0] for b, e in centres]) / iod)


def summary(gaps) -> str:
    """'0.281 +- 0.042 (n 67)' over the gaps that are numbers."""
    g = np.asarray(gaps, np.float64)
    g = g[~np.isnan(g)]
    return f"{g.mean():.3f} +- {g.std():.3f} (n {len(g)})" if len(g) else "no face with both brows and eyes"


def synthetic_gaps(n: int, size: int, seed: int, style: str, brow_drop=None) -> dict[str, list[float]]:
    """Brow-eye gaps of the first ``n`` synthetic faces, by emotion name, from their own masks."""
    from facemtl.data.synth import EMOTIONS, render_face

    out: dict[str, list[float]] = {}
    for i in range(n):
        face = render_face(seed, i, style, size, brow_drop=brow_drop)
        out.setdefault(EMOTIONS[face["emotion"]], []).append(brow_eye_gap(face["parsing"]))
    return out


def real_set(photos: Path):
    """The real set's faces that have part outlines: their emotion labels ('' when none), the gaps
    of their outlines, and (photo, labelled five points) to cut crops from."""
    import cv2
    import real_faces as rf

    labels, gaps, faces = [], [], []
    for image, labelled in rf.faces_by_image().items():
        photo = cv2.cvtColor(cv2.imread(str(rf.photo_path(photos, image))), cv2.COLOR_BGR2RGB)
        for face in labelled:
            if face["parts"]:
                labels.append(face.get("emotion") or "")
                gaps.append(brow_eye_gap(rf.part_mask(face["parts"], *photo.shape[:2])))
                faces.append((photo, np.asarray(face["landmarks"], np.float64)))
    return labels, gaps, faces


def training_crops(faces, size: int, margin: float) -> np.ndarray:
    """(N, size, size, 3) training crops of (photo, five points) pairs."""
    from facemtl.data.transforms import warp_image
    from facemtl.inference.alignment import upright_crop

    return np.stack([warp_image(photo, upright_crop(points, size, margin)[0], size) for photo, points in faces])


def parsed_gaps(pred, crops: np.ndarray, batch: int = 32) -> list[float]:
    """Brow-eye gaps of the model's own parsing of training-frame crops."""
    import torch

    out = []
    for start in range(0, len(crops), batch):
        with torch.no_grad():
            logits = pred.forward(pred.normalise(np.asarray(crops[start:start + batch])), ("parsing",))["parsing"]
        out += [brow_eye_gap(m) for m in logits.argmax(1).numpy()]
    return out


def by_label(labels, gaps) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for label, gap in zip(labels, gaps):
        out.setdefault(label or "unlabelled", []).append(gap)
    return out


def lowered_brow_readings(pred, n: int, seed: int, style: str) -> list[str]:
    """How the model reads the first ``n`` synthetic neutral faces at each :data:`READ_DROPS` limit."""
    from band_swap import synthetic_faces, tally

    from facemtl.data.synth import EMOTIONS

    classes = list(pred.model.task("emotion").class_names)
    return [f"brow_drop {drop:.2f}: " + tally(read_emotions(pred, synthetic_faces(
        n, pred.input_size, seed, style, EMOTIONS.index("Neutral"), brow_drop=drop)), classes, "Neutral")
        for drop in READ_DROPS]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_and_renderer_arguments(ap, checkpoints=[])
    ap.add_argument("--real-photos", type=Path, metavar="DIR", help="the folder real_faces.py --fetch filled")
    ap.add_argument("--posed-photos", type=Path, metavar="DIR", help="the folder posed_expressions.py --fetch filled")
    ap.add_argument("--n", type=int, default=300, help="synthetic faces measured (default 300); a sixth of it read per model")
    ap.add_argument("--size", type=int, default=128, help="synthetic image size for the masks (default 128)")
    ap.add_argument("--brow-drop", type=float, default=0.12, help="also measure synthetic faces with this brow_drop (default 0.12)")
    args = ap.parse_args(argv)
    if args.n < 6:
        ap.error("--n must be >= 6")
    print(f"brow-eye gap, fraction of the inter-ocular distance (mean +- sd); synthetic: {args.n} {args.style} faces of seed {args.seed}")
    for drop in (None, args.brow_drop):
        for emotion, gaps in sorted(synthetic_gaps(args.n, args.size, args.seed, args.style, drop).items()):
            print(f"  synthetic, brow_drop {drop}: {emotion:9s} {summary(gaps)}", flush=True)
    preds = [(name, load_predictor(name)) for name in args.checkpoints]
    if args.real_photos:
        labels, outline, faces = real_set(args.real_photos)
        for label, gaps in sorted(by_label(labels, outline).items()):
            print(f"  real set, outlines: {label:11s} {summary(gaps)}")
        for name, pred in preds:
            parsed = parsed_gaps(pred, training_crops(faces, pred.input_size, pred.margin))
            for label, gaps in sorted(by_label(labels, parsed).items()):
                print(f"  real set, {name} parsing: {label:11s} {summary(gaps)}", flush=True)
    for name, pred in preds:
        if args.posed_photos:
            from band_swap import real_crops
            from posed_expressions import labels as posed_labels

            for label in sorted({face["emotion"] for face in posed_labels()["faces"]}):
                try:
                    crops, _ = real_crops(pred, args.posed_photos, label)
                except SystemExit:  # none of that label found
                    continue
                print(f"  posed set, {name} parsing: {label:9s} {summary(parsed_gaps(pred, crops))}", flush=True)
        for line in lowered_brow_readings(pred, args.n // 6, args.seed, args.style):
            print(f"  {name} reads synthetic neutral faces with {line}", flush=True)


if __name__ == "__main__":
    main()
