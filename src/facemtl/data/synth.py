"""Synthetic multi-task faces: the built-in benchmark every test trains on.

A face is the mean 3D mesh of ``assets/face_template.json`` (478 MediaPipe vertices),
deformed for identity (the template's PCA shape modes) and expression (hand-made
displacement fields below), rotated by a random 3D pose and projected (scaled orthographic
camera). The mesh is drawn in depth order (painter's algorithm, back faces culled) as large
pre-merged polygons of one material (regions, else their convex patches, else triangles:
whichever faces the camera whole) into one uint8 buffer of *material ids*. Label-preserving
details (iris, pupil, lid shadow, lash line, teeth, tongue, nostrils, beard, creases) re-map
ids inside that buffer to variants with the same Helen label. The parsing mask is a lookup
of the buffer; the RGB image is the same buffer's albedo lookup times a light field, so the
mask matches the pixels exactly, and the 5 landmarks are projections of the same vertices.

Light does not come from the polygons: per-vertex radiance (coloured lights, ambient
occlusion, skin tone zones, highlights) is splatted onto a grid of 4x4-pixel cells, blurred
and normalised (a Gouraud-like field without a per-pixel rasteriser), enlarged and multiplied
in, with pore and hair-strand textures; then background, glasses, occluder and the style's
camera (exposure, colour cast, blur, noise, JPEG). Each realism layer is one switch of
``features`` (:data:`FEATURES`, in :mod:`facemtl.data.synth_look`); switching one off never
changes the mask or the landmarks, except "expressions" (moves both), "hair_texture" (adds
or removes hair pixels where strands are drawn) and "ears" (adds skin beside the head).

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
* Neck, shoulders and clothes are not face classes in Helen: they are labelled background.
  A bald scalp is labelled skin (1). Hair (10) is drawn from a 3D head ellipsoid
  (back hair, behind the face), a fringe polygon over the forehead and, with
  "hair_texture", flyaway strands (hair exactly where drawn).
* Helen has no classes for ears or beards (docs/datasets.md lists its 11 classes): ears and
  facial hair are labelled face skin (1), as CelebAMask-HQ's skin covers beards; whether
  Helen's own annotators did the same is unconfirmed. Irises, pupils and the lash line over
  the eye opening belong to the eye classes; teeth and tongue to the inner mouth (8).
* Subjects: images ``index // IMAGES_PER_SUBJECT`` share a subject (identity shape,
  gender, skin, hair, glasses habit, beard, make-up, clothes); expression, pose, light and
  clutter vary per image.
* Smile label: 0 (smiling) exactly when the emotion is Happy.

Determinism: every random draw comes from ``numpy.random.Generator`` objects seeded by
``SeedSequence([seed, index, style_id])`` (labels and geometry; its draws never depend on
the features), ``[seed, index, style_id, 2]`` (appearance: one block of uniforms sliced per
feature, then the background) and ``[seed, subject, style_id, 1]`` (identity), never from
global state, so a sample is identical on any machine for the same features.
"""
from __future__ import annotations

import collections.abc
import json
import math
import numbers
import os
from functools import lru_cache
from importlib import resources

import cv2
import numpy as np

from facemtl.constants import (BROW_DROP, EXPRESSION_RANGE, GLASSES_FRAMES, POSE_ANGLES, POSE_SPREAD, brow_drop_ok,
                               expression_range_ok, pose_spread_ok)
from facemtl.constants import SYNTH_STYLES as STYLES
from facemtl.data import synth_look as look
from facemtl.data.synth_look import (
    ALL_FEATURES,
    BROW_L,
    BROW_R,
    CLOTH,
    CLOTH_TRIM,
    EAR,
    EAR_IN,
    EYE_L,
    EYE_R,
    FEATURES,
    HAIR,
    LABEL_LUT,
    LIPLINE,
    LLIP,
    MOUTH,
    NECK,
    NOSE,
    SCALP,
    SKIN,
    ULIP,
)
from facemtl.errors import FacemtlError
from facemtl.tasks import pose_from_yaw

EMOTIONS: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
HAIR_STYLES: tuple[str, ...] = ("short", "bob", "long", "bun", "bald")
IMAGES_PER_SUBJECT = 6
MIN_SIZE = 64

# Materials: what a pixel is made of (colour) -> Helen class (mask); the buffer holds material
# ids, the table lives in synth_look (MATERIALS, LABEL_LUT).
IS_LIP = np.zeros(256, bool)
IS_LIP[[ULIP, LLIP, MOUTH]] = True

# Expression bases (rows of the deformation matrix after the identity modes). New bases go at
# the end: the idle-asymmetry draws follow this order.
EXPR_NAMES = ("corner_up", "corner_out", "mouth_open", "lip_raise", "brow_in_up", "brow_out_up",
              "brow_frown", "eye_open", "lower_lid_up", "brow_thick",
              "nose_wrinkle", "lip_press", "lower_lip_down", "upper_lid_raise", "chin_raise", "lip_stretch")

# Emotion -> expression coefficients (FACS-like: AU12 smile, AU26 jaw drop, AU1/2 brow
# raise, AU4 frown, AU5 lid raise, AU6/7 lid tightening, AU9/10 nose wrinkle/lip raise,
# AU15 lip-corner depressor, AU16 lower-lip depressor, AU17 chin raise, AU20 lip stretch,
# AU23/24 lip tightening/press). These are the strong, prototypical displays of the
# "expressions" feature; EMOTION_EXPR_PLAIN is the first renderer's weaker set (Angry, Disgust
# and Fear stayed close to Neutral there).
EMOTION_EXPR = {
    0: dict(brow_frown=1.7, upper_lid_raise=0.45, lower_lid_up=0.6, lip_press=1.0, chin_raise=0.6,
            corner_up=-0.3),  # Angry: lowered, knitted brows, glaring eyes, pressed lips
    1: dict(nose_wrinkle=1.3, lip_raise=1.7, brow_frown=0.8, lower_lid_up=0.8, eye_open=-0.3, corner_up=-0.6,
            mouth_open=0.08, chin_raise=0.3),  # Disgust: nose wrinkle, upper lip raised off the teeth
    2: dict(brow_in_up=1.3, brow_out_up=0.5, brow_frown=0.55, upper_lid_raise=1.4, lip_stretch=1.5,
            mouth_open=0.4, lower_lip_down=0.6, corner_up=-0.2),  # Fear: raised knitted brows, wide eyes
    3: dict(corner_up=1.2, corner_out=0.7, lower_lid_up=0.7),  # Happy
    4: dict(corner_up=-1.3, brow_in_up=1.3, brow_frown=0.45, brow_out_up=-0.4, eye_open=-0.4,
            chin_raise=0.5),  # Sad
    5: dict(mouth_open=1.2, brow_in_up=1.2, brow_out_up=1.2, upper_lid_raise=1.0, eye_open=0.3,
            corner_out=-0.3),  # Surprise
    6: dict(),  # Neutral
}
# Angry with the mouth open (shouting): lowered brows and glaring eyes as above, the upper lip
# raised off the teeth, the jaw dropped, the nose wrinkled; real posed anger shows both
# displays (two of the six angry faces of benchmarks/data/posed_expressions.json shout).
# Drawn instead of the closed row with the probability ``angry_shout`` of render_face.
ANGRY_SHOUT = dict(brow_frown=1.7, upper_lid_raise=0.45, lower_lid_up=0.6, mouth_open=1.1, lip_raise=0.8,
                   lower_lip_down=0.7, nose_wrinkle=0.6, corner_out=-0.4)
