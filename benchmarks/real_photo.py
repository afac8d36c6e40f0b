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

``--perturb`` also scores the photo under conditions an in-the-wild set holds (head roll, a
small face, a mirror image, blur, noise, JPEG, dark, over-exposed and grey images, occluded
eyes or mouth), each made from the photo with its five points moved exactly as the pixels:
a proxy for how the model copes with real photos taken badly, on real skin, beside the mean
shape in the same square and with the faces the detector missed counted.

    python benchmarks/real_photo.py RUN_DIR [RUN_DIR ...] [--passes 1|2] [--out DIR] [--perturb]
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
    from facemtl.inference.cli import DETAIL_HELP

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="run folders or model files; 'bundled': the package's model")
    ap.add_argument("--passes", type=int, choices=(1, 2), help="crops per face (default: the predictor's)")
    ap.add_argument("--detector", default="opencv", help="face detector (default: opencv)")
    ap.add_argument("--detail", type=int, metavar="PX", help=DETAIL_HELP)
    ap.add_argument("--out", type=Path, help="write an overlay PNG per checkpoint here")
    ap.add_argument("--perturb", action="store_true", help="also score the photo under each condition of CONDITIONS")
    args = ap.parse_args(argv)
    for ckpt in args.checkpoints:
        if args.perturb:
            perturbation_table(ckpt, args.passes, args.detector, args.detail)
            continue
        score = astronaut(ckpt, args.passes, args.detector, args.detail)
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


def astronaut(ckpt, passes=None, detector: str = "opencv", detail: int | None = None) -> dict:
    """One checkpoint on the astronaut photo: ``faces`` found, and for the first face ``nme`` (%),
    ``mouth`` (px), ``emotion`` (label), ``baseline_nme`` (the mean shape in the same square, %),
    the printable ``lines``; also the predictor's ``result``, ``tasks`` and the ``image`` path."""
    from emotion_reading import load_predictor

    labels = json.loads(LABELS.read_text())
    image_path = (ROOT.parent / labels["image"]).resolve()
    pred = load_predictor(ckpt, detector=detector, passes=passes, detail=detail)
    out = score_photo(pred, str(image_path), np.asarray(labels["landmarks"], np.float64), labels["emotion"])
    out["image"] = image_path
    return out


def score_photo(pred, image, truth: np.ndarray, emotion: str) -> dict:
    """:func:`astronaut`'s scores of one image (path or RGB array) with its five points ``truth``."""
    iod = np.linalg.norm(truth[0] - truth[1])
    result = pred.predict_image(image)
    out = {"faces": len(result.faces), "result": result, "tasks": pred.tasks, "lines": []}
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
                    f"labelled {emotion})")
    if "landmarks" in face:
        # trivial baseline: the synthetic landmark source's mean shape, placed in the same face
        # square the model's outputs were cropped from
        base = mean_shape_in(face["box"], pred.info) - truth
        out["baseline_nme"] = np.linalg.norm(base, axis=1).mean() / iod * 100
        line.append(f"mean shape in the same square: NME {out['baseline_nme']:.1f}%")
    return out


# name -> what is done to the photo (an RGB array), with its five points, by :func:`perturbed`
CONDITIONS = {
    "original": "the photo as it is (inter-ocular distance 43 px)",
    "mirror": "flipped left-right (points swapped to stay image-left first)",
    "roll +15": "rotated 15 degrees about the face centre",
    "roll -15": "rotated -15 degrees",
    "roll +30": "rotated 30 degrees",
    "roll -30": "rotated -30 degrees",
    "small 0.6": "the image scaled by 0.6 (inter-ocular 26 px)",
    "small 0.4": "scaled by 0.4 (inter-ocular 17 px)",
    "large 2.0": "scaled by 2 (inter-ocular 86 px)",
    "blur 2": "Gaussian blur, sigma 2 px",
    "blur 4": "Gaussian blur, sigma 4 px (features smeared)",
    "noise 20": "Gaussian sensor noise, sigma 20 grey levels, per channel",
    "jpeg 10": "JPEG at quality 10",
    "dark": "exposure x0.25 (an underexposed indoor shot)",
    "bright": "exposure x2.2, clipped (over-exposed)",
    "low contrast": "contrast x0.35 about mid-grey",
    "grey": "greyscale",
    "eyes covered": "a dark band over both eyes (sunglasses-like)",
    "mouth covered": "a skin-toned band over the mouth (a hand)",
}


