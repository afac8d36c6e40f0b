"""Face detectors on synthetic scenes: misses, and landmark error for each way of cropping.

Scenes come from :func:`facemtl.inference.alignment.render_scene`: one synthetic face per
320-640 px procedural scene, in three groups of ``--n`` scenes each: ``frontal`` (studio faces),
``turned`` (wild faces with |yaw| >= 30 degrees) and ``small`` (snapshot faces pasted as 40-72 px
patches). A detection "finds" the face when its centre lies inside the face's training square
and its side is within 3x of it (:func:`facemtl.inference.alignment.matches`).

Per detector (opencv; mediapipe when installed, else a note):

* ``ms/img``: median detection time per scene; ``miss``: faces not found, per group;
  ``extra/scene``: detections that are not the face, per scene;
* with ``--checkpoint RUN_DIR``: 5-point landmark NME (mean point error over the true
  inter-ocular distance, %, mean over the faces this detector found) per group, and the share of
  faces over 10% (``fail``), for four crops: ``1 pass, raw box`` (the box cropped as if it were
  the training square: the predictor before calibration), ``1 pass, calibrated`` (the detector's
  :data:`~facemtl.inference.alignment.CALIBRATIONS`), ``2 passes, level crop`` (calibrated, then
  the training crop from the predicted landmarks, axis-aligned), ``upright, always`` (that crop
  turned so the predicted eyes are level, turned once more when its own points still tilt:
  ``passes=2``), ``default`` (the predictor's default: the upright second crop only for faces
  whose first-pass eyes tilt by 5 degrees or more) and ``true-landmark crop``, the crop
  training makes from the true landmarks (the floor the other rows approach);
* whether it finds a face in the real photo ``shared/testdata/astronaut.png``.

``--fit`` instead fits each detector's calibration (medians of the box-to-training-square
offsets over the found faces; different scenes than the evaluation's: seed 1000 by default)
and prints the constants; OpenCV's in ``facemtl/inference/alignment.py`` come from here,
MediaPipe's from real photos (``real_faces.py --fit``: its boxes sit differently on synthetic faces).

``--tilt DEGREES`` turns every scene about its face by an angle drawn from +-DEGREES (landmarks
turned with it, fixed seed): heads tilted as in everyday photos, where the upright second crop
and the Haar detector's turned search matter.

Usage:
    python benchmarks/detector_alignment.py --checkpoint /work/runs/default_before [--n 100] [--tilt 25]
    python benchmarks/detector_alignment.py --fit [--n 200]
With --n 100 (300 scenes): about 1.5 minutes on 2 cores, 8 while a training run shared them
(most of it is the model's four crops per face, and OpenCV's cascade at ~30 ms a scene).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from facemtl.errors import FacemtlError
from facemtl.inference.alignment import (
    CALIBRATIONS,
    SCENE_GROUPS,
    box_offsets,
    find_match,
    fit_calibration,
    landmark_square,
    render_scene,
)
from facemtl.inference.detect import find_faces, make_detector
from real_photo import turned  # a script beside this one

ASTRONAUT = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "astronaut.png"
FAIL_NME = 10.0  # percent of the inter-ocular distance


class Replay:
    """A detector that hands out boxes (and their turns, see HaarFaceDetector.boxes_and_turns) found
    earlier, one image after another, with the real detector's calibration: the predictor then
    crops exactly as with that detector, without running it again for every way of cropping."""

    def __init__(self, boxes: list[np.ndarray], turns: list[np.ndarray], calibration):
        self._found = iter(zip(boxes, turns))
        self.calibration = calibration

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.boxes_and_turns(image)[0]

    def boxes_and_turns(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return next(self._found)


def tilted(scene: dict, degrees: float) -> dict:
    """The scene turned by ``degrees`` about its face's landmarks (same canvas, edges mirrored)."""
    image, pts = turned(scene["image"], np.asarray(scene["landmarks"], np.float64), degrees)
    return {**scene, "image": image, "landmarks": pts, "square": landmark_square(pts)}