EMOTION_EXPR_PLAIN = {
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

# Appearance statistics per style, used only by the realism features (synth_look.FEATURES):
# light colour temperature range (K), chances of a rim light, hard light, low light and a cast
# shadow band; backdrop mix (gradient, colour blobs, stripes, room, bokeh); chances of motion
# blur, vignetting and extra defocus; white-balance cast (sd per channel); auto-exposure pull.
LOOK_PARAMS = {
    "studio": dict(kelvin=(4500.0, 6500.0), rim=0.25, hard=0.1, low_light=0.0, shadow=0.0,
                   backdrops=(0.45, 0.25, 0.1, 0.15, 0.05), motion=0.0, vignette=0.2, defocus=0.02, cast=0.02,
                   exposure=0.3),
    "wild": dict(kelvin=(2700.0, 8000.0), rim=0.2, hard=0.4, low_light=0.15, shadow=0.3,
                 backdrops=(0.1, 0.25, 0.15, 0.3, 0.2), motion=0.2, vignette=0.4, defocus=0.15, cast=0.06,
                 exposure=0.5),
    "webcam": dict(kelvin=(2800.0, 6500.0), rim=0.05, hard=0.1, low_light=0.35, shadow=0.05,
                   backdrops=(0.1, 0.2, 0.2, 0.45, 0.05), motion=0.25, vignette=0.6, defocus=0.1, cast=0.06,
                   exposure=0.7),
    "snapshot": dict(kelvin=(2700.0, 8000.0), rim=0.15, hard=0.35, low_light=0.1, shadow=0.25,
                     backdrops=(0.15, 0.25, 0.15, 0.3, 0.15), motion=0.15, vignette=0.4, defocus=0.1, cast=0.05,
                     exposure=0.5),
    "classroom": dict(kelvin=(3200.0, 6000.0), rim=0.05, hard=0.1, low_light=0.15, shadow=0.05,
                      backdrops=(0.1, 0.2, 0.25, 0.45, 0.0), motion=0.15, vignette=0.4, defocus=0.05, cast=0.05,
                      exposure=0.6),
}
for _lp in LOOK_PARAMS.values():
    _lp["backdrop_cdf"] = np.cumsum(_lp["backdrops"])

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
        mesh_mat = np.select([labels == 2, labels == 3, labels == 6, labels == 7, labels == 9],
                             [BROW_L, BROW_R, NOSE, ULIP, LLIP], SKIN)
        fill_mat = np.select([fill_labels == 4, fill_labels == 5], [EYE_L, EYE_R], MOUTH)
        # Irises are not mesh triangles: they are drawn as discs over the eye white (synth_look.draw_eyes).
        self.tris = np.concatenate([tris, fill])
        self.tris_t = np.ascontiguousarray(self.tris.T)  # (3, T): corner k of every triangle
        self.material = np.concatenate([mesh_mat, fill_mat]).astype(np.int64)
        self.n_mesh_tris = len(tris)
        # Depth bias (painter's order) where materials meet: the mouth fill sits behind the lips;
        # eye openings, brows and lips win over the skin around them, even over a large skin
        # region whose mean depth is nearer (lips protrude over the skin beside them when the
        # head turns); only the nose, drawn by depth, may still hide them.
        self.depth_bias = np.concatenate([np.select([mesh_mat == BROW_L, mesh_mat == BROW_R, mesh_mat == ULIP,
                                                     mesh_mat == LLIP], [0.03, 0.03, 0.12, 0.12], 0.0),
                                          np.where(fill_mat == MOUTH, -0.03, 0.05)])
        self._pair_quads(mean)
        self._merge_patches(mean)

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
        d[:, 1] = -_BROW_RAISE * w_brow * inner_w
        basis["brow_in_up"] = d
        d = np.zeros_like(mean)
        d[:, 1] = -_BROW_RAISE * w_brow * (1 - inner_w)
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

        # --- bases of the "expressions" feature ---
        lower = np.zeros(self.n)
        lower[list(lower_verts)] = 1.0
        # AU9 nose wrinkle: the upper nose and the skin beside it rise, the alae lift, the inner
        # brows are pulled down with it
        d = np.zeros_like(mean)
        d[:, 1] = (-0.06 * gauss(0.0, 0.35, 0.22, 0.2)
                   - 0.035 * (gauss(-0.25, 0.66, 0.1, 0.08) + gauss(0.25, 0.66, 0.1, 0.08))
                   + 0.03 * w_brow * inner_w)
        basis["nose_wrinkle"] = d
        # AU23/24 lip press: both lips squeezed towards the mouth line (thin lips), corners in
        w_lips = gauss(0.0, 1.06, 0.42, 0.16)
        d = np.zeros_like(mean)
        d[:, 1] = -0.42 * (y - 1.06) * w_lips
        d[:, 0] = -0.03 * sx * w_corner
        basis["lip_press"] = d
        # AU16 lower-lip depressor: the middle of the lower lip drops, the corners stay
        d = np.zeros_like(mean)
        d[:, 1] = 0.07 * lower * np.clip(1 - np.abs(x) / 0.5, 0, 1) + 0.02 * w_jaw
        basis["lower_lip_down"] = d
        # AU5 upper-lid raise: the upper lid contour lifts, the iris does not (white shows above it)
        up = (gauss(ce_l[0], ce_l[1] - 0.02, 0.14, 0.1) * np.clip((ce_l[1] + 0.01 - y) / 0.04, 0, 1)
              + gauss(ce_r[0], ce_r[1] - 0.02, 0.14, 0.1) * np.clip((ce_r[1] + 0.01 - y) / 0.04, 0, 1))
        d = np.zeros_like(mean)
        d[:, 1] = -0.07 * up
        basis["upper_lid_raise"] = d
        # AU17 chin raise: the chin boss and the lower lip pushed up
        d = np.zeros_like(mean)
        d[:, 1] = -0.05 * np.clip((y - 1.15) / 0.2, 0, 1) * np.exp(-(x**2) / (2 * 0.35**2)) - 0.025 * lower
        basis["chin_raise"] = d
        # AU20 lip stretch: corners pulled out and a little down
        d = np.zeros_like(mean)
        d[:, 0] = 0.09 * sx * w_corner
        d[:, 1] = 0.035 * w_corner
        basis["lip_stretch"] = d
        for name in ("eye_open", "lower_lid_up", "upper_lid_raise"):
            basis[name][468:478] = 0.0  # the iris keeps its size and place when the lids move

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
        # Both brows moved down as a whole, 1 IOD at their centres (render_face's ``brow_drop``):
        # the inner and outer raises together, reversed.
        self.brows_down = -(basis["brow_in_up"] + basis["brow_out_up"]) / _BROW_RAISE

        # Hair/scalp geometry: a head ellipsoid (x, y, z centre and radii in IOD units).
        g = np.random.default_rng(12345)  # fixed table, not per-sample randomness
        u = g.normal(size=(200, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        self.sphere = u
        self.head_c = np.array([0.0, -0.25, -1.15])
        self.head_r = np.array([1.17, 1.62, 1.58])
        oval = reg["face_oval"]
        top = [v for v in oval if mean[v, 1] < -0.25]
        # order the upper arc from image-left to image-right
        self.forehead_arc = np.array(sorted(top, key=lambda v: mean[v, 0]))
        self.jaw_l, self.jaw_r = 172, 397

        self._appearance_tables(t, tris, labels, lower_verts | upper_verts)

    def _appearance_tables(self, t: dict, tris: np.ndarray, labels: np.ndarray, lip_verts: set) -> None:
        """Per-vertex tables of the realism features: ambient occlusion, tone zones, gloss,
        skin blotch patterns; anchor points of creases, nostrils, teeth and ears."""
        v = self.neutral
        n = self.n
        x, y = v[:, 0], v[:, 1]
        self.normal_index = tris.T.ravel()  # vertex of (corner, triangle): normals by bincount
        self.normal_index3 = (self.normal_index[:, None] * 3 + np.arange(3)).ravel()
        self.normal_tris = tris
        e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
        ei, ej = np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]])
        deg = np.maximum(np.bincount(ei, minlength=n), 1).astype(np.float64)

        def nb_mean(a):
            return np.bincount(ei, a[ej], n) / deg

        vn = self.vertex_normals(v)
        lap = np.stack([nb_mean(v[:, k]) for k in range(3)], 1) - v
        elen = np.bincount(ei, np.linalg.norm(v[ej] - v[ei], axis=1), n) / deg
        concave = np.sum(lap * vn, 1) / np.maximum(elen, 1e-6) ** 2
        ao = np.clip(1.0 - 0.07 * np.clip(concave, 0, None), 0.5, 1.0)

        def gauss(cx, cy, sxx, syy):
            return np.exp(-((x - cx) ** 2) / (2 * sxx**2) - ((y - cy) ** 2) / (2 * syy**2))

        def pair(cx, cy, sxx, syy):
            return gauss(-cx, cy, sxx, syy) + gauss(cx, cy, sxx, syy)

        # crevices the curvature misses at this mesh density: eye sockets by the nose, under the
        # nose, the labiomental fold, the nasolabial region
        ao *= 1 - 0.3 * pair(0.3, -0.06, 0.1, 0.09) - 0.25 * gauss(0.0, 0.77, 0.2, 0.035)
        ao *= 1 - 0.18 * gauss(0.0, 1.3, 0.25, 0.05) - 0.12 * pair(0.36, 0.78, 0.08, 0.12)
        for _ in range(2):
            ao = 0.5 * ao + 0.5 * nb_mean(ao)
        ao[468:] = 1.0
        self.ao = ao
        lips = np.zeros(n)
        lips[list(lip_verts)] = 1.0
        beard_edge = 0.3 + 0.8 * np.clip(1.0 - np.abs(x), 0, None)
        stubble = np.clip((y - beard_edge) / 0.12 + 0.5, 0, 1)
        stubble = np.clip(stubble + gauss(0.0, 0.86, 0.3, 0.07) + pair(0.95, 0.05, 0.06, 0.25), 0, 1) * (1 - lips)
        # tone zones: cheek, nose, under-eye, forehead, upper lid (eye shadow), stubble
        self.zones = np.stack([pair(0.5, 0.5, 0.2, 0.17), gauss(0.0, 0.6, 0.13, 0.14),
                               pair(0.47, 0.17, 0.17, 0.055), np.clip((-0.25 - y) / 0.3, 0, 1),
                               pair(0.5, -0.1, 0.2, 0.065) * (y < 0.0), stubble], 1)
        self.zones[468:] = 0.0
        # gloss (specular strength): T-zone, cheekbones, lips
        self.gloss = np.clip(gauss(0.0, -0.45, 0.35, 0.2) + gauss(0.0, 0.4, 0.09, 0.3) + gauss(0.0, 1.5, 0.2, 0.12)
                             + 0.6 * pair(0.55, 0.33, 0.15, 0.1) + 0.7 * lips, 0, 1)
        self.gloss[468:] = 0.0
        g = np.random.default_rng(777)  # fixed tables, not per-sample randomness
        blotch = g.standard_normal((32, n))
        for _ in range(2):
            blotch = 0.4 * blotch + 0.6 * np.stack([nb_mean(b) for b in blotch])
        self.blotch = blotch / blotch[:, :468].std(1, keepdims=True)

        # Anchors: a template point (x, y on the front of the face) as a fixed mix of its 3
        # nearest front vertices, so it follows every deformation.
        front = np.flatnonzero(vn[:468, 2] > 0.2)

        def anchors(points):
            pts = np.asarray(points, np.float64)
            d = np.hypot(x[front][None] - pts[:, :1], y[front][None] - pts[:, 1:2])
            idx = np.argsort(d, 1)[:, :3]
            w = 1.0 / (np.take_along_axis(d, idx, 1) + 1e-3)
            return front[idx], w / w.sum(1, keepdims=True)

        def mirrored(points):
            return [points, [(-px, py) for px, py in points]]

        creases = {
            "smile": mirrored([(-0.31, 0.64), (-0.4, 0.82), (-0.47, 0.98), (-0.5, 1.12)]),
            "frown": mirrored([(-0.075, -0.24), (-0.06, -0.06)]),
            "nose": mirrored([(-0.2, 0.16), (-0.09, 0.26)]) + mirrored([(-0.19, 0.27), (-0.1, 0.33)]),
            "forehead": [[(px, -0.5 - 0.06 * (px / 0.45) ** 2) for px in np.linspace(-0.45, 0.45, 5)],
                         [(px, -0.63 - 0.05 * (px / 0.4) ** 2) for px in np.linspace(-0.4, 0.4, 5)]],
        }
        self.creases = {k: [anchors(line) for line in lines] for k, lines in creases.items()}

        # Beards: outlines of moustache, chin patch and full beard. Points on the face oval are
        # pushed 6% outwards so the beard reaches the silhouette (it only repaints skin pixels).
        oval = t["regions"]["face_oval"]

        def outline(parts):
            idx, wts, push = [], [], []
            for part in parts:
                if isinstance(part, str):  # a stretch of the face oval, "a:b" by vertex id
                    a, b = (int(k) for k in part.split(":"))
                    ring = oval[oval.index(a):oval.index(b) + 1]
                    idx.append(np.repeat(np.array(ring)[:, None], 3, 1))
                    wts.append(np.full((len(ring), 3), 1 / 3))
                    push.append(np.full(len(ring), 1.06))
                else:
                    i, w_ = anchors(part)
                    idx.append(i)
                    wts.append(w_)
                    push.append(np.ones(len(part)))
            return np.concatenate(idx), np.concatenate(wts), np.concatenate(push)

        moustache = [[(-0.52, 1.07), (-0.46, 0.92), (-0.26, 0.81), (0.0, 0.79), (0.26, 0.81), (0.46, 0.92),
                      (0.52, 1.07), (0.3, 0.99), (0.0, 0.96), (-0.3, 0.99)]]
        chin = [[(-0.5, 1.04), (-0.42, 1.22)], "176:400", [(0.42, 1.22), (0.5, 1.04), (0.25, 1.2), (0.0, 1.22),
                                                           (-0.25, 1.2)]]
        cheek = [(0.96, 0.22), (0.8, 0.5), (0.62, 0.68), (0.45, 0.8), (0.28, 0.8), (0.12, 0.79), (0.0, 0.79)]
        full = ["234:454", cheek + [(-px, py) for px, py in cheek[::-1][1:]]]
        self.beards = {2: [outline(moustache)], 3: [outline(moustache), outline(chin)], 4: [outline(full)]}
        self.face_centre = np.array([0.0, 0.5, -0.3])
        self.eye_contours = np.stack([self.eye_l, self.eye_r])
        self.lip_upper_chain = np.concatenate([[78], self.lip_upper_inner, [308]])
        self.lip_lower_chain = np.concatenate([[78], self.lip_lower_inner, [308]])
        comp = t["shape_components"]
        modes = np.asarray(comp["modes"], np.float64).reshape(len(comp["std"]), self.n, 3)
        self.chain_modes = modes[:, self.lip_upper_chain]  # identity modes of the upper inner lip
        self.neck3 = np.array([[-0.62, 1.1, -0.75], [0.62, 1.1, -0.75], [0.75, 3.2, -0.8], [-0.75, 3.2, -0.8]])
        yy = np.linspace(0.3, 2.6, 6)
        self.curtain = np.array([[sx * 1.3, yv, zv] for sx in (-1, 1) for yv in yy for zv in (-0.4, -1.6)])
        self.bun = self.sphere[::4] * 0.5 + np.array([0.0, -1.75, -1.9])
        # nostrils: centre between the alar base and the columella, an ellipse facing down-forward
        # ears: outline and inner bowl of the image-left ear (mirror x for the right one), attached
        # beside vertex 234 at the height between brow and nose base, flaring out behind
        a = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        ry = 0.46 * (1 - 0.18 * np.sin(a))  # wider at the top (helix) than at the lobe
        self.ear_out = np.stack([-(1.0 + 0.5 * (1 - np.cos(a)) * 0.24), 0.22 - ry * np.sin(a),
                                 -1.2 + 0.26 * np.cos(a)], 1)
        self.ear_in = np.stack([-(1.02 + 0.5 * (1 - np.cos(a)) * 0.1), 0.3 - 0.2 * np.sin(a),
                                -1.13 + 0.11 * np.cos(a)], 1)
        self.ears = np.concatenate([self.ear_out, self.ear_in])

    def vertex_normals(self, v: np.ndarray) -> np.ndarray:
        """Unit outward normals per vertex (area-weighted mean of the mesh triangles around it)."""
        tri = self.normal_tris
        a = v[tri[:, 0]]
        e1, e2 = v[tri[:, 1]] - a, v[tri[:, 2]] - a
        fn = np.empty_like(e1)  # -cross(e1, e2), written out (np.cross is slow on small arrays)
        fn[:, 0] = e1[:, 2] * e2[:, 1] - e1[:, 1] * e2[:, 2]
        fn[:, 1] = e1[:, 0] * e2[:, 2] - e1[:, 2] * e2[:, 0]
        fn[:, 2] = e1[:, 1] * e2[:, 0] - e1[:, 0] * e2[:, 1]
        vn = np.bincount(self.normal_index3, np.tile(fn, (3, 1)).ravel(), 3 * self.n).reshape(self.n, 3)
        return vn / np.maximum(np.sqrt(np.einsum("ij,ij->i", vn, vn)), 1e-12)[:, None]


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

    def _merge_patches(self, mean: np.ndarray, max_angle: float = 35.0, max_corners: int = 12,
                       bend: float = 0.3) -> None:
        """Grow triangles greedily into larger, nearly flat, nearly convex patches of one material.

        Smooth shading takes its light from the vertices, not from the polygons, so the id buffer
        only needs the material regions: drawing ~220 patches instead of ~520 quads is the
        cheapest way to rasterise it. A patch stays one polygon while all its triangles face
        the camera; otherwise its front triangles are drawn one by one (exact culling).
        ``bend``: the sine of the largest inward turn of an outline corner.
        """
        tris, mat, bias = self.tris, self.material, self.depth_bias
        a, b, c = mean[tris[:, 0]], mean[tris[:, 1]], mean[tris[:, 2]]
        tn = -np.cross(b - a, c - a)
        unit = tn / np.maximum(np.linalg.norm(tn, axis=1, keepdims=True), 1e-12)
        edge_tris: dict = {}
        for t, tri in enumerate(tris.tolist()):
            for i in range(3):
                edge_tris.setdefault(frozenset((tri[i], tri[(i + 1) % 3])), []).append(t)
        neighbours = [ts for ts in edge_tris.values() if len(ts) == 2]
        members = {t: [t] for t in range(len(tris))}
        owner = np.arange(len(tris))
        cos_max = np.cos(np.radians(max_angle))

        def outline(mem):
            """Boundary loop of a set of triangles (CCW as seen from the front), or None."""
            count: dict = {}
            for t in mem:
                tri = tris[t]
                for i in range(3):
                    e = (int(tri[i]), int(tri[(i + 1) % 3]))
                    count[e] = count.get(e, 0) + 1
            boundary = [(a_, b_) for (a_, b_) in count if (b_, a_) not in count]
            nxt = dict(boundary)
            if len(nxt) != len(boundary):  # a corner touched twice (pinched outline): not a disk
                return None
            start = next(iter(nxt))
            loop, cur = [start], nxt[start]
            while cur != start:
                if cur not in nxt or len(loop) > len(nxt):
                    return None
                loop.append(cur)
                cur = nxt[cur]
            return loop if len(loop) == len(nxt) else None

        def flat_convex(loop, n):
            axis = np.cross(n, [0.0, 1.0, 0.0])
            axis /= max(np.linalg.norm(axis), 1e-9)
            xy = np.stack([mean[loop] @ axis, mean[loop] @ np.cross(n, axis)], 1)
            e = np.roll(xy, -1, 0) - xy
            f = np.roll(e, -1, 0)
            turn = (e[:, 0] * f[:, 1] - e[:, 1] * f[:, 0]) / (np.linalg.norm(e, axis=1) * np.linalg.norm(f, axis=1) + 1e-12)
            return bool(np.all(turn <= bend) or np.all(turn >= -bend))

        loops = {t: [int(k) for k in tris[t]] for t in range(len(tris))}
        changed = True
        while changed:
            changed = False
            pairs = {(min(owner[s], owner[t]), max(owner[s], owner[t])) for s, t in neighbours}
            pairs = [(p_, q_) for p_, q_ in pairs if p_ != q_ and mat[p_] == mat[q_] and bias[p_] == bias[q_]]
            sums = {k: tn[mem].sum(0) for k, mem in members.items()}

            def similarity(pq, sums=sums):
                u_, w_ = sums[pq[0]], sums[pq[1]]
                return -(u_ @ w_) / (np.linalg.norm(u_) * np.linalg.norm(w_) + 1e-12)

            used: set = set()
            for p_, q_ in sorted(pairs, key=similarity):
                if p_ in used or q_ in used:
                    continue
                mem = members[p_] + members[q_]
                n = tn[mem].sum(0)
                n /= np.linalg.norm(n)
                if np.min(unit[mem] @ n) < cos_max:
                    continue
                loop = outline(mem)
                if loop is None or len(loop) > max_corners or not flat_convex(loop, n):
                    continue
                members[p_], loops[p_] = mem, loop
                del members[q_], loops[q_]
                owner[np.array(mem)] = p_
                used.update((p_, q_))
                changed = True
        keys = sorted(members)
        remap = np.zeros(len(tris), np.int64)
        remap[keys] = np.arange(len(keys))
        self.patch_of = remap[owner]  # triangle -> patch
        self._merge_regions(mean, [members[k] for k in keys], [loops[k] for k in keys], outline, tn, unit)

    def _merge_regions(self, mean, patches: list, patch_loops: list, outline, tn, unit,
                       max_angle: float = 55.0, max_tris: int = 40, max_corners: int = 36) -> None:
        """Second level: merge whole patches into larger regions of one material (non-convex,
        filled with fillPoly), so a frontal face is ~60 polygons instead of ~220.

        A region is drawn whole while all its triangles face the camera; then its outline is a
        simple polygon (a fold would need a back-facing triangle inside it). Otherwise its
        patches are drawn, and a patch with a back-facing triangle as triangles.
        """
        tris, mat, bias = self.tris, self.material, self.depth_bias
        cos_max = np.cos(np.radians(max_angle))
        edge_patches: dict = {}
        for pi, loop in enumerate(patch_loops):
            for i in range(len(loop)):
                edge_patches.setdefault(frozenset((loop[i], loop[(i + 1) % len(loop)])), []).append(pi)
        adjacent = [ps for ps in edge_patches.values() if len(ps) == 2]

        def simple(loop, n):
            """No two non-adjacent outline edges cross (in the plane across the mean normal)."""
            axis = np.cross(n, [0.0, 1.0, 0.0])
            axis /= max(np.linalg.norm(axis), 1e-9)
            xy = np.stack([mean[loop] @ axis, mean[loop] @ np.cross(n, axis)], 1)
            a, b = xy, np.roll(xy, -1, 0)
            # all edge pairs at once: segments i and j cross when each one's ends lie on both
            # sides of the other (2-D cross products)
            d = b - a
            side_a = d[:, None, 0] * (a[None, :, 1] - a[:, None, 1]) - d[:, None, 1] * (a[None, :, 0] - a[:, None, 0])
            side_b = d[:, None, 0] * (b[None, :, 1] - a[:, None, 1]) - d[:, None, 1] * (b[None, :, 0] - a[:, None, 0])
            straddle = side_a * side_b < 0  # [i, j]: segment j's ends on both sides of segment i's line
            # edges sharing a corner never straddle (one product is 0)
            return not np.triu(straddle & straddle.T, 2).any()

        groups = {i: [i] for i in range(len(patches))}
        tri_sets = {i: list(patches[i]) for i in range(len(patches))}
        owner = np.arange(len(patches))
        region_loops = {i: patch_loops[i] for i in range(len(patches))}
        changed = True
        while changed:
            changed = False
            pairs = {(min(owner[a_], owner[b_]), max(owner[a_], owner[b_])) for a_, b_ in adjacent}
            pairs = sorted((a_, b_) for a_, b_ in pairs if a_ != b_ and mat[tri_sets[a_][0]] == mat[tri_sets[b_][0]]
                           and bias[tri_sets[a_][0]] == bias[tri_sets[b_][0]])
            pairs.sort(key=lambda ab: len(tri_sets[ab[0]]) + len(tri_sets[ab[1]]))  # small ones first
            used: set = set()
            for a_, b_ in pairs:
                if a_ in used or b_ in used:
                    continue
                mem = tri_sets[a_] + tri_sets[b_]
                if len(mem) > max_tris:
                    continue
                n = tn[mem].sum(0)
                n /= np.linalg.norm(n)
                if np.min(unit[mem] @ n) < cos_max:
                    continue
                loop = outline(mem)
                if loop is None or len(loop) > max_corners or not simple(loop, n):
                    continue
                groups[a_] += groups.pop(b_)
                tri_sets[a_] = mem
                del tri_sets[b_]
                region_loops[a_] = loop
                del region_loops[b_]
                owner[np.array(groups[a_])] = a_
                used.update((a_, b_))
                changed = True
        keys = sorted(groups)
        pad = max(max_corners, max(len(lp) for lp in patch_loops))

        def padded(loop):
            return list(loop) + [loop[-1]] * (pad - len(loop))

        self.region_loops = np.array([padded(region_loops[k]) for k in keys])
        self.region_material = np.array([mat[tri_sets[k][0]] for k in keys])
        self.region_bias = np.array([bias[tri_sets[k][0]] for k in keys])
        rmap = np.zeros(len(patches), np.int64)
        rmap[keys] = np.arange(len(keys))
        self.region_of_patch = rmap[owner]
        self.region_of = self.region_of_patch[self.patch_of]  # triangle -> region
        self.patch_loops = np.array([padded(lp) for lp in patch_loops])
        self.patch_material = np.array([mat[ts[0]] for ts in patches])
        self.patch_bias = np.array([bias[ts[0]] for ts in patches])
        self.tri_as_patch = tris[:, [0, 1] + [2] * (pad - 2)]


