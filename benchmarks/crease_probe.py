"""Does a model read expression creases as the emotion? The same synthetic faces read three
times: with the creases as the renderer draws them (where the emotion's action unit is strong),
with none, and with every crease on every face (``render_face(..., creases=0.0 / 1.0)``; only
those pixels change).

Why: the renderer draws a nasolabial fold only on smiles, frown lines on anger (and strong
disgust), nose wrinkles on disgust and forehead lines on surprise, so a crease alone tells the
emotion on synthetic faces, while real faces show folds and lines at rest. A model that learnt
the shortcut loses Angry and Disgust without the creases and reads neutral faces as Disgust or
Happy with them. Trained with ``data.1.creases`` (creases drawn whatever the emotion) it
cannot rely on them.

    python benchmarks/crease_probe.py [RUN_DIR | bundled ...] [--n 350] [--seed 7] [--style studio]

Faces are the model's input size, fed whole (the renderer's framing is the training crop's),
through the predictor's forward pass (its test-time flip included). Prints per condition the accuracy, the recall of each emotion and what
true Neutral, Sad and Fear faces are read as.
"""

from __future__ import annotations

import argparse

import numpy as np
from emotion_reading import load_predictor, model_and_renderer_arguments, read_emotions

CONDITIONS = {"as drawn": None, "none": 0.0, "all": 1.0}  # the ``creases`` argument of render_face


def read(predictor, n: int, seed: int, style: str, creases, batch: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """(emotion labels, predicted emotions) of faces ``0..n-1`` of ``seed`` with ``creases``."""
    from facemtl.data.synth import render_face

    faces = [render_face(seed, i, style, predictor.input_size, creases=creases) for i in range(n)]
    return np.array([f["emotion"] for f in faces]), read_emotions(predictor, np.stack([f["image"] for f in faces]), batch)


def report(name: str, labels: np.ndarray, preds: np.ndarray, classes) -> str:
    """One condition: accuracy, per-class recall, and where three classes go."""
    recall = "  ".join(f"{c[:4]} {np.mean(preds[labels == k] == k):.2f}" if (labels == k).any() else f"{c[:4]} -"
                       for k, c in enumerate(classes))
    lines = [f"{name:9s} accuracy {np.mean(preds == labels):.3f}  {recall}"]
    for true in ("Neutral", "Sad", "Fear"):
        k = classes.index(true)
        read_as = np.bincount(preds[labels == k], minlength=len(classes))
        lines.append(f"   true {true} ({read_as.sum()}) read as: "
                     + ", ".join(f"{classes[j]} {c}" for j, c in enumerate(read_as) if c))
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_and_renderer_arguments(ap)
    ap.add_argument("--n", type=int, default=350, help="faces per condition (default 350, about 50 per emotion)")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be >= 1")
    for ckpt in args.checkpoints:
        # tasks=: a checkpoint without an emotion task stops here with the model's task list
        pred = load_predictor(ckpt, detector="none", tasks=["emotion"])
        classes = list(pred.model.task("emotion").class_names)
        print(f"{ckpt}: {args.n} {args.style} faces of seed {args.seed}")
        for name, creases in CONDITIONS.items():
            print(report(name, *read(pred, args.n, args.seed, args.style, creases), classes))


if __name__ == "__main__":
    main()
