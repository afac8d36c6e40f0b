"""Synthetic multi-task faces: the built-in benchmark every test trains on.

A face is the mean 3D mesh of ``assets/face_template.json`` (478 MediaPipe vertices),
deformed for identity (the template's PCA shape modes) and expression (hand-made
displacement fields below), rotated by a random 3D pose, projected (scaled
orthographic camera) and filled triangle by triangle in depth order (painter's
algorithm, back faces culled). Every triangle is drawn as an *id* (material x shade
level) into one uint8 buffer; the RGB image and the Helen parsing mask are both
lookups of that same buffer, so the mask matches the pixels exactly, and the 5
landmarks are projections of the same deformed vertices.

Conventions (see ``docs/datasets.md``, "Loader contract", for what a raw sample holds):

* Pose, degrees: ``yaw > 0`` turns the nose to IMAGE-right, ``pitch > 0`` lifts the chin
  (face looks up), ``roll > 0`` turns the face clockwise on screen.
* Pose label: the yaw's class by :func:`facemtl.tasks.pose_from_yaw` (``|yaw| <= 15``
  frontal, up to 45 left / right, beyond that a profile); "left" = nose towards image-left.
* Glasses are drawn over the pixels only: the parsing mask keeps what is under them
  (eyes stay eye classes, frame over skin stays skin), as Helen has no glasses class.
* A random occluder patch (hand/object/microphone-like blob) is labelled 0 (background)
  in the parsing mask: the mask labels what is visible. Landmarks stay the true
  (amodal) positions, also when the face hides them itself (a mouth corner behind the
  nose of a turned, lowered head), as MTFL/AFLW annotators guess hidden points;
  ``meta["occluded"]`` says whether an occluder was drawn.
* Neck and shoulders are not face classes in Helen: they are labelled background.
  A bald scalp is labelled skin (1). Hair (10) is drawn from a 3D head ellipsoid
  (back hair, behind the face) and a fringe polygon over the forehead.
* Subjects: images ``index // IMAGES_PER_SUBJECT`` share a subject (identity shape,
  gender, skin, hair, glasses habit); expression, pose, light and clutter vary per image.
* Smile label: 0 (smiling) exactly when the emotion is Happy.

Determinism: every random draw comes from ``numpy.random.Generator`` objects seeded by
``SeedSequence([seed, index, style_id])`` (and ``[seed, subject, style_id, 1]`` for
identity), never from global state, so a sample is identical on any machine.
"""

from __future__ import annotations

import collections.abc
import json
from functools import lru_cache
from importlib import resources

import cv2
import numpy as np

from facemtl.errors import FacemtlError
from facemtl.tasks import pose_from_yaw

# New styles go at the end: a style's index seeds its samples.
STYLES: tuple[str, ...] = ("studio", "wild", "webcam", "snapshot", "classroom")
EMOTIONS: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
HAIR_STYLES: tuple[str, ...] = ("short", "bob", "long", "bun", "bald")
IMAGES_PER_SUBJECT = 6
MIN_SIZE = 64

# Materials: what a triangle is made of (colour) -> Helen class (mask). id = material * Q + level.
Q = 16  # shade levels per material
(BG, SKIN, NOSE, BROW_L, BROW_R, EYE_L, EYE_R, IRIS_L, IRIS_R, ULIP, MOUTH, LLIP, HAIR, NECK, SCALP,
 LIPLINE) = range(16)
# LIPLINE: the dark line between closed lips, drawn from corner to corner; labelled upper lip.
MATERIAL_LABEL = np.array([0, 1, 6, 2, 3, 4, 5, 4, 5, 7, 8, 9, 10, 0, 1, 7], np.uint8)
LABEL_LUT = np.repeat(MATERIAL_LABEL, Q)
assert LABEL_LUT.size == 256
IS_LIP = np.isin(np.arange(16), (ULIP, LLIP, MOUTH))

# Expression bases (rows of the deformation matrix after the identity modes).
EXPR_NAMES = ("corner_up", "corner_out", "mouth_open", "lip_raise", "brow_in_up", "brow_out_up",
              "brow_frown", "eye_open", "lower_lid_up", "brow_thick")

# Emotion -> expression coefficients (FACS-like: AU12 smile, AU26 jaw drop, AU1/2 brow
# raise, AU4 frown, AU5 lid raise, AU6/7 lid tightening, AU9/10 nose wrinkle/lip raise,
# AU15 lip-corner depressor, AU20 lip stretch).
EMOTION_EXPR = {
    0: dict(brow_frown=1.0, eye_open=0.15, corner_up=-0.25, lower_lid_up=0.3),  # Angry
    1: dict(lip_raise=1.0, corner_up=-0.45, brow_frown=0.5, eye_open=-0.35, lower_lid_up=0.5),  # Disgust
    2: dict(brow_in_up=1.0, brow_out_up=0.3, brow_frown=0.35, eye_open=0.8, corner_out=1.0,
            mouth_open=0.35, corner_up=-0.2),  # Fear
    3: dict(corner_up=1.0, corner_out=0.6, lower_lid_up=0.6),  # Happy
    4: dict(corner_up=-1.0, brow_in_up=1.0, brow_out_up=-0.4, eye_open=-0.3),  # Sad
    5: dict(mouth_open=1.0, brow_in_up=1.0, brow_out_up=1.0, eye_open=0.9, corner_out=-0.3),  # Surprise
    6: dict(),  # Neutral
}