_BROW_RAISE = 0.09  # IOD units: how far one unit of the brow raises lifts the brows' centres


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


def _pose_spreads(pose) -> dict:
    """``pose`` checked: angle -> (mean, sd, limit) floats."""
    out = {}
    for angle, spread in dict(pose).items():
        if angle not in POSE_ANGLES:
            raise FacemtlError(f"pose angles are {', '.join(POSE_ANGLES)}, got {angle!r}")
        values = tuple(float(x) for x in spread)
        if not pose_spread_ok(values):
            raise FacemtlError(f"pose {angle}: expected {POSE_SPREAD}, got {spread!r}")
        out[angle] = values
    return out


def expression_range(strength) -> tuple[float, float]:
    """``strength`` (two numbers or numeric strings) checked: (low, high) floats, else a
    :class:`FacemtlError` saying what was expected."""
    try:
        values = tuple(float(x) for x in strength)
    except (TypeError, ValueError):
        values = ()
    if not expression_range_ok(values):
        raise FacemtlError(f"expression: expected {EXPRESSION_RANGE}, got {strength!r}")
    return values


def brow_drop_limit(brow_drop) -> float | None:
    """``brow_drop`` of :func:`render_face` checked: None, or :data:`~facemtl.constants.BROW_DROP`."""
    if brow_drop is None:
        return None
    if isinstance(brow_drop, bool) or not isinstance(brow_drop, numbers.Real) or not brow_drop_ok(brow_drop):
        raise FacemtlError(f"brow_drop: expected {BROW_DROP} or None, got {brow_drop!r}")
    return float(brow_drop)


