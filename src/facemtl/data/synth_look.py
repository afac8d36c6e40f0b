"""Appearance layers of the synthetic faces (:mod:`facemtl.data.synth`).

The geometry module draws *material ids* into one uint8 buffer; this module owns the
materials (id -> Helen label, id -> colour) and the layers that make the pixels look like a
photograph: detail drawing (eyes, mouth interior), the lighting rig and the smooth light
field, skin and hair textures, backgrounds and camera effects. Each realism feature is one
switch, a name in :data:`FEATURES`, so that an ablation can measure it.

Label-preserving details: a detail drawn over existing pixels (a pupil over the eye white, a
lash line over lid skin and eye, a crease over cheek skin, teeth over the mouth interior) is
drawn as a *type* into a detail mask; ``DETAIL_LUT[type, id]`` maps each covered material to
a variant with the same Helen label (:func:`repaint_lut` refuses any other), so the parsing
mask cannot change when such a feature is switched on or off.

All randomness comes in as arguments (pre-drawn uniforms or a seeded generator); the fixed
texture tables are built once from fixed seeds, so samples stay machine-independent.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

# Realism features, in the order of their expected value for transfer to real photographs.
# ``render_face(..., features=...)`` takes any subset; the default is all of them.
FEATURES: tuple[str, ...] = (
    "smooth_shading",  # per-vertex lighting splatted into a smooth field (no facets)
    "skin_texture",    # tone zones (redness, under-eye), blotches, pore-scale noise
    "specular",        # highlights on the T-zone, cheekbones and lips
    "eyes",            # sclera, iris with limbal ring, pupil, catch-light, lid shadow, lash line
    "mouth_interior",  # teeth (with gaps) and tongue inside open mouths
    "hair_texture",    # strand texture, ragged outline, flyaway strands, jagged fringe
    "facial_hair",     # stubble, moustache, goatee, full beard (labelled skin)
    "makeup",          # lipstick, eye shadow, blush, eyeliner
    "lighting",        # coloured key/fill/rim lights, ambient occlusion, hard light, low light, shadows
    "camera",          # auto exposure, white balance cast, vignetting, motion blur, defocus, chroma noise
    "backgrounds",     # procedural backgrounds: colour noise, stripes, rooms, bokeh
    "clothing",        # clothes with necklines and patterns instead of bare shoulders
    "nostrils",        # dark nostril openings (labelled nose)
    "expressions",     # strong action units (Angry, Disgust, Fear distinct) and expression creases
    "ears",            # ears beside the head (labelled skin)
)
ALL_FEATURES: frozenset[str] = frozenset(FEATURES)

# --------------------------------------------------------------------------- materials

# (name, Helen label). The first 16 are the historical materials; ids are buffer values.
MATERIALS: tuple[tuple[str, int], ...] = (
    ("BG", 0), ("SKIN", 1), ("NOSE", 6), ("BROW_L", 2), ("BROW_R", 3), ("EYE_L", 4), ("EYE_R", 5),
    ("IRIS_L", 4), ("IRIS_R", 5), ("ULIP", 7), ("MOUTH", 8), ("LLIP", 9), ("HAIR", 10), ("NECK", 0),
    ("SCALP", 1), ("LIPLINE", 7),
    ("PUPIL_L", 4), ("PUPIL_R", 5), ("LIMBUS_L", 4), ("LIMBUS_R", 5), ("GLINT_L", 4), ("GLINT_R", 5),
    ("LIDSHADE_L", 4), ("LIDSHADE_R", 5), ("IRISSHADE_L", 4), ("IRISSHADE_R", 5),
    ("LASH_L", 4), ("LASH_R", 5), ("LASH_SKIN", 1),
    ("TEETH", 8), ("TEETH_GAP", 8), ("TONGUE", 8),
    ("BEARD", 1), ("EAR", 1), ("EAR_IN", 1), ("CLOTH", 0), ("CLOTH_TRIM", 0),
    ("CREASE", 1), ("CREASE_NOSE", 6), ("NOSTRIL", 6),
)
(BG, SKIN, NOSE, BROW_L, BROW_R, EYE_L, EYE_R, IRIS_L, IRIS_R, ULIP, MOUTH, LLIP, HAIR, NECK, SCALP, LIPLINE,
 PUPIL_L, PUPIL_R, LIMBUS_L, LIMBUS_R, GLINT_L, GLINT_R, LIDSHADE_L, LIDSHADE_R, IRISSHADE_L, IRISSHADE_R,
 LASH_L, LASH_R, LASH_SKIN, TEETH, TEETH_GAP, TONGUE, BEARD, EAR, EAR_IN, CLOTH, CLOTH_TRIM,
 CREASE, CREASE_NOSE, NOSTRIL) = range(len(MATERIALS))
N_MATERIALS = len(MATERIALS)
LABEL_LUT = np.zeros(256, np.uint8)
LABEL_LUT[:N_MATERIALS] = [label for _, label in MATERIALS]

# Materials that take the hair-strand texture.
HAIR_LIKE = np.zeros(256, bool)
HAIR_LIKE[[HAIR, BEARD, BROW_L, BROW_R]] = True


def repaint_lut(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry id table that maps each key material to its value and keeps the rest;
    every pair must share its Helen label (that is what keeps the mask unchanged)."""
    lut = np.arange(256, dtype=np.uint8)
    for a, b in mapping.items():
        if LABEL_LUT[a] != LABEL_LUT[b]:
            raise ValueError(f"repaint {MATERIALS[a][0]} -> {MATERIALS[b][0]} would change the label")
        lut[a] = b
    return lut