# Style statistics (angles in degrees, sizes as fractions of the image side; ``expression``:
# range of the expression strength). The default run uses the three CALIBRATED styles, each
# framed and degraded like the cropped real data its task stands for:
# * "snapshot" (landmarks; MTFL/AFLW-like): face-detector crops of everyday photos, |yaw| mostly
#   under 45 degrees (MTFL's and 300W's inter-ocular NME is measured on such crops), varied light,
#   some clutter and occluders, mild blur and JPEG;
# * "studio" (parsing; Helen-like): well-lit, near-frontal, large faces;
# * "classroom" (emotion; BNU-LSVED-like): students filmed by a classroom camera, moderate
#   resolution loss, noise and grey cast, posed expressions at full strength.
# "wild" (yaw up to 80 degrees, strong framing jitter) and "webcam" (heavy resolution loss and
# JPEG: most of an expression is gone at 64 px) are the hard styles for stress tests.
STYLE_PARAMS = {
    "studio": dict(yaw=(0.0, 14.0, 40.0), pitch=(0.0, 6.0, 15.0), roll=(0.0, 4.0, 10.0), iod=(0.26, 0.32),
                   shift=0.04, ambient=(0.6, 0.72), diffuse=(0.35, 0.45), side=0.35, clutter=0, occlude=0.0,
                   blur=(0.0, 0.6), noise=(0.0, 2.0), jpeg=(88, 98), lowres=None, grey=(0.0, 0.0), glasses=0.2),
    "wild": dict(yaw=(0.0, 40.0, 80.0), pitch=(0.0, 12.0, 30.0), roll=(0.0, 12.0, 35.0), iod=(0.18, 0.32),
                 shift=0.12, ambient=(0.2, 0.45), diffuse=(0.6, 1.0), side=1.0, clutter=12, occlude=0.35,
                 blur=(0.0, 1.4), noise=(1.0, 8.0), jpeg=(55, 92), lowres=None, grey=(0.0, 0.25), glasses=0.25),
    "webcam": dict(yaw=(0.0, 18.0, 45.0), pitch=(-5.0, 10.0, 25.0), roll=(0.0, 7.0, 20.0), iod=(0.24, 0.32),
                   shift=0.07, ambient=(0.4, 0.55), diffuse=(0.4, 0.6), side=0.5, clutter=4, occlude=0.08,
                   blur=(0.3, 1.0), noise=(4.0, 10.0), jpeg=(25, 60), lowres=(0.3, 0.5), grey=(0.5, 0.9),
                   glasses=0.3),
    "snapshot": dict(yaw=(0.0, 18.0, 45.0), pitch=(0.0, 9.0, 25.0), roll=(0.0, 8.0, 25.0), iod=(0.24, 0.32),
                     shift=0.05, ambient=(0.3, 0.55), diffuse=(0.5, 0.9), side=0.8, clutter=8, occlude=0.15,
                     blur=(0.0, 1.0), noise=(0.5, 5.0), jpeg=(65, 95), lowres=None, grey=(0.0, 0.15), glasses=0.25),
    "classroom": dict(yaw=(0.0, 12.0, 35.0), pitch=(-3.0, 8.0, 20.0), roll=(0.0, 5.0, 15.0), iod=(0.26, 0.32),
                      shift=0.04, ambient=(0.45, 0.6), diffuse=(0.4, 0.6), side=0.5, clutter=4, occlude=0.05,
                      blur=(0.0, 0.7), noise=(2.0, 5.0), jpeg=(60, 90), lowres=(0.7, 0.9), grey=(0.2, 0.6),
                      glasses=0.3, expression=(0.9, 1.3)),
}

SKIN_TONES = np.array([[236, 200, 175], [224, 172, 140], [198, 145, 110], [160, 110, 80],
                       [120, 80, 55], [85, 57, 40], [240, 210, 190]], np.float32)
HAIR_COLOURS = np.array([[25, 20, 18], [60, 40, 28], [105, 70, 40], [150, 110, 65], [205, 170, 110],
                         [130, 55, 30], [150, 150, 150], [40, 32, 30]], np.float32)
IRIS_COLOURS = np.array([[70, 45, 30], [40, 28, 20], [70, 100, 130], [80, 100, 60]], np.float32)


# ---------------------------------------------------------------------------- template


@lru_cache(maxsize=1)
def load_template() -> dict:
    """The packaged face template (parsed JSON), loaded once."""
    text = resources.files("facemtl").joinpath("assets/face_template.json").read_text(encoding="utf-8")
    return json.loads(text)


