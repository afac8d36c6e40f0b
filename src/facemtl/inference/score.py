"""``facemtl score``: a checkpoint on a labelled face dataset, end to end, as ``facemtl predict``
would read its photos.

``facemtl eval`` scores a model on crops cut from the labels (the training crop); this scores
what a user gets: each labelled image goes through :class:`~facemtl.inference.predictor.Predictor`
(detector, calibrated crop, second crop, test-time flip), the face it returns for the labelled
face is matched to it, and its 5 points and emotion are scored in the original pixels with the
project's metrics (``docs/datasets.md``, "Metrics"); a parsing mask is scored at the image's
resolution, background outside the face crop, as ``facemtl predict`` writes it. A labelled face
the detector misses counts: as a landmark failure, a wrong emotion and an all-background mask in
the figures that say so.

Every figure comes with its trivial baseline on the same faces: the mean shape (the other
faces' labelled points, averaged in units of the square each face came in, then put back into
this face's square), always answering the set's most common emotion, and an all-background mask
(face-part F1 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from facemtl.errors import FacemtlError
from facemtl.inference.alignment import find_match, landmark_square, largest, square_of
from facemtl.metrics.classification import ConfusionMatrix
from facemtl.metrics.landmarks import auc, failure_rate, nme, per_point_nme
from facemtl.metrics.parsing import ParsingF1
from facemtl.tasks import IGNORE_INDEX, STANDARD_TASKS

CROPS = ("detector", "labels")
# The split a dataset is scored on by default: "test", else its evaluation split (300W's common +
# challenging, AffectNet's validation: its test set is not public) or, for a folder, every image.
SPLITS = {"300w": "full", "affectnet": "val", "emotion-folder": "all"}
DEFAULT_SPLIT = "test"
POINTS_TASK, EMOTION_TASK, PARSING_TASK = "landmarks", "emotion", "parsing"
TASKS = (POINTS_TASK, EMOTION_TASK, PARSING_TASK)
EMOTIONS = STANDARD_TASKS[EMOTION_TASK].class_names
FIVE_POINTS = "mtfl5"
WORST = 5  # faces named in the summary as the largest landmark errors
# The mean-face parsing baseline lives on a GRID x GRID grid over each face's crop region (its
# square widened by GRID_MARGIN of its side on every side, the predictor's default crop).
GRID, GRID_MARGIN = 64, 0.25
_EMOTION_NAMES = {n.lower(): n for n in EMOTIONS}  # folder names match whatever their case
MISSED = "missed"  # what the confusion table says of a labelled face the detector did not find


def labelled(sample: dict) -> dict:
    """What a raw sample labels that the score can use: ``points`` (5 points, MTFL order, with
    ``visible``), ``emotion`` (class name), ``parsing`` (mask) and ``square`` (where the face is:
    the labelled points' training square, else the square of its ``box``; None for one unlocated
    face per image)."""
    out: dict = {"points": None, "visible": None, "emotion": None, "square": None,
                 "parsing": sample.get(PARSING_TASK)}  # Helen's 11 ids in every reader (255: unlabelled)
    if "landmarks" in sample:
        pts = np.asarray(sample["landmarks"], np.float64).reshape(-1, 2)
        point_set = sample.get("meta", {}).get("point_set", FIVE_POINTS if len(pts) == 5 else None)
        vis = np.asarray(sample.get("visibility", np.ones(len(pts), bool)), bool).reshape(-1)
        if point_set == FIVE_POINTS and vis[:2].all():  # the NME needs both eyes
            out["points"], out["visible"] = pts, vis
            if vis.all():
                out["square"] = landmark_square(pts)
    if out["square"] is None and sample.get("box") is not None:
        out["square"] = square_of(sample["box"])
    if out["square"] is None and out["points"] is not None:  # some points hidden and no box: the visible ones
        out["square"] = landmark_square(out["points"][out["visible"]])
    if sample.get("emotion") is not None:
        # a folder-per-class reader labels by its own class list (meta "class_name"), the others in FER2013 order
        k = int(sample["emotion"])
        name = sample.get("meta", {}).get("class_name") or (EMOTIONS[k] if k < len(EMOTIONS) else str(k))
        out["emotion"] = _EMOTION_NAMES.get(name.lower(), name)
    return out


def unscorable(sample: dict, dataset: str) -> str | None:
    """Why a dataset whose first face is ``sample`` gives nothing to score (None: it does)."""
    from facemtl.data import loader_options

    point_set = sample.get("meta", {}).get("point_set")
    if "landmarks" in sample and point_set not in (None, FIVE_POINTS):
        hint = ("; add --option points=5 (the reader's 5-point subset)" if "points" in loader_options(dataset)
                else "; this reader has no 5-point subset")
        return f"{dataset} labels {point_set} points, not the model's 5 (MTFL order){hint}"
    if "landmarks" not in sample and sample.get("emotion") is None and PARSING_TASK not in sample:
        return f"{dataset} labels neither points, an emotion nor a parsing mask: nothing to score"
    return None


def score_faces(predictor, samples: Iterable[dict], crops: str = "detector",
                keep_images: bool = False) -> Iterator[dict]:
    """One row per labelled face of ``samples`` (raw samples, ``docs/datasets.md``), in order, as
    each is scored (an interrupted run keeps the rows it has); consecutive faces of one image
    (the same ``meta["path"]``) share one pass of the predictor over it.

    ``crops``: ``"detector"``: the predictor's detector (its face matched to the labelled one:
    the first detection centred in the labelled square, :func:`~facemtl.inference.alignment.find_match`;
    the largest detection where the sample locates no face); ``"labels"``: the labelled square
    given as the face's box (points, else the sample's ``box``). A row holds ``index`` (the
    face's place in ``samples``), ``id`` (its image), ``found``,
    the labels (``points``, ``visible``, ``emotion``), the predictions (``predicted_points``,
    ``predicted_emotion``, ``p_labelled``: the probability given to the labelled emotion; ``nme``
    of the points, a fraction),
    ``square``: the square the face came in (the labelled one, or the detection's calibrated
    square), where the mean-shape baseline is put, and for a labelled mask ``parsing_confusion``
    (11 x 11 pixel counts, rows the labels; a missed face's against all background),
    ``parsing_scored`` (the model gave a mask) and, for a scored mask, ``parsing_grid`` and
    ``parsing_grid_predicted`` (labels and prediction on the face's grid, :func:`on_grid`).
    ``keep_images``: each row also holds its ``image`` (RGB), for the caller to draw and drop
    (rows kept with their images fill memory).
    """
    if crops not in CROPS:
        raise FacemtlError(f"crops must be one of {', '.join(CROPS)}, got {crops!r}")
    runs: dict[int, list] = {}  # first index of a run of faces of one image -> [(index, labels), ...]

    def items():
        # Faces of one photo (consecutive samples with the same image path, as MTFL, AFLW and WFLW list
        # them) are read from one pass of the predictor over that photo, not one pass each.
        run: list = []
        path = image = None
        for i, sample in enumerate(samples):
            truth = labelled(sample)
            meta = sample.get("meta", {})
            truth["id"] = str(meta.get("id", meta.get("path", i)))
            if crops == "labels" and truth["square"] is None:
                raise FacemtlError(f"face {truth['id']}: --crops labels needs labelled points or a face box, "
                                   "and this dataset gives neither; use --crops detector")
            if run and (meta.get("path") is None or meta.get("path") != path):
                runs[run[0][0]] = run
                yield run[0][0], image
                run = []
            if not run:
                image, path = sample["image"], meta.get("path")
            run.append((i, truth))
        if run:
            runs[run[0][0]] = run
            yield run[0][0], image

    boxes_for = (lambda key: [truth["square"] for _, truth in runs[key]]) if crops == "labels" else None
    for res in predictor.stream(items(), boxes_for=boxes_for, keep_images=keep_images):
        for index, truth in runs.pop(res.key):
            yield _row(predictor, res, index, truth, crops, keep_images)


def _row(predictor, res, index: int, truth: dict, crops: str, keep_images: bool) -> dict:
    """One labelled face's row of :func:`score_faces` from its photo's predictions ``res``."""
    row = {"index": index, "id": truth["id"], "found": False, "points": truth["points"],
           "visible": truth["visible"], "emotion": truth["emotion"], "square": None}
    mask = None  # the predicted parsing mask; a missed face's is all background
    if res.error:
        row["error"] = res.error
    detections = [f["detection_box"] for f in res.faces]
    if crops == "labels":  # the face cropped from this face's own square (others of the photo have theirs)
        k = next((j for j, d in enumerate(detections) if np.allclose(d, truth["square"])), None)
    else:
        k = largest(detections) if truth["square"] is None else find_match(detections, truth["square"])
    if k is not None:
        face = res.faces[k]
        row["found"] = True
        row["square"] = (np.asarray(face["detection_box"], np.float64) if crops == "labels"
                         else predictor.calibration.apply(face["detection_box"]))
        if POINTS_TASK in face:
            row["predicted_points"] = np.asarray(face[POINTS_TASK], np.float64).reshape(-1, 2)
            if truth["points"] is not None:
                row["nme"] = _face_nme(row["predicted_points"], truth["points"], truth["visible"])
        if EMOTION_TASK in face:
            row["predicted_emotion"] = face[EMOTION_TASK]["label"]
            if truth["emotion"] is not None:
                row["p_labelled"] = float(face[EMOTION_TASK]["probs"].get(truth["emotion"], float("nan")))
        mask = face.get(PARSING_TASK)
    if truth["parsing"] is not None:
        # per-face pixel counts (a confusion histogram): summed over faces they give the accumulated F1
        meter = ParsingF1()
        meter.update(np.zeros_like(truth["parsing"]) if mask is None else mask, truth["parsing"])
        row["parsing_confusion"] = meter.state()["confusion"].numpy()
        row["parsing_scored"] = mask is not None
        if mask is not None:  # the labels and the prediction on the face's grid (the mean-face baseline)
            row["parsing_grid"] = on_grid(truth["parsing"], row["square"], IGNORE_INDEX)
            row["parsing_grid_predicted"] = on_grid(mask, row["square"], 0)
    if keep_images:
        row["image"] = res.image
    return row


def on_grid(mask: np.ndarray, square, outside: int) -> np.ndarray:
    """``mask`` resampled (nearest) onto the :data:`GRID` x :data:`GRID` grid over ``square``
    widened by :data:`GRID_MARGIN` of its side on every side; ``outside`` where the grid leaves
    the image."""
    import cv2

    q = np.asarray(square, np.float64)
    side = (q[2] - q[0]) * (1 + 2 * GRID_MARGIN)
    x0, y0 = q[0] - GRID_MARGIN * (q[2] - q[0]), q[1] - GRID_MARGIN * (q[3] - q[1])
    scale = GRID / side  # pixel centres at integers on both sides: x -> (x - x0) * scale - 0.5
    matrix = np.array([[scale, 0.0, -x0 * scale - 0.5], [0.0, scale, -y0 * scale - 0.5]])
    return cv2.warpAffine(np.ascontiguousarray(mask, np.uint8), matrix, (GRID, GRID), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=int(outside))


def _grid_confusion(predicted: np.ndarray, truth: np.ndarray) -> torch.Tensor:
    meter = ParsingF1()
    meter.update(predicted, truth)
    return meter.state()["confusion"]


def mean_face_f1(rows: Sequence[dict]) -> dict | None:
    """The mean-face baseline against the model, both on the faces' grids (:func:`on_grid`):
    ``model`` and ``mean_face`` overall F1 (percent, counts summed over the faces; every face
    weighs the same here, unlike the image-resolution figures). Each face's mean face is the
    per-cell most common labelled class of the OTHER faces' grids (background where none is
    labelled). None with fewer than two faces on grids."""
    faces = [r for r in rows if "parsing_grid" in r]
    if len(faces) < 2:
        return None
    classes = ParsingF1().num_classes
    grids = np.stack([r["parsing_grid"] for r in faces])
    onehot = (grids[:, None] == np.arange(classes)[None, :, None, None]).astype(np.int32)  # 255 matches none
    total = onehot.sum(0)
    model, mean = ParsingF1(), ParsingF1()
    for r, own in zip(faces, onehot):
        others = total - own
        face = np.where(others.any(0), others.argmax(0), 0).astype(np.uint8)  # ties: the lower class id
        mean.merge({"confusion": _grid_confusion(face, r["parsing_grid"])})
        model.merge({"confusion": _grid_confusion(r["parsing_grid_predicted"], r["parsing_grid"])})
    return {"model": model.compute().get("overall"), "mean_face": mean.compute().get("overall")}


def _face_nme(points: np.ndarray, truth: np.ndarray, visible: np.ndarray) -> float:
    return float(nme(torch.as_tensor(points[None]), torch.as_tensor(truth[None]),
                     visible=torch.as_tensor(visible[None]))[0])


def _unit(points: np.ndarray, square: np.ndarray) -> np.ndarray:
    return (points - square[:2]) / (square[2] - square[0])


def landmark_summary(rows: Sequence[dict]) -> dict | None:
    """NME figures (fractions) of the faces with labelled points: ``faces``, ``found``, ``scored``
    (found faces with predicted points), ``mean`` / ``median`` NME and ``failure_rate`` (NME above
    10%) over the scored faces, ``failure_rate_with_misses`` (every labelled face, a miss a
    failure), ``auc`` (CED area to 10%, misses at 0), ``per_point`` (mean per point), ``worst``
    ([index, id, NME] of the :data:`WORST` largest errors) and ``baseline``: the same figures of the
    mean shape in the same squares, each face's the mean of the other faces' points in units of
    their squares (absent with one face). None without labelled points."""
    with_points = [r for r in rows if r["points"] is not None]
    if not with_points:
        return None
    scored = [r for r in with_points if r.get("predicted_points") is not None]
    out = {"faces": len(with_points), "found": sum(r["found"] for r in with_points), "scored": len(scored)}
    if not scored:
        return out
    # The mean shape of the OTHER faces (leave one out: a face's own labels never place its
    # baseline, so a small set does not score its mean shape against itself); a hidden point
    # (its coordinates may be NaN) leaves that point's mean to the faces that show it.
    units = np.array([np.where(r["visible"][:, None], _unit(r["points"], r["square"]), np.nan) for r in scored])
    shown = np.isfinite(units)
    others_sum = np.nansum(units, 0) - np.where(shown, units, 0.0)
    others = shown.sum(0) - shown
    unit_means = np.where(others > 0, others_sum / np.maximum(others, 1), np.nan)

    truth = torch.as_tensor(np.stack([r["points"] for r in scored]))
    misses, faces = len(with_points) - len(scored), len(with_points)

    def figures(predictions: list[np.ndarray]) -> tuple[dict, np.ndarray]:
        """The figures of one prediction per scored face, and its per-face NMEs (the project's metrics
        on the whole set at once; a face's points count where labelled and predicted: the baseline has
        no point that no other face shows, and always the eyes, which every face with points labels)."""
        pred = np.stack(predictions)
        vis = torch.as_tensor(np.array([r["visible"] for r in scored]) & np.isfinite(pred).all(2))
        errs = nme(torch.as_tensor(pred), truth, visible=vis)
        per_point = per_point_nme(torch.as_tensor(pred), truth)
        return {"mean": float(errs.mean()), "median": float(np.median(errs.numpy())),
                "failure_rate": failure_rate(errs),
                "failure_rate_with_misses": (failure_rate(errs) * len(scored) + misses) / faces,  # a miss fails
                "auc": auc(errs) * len(scored) / faces,  # a miss adds no area
                "per_point": [float(per_point[vis[:, k], k].mean()) if vis[:, k].any() else float("nan")
                              for k in range(per_point.shape[1])]}, errs.numpy()

    figs, errs = figures([r["predicted_points"] for r in scored])
    out.update(figs)
    order = np.argsort(-errs, kind="stable")[:WORST]
    out["worst"] = [[scored[k].get("index"), scored[k]["id"], float(errs[k])] for k in order]
    # (a face whose eyes no other face shows gets no baseline: too few faces)
    if len(scored) > 1:
        out["baseline"] = figures([m * (r["square"][2] - r["square"][0]) + r["square"][:2]
                                   for m, r in zip(unit_means, scored)])[0]
    return out


def emotion_summary(rows: Sequence[dict]) -> dict | None:
    """Emotion figures of the faces with a labelled emotion: ``faces``, ``found``, ``accuracy``
    (every labelled face, a miss wrong), ``accuracy_found``, ``mean_class_accuracy`` (per labelled
    class, misses wrong), ``per_class`` {name: [right, faces]}, ``confusion`` {true: {predicted or
    "missed": n}} and ``baseline``: the set's most common emotion and its share. None without
    labelled emotions."""
    with_label = [r for r in rows if r["emotion"] is not None]
    if not with_label:
        return None
    # One confusion matrix over the model's classes, then any labelled class it cannot answer,
    # then "missed" (a column only: a miss is wrong whatever the label).
    unknown = sorted({r["emotion"] for r in with_label} - set(EMOTIONS))
    names = (*EMOTIONS, *unknown, MISSED)
    meter = ConfusionMatrix(len(names), names)
    meter.update(torch.tensor([names.index(r.get("predicted_emotion") or MISSED) for r in with_label]),
                 torch.tensor([names.index(r["emotion"]) for r in with_label]))
    result = meter.compute()
    conf = np.array(result["confusion"])
    order = [n for n in names[:-1] if conf[names.index(n)].sum()]  # the labelled classes, in the task's order
    counts = {n: int(conf[names.index(n)].sum()) for n in order}
    common = max(order, key=lambda n: counts[n])  # ties: the first in the task's order
    read = len(with_label) - int(conf[:, -1].sum())
    return {"faces": len(with_label), "found": read, "accuracy": result["accuracy"] / 100,
            "accuracy_found": float(np.trace(conf)) / read if read else None,
            "mean_class_accuracy": result["mean_class_accuracy"] / 100,
            "per_class": {n: [int(conf[names.index(n), names.index(n)]), counts[n]] for n in order},
            "confusion": {n: {names[j]: int(c) for j, c in enumerate(conf[names.index(n)]) if c} for n in order},
            "baseline": {"label": common, "accuracy": counts[common] / len(with_label)},
            "unknown_classes": unknown}


def parsing_summary(rows: Sequence[dict]) -> dict | None:
    """Parsing F1 (percent, pixel counts accumulated over the faces, ``docs/datasets.md``) of the
    faces with a labelled mask: ``faces``, ``scored`` (the model gave a mask), ``f1`` (per class),
    the groups (``eyes``, ``brows``, ``mouth_all``, ``overall``) over the scored faces, and
    ``overall_with_misses`` (a missed face's mask all background) and ``grid``: the model against
    the mean face on the faces' grids (:func:`mean_face_f1`). None without labelled masks; the
    all-background baseline scores every face part 0."""
    with_mask = [r for r in rows if "parsing_confusion" in r]
    if not with_mask:
        return None
    out: dict = {"faces": len(with_mask), "scored": sum(r["parsing_scored"] for r in with_mask)}
    for key, chosen in (("scored_faces", [r for r in with_mask if r["parsing_scored"]]), ("with_misses", with_mask)):
        meter = ParsingF1()
        for r in chosen:
            meter.merge({"confusion": torch.as_tensor(r["parsing_confusion"])})
        if chosen and int(meter.state()["confusion"].sum()):
            result = meter.compute()
            if key == "scored_faces":
                out.update(result)
            else:
                out["overall_with_misses"] = result.get("overall")
    out["grid"] = mean_face_f1(with_mask)
    return out


def summary(rows: Sequence[dict]) -> dict:
    """``faces``, ``found``, ``errors`` and the task summaries (None where the set labels no
    such task)."""
    return {"faces": len(rows), "found": sum(r["found"] for r in rows), "errors": sum("error" in r for r in rows),
            POINTS_TASK: landmark_summary(rows), EMOTION_TASK: emotion_summary(rows),
            PARSING_TASK: parsing_summary(rows)}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def format_summary(result: dict, title: str = "") -> str:
    """The summary as the text ``facemtl score`` prints."""
    lines = [title] if title else []
    lines.append(f"faces {result['faces']}, found {result['found']}"
                 + (f", {result['errors']} image(s) could not be read" if result["errors"] else ""))
    lm = result[POINTS_TASK]
    if lm is not None:
        lines.append(f"landmarks ({lm['faces']} faces with 5 labelled points, {lm['scored']} scored; "
                     "NME inter-ocular)")
        if lm["scored"]:
            lines.append(f"  model       NME mean {_pct(lm['mean'])}, median {_pct(lm['median'])}, failures "
                         f"(>10%) {_pct(lm['failure_rate'])} of scored, {_pct(lm['failure_rate_with_misses'])} "
                         f"counting misses, AUC@10% {lm['auc']:.3f}")
            b = lm.get("baseline")
            if b:
                lines.append(f"  mean shape  NME mean {_pct(b['mean'])}, median {_pct(b['median'])}, failures "
                             f"(>10%) {_pct(b['failure_rate'])} of scored, {_pct(b['failure_rate_with_misses'])} "
                             f"counting misses, AUC@10% {b['auc']:.3f} (each face: the other faces' mean)")
            else:
                lines.append("  mean shape  - (one face: no other faces to average)")
            names = STANDARD_TASKS[POINTS_TASK].class_names
            lines.append("  largest errors (#face in the set, its image): " + ", ".join(
                f"#{k} {i} {100 * e:.1f}%" for k, i, e in lm["worst"]))
            base = b["per_point"] if b else [float("nan")] * len(names)
            lines.append("  per point, model (mean shape): " + ", ".join(
                f"{n} {100 * m:.1f} ({100 * s:.1f})" for n, m, s in zip(names, lm["per_point"], base)))
    em = result[EMOTION_TASK]
    if em is not None:
        lines.append(f"emotion ({em['faces']} labelled faces, {em['found']} read)")
        lines.append(f"  model       accuracy {_pct(em['accuracy'])} (misses wrong), {_pct(em['accuracy_found'])} "
                     f"of read faces, mean per-class {_pct(em['mean_class_accuracy'])}")
        lines.append(f"  always {em['baseline']['label']}: accuracy {_pct(em['baseline']['accuracy'])}")
        lines.append("  per class: " + ", ".join(f"{n} {r}/{t}" for n, (r, t) in em["per_class"].items()))
        if em["unknown_classes"]:
            lines.append("  labelled classes the model cannot answer (counted wrong): "
                         f"{', '.join(em['unknown_classes'])}; it answers {', '.join(EMOTIONS)}")
        for name, said in em["confusion"].items():
            lines.append(f"    {name:<8} read as " + ", ".join(f"{k} {v}" for k, v in
                                                             sorted(said.items(), key=lambda kv: -kv[1])))
    ps = result[PARSING_TASK]
    if ps is not None:
        lines.append(f"parsing ({ps['faces']} faces with a labelled mask, {ps['scored']} scored; F1 of pixel counts "
                     "summed over the faces, at the images' resolution)")
        groups = "".join(f"; {g} {ps[g]:.1f}" for g in ("eyes", "brows", "mouth_all") if g in ps)
        lines.append(f"  model           overall F1 {_f1_text(ps.get('overall'))} of scored faces, "
                     f"{_f1_text(ps.get('overall_with_misses'))} counting misses{groups}")
        if ps.get("f1"):
            lines.append("  per class: " + ", ".join(f"{n} {f:.1f}" for n, f in ps["f1"].items()))
        lines.append("  all background  overall F1 0.0 (no face-part pixel)")
        if ps.get("grid"):
            g = ps["grid"]
            lines.append(f"  on a {GRID}x{GRID} grid over each face's crop, every face weighing the same: model "
                         f"overall F1 {_f1_text(g['model'])}, mean face {_f1_text(g['mean_face'])} (each face: the "
                         "other faces' most common class per cell)")
    if lm is None and em is None and ps is None:
        lines.append("nothing to score: the faces label neither 5 points (MTFL order), an emotion nor a parsing mask")
    return "\n".join(lines)


def _f1_text(x) -> str:
    return "-" if x is None else f"{x:.1f}"


_NOT_IN_JSON = ("parsing_grid", "parsing_grid_predicted")  # 4,096 cells a face: the summary has their figures


def row_json(row: dict) -> dict:
    """A row with arrays as lists (the ``--json`` file's ``faces``), without the parsing grids."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items() if k not in _NOT_IN_JSON}