def probability(name: str, value) -> float | None:
    """A probability option of :func:`render_face` (``creases``, ``angry_shout``) checked: None,
    or a number in 0..1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise FacemtlError(f"{name}: expected a probability in 0..1 or None, got {value!r}")
    return float(value)


def frames_kind(frames) -> str:
    """``glasses_frames`` checked: None -> "small"; else one of :data:`GLASSES_FRAMES`."""
    if frames is None:
        return "small"
    if frames not in GLASSES_FRAMES:
        raise FacemtlError(f"glasses_frames: expected one of {', '.join(GLASSES_FRAMES)} or None, got {frames!r}")
    return frames


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def _uni(rng: np.random.Generator, lo: float, hi: float, n: int | None = None):
    """``rng.uniform(lo, hi[, n])``: the same draws (numpy computes lo + (hi - lo) * random()),
    without its large per-call overhead."""
    return lo + (hi - lo) * (rng.random() if n is None else rng.random(n))


def _clipped_normal(rng, mean_sd_max) -> float:
    mean, sd, lim = mean_sd_max
    return min(max(mean + sd * float(rng.standard_normal()), mean - lim), mean + lim)


@lru_cache(maxsize=8192)
def _subject(seed: int, subject: int, style_id: int) -> dict:
    """Identity traits shared by all images of one subject (cached; treat as read-only)."""
    r = _rng(seed, subject, style_id, 1)
    gender = int(r.integers(2))  # 0 male, 1 female
    if gender == 0:
        hair = HAIR_STYLES[int(r.choice(5, p=[0.55, 0.05, 0.05, 0.0, 0.35]))]
    else:
        hair = HAIR_STYLES[int(r.choice(5, p=[0.1, 0.35, 0.4, 0.15, 0.0]))]
    gains = r.uniform(0.92, 1.06, 3)
    # one brightness gain and a small hue shift: independent channel gains made green-grey skin
    skin = SKIN_TONES[r.integers(len(SKIN_TONES))] * (gains.mean() + 0.3 * (gains - gains.mean()))
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
    # Appearance traits (realism features), drawn after the identity so that one stays as it was.
    # They never change a label: beards are skin, make-up and ears' visibility only matter where
    # their feature is on (ears are drawn, and labelled, only then).
    female = gender == 1
    traits.update(
        lipstick=int(r.integers(len(look.LIPSTICKS))) if r.random() < (0.55 if female else 0.02) else -1,
        eye_shadow=int(r.integers(len(look.EYE_SHADOWS))) if r.random() < (0.35 if female else 0.0) else -1,
        blush=r.uniform(0.3, 1.0) if r.random() < (0.4 if female else 0.0) else 0.0,
        eyeliner=bool(r.random() < (0.4 if female else 0.02)),
        # none, stubble, moustache, goatee, full beard
        beard=int(r.choice(5, p=[0.42, 0.22, 0.08, 0.1, 0.18])) if not female else 0,
        stubble=r.uniform(0.3, 1.0),
        blotch_pattern=int(r.integers(32)),
        blotch=r.uniform(0.3, 1.0),
        redness=r.uniform(0.0, 1.0),
        under_eye=r.uniform(0.0, 1.0),
        oily=r.uniform(0.3, 1.2),
        sclera=r.uniform(0.85, 1.02, 3) * np.array([1.0, 0.97, 0.95]),
        teeth=np.array([235.0, 225.0, 200.0]) * r.uniform(0.75, 1.0, 3) ** np.array([0.5, 1.0, 1.5]),
        ears=bool(r.random() < {"short": 0.95, "bald": 1.0, "bun": 0.9, "bob": 0.25, "long": 0.15}[hair]),
        ear_flare=r.uniform(0.6, 1.4),
        cloth=int(r.integers(len(look.CLOTHES))),
        cloth_gain=r.uniform(0.7, 1.15),
        neckline=int(r.integers(3)),  # round, V, collar
        hair_angle=r.uniform(-1.0, 1.0),
    )
    for value in traits.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # shared through the cache
    return traits


# ---------------------------------------------------------------------------- renderer


# Appearance draws per sample: fixed-size slices of one block of uniforms, so switching a feature
# off never shifts another feature's draws (the background draws from the same generator after it).
LOOK_SLOTS = (("light", 16), ("skin", 4), ("eyes", 4), ("hair", 96), ("camera", 16), ("shadow", 8))
_LOOK_TOTAL = sum(n for _, n in LOOK_SLOTS)


def _look_draws(gen: np.random.Generator) -> dict:
    u = gen.random(_LOOK_TOTAL)
    out, k = {}, 0
    for name, n in LOOK_SLOTS:
        out[name] = u[k:k + n]
        k += n
    return out


def _features(features) -> frozenset:
    """The validated set of realism features (any iterable of names from FEATURES)."""
    if features is ALL_FEATURES:
        return features
    if isinstance(features, str):
        raise FacemtlError(f"features must be a set of names, not the string {features!r}; "
                           f"e.g. frozenset({{{features!r}}})")
    try:
        feats = frozenset(features)
    except TypeError:
        raise FacemtlError(f"features must be an iterable of names, got {type(features).__name__}") from None
    unknown = feats - ALL_FEATURES
    if unknown:
        raise FacemtlError(f"unknown synthetic feature(s) {', '.join(sorted(map(str, unknown)))}; "
                           f"expected names from {', '.join(FEATURES)}")
    return feats


_ANCHOR = np.array([0.0, 0.45, 0.0])  # the camera's anchor: middle of the face (between eyes and chin)
_ANCHOR.flags.writeable = False


class _Cam:
    """Scaled orthographic camera of one sample: template-frame points -> fixed-point pixels
    (x16, OpenCV's ``shift=4``), as one affine map."""

    def __init__(self, rot: np.ndarray, anchor: np.ndarray, iod: float, centre: np.ndarray):
        self.rot, self.iod = rot, iod
        self.m16 = rot.T[:, :2] * (iod * 16)
        self.o16 = (centre - (anchor @ rot.T[:, :2]) * iod) * 16

    def fx(self, p3: np.ndarray) -> np.ndarray:
        return np.rint(p3 @ self.m16 + self.o16).astype(np.int32)


def render_face(seed: int, index: int, style: str = "studio", size: int = 128,
                features=ALL_FEATURES, pose=None, expression=None, creases=None, brow_drop=None,
                glasses_frames=None, angry_shout=None) -> dict:
    """Render one raw sample (loader contract of ``docs/datasets.md``) for ``(seed, index, style, size)``.

    Returns ``image`` (size, size, 3) uint8 RGB, ``landmarks`` float32 (5, 2) 0-based pixel
    (x, y) in MTFL order, ``parsing`` (size, size) uint8 Helen ids, ``emotion`` (FER2013
    order), ``gender``/``smile``/``glasses`` (0-based MTFL attributes), ``pose`` (0..4) and
    ``meta`` (style, seed, index, yaw, pitch, roll, subject, hair, occluded).

    ``features``: the realism features to draw (names from :data:`FEATURES`, default all). A
    feature that only changes appearance never changes the mask or the landmarks; "expressions"
    moves landmarks and mask, "hair_texture" and "ears" add hair and skin pixels to the mask.

    ``pose``: optional ``{angle: (mean, sd, limit)}`` (degrees; angles yaw, pitch, roll) drawn
    instead of the style's spread (:data:`STYLE_PARAMS`) for those angles; the draws stay the
    same ones, so only the angles given change.

    ``expression``: optional ``(low, high)`` range of the expression strength (the factor on the
    emotion's action units, :data:`EMOTION_EXPR`) drawn instead of the style's (:data:`STYLE_PARAMS`;
    0.6-1.25 where a style gives none); the same draw, so only the strength changes (and what it
    moves: landmarks, mask, creases).

    ``creases``: optional probability (0..1) with which each expression crease (nasolabial folds,
    frown lines, nose wrinkles, forehead lines) is drawn on any face, whatever its emotion, instead
    of where the emotion's action unit is strong. Why: drawn by the emotion, a crease alone tells
    the emotion, and real faces show folds and lines at rest. Its draws come from their own stream:
    nothing else in the face changes.

    ``brow_drop``: optional largest distance (fraction of the inter-ocular distance, 0..0.2) by
    which a subject's brows sit lower at rest, drawn per subject from its own stream (uniform from
    0 to it) and added to every image of the subject; the brows' mask moves, the landmarks by
    under 0.01 px (the upper lids at the edge of the brows' field). Why: lowered brows are the
    renderer's anger and disgust, and the real neutral faces measured carry their brows lower
    over the eyes than synthetic neutral faces (docs/evidence.md, "Posed expressions in real
    photos")

    ``glasses_frames``: ``"small"`` (default: the frames every earlier model trained on) or ``"real"``
    (frames sized like real ones, with temples; :func:`_draw_glasses`). Pixels only, and only on
    faces with glasses; every other draw of the face stays the same. Why: the real faces with
    glasses were read worst, and real frames are about 1.5 times the small ones (docs/evidence.md,
    "real-size glasses")

    ``angry_shout``: optional probability (0..1) with which an Angry face shouts (:data:`ANGRY_SHOUT`:
    the mouth open, the upper lip raised, the nose wrinkled) instead of pressing its lips; drawn
    from its own stream, so only Angry faces change (their landmarks, mask and pixels), and only
    with the "expressions" feature. Why: real posed anger is often shouted, and the bundled model,
    which only saw closed-mouth anger, reads the shouting faces as Happy and Surprise
    (docs/evidence.md, "Shouting anger": trained with it, models read posed anger but answer
    Angry on neutral faces too)
    """
    _check(style, size)
    creases = probability("creases", creases)
    angry_shout = probability("angry_shout", angry_shout)
    brow_drop = brow_drop_limit(brow_drop)
    glasses_frames = frames_kind(glasses_frames)
    feats = _features(features)
    if int(seed) < 0 or int(index) < 0:
        raise FacemtlError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    seed, index, size = int(seed), int(index), int(size)
    m = _mesh()
    p, lp = STYLE_PARAMS[style], LOOK_PARAMS[style]
    if pose:
        p = {**p, **_pose_spreads(pose)}
    if expression is not None:
        p = {**p, "expression": expression_range(expression)}
    style_id = STYLES.index(style)
    rng = _rng(seed, index, style_id)
    subject = index // IMAGES_PER_SUBJECT
    subj = _subject(seed, subject, style_id)
    # Appearance stream: draws that only change pixels, never a label, a landmark or a draw of `rng`.
    look_gen = _rng(seed, index, style_id, 2)
    u = _look_draws(look_gen)
    smooth = "smooth_shading" in feats
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
    strength = _uni(rng, *p.get("expression", (0.6, 1.25)))
    table = EMOTION_EXPR if "expressions" in feats else EMOTION_EXPR_PLAIN
    row = table[emotion]
    if emotion == 0 and angry_shout and "expressions" in feats and _rng(seed, index, style_id, 6).random() < angry_shout:
        row = ANGRY_SHOUT
    for name, value in row.items():
        coef[m.expr_index[name]] += value * strength
    if emotion == 3:
        coef[m.expr_index["mouth_open"]] += _uni(rng, 0.0, 0.45)  # some smiles show the teeth
    coef[m.n_modes:] += rng.normal(0, 0.06, len(EXPR_NAMES))  # small idle asymmetry
    coef[m.expr_index["brow_thick"]] += subj["brow"]
    # rounding absorbs last-bit differences between BLAS builds (machine-independent samples)
    v = m.neutral + (coef @ m.basis).reshape(-1, 3)
    if brow_drop:
        v = v + brow_drop * _rng(seed, subject, style_id, 4).random() * m.brows_down
    v = np.round(v, 6)
    lower = v[:, 1] > 0.6
    v[lower, 0] *= subj["jaw"]
    # lips never cross: the lower inner lip stays below the upper one
    lo, up = m.lip_lower_inner, m.lip_upper_inner
    v[lo, 1] = np.maximum(v[lo, 1], v[up, 1] + 0.004)

    # --- camera: scaled orthographic projection
    rot = rotation(yaw, pitch, roll)
    iod = _uni(rng, *p["iod"]) * size
    centre = np.array([w / 2, h / 2]) + _uni(rng, -p["shift"], p["shift"], 2) * size
    cam_t = _Cam(rot, _ANCHOR, iod, centre)
    cam = (v - _ANCHOR) @ rot.T
    pts = cam[:, :2] * iod + centre
    pts16 = np.rint(pts * 16).astype(np.int32)
    depth = cam[:, 2]

    # --- lighting: the style's key light (also the plain model's only light)
    key = np.array([_uni(rng, -p["side"], p["side"]), _uni(rng, -0.6, 0.1), 1.0])
    key /= math.sqrt(key @ key)
    ambient, diffuse = _uni(rng, *p["ambient"]), _uni(rng, *p["diffuse"])
    skin_gain = _uni(rng, 0.95, 1.05)
    rig = look.lights(u["light"], lp, key, ambient, diffuse, "lighting" in feats)
    fallback = look.vertex_radiance(_FALLBACK_NORMAL, rig, _FALLBACK_AO)[0]

    # --- face items in depth order (painter's algorithm, back faces culled)
    # e1 = p1 - p0, e2 = p2 - p0 per triangle; front where e1.y * e2.x - e1.x * e2.y > 0 (by
    # coordinate rows: four times faster than gathering (T, 3, 2) corners)
    cx, cy = pts.T.copy()
    x, y = cx[m.tris_t], cy[m.tris_t]
    front = (y[1] - y[0]) * (x[2] - x[0]) - (x[1] - x[0]) * (y[2] - y[0]) > 1e-9
    # regions, else their patches, else triangles: whichever is wholly front-facing
    back = ~front
    region_ok = np.ones(len(m.region_loops), bool)
    region_ok[m.region_of[back]] = False
    patch_ok = ~region_ok[m.region_of_patch]
    patch_ok[m.patch_of[back]] = False
    single = np.flatnonzero(front & ~region_ok[m.region_of] & ~patch_ok[m.patch_of])
    region_ok, patch_ok = np.flatnonzero(region_ok), np.flatnonzero(patch_ok)
    corners = np.concatenate([m.region_loops[region_ok], m.patch_loops[patch_ok], m.tri_as_patch[single]])
    item_mat = np.concatenate([m.region_material[region_ok], m.patch_material[patch_ok], m.material[single]])
    bias = np.concatenate([m.region_bias[region_ok], m.patch_bias[patch_ok], m.depth_bias[single]])
    order = np.argsort(depth[corners].sum(1) / corners.shape[1] + bias, kind="stable")  # mean depth
    polys = pts16[corners[order]]
    item_mat = item_mat[order]

    # camera-space vertex normals of the subject's identity shape: expressions bend the surface
    # too little to change its shading, and the identity shape's normals are cached
    vn = _identity_normals(seed, subject, style_id) @ rot.T
    vmod = _vertex_albedo(seed, subject, style_id, feats)

    # --- draw the id buffer (the labels: the same whatever the features that only change pixels)
    canvas = np.zeros((h, w), np.uint8)
    hair_mat = SCALP if subj["hair"] == "bald" else HAIR
    head = m.sphere * m.head_r * (1.0 if subj["hair"] == "bald" else 1.06) + m.head_c
    keep = head[:, 1] < {"short": 0.05, "bob": 1.2, "long": 10, "bun": 0.05, "bald": -0.1}[subj["hair"]]
    hp = head[keep]
    if subj["hair"] == "long":
        hp = np.concatenate([hp, m.curtain])
    if subj["hair"] == "bun":
        hp = np.concatenate([hp, m.bun])
    hull = cv2.convexHull(cam_t.fx(hp))[:, 0]
    textured_hair = "hair_texture" in feats and subj["hair"] != "bald"
    if textured_hair:
        hull = look.ragged_outline(hull, u["hair"][:48], iod * 16)
    cv2.fillPoly(canvas, [hull], hair_mat, cv2.LINE_8, 4)
    if "ears" in feats and subj["ears"]:
        _draw_ears(canvas, m, subj, cam_t)
    neck3 = m.neck3.copy()
    neck3[:, 0] *= subj["jaw"]
    cv2.fillConvexPoly(canvas, cam_t.fx(neck3), NECK, cv2.LINE_8, 4)
    _draw_shoulders(canvas, subj, cam_t, "clothing" in feats)
    # The mouth line (corner -> inner lips -> corner) is drawn right after the nearest lip
    # item, so the thin lips near the corners stay visible at small sizes.
    is_lip = IS_LIP[item_mat]
    split = int(np.flatnonzero(is_lip)[-1]) + 1 if is_lip.any() else len(item_mat)
    _fill_runs(canvas, polys[:split], item_mat[:split])
    if is_lip.any():
        cv2.polylines(canvas, [pts16[m.mouth_line]], True, LIPLINE, max(1, int(round(iod / 40))), cv2.LINE_8, 4)
    _fill_runs(canvas, polys[split:], item_mat[split:])
    if subj["hair"] != "bald" and subj["fringe"] > 0:
        _draw_fringe(canvas, m, v, subj, cam_t, u["hair"][48:72] if textured_hair else None)
    buf = canvas
    if textured_hair:
        look.flyaway_strands(buf, hull, u["hair"][72:88], iod * 16)

    # --- label-preserving details (creases, beard, nostrils, teeth, eyes) as types in one mask
    details = np.zeros((h, w), np.uint8)
    if "expressions" in feats:
        if creases is None:  # where the emotion's action unit is strong
            drawn = [coef[m.expr_index[basis]] > threshold for _, basis, threshold in _CREASE_RULES]
        else:
            drawn = _rng(seed, index, style_id, 3).random(len(_CREASE_RULES)) < creases
        _draw_creases(details, m, pts, iod, drawn)
    if "facial_hair" in feats and subj["beard"] >= 2:
        _draw_beard(details, m, pts, subj["beard"], cam_t)
    if "nostrils" in feats:
        _draw_nostrils(details, v, cam_t)
    if "mouth_interior" in feats:
        _draw_teeth(details, m, v, coef, subj, cam_t)
    _draw_eye_details(details, pts, pts16, cam_t, rig, u["eyes"], "eyes" in feats)
    look.apply_details(buf, details)

    # --- image and mask from the same buffer
    parsing = cv2.LUT(buf, LABEL_LUT)
    image = cv2.LUT(cv2.merge((buf, buf, buf)), _palette(seed, subject, style_id, feats))
    spec = "specular" in feats
    if smooth or spec:
        vis = np.minimum(np.maximum(vn[:, 2] * 3.0, 0.0), 1.0)
        vis[468:] = 0.0  # iris points carry no surface
        chans = []
        if smooth:
            chans.append(look.vertex_radiance(vn, rig, m.ao) * vmod)
        if spec:
            chans.append(look.vertex_specular(vn, rig, m.gloss * subj["oily"]))
        field, cover = look.splat_field(pts, chans[0] if len(chans) == 1 else np.concatenate(chans, 1), vis, size)
    if spec:
        # A highlight adds light whatever the surface colour; as a multiplier of the skin's albedo
        # it is exact on skin (where the gloss is) and close on the lips.
        sheen = field[:, :, -3:] * (cover * (255.0 / np.maximum(subj["skin"], 30.0)))
    if smooth:
        low = cover * field[:, :, :3] + (1.0 - cover) * fallback
        low *= skin_gain
        if spec:
            low += sheen
        mult = cv2.resize(cv2.convertScaleAbs(low, alpha=128), (w, h), interpolation=cv2.INTER_LINEAR)
    else:  # plain: flat facets (quads of the mesh, each lit by its mean normal), shade only
        mult = _faceted_shade(m, front, depth, pts16, vn, vmod, rig, fallback, skin_gain, h, w)
        if spec:
            mult = cv2.add(mult, cv2.resize(cv2.convertScaleAbs(sheen, alpha=128), (w, h),
                                            interpolation=cv2.INTER_LINEAR))
    strands = textured_hair or (subj["beard"] >= 2 and "facial_hair" in feats)
    if "skin_texture" in feats or strands:
        # pores everywhere on the body (eyes and teeth get a faint grain, like a sensor's), strands on hair
        if "skin_texture" in feats:
            tex = look.crop(look.pore_table(), h, w, u["skin"][0], u["skin"][1])
            if strands:
                tex = tex.copy()
        else:
            tex = np.full((h, w, 3), 128, np.uint8)
        if strands:
            k = int(np.argmin(np.abs(_STRAND_ANGLES - (25 * subj["hair_angle"] - roll))))
            cv2.copyTo(look.crop(look.strand_tables()[k], h, w, u["hair"][94], u["hair"][95]),
                       cv2.LUT(buf, _HAIR_LIKE_U8), tex)
        mult = cv2.multiply(mult, tex, scale=1 / 128)
    image = cv2.multiply(image, mult, scale=1 / 128)
    if "backgrounds" in feats:
        bg = look.background_textured(look_gen, h, w, p["clutter"], lp["backdrop_cdf"])
    else:
        bg = look.background_plain(look_gen, h, w, p["clutter"])
    if "lighting" in feats:  # the scene shares the light's colour and level
        tone = ((rig[2] + rig[1][0] * 0.6) * rig[5]).tolist()
        bg = cv2.multiply(bg, (min(tone[0], 4.0), min(tone[1], 4.0), min(tone[2], 4.0), 0.0))
    cv2.copyTo(bg, (buf == 0).view(np.uint8), image)
    if "lighting" in feats and u["shadow"][0] < lp["shadow"]:
        image = cv2.multiply(image, look.shadow_band(u["shadow"][1:], size), scale=1 / 128)

    # objects in front of the face share the scene's light (glasses and occluders do not glow)
    scene = np.ones(3)
    if "lighting" in feats:
        scene = np.minimum((rig[2] + rig[1][0] * 0.6) * rig[5], 1.5)

    # --- landmarks (0-based pixel x, y), MTFL order
    lm = np.concatenate([pts[m.eye_contours].sum(1) / m.eye_contours.shape[1], pts[[m.nose_tip, m.mouth_l, m.mouth_r]]])

    # --- glasses: pixels only, the mask keeps what is under them
    if glasses:
        # low-resolution styles get thicker frames so the glasses label stays visible
        extra = _rng(seed, index, style_id, 5) if glasses_frames == "real" else None
        _draw_glasses(image, rng, extra, v, m, cam_t, centre, 2.5 if p["lowres"] else 1.0, scene, glasses_frames)

    # --- occluder: labelled background in the mask
    occluded = bool(rng.random() < p["occlude"])
    if occluded:
        occ = np.zeros((h, w), np.uint8)
        face_c = lm.mean(0)
        oc = face_c + _uni(rng, -0.9, 0.9, 2) * iod
        axes = (int(_uni(rng, 0.3, 0.8) * iod), int(_uni(rng, 0.3, 0.9) * iod))
        cv2.ellipse(occ, (int(oc[0]), int(oc[1])), axes, float(_uni(rng, 0, 180)), 0, 360, 1, -1)
        colour = subj["skin"] * _uni(rng, 0.7, 1.1) if rng.random() < 0.5 else _uni(rng, 0, 255, 3)
        sel = occ.astype(bool)
        image[sel] = np.clip(colour * scene, 0, 255).astype(np.uint8)
        parsing[sel] = 0

    image = _camera(image, rng, p, lp, u["camera"], "camera" in feats, parsing)

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


_HAIR_LIKE_U8 = look.HAIR_LIKE.astype(np.uint8)
_STRAND_ANGLES = np.array(look.STRAND_ANGLES, np.float64)
_FALLBACK_NORMAL = np.array([[0.0, 0.25, 0.97]])  # hair, neck, ears: lit like a surface facing us
_FALLBACK_AO = np.array([0.85])


@lru_cache(maxsize=512)
def _palette(seed: int, subject: int, style_id: int, feats: frozenset) -> np.ndarray:
    """(1, 256, 3) uint8 colour table of one subject's materials (cached per subject)."""
    return look.palette(_subject(seed, subject, style_id), feats).astype(np.uint8)[None]


def _fill_runs(buf: np.ndarray, polys: np.ndarray, mats: np.ndarray) -> None:
    """Fill depth-ordered polygons, one fillPoly call per run of equal material.

    Within a run the polygons are neighbours on one surface; OpenCV fills a polygon list with
    the even-odd rule, which only differs from filling them one by one where two polygons of
    the same run overlap (a fold of one material), not seen at our poses.
    """
    if len(mats) == 0:
        return
    cut = (np.flatnonzero(mats[1:] != mats[:-1]) + 1).tolist()
    mats_l = mats.tolist()
    for s, e in zip([0, *cut], [*cut, len(mats)]):
        cv2.fillPoly(buf, polys[s:e], mats_l[s], cv2.LINE_8, 4)


def _faceted_shade(m, front, depth, pts16, vn, vmod, rig, fallback, gain: float, h: int, w: int) -> np.ndarray:
    """The plain renderer's light (x128 uint8 RGB): the mesh's quads and triangles in depth
    order, each filled with the radiance of its mean normal, so facets show; elsewhere (hair,
    neck, clothes) the fallback light. Only pixels change: the labels come from the id buffer."""
    qa, qb = m.quad_members[:, 0], m.quad_members[:, 1]
    quad_ok = front[qa] & front[qb]
    single = np.concatenate([m.single, qa[~quad_ok], qb[~quad_ok]])
    single = single[front[single]]
    corners = np.concatenate([m.quads[quad_ok], m.tris[single][:, [0, 1, 2, 2]]])
    first = np.concatenate([qa[quad_ok], single])
    corners = corners[np.argsort(depth[corners].mean(1) + m.depth_bias[first], kind="stable")]
    n = vn[corners].sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    rad = look.vertex_radiance(n, rig, m.ao[corners].mean(1)) * vmod[corners].mean(1) * gain
    shade = np.empty((h, w, 3), np.uint8)
    shade[:] = np.clip(fallback * (128 * gain), 0, 255).astype(np.uint8)
    for poly, s in zip(pts16[corners], np.clip(rad * 128, 0, 255).tolist()):
        cv2.fillConvexPoly(shade, poly, s, cv2.LINE_8, 4)
    return shade


@lru_cache(maxsize=512)
def _identity_normals(seed: int, subject: int, style_id: int) -> np.ndarray:
    """Template-frame vertex normals of one subject's neutral face (cached; read-only)."""
    m, subj = _mesh(), _subject(seed, subject, style_id)
    v = m.neutral + (subj["shape"] @ m.basis[: m.n_modes]).reshape(-1, 3)
    v[v[:, 1] > 0.6, 0] *= subj["jaw"]
    vn = m.vertex_normals(v)
    vn.flags.writeable = False
    return vn


@lru_cache(maxsize=512)
def _vertex_albedo(seed: int, subject: int, style_id: int, feats: frozenset) -> np.ndarray:
    """(N, 3) albedo multiplier per vertex of one subject: skin tone zones and blotches,
    stubble, make-up (cached; read-only)."""
    m, subj = _mesh(), _subject(seed, subject, style_id)
    mod = np.ones((m.n, 3))
    z = m.zones  # cheek, nose, under-eye, forehead, upper lid, stubble
    if "skin_texture" in feats:
        red, dark = subj["redness"], subj["under_eye"]
        d = np.array([[0.03 * red, -0.07 * red, -0.05 * red],
                      [0.03 * red, -0.08 * red, -0.06 * red],
                      [-0.1 * dark, -0.12 * dark, -0.06 * dark],
                      [0.02, 0.02, 0.0]])
        mod += z[:, :4] @ d
        mod += (0.04 * subj["blotch"]) * m.blotch[subj["blotch_pattern"]][:, None] * np.array([0.9, 1.0, 1.15])
    if "facial_hair" in feats and subj["gender"] == 0 and subj["beard"] >= 1:
        mod *= 1.0 - (subj["stubble"] * z[:, 5])[:, None] * np.array([0.3, 0.29, 0.25])
    if "makeup" in feats:
        if subj["eye_shadow"] >= 0:
            tint = look.EYE_SHADOWS[subj["eye_shadow"]] / np.maximum(subj["skin"], 1.0)
            mod += 0.8 * z[:, 4:5] * (tint - 1.0) * mod
        if subj["blush"] > 0:
            mod += z[:, 0:1] * np.array([0.04, -0.07, -0.04]) * subj["blush"]
    mod.flags.writeable = False
    return mod


def _draw_fringe(canvas, m, v, subj: dict, cam_t: _Cam, zigzag) -> None:
    """Hair over the forehead; with hair texture its lower edge is a zigzag of strand tips."""
    arc = v[m.forehead_arc]
    taper = np.clip(1.0 - np.abs(arc[:, 0]) / 1.15, 0.0, 1.0) ** 0.5
    low = arc.copy()
    low[:, 1] += subj["fringe"] * (0.4 + taper)
    low[:, 2] += 0.03
    if zigzag is not None:
        mid = 0.5 * (low[1:] + low[:-1])
        mid[:, 1] -= subj["fringe"] * (0.15 + 0.35 * zigzag[:len(mid)])
        zig = np.empty((2 * len(low) - 1, 3))
        zig[0::2], zig[1::2] = low, mid
        low = zig
    ring = np.concatenate([arc, low[::-1]]) + np.array([0, -0.02, 0.03])
    if (ring @ cam_t.rot[2]).sum() / len(ring) - cam_t.rot[2] @ _ANCHOR > -0.5:  # seen from the front
        cv2.fillPoly(canvas, [cam_t.fx(ring)], HAIR, cv2.LINE_8, 4)


def _draw_ears(canvas, m, subj: dict, cam_t: _Cam) -> None:
    """Ears beside the head (skin), skipped when turned behind it."""
    flare = subj["ear_flare"]
    for sign in (-1.0, 1.0):
        outward = cam_t.rot @ np.array([sign, 0.0, -0.2])
        if outward[2] < -0.55:  # pointing away: the head hides it
            continue
        both = m.ears.copy()
        both[:, 0] = (-1.0 + (both[:, 0] + 1.0) * flare) * -sign
        q = cam_t.fx(both)
        cv2.fillPoly(canvas, [q[:16]], EAR, cv2.LINE_8, 4)
        cv2.fillPoly(canvas, [q[16:]], EAR_IN, cv2.LINE_8, 4)


def _draw_shoulders(canvas, subj: dict, cam_t: _Cam, clothing: bool) -> None:
    """Shoulders (labelled background, like the neck): bare, or clothes with a neckline. The
    outline is the same either way and the neckline only repaints neck and cloth, so the switch
    never moves the hair they cover."""
    cv2.fillPoly(canvas, [cam_t.fx(_BODY)], CLOTH, cv2.LINE_8, 4)
    if not clothing:
        return
    cut = np.zeros_like(canvas)
    kind = subj["neckline"]
    if kind == 2:  # shirt collar: two flaps over the neck base
        q = cam_t.fx(_COLLAR)
        cv2.fillConvexPoly(cut, q[:3], CLOTH_TRIM, cv2.LINE_8, 4)
        cv2.fillConvexPoly(cut, q[3:], CLOTH_TRIM, cv2.LINE_8, 4)
    else:  # round or V neckline: skin over the cloth
        cv2.fillPoly(cut, [cam_t.fx(_NECKLINES[kind])], NECK, cv2.LINE_8, 4)
    # repaint only the neckline's pixels (a few hundred) that are cloth or neck
    flat, cut = canvas.reshape(-1), cut.reshape(-1)
    idx = np.flatnonzero(cut.view(bool))
    under = flat[idx]
    idx = idx[(under == CLOTH) | (under == NECK)]
    flat[idx] = cut[idx]


_HALF_BODY = np.array([[0.7, 2.5], [1.5, 2.7], [2.2, 3.0], [2.65, 3.6], [2.9, 4.6]])
_BODY = np.concatenate([np.concatenate([_HALF_BODY * [-1, 1], _HALF_BODY[::-1]]), np.full((10, 1), -0.9)], 1)
_NECKLINES = (np.stack([-0.68 * np.cos(np.linspace(0, np.pi, 9)), 2.48 + 0.35 * np.sin(np.linspace(0, np.pi, 9)),
                        np.full(9, -0.82)], 1),
              np.array([[-0.68, 2.48, -0.82], [0.0, 3.3, -0.82], [0.68, 2.48, -0.82]]))
_COLLAR = np.array([[0.0, 2.95, -0.7], [-0.72, 2.2, -0.78], [-0.8, 2.6, -0.8],
                    [0.0, 2.95, -0.7], [0.72, 2.2, -0.78], [0.8, 2.6, -0.8]])

_IRIS_RADIUS = 0.088  # template: mean distance of the iris boundary points from its centre
_CIRCLE16 = np.stack([np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                      np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False)), np.zeros(16)], 1)
_UPPER_LIDS = np.array([[133, 173, 157, 158, 159, 160, 161, 246, 33],
                        [362, 398, 384, 385, 386, 387, 388, 466, 263]])