class _Mesh:
    """Precomputed tables: neutral shape, deformation basis, triangles and materials."""

    def __init__(self) -> None:
        t = load_template()
        mean = np.asarray(t["vertices_mean"], np.float64)
        self.n = mean.shape[0]
        x, y = mean[:, 0], mean[:, 1]
        reg = t["regions"]
        self.eye_l, self.eye_r = np.array(reg["left_eye"]), np.array(reg["right_eye"])
        lm5 = t["landmarks5"]
        self.nose_tip, self.mouth_l, self.mouth_r = int(lm5["nose_tip"]), int(lm5["mouth_left"]), int(lm5["mouth_right"])

        tris = np.asarray(t["triangles"], np.int64)
        labels = np.asarray(t["triangle_labels"])
        fill = np.asarray(t["hole_fill_triangles"], np.int64)
        fill_labels = np.asarray(t["hole_fill_labels"])
        iris = np.asarray(t["iris_triangles"], np.int64)
        iris_labels = np.asarray(t["iris_labels"])
        mesh_mat = np.select([labels == 2, labels == 3, labels == 6, labels == 7, labels == 9],
                             [BROW_L, BROW_R, NOSE, ULIP, LLIP], SKIN)
        fill_mat = np.select([fill_labels == 4, fill_labels == 5], [EYE_L, EYE_R], MOUTH)
        iris_mat = np.where(iris_labels == 4, IRIS_L, IRIS_R)
        self.tris = np.concatenate([tris, fill, iris])
        self.material = np.concatenate([mesh_mat, fill_mat, iris_mat]).astype(np.int64)
        # Depth bias: irises sit partly behind the lid contour, the mouth fill behind the lips.
        self.depth_bias = np.concatenate([np.zeros(len(tris)), np.where(fill_mat == MOUTH, -0.03, 0.0),
                                          np.full(len(iris), 0.04)])

        self._pair_quads(mean)

        upper_verts = set(tris[labels == 7].ravel().tolist())
        lower_verts = set(tris[labels == 9].ravel().tolist()) - upper_verts
        corners = {self.mouth_l, self.mouth_r}
        inner = reg["lips_inner"]  # 78 (corner), lower lip left->right, 308 (corner), upper right->left
        k = inner.index(308)
        self.lip_lower_inner = np.array(inner[1:k])
        self.lip_upper_inner = np.array(inner[k + 1:][::-1])
        # closed loop: left corner, upper inner lip, right corner, lower inner lip (back)
        self.mouth_line = np.concatenate([[self.mouth_l], self.lip_upper_inner, [self.mouth_r],
                                          self.lip_lower_inner[::-1]])

        # --- expression bases (displacements in IOD units for coefficient 1) ---
        basis = {}
        sx = np.sign(x)

        def gauss(cx, cy, sxx, syy):
            return np.exp(-((x - cx) ** 2) / (2 * sxx**2) - ((y - cy) ** 2) / (2 * syy**2))

        cl, cr = mean[self.mouth_l], mean[self.mouth_r]
        w_corner = gauss(cl[0], cl[1], 0.13, 0.11) + gauss(cr[0], cr[1], 0.13, 0.11)
        w_cheek = gauss(-0.5, 0.75, 0.22, 0.2) + gauss(0.5, 0.75, 0.22, 0.2)
        d = np.zeros_like(mean)
        d[:, 1] = -0.085 * w_corner - 0.03 * w_cheek
        d[:, 0] = 0.0
        basis["corner_up"] = d
        d = np.zeros_like(mean)
        d[:, 0] = 0.06 * sx * w_corner
        basis["corner_out"] = d

        # Jaw drop: lower lip and chin move down, fading towards the ears.
        w_jaw = np.clip((y - 1.02) / 0.05, 0, 1) * np.exp(-(x**2) / (2 * 0.6**2))
        for v in lower_verts:
            w_jaw[v] = max(w_jaw[v], np.sqrt(max(0.0, 1 - (x[v] / 0.46) ** 2)))
        for v in upper_verts | corners:
            w_jaw[v] = 0.0
        self.w_jaw = w_jaw
        d = np.zeros_like(mean)
        d[:, 1] = 0.32 * w_jaw
        d[:, 2] = -0.08 * w_jaw
        basis["mouth_open"] = d

        w_up = gauss(0.0, 0.93, 0.3, 0.1)
        w_up[list(lower_verts)] = 0.0
        d = np.zeros_like(mean)
        d[:, 1] = -0.07 * w_up - 0.03 * (gauss(-0.2, 0.7, 0.12, 0.12) + gauss(0.2, 0.7, 0.12, 0.12))
        basis["lip_raise"] = d

        # Brows: vertices above the upper lid, weighted around each brow.
        above_eye = np.clip((-0.07 - y) / 0.1, 0, 1)
        w_brow = (gauss(-0.55, -0.3, 0.38, 0.14) + gauss(0.55, -0.3, 0.38, 0.14)) * above_eye
        inner_w = np.clip((0.95 - np.abs(x)) / 0.7, 0, 1)
        d = np.zeros_like(mean)
        d[:, 1] = -0.09 * w_brow * inner_w
        basis["brow_in_up"] = d
        d = np.zeros_like(mean)
        d[:, 1] = -0.09 * w_brow * (1 - inner_w)
        basis["brow_out_up"] = d
        d = np.zeros_like(mean)
        d[:, 1] = 0.08 * w_brow * (0.4 + 0.6 * inner_w)
        d[:, 0] = -0.05 * sx * w_brow * inner_w
        basis["brow_frown"] = d

        # Eyes: vertical scaling about each eye centre (AU5 widens, AU7 narrows).
        ce_l, ce_r = mean[self.eye_l].mean(0), mean[self.eye_r].mean(0)
        w_el = gauss(ce_l[0], ce_l[1], 0.22, 0.13)
        w_er = gauss(ce_r[0], ce_r[1], 0.22, 0.13)
        dy_eye = (y - ce_l[1]) * w_el + (y - ce_r[1]) * w_er
        d = np.zeros_like(mean)
        d[:, 1] = 0.55 * dy_eye
        basis["eye_open"] = d
        d = np.zeros_like(mean)
        below = (y > np.where(x < 0, ce_l[1], ce_r[1])).astype(float)
        d[:, 1] = -0.5 * dy_eye * below
        basis["lower_lid_up"] = d

        d = np.zeros_like(mean)
        for v in (70, 63, 105, 66, 107, 300, 293, 334, 296, 336):
            d[v, 1] = -0.04
        basis["brow_thick"] = d

        # Neutralise the template: it smiles slightly with parted lips (21 of 25 smiling faces).
        neutral = mean.copy()
        gap = mean[self.lip_lower_inner, 1] - mean[self.lip_upper_inner, 1]
        neutral[:, 1] -= gap.max() * 0.9 * w_jaw  # jaw up until the lips meet
        neutral[self.lip_lower_inner, 1] = neutral[self.lip_upper_inner, 1] + 0.004
        neutral += -0.45 * basis["corner_up"]
        self.neutral = neutral

        comp = t["shape_components"]
        modes = np.asarray(comp["modes"], np.float64).reshape(len(comp["std"]), -1)
        self.n_modes = modes.shape[0]
        expr = np.stack([basis[k].reshape(-1) for k in EXPR_NAMES])
        self.basis = np.concatenate([modes, expr]).astype(np.float64)  # (8 + 10, 478*3)
        self.expr_index = {k: self.n_modes + i for i, k in enumerate(EXPR_NAMES)}

        # Hair/scalp geometry: a head ellipsoid (x, y, z centre and radii in IOD units).
        g = np.random.default_rng(12345)  # fixed table, not per-sample randomness
        u = g.normal(size=(400, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        self.sphere = u
        self.head_c = np.array([0.0, -0.25, -1.15])
        self.head_r = np.array([1.17, 1.62, 1.58])
        oval = reg["face_oval"]
        top = [v for v in oval if mean[v, 1] < -0.25]
        # order the upper arc from image-left to image-right
        self.forehead_arc = np.array(sorted(top, key=lambda v: mean[v, 0]))
        self.jaw_l, self.jaw_r = 172, 397


    def _pair_quads(self, mean: np.ndarray) -> None:
        """Merge edge-sharing triangle pairs (same material, nearly coplanar, convex) into quads.

        The mesh is mostly quads split in two; drawing a pair as one convex quad with one
        shade halves the per-polygon fill calls, the renderer's bottleneck.
        """
        tris, mat = self.tris, self.material
        a, b, c = mean[tris[:, 0]], mean[tris[:, 1]], mean[tris[:, 2]]
        nrm = -np.cross(b - a, c - a)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
        edges: dict = {}
        for t, tri in enumerate(tris.tolist()):
            for i in range(3):
                edges.setdefault(frozenset((tri[i], tri[(i + 1) % 3])), []).append(t)
        paired = np.zeros(len(tris), bool)
        quads, members = [], []
        for t, tri in enumerate(tris.tolist()):
            if paired[t]:
                continue
            for i in range(3):
                u, w = tri[i], tri[(i + 1) % 3]
                others = [n for n in edges[frozenset((u, w))] if n != t and not paired[n]]
                if not others:
                    continue
                n = others[0]
                if mat[n] != mat[t] or self.depth_bias[n] != self.depth_bias[t] or nrm[n] @ nrm[t] < 0.97:
                    continue
                q = next(k for k in tris[n].tolist() if k not in (u, w))
                quad = [w, tri[(i + 2) % 3], u, q]
                xy = mean[quad, :2]
                e = np.roll(xy, -1, 0) - xy
                turn = e[:, 0] * np.roll(e, -1, 0)[:, 1] - e[:, 1] * np.roll(e, -1, 0)[:, 0]
                if not (np.all(turn < 0) or np.all(turn > 0)):
                    continue
                paired[t] = paired[n] = True
                quads.append(quad)
                members.append((t, n))
                break
        self.quads = np.array(quads, np.int64).reshape(-1, 4)
        self.quad_members = np.array(members, np.int64).reshape(-1, 2)
        self.single = np.flatnonzero(~paired)


@lru_cache(maxsize=1)
def _mesh() -> _Mesh:
    return _Mesh()


# ---------------------------------------------------------------------------- helpers


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation (degrees) in the template frame (x right, y down, z to the camera)."""
    a, b, c = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx @ ry


def _check(style: str, size: int) -> None:
    if style not in STYLES:
        raise FacemtlError(f"unknown synthetic style {style!r}; expected one of {', '.join(STYLES)}")
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise FacemtlError(f"synthetic image size must be an integer >= {MIN_SIZE}, got {size!r}")


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def _clipped_normal(rng, mean_sd_max) -> float:
    mean, sd, lim = mean_sd_max
    return float(np.clip(mean + sd * rng.standard_normal(), mean - lim, mean + lim))


@lru_cache(maxsize=8192)
def _subject(seed: int, subject: int, style_id: int) -> dict:
    """Identity traits shared by all images of one subject (cached; treat as read-only)."""
    r = _rng(seed, subject, style_id, 1)
    gender = int(r.integers(2))  # 0 male, 1 female
    if gender == 0:
        hair = HAIR_STYLES[int(r.choice(5, p=[0.55, 0.05, 0.05, 0.0, 0.35]))]
    else:
        hair = HAIR_STYLES[int(r.choice(5, p=[0.1, 0.35, 0.4, 0.15, 0.0]))]
    skin = SKIN_TONES[r.integers(len(SKIN_TONES))] * r.uniform(0.92, 1.06, 3)
    hair_col = HAIR_COLOURS[r.integers(len(HAIR_COLOURS))] * r.uniform(0.85, 1.15)
    traits = dict(
        gender=gender,
        hair=hair,
        skin=np.clip(skin, 0, 255),
        hair_col=np.clip(hair_col, 0, 255),
        iris=IRIS_COLOURS[r.integers(len(IRIS_COLOURS))],
        shape=r.standard_normal(_mesh().n_modes) * 0.7,
        jaw=r.uniform(1.0, 1.08) if gender == 0 else r.uniform(0.93, 1.0),
        brow=r.uniform(0.6, 1.2) if gender == 0 else r.uniform(-0.2, 0.4),
        fringe=r.uniform(0.05, 0.3) if hair != "bald" else 0.0,
        wears_glasses=r.random(),
        lip_tint=r.uniform(0.1, 0.25) if gender == 0 else r.uniform(0.25, 0.55),
    )
    for value in traits.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # shared through the cache
    return traits


def _background(rng, h: int, w: int, p: dict) -> np.ndarray:
    """uint8 RGB background: a vertical gradient plus random clutter shapes (style ``clutter``)."""
    c0 = rng.uniform(30, 230, 3)
    c1 = np.clip(c0 + rng.normal(0, 35, 3), 0, 255)
    ends = np.array([[c0], [c1]], np.uint8)  # 2 x 1 image, stretched into the gradient
    bg = cv2.resize(ends, (w, h), interpolation=cv2.INTER_LINEAR)
    n = int(rng.integers(p["clutter"] // 2, p["clutter"] + 1)) if p["clutter"] else 0
    for _ in range(n):
        col = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(3)
        a, b = rng.uniform(-0.2, 1.2, 2) * (w, h)
        if kind == 0:
            c, d = rng.uniform(-0.2, 1.2, 2) * (w, h)
            cv2.rectangle(bg, (int(a), int(b)), (int(c), int(d)), col, -1)
        elif kind == 1:
            cv2.circle(bg, (int(a), int(b)), int(rng.uniform(0.03, 0.3) * w), col, -1)
        else:
            c, d = rng.uniform(-0.2, 1.2, 2) * (w, h)
            cv2.line(bg, (int(a), int(b)), (int(c), int(d)), col, int(rng.integers(1, max(2, w // 20))))
    if n:
        k = 2 * int(rng.integers(0, 3)) + 1
        if k > 1:
            bg = cv2.GaussianBlur(bg, (k, k), 0)
    return bg


@lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """Fixed grey noise texture, uint8 around 128 with sd 32; samples take random crops of it
    (much cheaper than drawing fresh normals for every pixel, and still deterministic)."""
    g = np.random.default_rng(2024)
    n = np.clip(128 + 32 * g.standard_normal((512, 512)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(n[:, :, None], 3, axis=2))


# ---------------------------------------------------------------------------- renderer


def render_face(seed: int, index: int, style: str = "studio", size: int = 128) -> dict:
    """Render one raw sample (loader contract of ``docs/datasets.md``) for ``(seed, index, style, size)``.

    Returns ``image`` (size, size, 3) uint8 RGB, ``landmarks`` float32 (5, 2) 0-based pixel
    (x, y) in MTFL order, ``parsing`` (size, size) uint8 Helen ids, ``emotion`` (FER2013
    order), ``gender``/``smile``/``glasses`` (0-based MTFL attributes), ``pose`` (0..4) and
    ``meta`` (style, seed, index, yaw, pitch, roll, subject, hair, occluded).
    """
    _check(style, size)
    if int(seed) < 0 or int(index) < 0:
        raise FacemtlError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    seed, index, size = int(seed), int(index), int(size)
    m = _mesh()
    p = STYLE_PARAMS[style]
    style_id = STYLES.index(style)
    rng = _rng(seed, index, style_id)
    subject = index // IMAGES_PER_SUBJECT
    subj = _subject(seed, subject, style_id)
    h = w = size

    # --- labels and pose
    emotion = int(rng.integers(7))
    yaw = _clipped_normal(rng, p["yaw"])
    pitch = _clipped_normal(rng, p["pitch"])
    roll = _clipped_normal(rng, p["roll"])
    glasses = bool(subj["wears_glasses"] < p["glasses"] * (1.3 if subj["gender"] == 0 else 0.8) and rng.random() < 0.9)

    # --- shape: neutral mean + identity modes + expression fields (one matrix product)
    coef = np.zeros(m.basis.shape[0])
    coef[: m.n_modes] = subj["shape"]
    strength = rng.uniform(*p.get("expression", (0.6, 1.25)))
    for name, value in EMOTION_EXPR[emotion].items():
        coef[m.expr_index[name]] += value * strength
    if emotion == 3:
        coef[m.expr_index["mouth_open"]] += rng.uniform(0.0, 0.45)  # some smiles show the teeth
    coef[m.n_modes:] += rng.normal(0, 0.06, len(EXPR_NAMES))  # small idle asymmetry
    coef[m.expr_index["brow_thick"]] += subj["brow"]
    # rounding absorbs last-bit differences between BLAS builds (machine-independent samples)
    v = np.round(m.neutral + (coef @ m.basis).reshape(-1, 3), 6)
    lower = v[:, 1] > 0.6
    v[lower, 0] *= subj["jaw"]
    # lips never cross: the lower inner lip stays below the upper one
    lo, up = m.lip_lower_inner, m.lip_upper_inner
    v[lo, 1] = np.maximum(v[lo, 1], v[up, 1] + 0.004)

    # --- camera: scaled orthographic projection
    rot = rotation(yaw, pitch, roll)
    iod = rng.uniform(*p["iod"]) * size
    centre = np.array([w / 2, h / 2]) + rng.uniform(-p["shift"], p["shift"], 2) * size
    anchor = np.array([0.0, 0.45, 0.0])  # middle of the face (between eyes and chin)
    cam = (v - anchor) @ rot.T
    pts = cam[:, :2] * iod + centre
    depth = cam[:, 2]

    # --- lighting: Lambert shading of triangle normals, quantised to Q levels
    light = np.array([rng.uniform(-p["side"], p["side"]), rng.uniform(-0.6, 0.1), 1.0])
    light /= np.linalg.norm(light)
    ambient, diffuse = rng.uniform(*p["ambient"]), rng.uniform(*p["diffuse"])
    tri = m.tris
    a, b, c = cam[tri[:, 0]], cam[tri[:, 1]], cam[tri[:, 2]]
    normal = -np.cross(b - a, c - a)
    nz = normal[:, 2]
    front = nz > 1e-9
    # pairs drawn as quads when both halves face the camera, other front triangles alone
    qa, qb = m.quad_members[:, 0], m.quad_members[:, 1]
    quad_ok = front[qa] & front[qb]
    single = np.concatenate([m.single, qa[~quad_ok], qb[~quad_ok]])
    single = single[front[single]]
    qn = normal[qa[quad_ok]] + normal[qb[quad_ok]]
    item_normal = np.concatenate([qn, normal[single]])
    item_normal /= np.linalg.norm(item_normal, axis=1, keepdims=True)
    shade = np.clip(item_normal @ light, 0.0, 1.0)
    level = np.minimum((shade * Q).astype(np.int64), Q - 1)
    item_mat = np.concatenate([m.material[qa[quad_ok]], m.material[single]])
    ids = item_mat * Q + level
    quad_v = m.quads[quad_ok]
    item_depth = np.concatenate([depth[quad_v].mean(1) + m.depth_bias[qa[quad_ok]],
                                 depth[tri[single]].mean(1) + m.depth_bias[single]])
    order = np.argsort(item_depth, kind="stable")
    # triangles become quads with a repeated corner, so all polygons live in one array
    corners = np.concatenate([quad_v, tri[single][:, [0, 1, 2, 2]]])[order]
    polys = np.round(pts[corners] * 16).astype(np.int32)
    item_mat = item_mat[order]
    ids = ids[order].tolist()

    # --- colour table for this sample (material x level)
    skin = subj["skin"] * rng.uniform(0.95, 1.05)
    base = np.zeros((16, 3), np.float32)
    base[SKIN] = base[NOSE] = base[SCALP] = skin
    brow = subj["hair_col"] * 0.8 + skin * 0.2
    base[BROW_L] = base[BROW_R] = brow * 0.9 + skin * 0.1 * (1.0 - 0.5 * subj["gender"])
    base[EYE_L] = base[EYE_R] = (225, 220, 210)
    base[IRIS_L] = base[IRIS_R] = subj["iris"]
    lip = skin * (1 - subj["lip_tint"]) + np.array([190, 60, 70]) * subj["lip_tint"]
    base[ULIP] = lip * 0.92
    base[LLIP] = lip
    base[MOUTH] = (70, 25, 30)
    base[LIPLINE] = lip * 0.45
    base[HAIR] = subj["hair_col"]
    base[NECK] = skin * 0.8
    levels = ambient + diffuse * (np.arange(Q, dtype=np.float32) + 0.5) / Q
    lut = np.clip(base[:, None, :] * levels[None, :, None], 0, 255).reshape(-1, 3)
    colour_lut = np.zeros((256, 3), np.uint8)
    colour_lut[: lut.shape[0]] = lut.astype(np.uint8)

    # --- draw: back hair, neck, face (painter), fringe
    buf = np.zeros((h, w), np.uint8)
    fill = cv2.fillConvexPoly
    hair_id = HAIR * Q + Q // 2
    hair_mat = SCALP if subj["hair"] == "bald" else HAIR
    head = m.sphere * m.head_r * (1.0 if subj["hair"] == "bald" else 1.06) + m.head_c
    keep = head[:, 1] < {"short": 0.05, "bob": 1.2, "long": 10, "bun": 0.05, "bald": -0.1}[subj["hair"]]
    hp = head[keep]
    if subj["hair"] == "long":
        yy = np.linspace(0.3, 2.6, 6)
        curtain = np.array([[sx * 1.3, yv, zv] for sx in (-1, 1) for yv in yy for zv in (-0.4, -1.6)])
        hp = np.concatenate([hp, curtain])
    if subj["hair"] == "bun":
        hp = np.concatenate([hp, m.sphere[::4] * 0.5 + np.array([0.0, -1.75, -1.9])])
    hull = cv2.convexHull(np.round(((hp - anchor) @ rot.T)[:, :2] * iod * 16 + centre * 16).astype(np.int32))
    fill(buf, hull, hair_mat * Q + Q // 2, cv2.LINE_8, 4)
    neck3 = np.array([[-0.62, 1.1, -0.75], [0.62, 1.1, -0.75], [0.75, 3.2, -0.8], [-0.75, 3.2, -0.8]])
    neck3[:, 0] *= subj["jaw"]
    neck = np.round(((neck3 - anchor) @ rot.T)[:, :2] * iod * 16 + centre * 16).astype(np.int32)
    fill(buf, neck, NECK * Q + Q // 2, cv2.LINE_8, 4)
    shoulders = np.array([[-2.2, 2.9, -0.9], [2.2, 2.9, -0.9], [2.8, 4.5, -0.9], [-2.8, 4.5, -0.9]])
    fill(buf, np.round(((shoulders - anchor) @ rot.T)[:, :2] * iod * 16 + centre * 16).astype(np.int32),
         NECK * Q + 3, cv2.LINE_8, 4)
    # The mouth line (corner -> inner lips -> corner) is drawn right after the nearest lip
    # triangle, so the thin lips near the corners stay visible at small sizes.
    is_lip = IS_LIP[item_mat]
    split = int(np.flatnonzero(is_lip)[-1]) + 1 if is_lip.any() else len(ids)
    for poly, i in zip(polys[:split], ids[:split]):
        fill(buf, poly, i, cv2.LINE_8, 4)
    if is_lip.any():
        line = np.round(pts[m.mouth_line] * 16).astype(np.int32)
        cv2.polylines(buf, [line], True, LIPLINE * Q + Q // 2, max(1, int(round(iod / 40))), cv2.LINE_8, 4)
    for poly, i in zip(polys[split:], ids[split:]):
        fill(buf, poly, i, cv2.LINE_8, 4)
    if subj["hair"] != "bald" and subj["fringe"] > 0:
        arc = v[m.forehead_arc]
        taper = np.clip(1.0 - np.abs(arc[:, 0]) / 1.15, 0.0, 1.0) ** 0.5
        low = arc + np.stack([np.zeros(len(arc)), subj["fringe"] * (0.4 + taper), 0.03 + 0 * taper], 1)
        ring = np.concatenate([arc, low[::-1]])
        ring = ring + np.array([0, -0.02, 0.03])
        fpts = ((ring - anchor) @ rot.T)
        if fpts[:, 2].mean() > -0.5:  # visible from the front side
            cv2.fillPoly(buf, [np.round(fpts[:, :2] * iod * 16 + centre * 16).astype(np.int32)], hair_id,
                         cv2.LINE_8, 4)

    # --- image and mask from the same buffer
    parsing = LABEL_LUT[buf]
    image = cv2.LUT(cv2.merge((buf, buf, buf)), colour_lut[None])  # per-channel table lookup
    bg = _background(rng, h, w, p)
    cv2.copyTo(bg, (buf == 0).view(np.uint8), image)

    # --- landmarks (0-based pixel x, y), MTFL order
    lm = np.stack([pts[m.eye_l].mean(0), pts[m.eye_r].mean(0), pts[m.nose_tip], pts[m.mouth_l], pts[m.mouth_r]])

    # --- glasses: pixels only, the mask keeps what is under them
    if glasses:
        # low-resolution styles get thicker frames so the glasses label stays visible
        _draw_glasses(image, rng, v, m, rot, anchor, iod, centre, 2.5 if p["lowres"] else 1.0)

    # --- occluder: labelled background in the mask
    occluded = bool(rng.random() < p["occlude"])
    if occluded:
        occ = np.zeros((h, w), np.uint8)
        face_c = lm.mean(0)
        oc = face_c + rng.uniform(-0.9, 0.9, 2) * iod
        axes = (int(rng.uniform(0.3, 0.8) * iod), int(rng.uniform(0.3, 0.9) * iod))
        cv2.ellipse(occ, (int(oc[0]), int(oc[1])), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        col = skin * rng.uniform(0.7, 1.1) if rng.random() < 0.5 else rng.uniform(0, 255, 3)
        sel = occ.astype(bool)
        image[sel] = np.clip(col, 0, 255).astype(np.uint8)
        parsing[sel] = 0

    # --- photometric degradation per style: one 3x4 colour matrix (grey cast, tint, contrast,
    # brightness), then resolution loss, blur, sensor noise and JPEG
    g = rng.uniform(*p["grey"]) if p["grey"][1] > 0 else 0.0
    tint = 1.0 + rng.normal(0, 0.04, 3) if g > 0 else np.ones(3)
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    luma = np.array([0.299, 0.587, 0.114])
    colour = gain * tint[:, None] * ((1 - g) * np.eye(3) + g * luma[None, :])
    image = cv2.transform(image, np.concatenate([colour, np.full((3, 1), offset)], 1))
    if p["lowres"] is not None:
        small = max(16, int(size * rng.uniform(*p["lowres"])))
        image = cv2.resize(cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA), (w, h),
                           interpolation=cv2.INTER_LINEAR)
    sigma = rng.uniform(*p["blur"])
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    noise = rng.uniform(*p["noise"])
    if noise > 0.5:
        table = _noise_table()
        y0, x0 = (int(v) for v in rng.integers(0, 512 - max(h, w), 2)) if max(h, w) < 512 else (0, 0)
        crop = table[y0:y0 + h, x0:x0 + w]
        if crop.shape[:2] != (h, w):
            crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)
        # image + noise * (crop - 128) / 32, saturated to uint8
        image = cv2.addWeighted(image, 1.0, crop, noise / 32.0, -128.0 * noise / 32.0)
    q = int(rng.integers(p["jpeg"][0], p["jpeg"][1] + 1))
    ok, enc = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])
    if ok:  # channel order is irrelevant for a lossy round trip: encode and decode alike
        image = cv2.imdecode(enc, cv2.IMREAD_COLOR)

    return {
        "image": np.ascontiguousarray(image),
        "landmarks": lm.astype(np.float32),
        "parsing": parsing,
        "emotion": emotion,
        "gender": subj["gender"],
        "smile": 0 if emotion == 3 else 1,
        "glasses": 0 if glasses else 1,
        "pose": pose_from_yaw(yaw),
        "meta": {"style": style, "seed": seed, "index": index, "yaw": yaw, "pitch": pitch, "roll": roll,
                 "subject": subject, "hair": subj["hair"], "occluded": occluded},
    }


def _draw_glasses(image, rng, v, m, rot, anchor, iod, centre, rim_scale=1.0) -> None:
    """Two rims (and tinted lenses) in a plane in front of the eyes, projected with the face."""
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    e = rng.uniform(2.0, 4.0)  # super-ellipse exponent: round (2) to rectangular (4)
    cx, sy = np.cos(t), np.sin(t)
    shape = np.stack([np.sign(cx) * np.abs(cx) ** (2 / e), np.sign(sy) * np.abs(sy) ** (2 / e)], 1)
    rx, ry = rng.uniform(0.22, 0.28), rng.uniform(0.15, 0.21)
    sun = rng.random() < 0.2
    colour = tuple(float(c) for c in (rng.uniform(0, 60, 3) if rng.random() < 0.7 else rng.uniform(80, 200, 3)))
    thick = max(1, int(round(iod / 25 * rim_scale)))
    rims = []
    for eye in (m.eye_l, m.eye_r):
        c = v[eye].mean(0)
        rim = np.stack([c[0] + rx * shape[:, 0], c[1] + 0.02 + ry * shape[:, 1], np.full(len(t), c[2] + 0.3)], 1)
        rims.append(np.round(((rim - anchor) @ rot.T)[:, :2] * iod * 16 + centre * 16).astype(np.int32))
    yaw_sin = rot[0, 2]  # > 0: nose to image-right, the image-right eye turns away
    if abs(yaw_sin) > 0.6:  # beyond ~37 degrees the far rim hides behind the nose
        rims = [rims[0]] if yaw_sin > 0 else [rims[1]]
    if sun:
        overlay = image.copy()
        cv2.fillPoly(overlay, rims, (20.0, 20.0, 25.0), cv2.LINE_AA, 4)
        cv2.addWeighted(image, 0.2, overlay, 0.8, 0.0, dst=image)
    cv2.polylines(image, rims, True, colour, thick, cv2.LINE_AA, 4)
    if len(rims) == 2:  # bridge between the inner rim points
        a = rims[0][np.argmax(rims[0][:, 0])] if rot[0, 0] > 0 else rims[0][np.argmin(rims[0][:, 0])]
        b = rims[1][np.argmin(rims[1][:, 0])] if rot[0, 0] > 0 else rims[1][np.argmax(rims[1][:, 0])]
        cv2.line(image, tuple(int(q) for q in a), tuple(int(q) for q in b), colour, thick, cv2.LINE_AA, 4)


class SyntheticFaces(collections.abc.Sequence):
    """``n`` synthetic raw samples; item ``i`` is ``render_face(seed, i, style, size)``."""

    def __init__(self, n: int, style: str = "studio", seed: int = 0, size: int = 128):
        _check(style, size)
        if int(n) < 0:
            raise FacemtlError(f"number of synthetic faces must be >= 0, got {n}")
        if int(seed) < 0:
            raise FacemtlError(f"seed must be >= 0, got {seed}")
        self.n, self.style, self.seed, self.size = int(n), style, int(seed), int(size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"SyntheticFaces indices must be integers, got {type(i).__name__}")
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} synthetic faces")
        return render_face(self.seed, i, self.style, self.size)

    def __repr__(self) -> str:
        return f"SyntheticFaces(n={self.n}, style={self.style!r}, seed={self.seed}, size={self.size})"