def available_detectors(names: list[str]) -> dict:
    found = {}
    for name in names:
        try:
            found[name] = make_detector(name)
        except FacemtlError as exc:
            print(f"note: {name} skipped: {exc}")
    return found


def detect_all(detector, scenes: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """(boxes per scene, their turns (0 from a detector without ``boxes_and_turns``), median ms per scene)."""
    boxes, turns, times = [], [], []
    for scene in scenes:
        t0 = time.perf_counter()
        found, turn, _ = find_faces(detector, scene["image"])
        times.append(time.perf_counter() - t0)
        boxes.append(found)
        turns.append(turn)
    return boxes, turns, 1000 * statistics.median(times)


def nme(faces: list[dict], truth: np.ndarray) -> float:
    """Mean point error over the true eye distance (points 0 and 1: the eye centres), in %;
    NaN when the face got no prediction (a degenerate crop), counted as a failure."""
    if not faces:
        return float("nan")
    points = faces[0]["landmarks"]
    iod = float(np.linalg.norm(truth[0] - truth[1]))
    return 100 * float(np.linalg.norm(np.asarray(points) - truth, axis=1).mean()) / iod


def landmark_errors(model, info, scenes, boxes, turns, found, calibration) -> dict[str, list[float]]:
    """NME per found face for each way of cropping (see the module docstring)."""
    from facemtl.inference.predictor import Predictor

    idx = [i for i, f in enumerate(found) if f is not None]
    kept = [boxes[i][found[i] : found[i] + 1] for i in idx]  # the matched box only: no stray crops
    kept_turns = [turns[i][found[i] : found[i] + 1] for i in idx]
    rows = {
        "1 pass, raw box": dict(calibrate=False, passes=1),
        "1 pass, calibrated": dict(calibrate=True, passes=1),
        "2 passes, level crop": dict(calibrate=True, passes=2, upright=False),
        "upright, always": dict(calibrate=True, passes=2),
        "default": dict(calibrate=True),
    }
    out: dict[str, list[float]] = {}
    for label, options in rows.items():
        predictor = Predictor(model, info, detector=Replay(kept, kept_turns, calibration), batch_size=32, **options)
        items = ((i, scenes[i]["image"]) for i in idx)
        out[label] = [nme(res.faces, scenes[res.key]["landmarks"]) for res in predictor.stream(items)]
    truth = Predictor(model, info, detector="none", batch_size=32)
    items = ((i, scenes[i]["image"]) for i in idx)
    squares = {i: [scenes[i]["square"]] for i in idx}  # given boxes are cropped as given: the training crop
    out["true-landmark crop"] = [nme(res.faces, scenes[res.key]["landmarks"])
                                 for res in truth.stream(items, boxes_for=squares.get)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", metavar="RUN_DIR", help="a run folder (or model.json): measure landmark NME")
    ap.add_argument("--fit", action="store_true", help="fit each detector's calibration and print the constants")
    ap.add_argument("--n", type=int, default=None, help="scenes per group (default: 100; 200 with --fit)")
    ap.add_argument("--seed", type=int, default=None, help="scene seed (default: 0; 1000 with --fit)")
    ap.add_argument("--detectors", nargs="+", default=["opencv", "mediapipe"])
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the model")
    ap.add_argument("--tilt", type=float, default=0.0, metavar="DEGREES",
                    help="turn each scene about its face by an angle drawn from +-DEGREES")
    args = ap.parse_args()
    if not args.fit and not args.checkpoint:
        ap.error("give --checkpoint RUN_DIR (measure) or --fit (fit the calibrations)")
    n = args.n if args.n is not None else (200 if args.fit else 100)
    seed = args.seed if args.seed is not None else (1000 if args.fit else 0)

    t0 = time.perf_counter()
    groups = list(SCENE_GROUPS)
    scenes = [render_scene(seed, i, g) for g in groups for i in range(n)]
    if args.tilt:
        tilt_rng = np.random.default_rng(seed)
        scenes = [tilted(s, tilt_rng.uniform(-args.tilt, args.tilt)) for s in scenes]
    group_of = np.array([s["group"] for s in scenes])
    print(f"{len(scenes)} scenes ({n} per group: {', '.join(groups)}), seed {seed}, "
          + (f"tilted by up to {args.tilt:g} degrees, " if args.tilt else "")
          + f"rendered in {time.perf_counter() - t0:.0f} s")
    detectors = available_detectors(args.detectors)
    results = {}
    for name, det in detectors.items():
        boxes, turns, ms = detect_all(det, scenes)
        found = [find_match(b, s["square"]) for b, s in zip(boxes, scenes)]
        results[name] = (boxes, turns, found, ms)

    if args.fit:
        print("\nfitted calibrations (box -> training face square; offsets in box sides):")
        for name, (boxes, _turns, found, _ms) in results.items():
            pairs = [(b[f], s["square"]) for b, f, s in zip(boxes, found, scenes) if f is not None]
            if not pairs:
                print(f"  {name}: no face found, nothing to fit")
                continue
            cal = fit_calibration([p[0] for p in pairs], [p[1] for p in pairs])
            rel = box_offsets([p[0] for p in pairs], [p[1] for p in pairs])
            mad = np.median(np.abs(rel - np.median(rel, axis=0)), axis=0)
            print(f"  {name}: {len(pairs)} faces; spread (median absolute deviation) dx {mad[0]:.3f}, "
                  f"dy {mad[1]:.3f}, log scale {mad[2]:.3f}")
            print(f'    "{name}": Calibration(dx={cal.dx:.3f}, dy={cal.dy:.3f}, scale={cal.scale:.3f}),')
        return 0

    print(f"\n{'detector':<10} {'ms/img':>7} " + " ".join(f"{'miss ' + g:>13}" for g in groups) + f" {'extra/scene':>11}")
    for name, (boxes, _turns, found, ms) in results.items():
        miss = [np.mean([f is None for f, g in zip(found, group_of) if g == grp]) for grp in groups]
        extra = np.mean([len(b) - (f is not None) for b, f in zip(boxes, found)])
        print(f"{name:<10} {ms:>7.1f} " + " ".join(f"{100 * m:>12.1f}%" for m in miss) + f" {extra:>11.2f}")

    import torch

    from facemtl.models.checkpoint import load_model

    torch.set_num_threads(args.threads)
    model, info = load_model(args.checkpoint)
    margin = (info.get("crop") or {}).get("margin", "default")
    print(f"\nlandmark NME, % of the inter-ocular distance (5 points; mean over the faces each detector found; "
          f"fail: share over {FAIL_NME:g}%)\ncheckpoint {args.checkpoint} ({info.get('input_size', 128)} px, "
          f"margin {margin})")
    print(f"{'detector':<10} {'crop':<22} " + " ".join(f"{g:>8}" for g in groups) + f" {'all':>8} {'fail':>6}")
    for name, (boxes, turns, found, _ms) in results.items():
        errors = landmark_errors(model, info, scenes, boxes, turns, found, CALIBRATIONS.get(name))
        groups_found = [group_of[i] for i, f in enumerate(found) if f is not None]
        for label, values in errors.items():
            v = np.asarray(values)
            cells = [v[[g == grp for g in groups_found]] for grp in groups]
            text = " ".join(f"{np.nanmean(c):>8.2f}" if len(c) else f"{'-':>8}" for c in cells)
            fail = 100 * np.mean(~(v <= FAIL_NME))  # NaN (no prediction) fails too
            print(f"{name:<10} {label:<22} {text} {np.nanmean(v):>8.2f} {fail:>5.1f}%")

    print(f"\nreal photo {ASTRONAUT.name}:")
    if not ASTRONAUT.exists():
        print(f"  not found at {ASTRONAUT}")
    else:
        from facemtl.data.images import read_image

        photo = read_image(ASTRONAUT)
        for name, det in detectors.items():
            b = np.asarray(det(photo)).reshape(-1, 4)
            shown = ", ".join("[" + ", ".join(f"{v:.0f}" for v in box) + "]" for box in b)
            print(f"  {name:<10} {len(b)} face(s) {shown}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