def _draw_eye_details(mask, pts, pts16, cam_t: _Cam, rig, u, fancy: bool) -> None:
    """Irises (always: the eye class keeps them) and, with "eyes", pupils, catch-lights and lids."""
    gaze = np.array([0.06 * (u[0] - 0.5), 0.035 * (u[1] - 0.5), 0.0]) @ cam_t.m16
    centres = pts[[468, 473]] * 16 + gaze
    ring = (_IRIS_RADIUS * _CIRCLE16) @ cam_t.m16
    key = rig[0][0]
    look.draw_eyes(mask, centres, ring, pts16[_UPPER_LIDS], key[:2], cam_t.iod, fancy)


def _draw_teeth(mask, m, v, coef, subj: dict, cam_t: _Cam) -> None:
    """Upper teeth (fixed to the skull: the identity shape's upper lip line), lower teeth and
    tongue (moving with the jaw), over the mouth-interior pixels only."""
    if (v[m.lip_lower_inner, 1] - v[m.lip_upper_inner, 1]).max() < 0.02:  # closed mouth
        return
    top = m.neutral[m.lip_upper_chain] + np.einsum("k,kvc->vc", coef[: m.n_modes], m.chain_modes)
    top[:, 0] *= subj["jaw"]
    xm = 0.5 * (v[78, 0] + v[308, 0])
    top = top[np.abs(top[:, 0] - xm) < 0.3]
    lower = v[m.lip_lower_chain]
    lower = lower[np.abs(lower[:, 0] - xm) < 0.26]
    if len(top) < 2 or len(lower) < 2:
        return
    nt, nl = len(top), len(lower)
    xs = xm + _GAP_X
    yt = np.interp(xs, top[:, 0], top[:, 1])
    zt = np.interp(xs, top[:, 0], top[:, 2]) - 0.02
    p3 = np.concatenate([top + (0.0, -0.05, -0.01), (top + (0.0, 0.085, -0.02))[::-1],
                         lower + (0.0, -0.05, -0.02), (lower + (0.0, 0.05, -0.01))[::-1],
                         v[14] + _TONGUE,
                         np.stack([xs, yt - 0.02, zt], 1), np.stack([xs, yt + 0.085, zt], 1)])
    q = cam_t.fx(p3)
    k = 2 * nt + 2 * nl
    gaps = np.stack([q[k + 12:k + 12 + len(xs)], q[k + 12 + len(xs):]], 1)
    look.draw_mouth_interior(mask, q[:2 * nt], q[2 * nt:k], q[k:k + 12], gaps)