# Details are drawn as *types* into one mask; DETAIL_LUT[type, id] is the id after the detail.
# Each type only re-maps materials to variants with the same label; later types drawn over
# earlier ones win (creases, then beard, nostrils, mouth, lid shadow, iris layers, lash).
DETAILS: tuple[tuple[str, dict], ...] = (
    ("none", {}),
    ("crease", {SKIN: CREASE, NOSE: CREASE_NOSE}),
    ("beard", {SKIN: BEARD, CREASE: BEARD}),
    ("nostril", {NOSE: NOSTRIL, CREASE_NOSE: NOSTRIL}),
    ("tongue", {MOUTH: TONGUE}),
    ("teeth", {MOUTH: TEETH}),
    ("teeth_gap", {MOUTH: TEETH_GAP}),
    ("lid_shade", {EYE_L: LIDSHADE_L, EYE_R: LIDSHADE_R}),
    ("limbus_l", {EYE_L: LIMBUS_L}), ("limbus_r", {EYE_R: LIMBUS_R}),
    ("iris_l", {EYE_L: IRIS_L}), ("iris_r", {EYE_R: IRIS_R}),
    ("pupil_l", {EYE_L: PUPIL_L}), ("pupil_r", {EYE_R: PUPIL_R}),
    ("glint_l", {EYE_L: GLINT_L}), ("glint_r", {EYE_R: GLINT_R}),
    ("lash", {SKIN: LASH_SKIN, EYE_L: LASH_L, EYE_R: LASH_R}),
)
(D_NONE, D_CREASE, D_BEARD, D_NOSTRIL, D_TONGUE, D_TEETH, D_TEETH_GAP, D_LID_SHADE, D_LIMBUS_L, D_LIMBUS_R,
 D_IRIS_L, D_IRIS_R, D_PUPIL_L, D_PUPIL_R, D_GLINT_L, D_GLINT_R, D_LASH) = range(len(DETAILS))
DETAIL_LUT = np.stack([repaint_lut(mapping) for _, mapping in DETAILS])


def apply_details(buf: np.ndarray, mask: np.ndarray) -> None:
    """Repaint ``buf`` where ``mask`` holds a detail type (label-preserving by construction)."""
    idx = np.flatnonzero(mask.view(bool))  # any non-zero byte counts; 8x faster than on uint8
    if len(idx):
        flat = buf.reshape(-1)
        flat[idx] = DETAIL_LUT[mask.reshape(-1)[idx], flat[idx]]


# --------------------------------------------------------------------------- colours

LIPSTICKS = np.array([[165, 35, 55], [200, 70, 95], [135, 45, 65], [185, 95, 100], [150, 25, 35],
                      [210, 110, 125], [120, 40, 50], [190, 60, 60]], np.float32)
EYE_SHADOWS = np.array([[110, 80, 70], [120, 90, 130], [160, 130, 90], [90, 90, 100], [70, 50, 45],
                        [140, 100, 110]], np.float32)
CLOTHES = np.array([[30, 30, 35], [230, 230, 228], [40, 55, 100], [120, 30, 40], [60, 90, 60], [150, 150, 150],
                    [200, 170, 120], [90, 60, 110], [20, 80, 120], [210, 100, 60], [240, 200, 210], [70, 70, 75]],
                   np.float32)
# sRGB white of a black body at 2700, 3200, 4000, 5000, 6500, 8000 K (normalised to green = 1)
KELVIN = np.array([2700, 3200, 4000, 5000, 6500, 8000], np.float32)
KELVIN_RGB = np.array([[1.51, 1.0, 0.51], [1.34, 1.0, 0.66], [1.22, 1.0, 0.78], [1.12, 1.0, 0.90],
                       [1.02, 1.0, 1.01], [0.93, 1.0, 1.08]], np.float32)


