"""How a checkpoint does on a real photograph: the astronaut portrait in ../shared/testdata,
against the project's hand-labelled five points (benchmarks/data/astronaut_5points.json).

One photo is an anecdote, not a benchmark: it catches a model that has not transferred at all
(a shrunken mean face, flat emotion probabilities), not small differences. Prints, per
checkpoint: the face box found, the 5-point NME (inter-ocular, hand labels; about 3.5% of it
is label noise), the mouth-corner distance (labelled 45.5 px), the emotion probabilities (the
face smiles: Happy), the trivial baseline (the synthetic landmark source's mean shape placed in the
same face square: with --passes 1 that square is the calibrated detector box, independent of the
model; with two passes it is the model's own re-crop), and writes an overlay PNG per checkpoint
with --out.

    python benchmarks/real_photo.py RUN_DIR [RUN_DIR ...] [--passes 1|2] [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
LABELS = ROOT / "data" / "astronaut_5points.json"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="run folders (or model.safetensors files)")
    ap.add_argument("--passes", type=int, choices=(1, 2), help="crops per face (default: the predictor's)")
    ap.add_argument("--detector", default="opencv", help="face detector (default: opencv)")
    ap.add_argument("--out", type=Path, help="write an overlay PNG per checkpoint here")
    args = ap.parse_args(argv)
    for ckpt in args.checkpoints:
        score = astronaut(ckpt, args.passes, args.detector)
        print(f"{ckpt}: {score['faces']} face(s)")
        if not score["faces"]:
            continue
        print("    " + "\n    ".join(score["lines"]))
        if args.out:
            from facemtl.data.images import read_image
            from facemtl.inference.render import draw_overlay
            from facemtl.outputs import write_png

            args.out.mkdir(parents=True, exist_ok=True)
            name = Path(ckpt).resolve().name
            write_png(args.out / f"astronaut_{name}.png",
                      draw_overlay(read_image(score["image"]), score["result"].faces, score["tasks"]))


def astronaut(ckpt, passes=None, detector: str = "opencv") -> dict:
    """One checkpoint on the astronaut photo: ``faces`` found, and for the first face ``nme`` (%),
    ``mouth`` (px), ``emotion`` (label), ``baseline_nme`` (the mean shape in the same square, %),
    the printable ``lines``; also the predictor's ``result``, ``tasks`` and the ``image`` path."""
    from facemtl.inference.predictor import Predictor

    labels = json.loads(LABELS.read_text())
    image_path = (ROOT.parent / labels["image"]).resolve()
    truth = np.asarray(labels["landmarks"], np.float64)
    iod = np.linalg.norm(truth[0] - truth[1])
    pred = Predictor.from_checkpoint(ckpt, detector=detector, passes=passes)
    result = pred.predict_image(str(image_path))
    out = {"faces": len(result.faces), "result": result, "tasks": pred.tasks, "image": image_path, "lines": []}
    if not result.faces:
        return out
    face = result.faces[0]
    line = out["lines"]
    line.append(f"box {np.round(np.asarray(face['box']), 1).tolist()}")
    if "landmarks" in face:
        points = np.asarray(face["landmarks"], np.float64).reshape(-1, 2)
        out["nme"] = np.linalg.norm(points - truth, axis=1).mean() / iod * 100
        out["mouth"] = np.linalg.norm(points[3] - points[4])
        line.append(f"NME {out['nme']:.1f}% (per point {np.round(np.linalg.norm(points - truth, axis=1) / iod * 100, 1).tolist()}), "
                    f"mouth corners {out['mouth']:.1f} px apart (labelled {np.linalg.norm(truth[3] - truth[4]):.1f})")
    if "emotion" in face:
        probs = face["emotion"]["probs"]
        top = sorted(probs.items(), key=lambda kv: -kv[1])[:3]
        out["emotion"] = face["emotion"]["label"]
        line.append(f"emotion {face['emotion']['label']} ({', '.join(f'{k} {v:.2f}' for k, v in top)}; "
                    f"labelled {labels['emotion']})")
    if "landmarks" in face:
        # trivial baseline: the synthetic landmark source's mean shape, placed in the same face
        # square the model's outputs were cropped from
        base = mean_shape_in(face["box"], pred.info) - truth
        out["baseline_nme"] = np.linalg.norm(base, axis=1).mean() / iod * 100
        line.append(f"mean shape in the same square: NME {out['baseline_nme']:.1f}%")
    return out


def mean_shape_in(square, info: dict) -> np.ndarray:
    """The synthetic landmark source's mean 5 points (:func:`unit_mean_shape`) mapped into ``square``."""
    src = next(s for s in info["sources"] if "landmarks" in s["tasks"])
    q = np.asarray(square, np.float64)
    return unit_mean_shape(src.get("style", "snapshot"), src.get("seed", 0)) * (q[2] - q[0]) + q[:2]


@functools.lru_cache(maxsize=None)
def unit_mean_shape(style: str, seed: int, n: int = 500) -> np.ndarray:
    """The mean of n synthetic faces' 5 points, in units of each face's own training square
    (:func:`facemtl.inference.alignment.landmark_square`); rendered once per source, not per checkpoint."""
    from facemtl.data.synth import SyntheticFaces
    from facemtl.inference.alignment import landmark_square

    faces = SyntheticFaces(n, style=style, seed=seed, size=128)
    unit = []
    for i in range(n):
        pts = np.asarray(faces[i]["landmarks"], np.float64)
        q = landmark_square(pts)
        unit.append((pts - q[:2]) / (q[2] - q[0]))
    return np.mean(unit, axis=0)


if __name__ == "__main__":
    main()