_GAP_X = np.array([-0.085, 0.0, 0.085])
_TONGUE = np.stack([0.2 * np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)),
                    0.08 * np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False)) - 0.03, np.full(12, -0.1)], 1)


def _draw_nostrils(mask, v, cam_t: _Cam) -> None:
    """Dark nostril openings under the nose tip (ellipses facing down-forward), over nose pixels."""
    if cam_t.rot[2] @ np.array([0.0, 1.0, 0.25]) < 0.0:  # seen from above: the tip hides them
        return
    c = 0.55 * v[[98, 327]] + 0.45 * v[2] + (0.0, -0.015, 0.0)
    q = cam_t.fx(np.concatenate([c[0] + _NOSTRIL_RINGS[0], c[1] + _NOSTRIL_RINGS[1]]))
    cv2.fillPoly(mask, [q[:10], q[10:]], look.D_NOSTRIL, cv2.LINE_8, 4)


_T10 = np.linspace(0, 2 * np.pi, 10, endpoint=False)[:, None]
_NOSTRIL_RINGS = [np.cos(_T10) * 0.062 * np.array([0.9, 0.0, s * 0.43]) + np.sin(_T10) * 0.04 * np.array([0.0, -0.24, 0.97])
                  for s in (1.0, -1.0)]


def _draw_beard(mask, m, pts, kind: int, cam_t: _Cam) -> None:
    """Moustache (2), moustache and chin patch (3) or full beard (4) over the skin pixels
    (labelled skin, as Helen has no beard class)."""
    centre = m.face_centre @ cam_t.m16 + cam_t.o16
    polys = []
    for idx, wts, push in m.beards[kind]:
        q = (pts[idx] * wts[:, :, None]).sum(1) * 16
        polys.append(np.rint(centre + (q - centre) * push[:, None]).astype(np.int32))
    cv2.fillPoly(mask, polys, look.D_BEARD, cv2.LINE_8, 4)