_KELVIN_TABLE = np.stack([np.interp(np.arange(2500, 8600, 100), KELVIN, KELVIN_RGB[:, c]) for c in range(3)], 1)


def kelvin_rgb(k: float, strength: float) -> np.ndarray:
    """RGB gain of a light of colour temperature ``k`` after a camera's partial white balance
    (``strength`` 0: perfectly balanced, 1: none), scaled to unit luma."""
    rgb = 1.0 + strength * (_KELVIN_TABLE[min(60, max(0, int((k - 2500) / 100)))] - 1.0)
    return rgb / (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def palette(subj: dict, feats: frozenset) -> np.ndarray:
    """(256, 3) float32 albedo per material id (before lighting) for one subject."""
    skin = subj["skin"]
    pal = np.zeros((256, 3), np.float32)
    pal[[SKIN, NOSE, SCALP]] = skin
    pal[NECK] = skin * 0.86
    pal[EAR] = skin * np.array([1.0, 0.93, 0.92])
    pal[EAR_IN] = skin * np.array([0.62, 0.52, 0.5])
    pal[[CREASE, CREASE_NOSE]] = skin * 0.8
    pal[NOSTRIL] = skin * np.array([0.42, 0.32, 0.3])
    brow = subj["hair_col"] * 0.8 + skin * 0.2
    pal[[BROW_L, BROW_R]] = brow * 0.9 + skin * 0.1 * (1.0 - 0.5 * subj["gender"])
    if "eyes" in feats:
        sclera = np.array([222, 212, 200], np.float32) * subj["sclera"]
        pal[[EYE_L, EYE_R]] = sclera
        pal[[LIDSHADE_L, LIDSHADE_R]] = sclera * 0.55
        iris = subj["iris"]
        pal[[IRIS_L, IRIS_R]] = iris
        pal[[LIMBUS_L, LIMBUS_R]] = iris * 0.45
        pal[[IRISSHADE_L, IRISSHADE_R]] = iris * 0.5
        pal[[PUPIL_L, PUPIL_R]] = (14, 11, 11)
        pal[[GLINT_L, GLINT_R]] = (240, 240, 240)
        lash = subj["hair_col"] * 0.3 + 12
        if "makeup" in feats and subj["eyeliner"]:
            lash = np.array([15, 12, 12], np.float32)
        pal[[LASH_L, LASH_R]] = lash
        pal[LASH_SKIN] = lash * 0.7 + skin * 0.3
    else:  # the flat mannequin eye of the first renderer: white almond, dark iris disc
        pal[[EYE_L, EYE_R]] = (225, 220, 210)
        pal[[IRIS_L, IRIS_R]] = subj["iris"]
    lip = skin * (1 - subj["lip_tint"]) + np.array([190, 60, 70]) * subj["lip_tint"]
    if "makeup" in feats and subj["lipstick"] >= 0:
        lip = lip * 0.3 + LIPSTICKS[subj["lipstick"]] * 0.7
    pal[ULIP] = lip * 0.92
    pal[LLIP] = lip
    pal[LIPLINE] = lip * 0.45
    pal[MOUTH] = (62, 22, 26)
    pal[TEETH] = subj["teeth"]
    pal[TEETH_GAP] = subj["teeth"] * 0.82
    pal[TONGUE] = (165, 78, 82)
    pal[HAIR] = subj["hair_col"]
    pal[BEARD] = subj["hair_col"] * 0.85 + skin * 0.15
    cloth = CLOTHES[subj["cloth"]] * subj["cloth_gain"]
    pal[CLOTH] = cloth if "clothing" in feats else skin * 0.72
    pal[CLOTH_TRIM] = cloth * 0.6 + 20
    return np.clip(pal, 0, 255)


# --------------------------------------------------------------------------- texture tables


@lru_cache(maxsize=1)
def noise_table() -> np.ndarray:
    """Fixed grey noise, uint8 around 128 with sd 32, 3 equal channels (sensor noise crops)."""
    g = np.random.default_rng(2024)
    n = np.clip(128 + 32 * g.standard_normal((512, 512)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(n[:, :, None], 3, axis=2))


@lru_cache(maxsize=1)
def chroma_noise_table() -> np.ndarray:
    """Independent noise per channel (colour sensor noise), uint8 around 128 with sd 32."""
    g = np.random.default_rng(2025)
    return np.clip(128 + 32 * g.standard_normal((512, 512, 3)), 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def pore_table() -> np.ndarray:
    """Skin micro texture as a multiplier (128 = 1): fine pores plus mottling at 2-6 pixels."""
    g = np.random.default_rng(2026)
    fine = g.standard_normal((512, 512)).astype(np.float32)
    mid = cv2.GaussianBlur(g.standard_normal((512, 512)).astype(np.float32), (0, 0), 2.5)
    mid /= mid.std()
    t = 128 * (1 + 0.035 * fine + 0.04 * mid)
    t = np.clip(t, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(t[:, :, None], 3, axis=2))


@lru_cache(maxsize=1)
def strand_tables() -> tuple[np.ndarray, ...]:
    """Hair strand texture (multiplier, 128 = 1): streaks along y, tilted by -40..40 degrees."""
    g = np.random.default_rng(2027)
    base = g.standard_normal((768, 768)).astype(np.float32)
    streak = cv2.GaussianBlur(base, (0, 0), sigmaX=0.7, sigmaY=9.0)
    streak /= streak.std()
    coarse = cv2.GaussianBlur(g.standard_normal((768, 768)).astype(np.float32), (0, 0), sigmaX=3.0, sigmaY=20.0)
    coarse /= coarse.std()
    out = []
    for angle in STRAND_ANGLES:
        rot = cv2.getRotationMatrix2D((384, 384), angle, 1.0)
        t = cv2.warpAffine(0.14 * streak + 0.09 * coarse, rot, (768, 768), flags=cv2.INTER_LINEAR)[128:640, 128:640]
        t = np.clip(128 * (1 + t), 0, 255).astype(np.uint8)
        out.append(np.ascontiguousarray(np.repeat(t[:, :, None], 3, axis=2)))
    return tuple(out)


STRAND_ANGLES = (-40, -20, 0, 20, 40)


@lru_cache(maxsize=1)
def blob_table() -> np.ndarray:
    """Smooth colour noise (backgrounds), uint8 RGB, features of ~20 pixels."""
    g = np.random.default_rng(2028)
    n = cv2.GaussianBlur(g.standard_normal((384, 384, 4)).astype(np.float32), (0, 0), 12.0)
    n = (n - n.mean()) / n.std()
    n = n[:, :, :1] + 0.3 * n[:, :, 1:]  # mostly light and shade, a little colour
    return np.clip(128 + 55 * n, 0, 255).astype(np.uint8)


def crop(table: np.ndarray, h: int, w: int, u0: float, u1: float) -> np.ndarray:
    """An (h, w) window of ``table`` at the offset chosen by two uniforms (resized if too small)."""
    th, tw = table.shape[:2]
    if h > th or w > tw:
        return cv2.resize(table, (w, h), interpolation=cv2.INTER_LINEAR)
    y, x = int(u0 * (th - h)), int(u1 * (tw - w))
    return table[y:y + h, x:x + w]


# --------------------------------------------------------------------------- details


def draw_eyes(mask: np.ndarray, centres: np.ndarray, ring: np.ndarray, lids: np.ndarray, key_xy: np.ndarray,
              iod: float, fancy: bool) -> None:
    """Iris (always), and with ``fancy`` limbal ring, pupil, catch-light, lid shadow and lash
    line of both eyes, as detail types: they only land on the eye white (iris layers, shadow)
    or on lid skin and eye (lash), so the eye classes keep the shape the lids give them.

    Fixed-point (x16) inputs: ``centres`` (2, 2) iris centres, ``ring`` (16, 2) iris outline
    offsets, ``lids`` (2, 9, 2) upper-lid polylines. ``key_xy``: the key light's direction on
    the image (catch-light offset).
    """
    if not fancy:
        for side in (0, 1):
            cv2.fillConvexPoly(mask, np.rint(centres[side] + ring).astype(np.int32), D_IRIS_L + side, cv2.LINE_8, 4)
        return
    lines = list(lids)
    cv2.polylines(mask, lines, False, D_LID_SHADE, max(2, int(round(iod * 0.07))), cv2.LINE_8, 4)
    r = float(np.abs(ring).max())
    glint_r = int(max(9.0, 0.2 * r))
    rings = np.rint(centres[:, None, None] + _RING_SCALES[None] * ring).astype(np.int32)  # (eye, layer, 16, 2)
    glints = centres + 0.45 * r * key_xy
    for side in (0, 1):
        cv2.fillConvexPoly(mask, rings[side, 0], D_LIMBUS_L + side, cv2.LINE_8, 4)
        cv2.fillConvexPoly(mask, rings[side, 1], D_IRIS_L + side, cv2.LINE_8, 4)
        cv2.fillConvexPoly(mask, rings[side, 2], D_PUPIL_L + side, cv2.LINE_8, 4)
        cv2.circle(mask, (int(glints[side, 0]), int(glints[side, 1])), glint_r, D_GLINT_L + side, -1, cv2.LINE_8, 4)
    cv2.polylines(mask, lines, False, D_LASH, max(1, int(round(iod / 32))), cv2.LINE_8, 4)


_RING_SCALES = np.array([1.0, 0.78, 0.4])[:, None, None]


def draw_mouth_interior(mask: np.ndarray, upper_teeth: np.ndarray, lower_teeth: np.ndarray, tongue: np.ndarray,
                        gaps: np.ndarray) -> None:
    """Tongue, upper and lower teeth and soft gaps between them, as detail types that only land
    on mouth-interior pixels. Fixed-point (x16) polygons; ``gaps``: (k, 2, 2) segments."""
    cv2.fillPoly(mask, [tongue], D_TONGUE, cv2.LINE_8, 4)
    cv2.fillPoly(mask, [upper_teeth, lower_teeth], D_TEETH, cv2.LINE_8, 4)
    gap = np.zeros_like(mask)
    cv2.polylines(gap, list(gaps), False, 1, 1, cv2.LINE_8, 4)
    flat = mask.reshape(-1)
    idx = np.flatnonzero(gap.view(bool))
    flat[idx[flat[idx] == D_TEETH]] = D_TEETH_GAP


# --------------------------------------------------------------------------- lighting


def lights(u: np.ndarray, p: dict, key: np.ndarray, ambient: float, diffuse: float, fancy: bool):
    """Light rig in camera space: (directions (L, 3), colours (L, 3), ambient RGB (3,), hardness,
    AO strength, exposure). ``key``: the style's key-light direction (unit); ``u``: 16 uniforms.

    Plain: one white light and a white ambient term (the first renderer's model).
    """
    if not fancy:
        return key[None], np.full((1, 3), diffuse), np.full(3, ambient), 0.0, 0.0, 1.0
    lo_k, hi_k = p.get("kelvin", (3000.0, 7000.0))
    wb = 0.15 + 0.35 * u[1]  # residual cast after the camera's white balance
    key_col = kelvin_rgb(lo_k + (hi_k - lo_k) * u[0], wb) * diffuse * (0.9 + 0.35 * u[2])
    # fill from the other side, weaker, often cooler (sky) or warmer (bounce)
    fill_dir = np.array([-key[0] * (0.5 + u[3]), -0.2 + 0.5 * u[4], 0.7])
    fill_dir /= math.sqrt(fill_dir @ fill_dir)
    fill_col = kelvin_rgb(4000 + 5000 * u[5], wb) * diffuse * (0.1 + 0.4 * u[6])
    dirs, cols = [key, fill_dir], [key_col, fill_col]
    if u[7] < p.get("rim", 0.15):  # rim light from behind: lights the silhouette only
        rim = np.array([np.sign(u[8] - 0.5) * 0.8, -0.4, -0.45])
        dirs.append(rim / math.sqrt(rim @ rim))
        cols.append(kelvin_rgb(5000 + 3000 * u[9], 0.5) * (0.5 + 0.6 * u[10]))
    amb = kelvin_rgb(5000 + 3000 * u[11], wb) * ambient * 0.85
    hard = float(u[12] < p.get("hard", 0.3))  # direct sun / bare bulb: sharp terminator
    dark = u[13] < p.get("low_light", 0.0)
    exposure = 0.35 + 0.3 * u[14] if dark else 1.0
    return np.array(dirs), np.array(cols), amb, hard, 0.9, exposure


def vertex_radiance(n: np.ndarray, rig, ao: np.ndarray) -> np.ndarray:
    """RGB irradiance per vertex (N, 3) for camera-space unit normals ``n`` (N, 3)."""
    dirs, cols, amb, hard, ao_k, exposure = rig
    ndl = n @ dirs.T  # (N, L)
    if hard:
        lam = np.minimum(np.maximum(ndl * 1.6, 0.0), 1.0)
    else:  # slightly wrapped Lambert: soft light bleeds past the terminator
        lam = np.minimum(np.maximum((ndl + 0.12) * (1 / 1.12), 0.0), 1.0)
    occ = 1.0 - ao_k * (1.0 - ao)  # (N,)
    rad = (lam @ cols) * (0.55 + 0.45 * occ)[:, None] + occ[:, None] * amb[None]
    return rad * exposure


def vertex_specular(n: np.ndarray, rig, gloss: np.ndarray) -> np.ndarray:
    """Blinn-Phong highlight (N, 3) from the lights, scaled by the per-vertex ``gloss``."""
    dirs, cols, _, _, _, exposure = rig
    half = dirs + np.array([0.0, 0.0, 1.0])
    half /= np.sqrt((half * half).sum(1, keepdims=True))
    nh = np.maximum(n @ half.T, 0.0)
    return ((nh ** 24) @ cols) * gloss[:, None] * exposure


def splat_field(pts: np.ndarray, values: np.ndarray, weight: np.ndarray, size: int, cell: int = 4):
    """Normalised convolution of per-vertex values onto a (size/cell)^2 grid.

    Each vertex adds its value, times ``weight``, to its grid cell; the grid is blurred and
    divided by the blurred weights: a smooth Gouraud-like field without a per-pixel rasteriser
    (the mesh has about one visible vertex per 4x4-pixel cell). Returns (field (G, G, C) float32, coverage (G, G, 1) in [0, 1]).
    """
    g = (size + cell - 1) // cell
    cells = np.minimum(np.maximum(pts * (g / size), 0), g - 1).astype(np.int64)
    c = values.shape[1] + 1
    wv = np.empty((len(pts), c))
    wv[:, 0] = weight
    wv[:, 1:] = values * weight[:, None]
    idx = ((cells[:, 1] * g + cells[:, 0])[:, None] * c + np.arange(c)).ravel()
    acc = np.bincount(idx, wv.ravel(), g * g * c).reshape(g, g, c).astype(np.float32)
    acc = cv2.GaussianBlur(acc, (5, 5), 1.0)
    wsum = acc[:, :, :1]
    return acc[:, :, 1:] / np.maximum(wsum, 1e-6), np.minimum(wsum * (1 / 0.35), 1.0)


# --------------------------------------------------------------------------- backgrounds


def background_plain(rng: np.random.Generator, h: int, w: int, clutter: int) -> np.ndarray:
    """The first renderer's background: a vertical gradient plus random clutter shapes."""
    c0 = rng.uniform(30, 230, 3)
    c1 = np.clip(c0 + rng.normal(0, 35, 3), 0, 255)
    ends = np.array([[c0], [c1]], np.uint8)  # 2 x 1 image, stretched into the gradient
    bg = cv2.resize(ends, (w, h), interpolation=cv2.INTER_LINEAR)
    n = _clutter(rng, bg, clutter)
    if n:
        k = 2 * int(rng.integers(0, 3)) + 1
        if k > 1:
            bg = cv2.GaussianBlur(bg, (k, k), 0)
    return bg


def _clutter(rng, bg: np.ndarray, clutter: int) -> int:
    """Random rectangles, discs and bars in random colours; returns how many."""
    h, w = bg.shape[:2]
    n = int(rng.integers(clutter // 2, clutter + 1)) if clutter else 0
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
    return n


def _rgb(c) -> tuple:
    return tuple(float(x) for x in np.clip(c, 0, 255))


def _clutter_fast(bg: np.ndarray, r: np.ndarray, n: int) -> None:
    """``n`` random rectangles, discs and bars from 8 uniforms each (one vector draw)."""
    h, w = bg.shape[:2]
    for k in range(n):
        q = r[8 * k:8 * k + 8]
        col = (255 * q[0], 255 * q[1], 255 * q[2])
        a, b = int((1.4 * q[4] - 0.2) * w), int((1.4 * q[5] - 0.2) * h)
        c, d = int((1.4 * q[6] - 0.2) * w), int((1.4 * q[7] - 0.2) * h)
        kind = int(3 * q[3])
        if kind == 0:
            cv2.rectangle(bg, (a, b), (c, d), col, -1)
        elif kind == 1:
            cv2.circle(bg, (a, b), int((0.03 + 0.27 * q[6]) * w), col, -1)
        else:
            cv2.line(bg, (a, b), (c, d), col, 1 + int(q[3] * w / 16))


def background_textured(rng: np.random.Generator, h: int, w: int, clutter: int, backdrop_cdf) -> np.ndarray:
    """Procedural scenes: a studio gradient, colour-noise blobs (an out-of-focus scene), stripes
    (blinds, wallpaper), a room (wall, door, window, frames, floor) or bokeh lights, plus half the
    style's clutter. Drawn at half resolution and enlarged: a background is rarely in focus, and
    it is four times cheaper. All draws come from one vector of uniforms."""
    r = rng.random(160)
    hs, ws = max(16, h // 2), max(16, w // 2)
    kind = int(np.searchsorted(backdrop_cdf, r[0] * backdrop_cdf[-1]))
    wall = (25 + 210 * r[1]) * (0.85 + 0.3 * r[2:5])
    other = np.clip(wall * (0.4 + 1.0 * r[5]) + 60 * (r[6:9] - 0.5), 0, 255)
    if kind == 0:  # gradient (studio paper)
        ends = np.array([[np.clip(wall, 0, 255)], [np.clip(wall + 90 * (r[6:9] - 0.5), 0, 255)]], np.uint8)
        bg = cv2.resize(ends, (ws, hs), interpolation=cv2.INTER_LINEAR)
    elif kind == 1:  # smooth colour blobs, tinted towards the wall colour
        side = int(min(hs, ws) * (1 + 3 * r[9]))
        win = cv2.resize(crop(blob_table(), side, side, r[10], r[11]), (ws, hs), interpolation=cv2.INTER_AREA)
        mix = 0.2 + 0.6 * r[12]
        m = np.diag(mix * (0.6 + 0.8 * r[13:16]))
        off = (1 - mix) * wall + mix * (wall.mean() - 128) * np.diag(m) / mix
        bg = cv2.transform(win, np.concatenate([m, off[:, None]], 1))
    elif kind == 2:  # stripes: blinds, wallpaper, shelves
        period = (0.05 + 0.25 * r[9]) * ws
        ang = (0.0, np.pi / 2, np.pi * r[11])[int(3 * r[10])]
        gy, gx = _grid(hs, ws)
        t = (gx * np.cos(ang) + gy * np.sin(ang)) * (2 * np.pi / period)
        s = np.clip(0.5 + np.sin(t) * (1 / (0.2 + 1.8 * r[12])), 0, 1).astype(np.float32)
        bg = cv2.merge([(wall[k] - other[k]) * s + other[k] for k in range(3)]).astype(np.uint8)
    elif kind == 3:  # a room: wall gradient, doors, windows and frames, a floor
        ends = np.array([[np.clip(wall * (0.8 + 0.4 * r[9]), 0, 255)], [np.clip(wall * (0.6 + 0.4 * r[10]), 0, 255)]],
                        np.uint8)
        bg = cv2.resize(ends, (ws, hs), interpolation=cv2.INTER_LINEAR)
        for k in range(1 + int(4 * r[11])):
            q = r[16 + 10 * k:26 + 10 * k]
            x0, y0 = (1.1 * q[0] - 0.2) * ws, (0.9 * q[1] - 0.2) * hs
            x1, y1 = x0 + (0.1 + 0.5 * q[2]) * ws, y0 + (0.15 + 0.75 * q[3]) * hs
            if q[4] < 0.3:  # a window: bright, with a frame and a mullion
                col = np.array([230.0, 235.0, 245.0]) * (0.8 + 0.3 * q[5])
            else:
                col = wall * (0.4 + 1.1 * q[5]) + 40 * (q[6:9] - 0.5)
            frame = _rgb(np.clip(col, 0, 255) * (0.3 + 0.5 * q[9]))
            thick = max(1, int(ws * (0.01 + 0.04 * q[6])))
            p0, p1 = (int(x0), int(y0)), (int(x1), int(y1))
            cv2.rectangle(bg, p0, p1, _rgb(col), -1)
            cv2.rectangle(bg, p0, p1, frame, thick)
            if q[7] < 0.4:
                xm = int((x0 + x1) / 2)
                cv2.line(bg, (xm, int(y0)), (xm, int(y1)), frame, thick)
        if r[12] < 0.5:
            cv2.rectangle(bg, (0, int((0.6 + 0.35 * r[13]) * hs)), (ws, hs), _rgb(other * 0.7), -1)
    else:  # bokeh: dark scene with out-of-focus light discs
        bg = np.empty((hs, ws, 3), np.uint8)
        bg[:] = np.clip(wall * 0.3, 0, 255).astype(np.uint8)
        for k in range(4 + int(10 * r[9])):
            q = r[16 + 6 * k:22 + 6 * k]
            cv2.circle(bg, (int(q[0] * ws), int(q[1] * hs)), int((0.02 + 0.07 * q[2]) * ws) + 1,
                       (80 + 175 * q[3], 80 + 175 * q[4], 80 + 175 * q[5]), -1, cv2.LINE_AA)
    n = int((clutter // 2 + 1) * r[14])
    _clutter_fast(bg, r[96:], min(n, 8))
    sigma = 1.2 * r[15] * ws / 64
    if sigma > 0.4:
        bg = cv2.GaussianBlur(bg, (5, 5), sigma)
    return cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR)


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> np.ndarray:
    """Pixel row and column coordinates (2, h, w) float32."""
    return np.mgrid[0:h, 0:w].astype(np.float32)


# --------------------------------------------------------------------------- camera


@lru_cache(maxsize=16)
def vignette_table(size: int) -> np.ndarray:
    """Radial fall-off multiplier (128 = 1 at the centre, ~64 in the corners), uint8 3 channels."""
    g = np.linspace(-1, 1, size, dtype=np.float32)
    r2 = g[None, :] ** 2 + g[:, None] ** 2
    t = 128 * (1 - 0.25 * r2)
    return np.repeat(np.clip(t, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


@lru_cache(maxsize=64)
def motion_kernel(length: int, angle_step: int) -> np.ndarray:
    """Line kernel of ``length`` pixels at ``angle_step`` * 22.5 degrees (motion blur)."""
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    a = np.radians(22.5 * angle_step)
    d = np.array([np.cos(a), np.sin(a)]) * c
    cv2.line(k, (int(round(c - d[0])), int(round(c - d[1]))), (int(round(c + d[0])), int(round(c + d[1]))), 1.0, 1)
    return k / k.sum()


# --------------------------------------------------------------------------- hair


def ragged_outline(hull: np.ndarray, u: np.ndarray, iod16: float) -> np.ndarray:
    """A convex hair outline (x16 points) made uneven: each edge gets a midpoint pushed out or in
    (tufts and gaps), vertices jittered; ``u``: uniforms, reused cyclically."""
    k = len(hull)
    c = hull.sum(0) / k
    mid = 0.5 * (hull + np.concatenate([hull[1:], hull[:1]]))
    out = mid - c
    out /= np.maximum(np.sqrt((out * out).sum(1, keepdims=True)), 1e-6)
    n = len(u)
    ks = np.arange(k)
    bump = (u[ks % n] - 0.35) * 0.09 * iod16
    jit = (u[(ks + 7) % n] - 0.5) * 0.04 * iod16
    vout = hull - c
    vout /= np.maximum(np.sqrt((vout * vout).sum(1, keepdims=True)), 1e-6)
    poly = np.empty((2 * k, 2))
    poly[0::2] = hull + vout * jit[:, None]
    poly[1::2] = mid + out * bump[:, None]
    return np.round(poly).astype(np.int32)


def flyaway_strands(buf: np.ndarray, outline: np.ndarray, u: np.ndarray, iod16: float) -> None:
    """Up to 5 thin curved strands leaving the hair outline, drawn as hair over background, neck
    and clothes (so the mask labels them hair exactly where they are); ``u``: 16 uniforms."""
    count = int(u[0] * 6)
    if count == 0:
        return
    q = u[1:1 + 3 * count].reshape(count, 3)
    p0 = outline[(q[:, 0] * len(outline)).astype(np.int64) % len(outline)].astype(np.float64)
    out = p0 - outline.sum(0) / len(outline)
    out /= np.maximum(np.sqrt((out * out).sum(1, keepdims=True)), 1e-6)
    side = out[:, ::-1] * (-1.0, 1.0)
    length = ((0.1 + 0.25 * q[:, 1]) * iod16)[:, None]
    bend = (q[:, 2:3] - 0.5) * 0.6
    pts = np.stack([p0 - out * (0.05 * iod16), p0 + length * (0.5 * out + 0.3 * bend * side),
                    p0 + length * (out + bend * side)], 1)
    mask = np.zeros(buf.shape, np.uint8)
    cv2.polylines(mask, list(np.rint(pts).astype(np.int32)), False, 1, 1, cv2.LINE_8, 4)
    flat = buf.reshape(-1)
    idx = np.flatnonzero(mask.view(bool))
    flat[idx[_STRAND_OVER[flat[idx]]]] = HAIR


_STRAND_OVER = np.zeros(256, bool)
_STRAND_OVER[[BG, NECK, CLOTH, CLOTH_TRIM]] = True


# --------------------------------------------------------------------------- shadows


def shadow_band(u: np.ndarray, size: int) -> np.ndarray:
    """A cast shadow over part of the picture (a soft-edged half plane: a window frame, a hat
    brim, a person beside the camera) as a uint8 3-channel multiplier (128 = 1); ``u``: 4+ uniforms."""
    g = 16
    ang = 2 * np.pi * u[0]
    yy, xx = np.mgrid[0:g, 0:g].astype(np.float32) / (g - 1) - 0.5
    t = (xx * np.cos(ang) + yy * np.sin(ang) - (u[1] - 0.5) * 0.6) / (0.03 + 0.15 * u[2])
    dark = 0.35 + 0.35 * u[3]
    m = 1.0 - dark / (1.0 + np.exp(-np.clip(t, -30, 30)))
    small = np.repeat(np.clip(m * 128, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