def turned(image: np.ndarray, points: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``(image, points)`` turned by ``degrees`` (counter-clockwise on screen) about the points'
    mean, on the same canvas with mirrored edges (also ``detector_alignment.py --tilt``)."""
    import cv2

    from facemtl.data.transforms import warp_points

    matrix = cv2.getRotationMatrix2D(tuple(np.mean(points, 0)), degrees, 1.0)
    h, w = image.shape[:2]
    out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out, warp_points(points, matrix).astype(np.float64)


def perturbed(image: np.ndarray, truth: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image, points)`` of the photo under condition ``name`` of :data:`CONDITIONS`
    (deterministic: the noise has a fixed seed)."""
    import cv2

    from facemtl.data.transforms import hflip

    img, pts = image.copy(), truth.copy()
    h, w = img.shape[:2]
    kind, _, amount = name.partition(" ")
    value = float(amount) if amount.lstrip("+-").replace(".", "").isdigit() else None
    if name == "original":
        pass
    elif kind == "mirror":  # the training flip: left and right points swap (image-left stays first)
        flipped = hflip({"image": img, "landmarks": pts}, {})
        img, pts = flipped["image"], flipped["landmarks"].astype(np.float64)
    elif kind == "roll":  # at 30 degrees image-left stays image-left
        img, pts = turned(img, pts, value)
    elif kind in ("small", "large"):
        size = (int(round(w * value)), int(round(h * value)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if value < 1 else cv2.INTER_LINEAR)
        pts = (pts + 0.5) * (size[0] / w) - 0.5
    elif kind == "blur":
        img = cv2.GaussianBlur(img, (0, 0), value)
    elif kind == "noise":
        noise = np.random.default_rng(0).normal(0, value, img.shape)
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
    elif kind == "jpeg":
        ok, enc = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(value)])
        img = cv2.imdecode(enc, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    elif name == "dark":
        img = (img * 0.25).astype(np.uint8)
    elif name == "bright":
        img = np.clip(img * 2.2, 0, 255).astype(np.uint8)
    elif name == "low contrast":
        img = np.clip(128 + (img.astype(np.float64) - 128) * 0.35, 0, 255).astype(np.uint8)
    elif name == "grey":
        img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[:, :, None], 3, 2)
    elif name in ("eyes covered", "mouth covered"):
        iod = np.linalg.norm(truth[0] - truth[1])
        centre = truth[:2].mean(0) if name == "eyes covered" else truth[3:].mean(0)
        half = np.array([0.95, 0.22]) * iod
        colour = (20, 20, 24) if name == "eyes covered" else tuple(int(c) for c in np.median(
            img[int(truth[2, 1]) - 3:int(truth[2, 1]) + 3, int(truth[0, 0]):int(truth[1, 0])].reshape(-1, 3), 0))
        p0, p1 = np.rint(centre - half).astype(int), np.rint(centre + half).astype(int)
        cv2.rectangle(img, tuple(p0.tolist()), tuple(p1.tolist()), colour, -1)
    else:
        raise ValueError(f"unknown condition {name!r}")
    return img, pts


def perturbation_table(ckpt, passes=None, detector: str = "opencv", detail: int | None = None) -> list[dict]:
    """Print and return one row per condition of :data:`CONDITIONS`: faces found, NME, the mean
    shape's NME in the same square, the emotion."""
    from facemtl.data.images import read_image
    from emotion_reading import load_predictor

    labels = json.loads(LABELS.read_text())
    photo = read_image((ROOT.parent / labels["image"]).resolve())
    truth = np.asarray(labels["landmarks"], np.float64)
    pred = load_predictor(ckpt, detector=detector, passes=passes, detail=detail)
    print(f"{ckpt}: the astronaut photo under {len(CONDITIONS)} conditions ({detector} detector)")
    print(f"  {'condition':14s} {'faces':>5s} {'NME %':>6s} {'mean shape %':>12s}  emotion (labelled {labels['emotion']})")
    rows = []
    for name in CONDITIONS:
        img, pts = perturbed(photo, truth, name)
        score = score_photo(pred, img, pts, labels["emotion"])
        rows.append({"condition": name, **{k: score.get(k) for k in ("faces", "nme", "baseline_nme", "emotion")}})
        nme = f"{score['nme']:6.1f}" if "nme" in score else f"{'-':>6s}"
        base = f"{score['baseline_nme']:12.1f}" if "baseline_nme" in score else f"{'-':>12s}"
        print(f"  {name:14s} {score['faces']:5d} {nme} {base}  {score.get('emotion', '-')}")
    found = [r for r in rows if r["nme"] is not None]
    if found:
        print(f"  found {len(found)} of {len(rows)}; median NME {np.median([r['nme'] for r in found]):.1f}% "
              f"(mean shape {np.median([r['baseline_nme'] for r in found]):.1f}%), "
              f"{sum(r['nme'] <= 10 for r in found)} of them at most 10%")
    return rows


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