# expression crease -> (basis, threshold): drawn when that coefficient is strong
_CREASE_RULES = (("smile", "corner_up", 0.6), ("frown", "brow_frown", 0.9), ("nose", "nose_wrinkle", 0.6),
                 ("forehead", "brow_out_up", 0.8))


def _draw_creases(mask, m, pts, iod: float, drawn) -> None:
    """Expression creases as thin darker lines on skin and nose: nasolabial folds (smile), frown
    lines, nose wrinkles, forehead lines (raised brows); those ``drawn`` (one bool per rule of
    :data:`_CREASE_RULES`) names."""
    lines = []
    for (crease, _, _), on in zip(_CREASE_RULES, drawn):
        if on:
            for idx, wts in m.creases[crease]:
                lines.append(np.rint((pts[idx] * wts[:, :, None]).sum(1) * 16).astype(np.int32))
    if lines:
        cv2.polylines(mask, lines, False, look.D_CREASE, max(1, int(round(iod / 40))), cv2.LINE_8, 4)


def _camera(image, rng, p: dict, lp: dict, u, fancy: bool, parsing) -> np.ndarray:
    """Photometric degradation per style: one 3x4 colour matrix (grey cast, tint, contrast,
    brightness; with "camera" also auto exposure and a white-balance cast), vignetting,
    resolution loss, defocus, motion blur, sensor noise (chroma noise too) and JPEG."""
    h, w = image.shape[:2]
    g = _uni(rng, *p["grey"]) if p["grey"][1] > 0 else 0.0
    tint = 1.0 + rng.normal(0, 0.04, 3) if g > 0 else np.ones(3)
    gain, offset = _uni(rng, 0.85, 1.15), _uni(rng, -15, 15)
    colour = gain * tint[:, None] * ((1 - g) * _EYE3 + g * _LUMA[None, :])
    boost = 1.0
    if fancy:
        # auto exposure: the camera meters the face skin and pulls it part of the way to mid-grey
        mean = cv2.mean(image, mask=cv2.LUT(parsing, _FACE_SKIN))
        lum = max(8.0, 0.299 * mean[0] + 0.587 * mean[1] + 0.114 * mean[2]) if mean[0] + mean[1] > 0 else 110.0
        boost = min(3.0, max(0.7, ((95 + 60 * u[0]) / lum) ** lp["exposure"]))
        colour = (boost * (1.0 + lp["cast"] * 1.7 * (2 * u[1:4] - 1)))[:, None] * colour
    image = cv2.transform(image, np.concatenate([colour, np.full((3, 1), offset)], 1))
    if fancy and u[4] < lp["vignette"]:
        vig = look.vignette_table(w) if h == w else cv2.resize(look.vignette_table(max(h, w)), (w, h))
        s = 0.4 + 0.6 * u[5]
        image = cv2.multiply(image, cv2.addWeighted(vig, s, vig, 0.0, 128 * (1 - s)), scale=1 / 128)
    if p["lowres"] is not None:
        small = max(16, int(h * _uni(rng, *p["lowres"])))
        image = cv2.resize(cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA), (w, h),
                           interpolation=cv2.INTER_LINEAR)
    sigma = _uni(rng, *p["blur"])
    if fancy and u[6] < lp["defocus"]:
        sigma += (0.4 + 0.6 * u[7]) * w / 128
    if sigma > 0.3:
        k = 2 * int(np.ceil(2.5 * sigma)) + 1  # +-2.5 sigma holds 99% of the kernel
        image = cv2.GaussianBlur(image, (k, k), sigma)
    if fancy and u[8] < lp["motion"]:
        length = 3 + 2 * int(u[9] * 3 * w / 128)
        image = cv2.filter2D(image, -1, look.motion_kernel(length, int(u[10] * 8)))
    noise = _uni(rng, *p["noise"])
    if noise > 0.5:
        table = look.chroma_noise_table() if fancy and u[11] < 0.5 else look.noise_table()
        y0, x0 = rng.integers(0, 512 - max(h, w), 2).tolist() if max(h, w) < 512 else (0, 0)
        crop = table[y0:y0 + h, x0:x0 + w]
        if crop.shape[:2] != (h, w):
            crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST)
        noise *= min(boost, 1.8) ** 0.5  # the exposure gain amplifies sensor noise
        # image + noise * (crop - 128) / 32, saturated to uint8
        image = cv2.addWeighted(image, 1.0, crop, noise / 32.0, -128.0 * noise / 32.0)
    q = int(rng.integers(p["jpeg"][0], p["jpeg"][1] + 1))
    ok, enc = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])
    if ok:  # channel order is irrelevant for a lossy round trip: encode and decode alike
        # no EXIF in our own bytes: skipping the orientation lookup saves a third of the decode
        image = cv2.imdecode(enc, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return image


_LUMA = np.array([0.299, 0.587, 0.114])
_EYE3 = np.eye(3)
_FACE_SKIN = np.zeros(256, np.uint8)
_FACE_SKIN[[1, 6]] = 1  # Helen skin and nose


def _draw_glasses(image, rng, extra, v, m, cam: _Cam, centre, rim_scale=1.0, light=(1.0, 1.0, 1.0),
                  frames: str = "small") -> None:
    """Rims (and tinted lenses) in a plane in front of the eyes, projected with the face.

    ``frames="small"``: the renderer's first frames, lenses 0.44-0.56 x 0.30-0.42 of the
    inter-ocular distance, rims iod / 25 thick. ``"real"``: sized like real frames, lenses
    0.64-0.84 x 0.40-0.60 (45-56 mm by 25-38 mm against a 63-mm pupil distance) centred a little
    below and outside the eyes, rims from thin metal to thick plastic, temples back to the ears,
    sometimes a glare across the lenses. Both take the same draws from ``rng`` (the face's later
    draws stay the same); "real" takes the rest from ``extra``, a stream of its own (unused by
    "small": None will do)."""
    real = frames == "real"
    rot, iod = cam.rot, cam.iod
    t = np.linspace(0, 2 * np.pi, 24 if real else 20, endpoint=False)
    e = _uni(rng, 2.0, 4.0)  # super-ellipse exponent: round (2) to rectangular (4)
    cx, sy = np.cos(t), np.sin(t)
    shape = np.stack([np.sign(cx) * np.abs(cx) ** (2 / e), np.sign(sy) * np.abs(sy) ** (2 / e)], 1)
    rx, ry = (_uni(rng, 0.32, 0.42), _uni(rng, 0.20, 0.30)) if real else (_uni(rng, 0.22, 0.28), _uni(rng, 0.15, 0.21))
    sun = rng.random() < 0.2
    colour = tuple(float(c) for c in (_uni(rng, 0, 60, 3) if rng.random() < 0.7 else _uni(rng, 80, 200, 3)) * light)
    if real:
        thin = extra.random() < 0.5  # metal wire or plastic
        thick = max(1, int(round(iod * (_uni(extra, 0.015, 0.03) if thin else _uni(extra, 0.035, 0.08)) * rim_scale)))
        drop, spread = _uni(extra, 0.0, 0.06), _uni(extra, 0.0, 0.05)
        glare = extra.random() < 0.4
        glare_at, glare_w, glare_a = _uni(extra, -0.6, 0.6), _uni(extra, 0.15, 0.4), _uni(extra, 0.12, 0.3)
    else:
        thick = max(1, int(round(iod / 25 * rim_scale)))
        drop = spread = 0.0
        glare = False

    rims, temples = [], []
    for eye, side in ((m.eye_l, -1.0), (m.eye_r, 1.0)):
        c = v[eye].mean(0)
        x0, y0, z0 = c[0] + side * spread, c[1] + 0.02 + drop, c[2] + 0.3
        rims.append(cam.fx(np.stack([x0 + rx * shape[:, 0], y0 + ry * shape[:, 1], np.full(len(t), z0)], 1)))
        if real:  # from the rim's upper outer corner back over the ear
            temples.append(np.array([[x0 + side * rx, y0 - 0.5 * ry, z0], [side * 1.12, 0.0, -0.9]]))
    yaw_sin = rot[0, 2]  # > 0: nose to image-right, the image-right eye turns away
    near = 0 if yaw_sin > 0 else 1
    if abs(yaw_sin) > 0.6:  # beyond ~37 degrees the far rim hides behind the nose
        rims = [rims[near]]
    if sun:
        overlay = image.copy()
        cv2.fillPoly(overlay, rims, (20.0, 20.0, 25.0), cv2.LINE_AA, 4)
        cv2.addWeighted(image, 0.2, overlay, 0.8, 0.0, dst=image)
    if glare:  # a slanted band of reflected light across the lenses
        h, w = image.shape[:2]
        lens, band = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
        cv2.fillPoly(lens, rims, 1, cv2.LINE_8, 4)
        a = centre + np.array([glare_at, -1.0]) * iod
        d = np.array([1.0, 2.0]) * iod
        quad = np.array([a - d, a - d + [glare_w * iod, 0], a + d + [glare_w * iod, 0], a + d]) * 16
        cv2.fillPoly(band, [np.round(quad).astype(np.int32)], 1, cv2.LINE_8, 4)
        sel = (lens & band).astype(bool)
        lit = np.minimum(np.asarray(light, np.float64) * 235.0, 255.0)
        image[sel] = (image[sel] * (1 - glare_a) + lit * glare_a).astype(np.uint8)
    if real:
        for temple in temples if abs(yaw_sin) < 0.25 else [temples[near]]:  # the far one hides behind the head
            q = cam.fx(temple)
            cv2.line(image, tuple(int(k) for k in q[0]), tuple(int(k) for k in q[1]), colour, max(1, thick * 2 // 3),
                     cv2.LINE_AA, 4)
    cv2.polylines(image, rims, True, colour, thick, cv2.LINE_AA, 4)
    if len(rims) == 2:  # bridge between the inner rim points
        a = rims[0][np.argmax(rims[0][:, 0])] if rot[0, 0] > 0 else rims[0][np.argmin(rims[0][:, 0])]
        b = rims[1][np.argmin(rims[1][:, 0])] if rot[0, 0] > 0 else rims[1][np.argmax(rims[1][:, 0])]
        cv2.line(image, tuple(int(q) for q in a), tuple(int(q) for q in b), colour, thick, cv2.LINE_AA, 4)


# Below this many faces starting worker interpreters costs more than it saves (measured: a new
# interpreter imports the renderer in ~0.4 s, the time of ~250 faces at 128 px on one core).
PARALLEL_RENDER_MIN = 1024


class SyntheticFaces(collections.abc.Sequence):
    """``n`` synthetic raw samples; item ``i`` is ``render_face(seed, i, style, size, features)``.

    ``features``: the realism features to draw (names from :data:`FEATURES`, default all); an
    ablation passes e.g. ``ALL_FEATURES - {"eyes"}``. ``pose``: head pose spreads instead of the
    style's, ``expression``: an expression strength range instead of the style's, ``creases``: the
    probability of each crease on any face, ``brow_drop``: how much lower a subject's brows may sit,
    ``glasses_frames``: "small" or "real" frames, ``angry_shout``: the probability of a shouting
    Angry face (see :func:`render_face`).
    """

    def __init__(self, n: int, style: str = "studio", seed: int = 0, size: int = 128,
                 features=ALL_FEATURES, pose=None, expression=None, creases=None, brow_drop=None,
                 glasses_frames=None, angry_shout=None):
        _check(style, size)
        if int(n) < 0:
            raise FacemtlError(f"number of synthetic faces must be >= 0, got {n}")
        if int(seed) < 0:
            raise FacemtlError(f"seed must be >= 0, got {seed}")
        self.n, self.style, self.seed, self.size = int(n), style, int(seed), int(size)
        self.features = _features(features)
        self.pose = _pose_spreads(pose) if pose else None
        self.expression = None if expression is None else expression_range(expression)
        self.creases = probability("creases", creases)
        self.angry_shout = probability("angry_shout", angry_shout)
        self.brow_drop = brow_drop_limit(brow_drop)
        self.glasses_frames = frames_kind(glasses_frames)
        self._rendered: list[dict] | None = None  # every face, once prerender() ran

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
        if self._rendered is not None:
            return self._rendered[i]
        return render_face(self.seed, i, self.style, self.size, **self.options())

    def options(self) -> dict:
        """The render options of every face, as :func:`render_face` keyword arguments."""
        return dict(features=self.features, pose=self.pose, expression=self.expression, creases=self.creases,
                    brow_drop=self.brow_drop, glasses_frames=self.glasses_frames, angry_shout=self.angry_shout)

    def prerender(self, processes: int = 1) -> SyntheticFaces:
        """Render every face now, in ``processes`` worker processes, and keep them in memory
        (returns self). Faces are identical to those rendered on access (each depends only on
        ``(seed, index, style, size, features, pose, expression, creases, brow_drop,
        glasses_frames, angry_shout)``). Why: rendering takes a few ms
        per face on one core, so a GPU run that renders on access waits on it for its first epoch,
        and every evaluation re-renders the test split."""
        if self._rendered is not None:
            return self
        args = (self.seed, self.style, self.size, self.options())
        if processes <= 1 or self.n < PARALLEL_RENDER_MIN:
            self._rendered = _render_range(args, 0, self.n)
        else:
            step = -(-self.n // processes)
            self._rendered = _render_in_processes(args, [(a, min(a + step, self.n)) for a in range(0, self.n, step)])
        return self

    def __repr__(self) -> str:
        extra = ""
        if self.features != ALL_FEATURES:
            extra = f", features=frozenset({sorted(self.features)!r})"
        if self.pose:
            extra += f", pose={self.pose!r}"
        if self.expression:
            extra += f", expression={self.expression!r}"
        if self.creases is not None:
            extra += f", creases={self.creases!r}"
        if self.brow_drop is not None:
            extra += f", brow_drop={self.brow_drop!r}"
        if self.glasses_frames != "small":
            extra += f", glasses_frames={self.glasses_frames!r}"
        if self.angry_shout is not None:
            extra += f", angry_shout={self.angry_shout!r}"
        return f"SyntheticFaces(n={self.n}, style={self.style!r}, seed={self.seed}, size={self.size}{extra})"


def _render_in_processes(args: tuple, ranges: list[tuple[int, int]]) -> list[dict]:
    """``_render_range(args, a, b)`` for every range, each in its own Python process.

    Plain child interpreters, not multiprocessing: a spawned multiprocessing worker re-imports
    the caller's main script (seen: a script without a ``__main__`` guard ran again in each
    worker and the pool broke), and forking a process that already runs OpenCV's and OpenMP's
    thread pools is a known hazard (not tried here)."""
    import pickle
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1")
    code = ("import pickle, sys; from facemtl.data.synth import _render_range; "
            "a = pickle.load(open(sys.argv[1], 'rb')); pickle.dump(_render_range(*a), open(sys.argv[2], 'wb'), protocol=5)")
    with tempfile.TemporaryDirectory(prefix="facemtl-render-") as tmp:
        jobs = []
        for w, (a, b) in enumerate(ranges):
            job, out = Path(tmp) / f"{w}.job", Path(tmp) / f"{w}.faces"
            job.write_bytes(pickle.dumps((args, a, b)))
            jobs.append((out, subprocess.Popen([sys.executable, "-c", code, str(job), str(out)], env=env,
                                               stderr=subprocess.PIPE)))
        faces = []
        try:
            for out, proc in jobs:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    raise FacemtlError(f"rendering synthetic faces in a worker process failed (exit {proc.returncode}):\n"
                                       f"{err.decode(errors='replace')[-2000:]}")
                faces += pickle.loads(out.read_bytes())
        finally:  # a failure or Ctrl-C: no worker outlives the call
            for _, proc in jobs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return faces


def _render_range(args: tuple, start: int, stop: int) -> list[dict]:
    """Faces ``start..stop-1`` of ``SyntheticFaces(*args)`` (a worker of :meth:`SyntheticFaces.prerender`)."""
    seed, style, size, options = args
    return [render_face(seed, i, style, size, **options) for i in range(start, stop)]
