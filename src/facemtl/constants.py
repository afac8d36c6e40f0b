"""Plain values that both the heavy modules and the command-line parsers need.

They live here, away from torch, cv2 and numpy, so that building the ``facemtl`` parser
(``facemtl --help``) imports none of those; the modules that use them import them from here.
"""

# Crop margin per side, as a fraction of the face square's side (the crop spans 1.5 sides):
# room for hair, ears and chin around a detector or landmark box, and close to how the
# synthetic faces are framed, so a model trained on them sees detected faces at that scale.
# Training crops (FaceCrop), source configs and the predictor fall back to it.
DEFAULT_CROP_MARGIN = 0.25
MAX_CROP_MARGIN = 5.0  # margin per side as a fraction of the face box: at 5 the face is 1/11 of the crop

# Point refiner patches (models/refiner.py): their side in inter-ocular distances of the points given, by
# default, and the sides a saved refiner stage may have.
REFINER_PATCH_SIDE = 0.8
REFINER_PATCH_SIDES = (0.2, 4.0)

OPSET = 17
# Opsets the TorchScript exporter supports and iFAN's graph needs (Slice with tensor inputs: 10;
# Resize with coordinate modes, used by inference/export.py's upsampling pool: 11).
MIN_OPSET, MAX_OPSET = 11, 20

# Synthetic face styles; new styles go at the end: a style's index seeds its samples.
SYNTH_STYLES: tuple[str, ...] = ("studio", "wild", "webcam", "snapshot", "classroom")
# Head pose angles a synthetic source may draw with its own spread (``data.N.pose``)
POSE_ANGLES: tuple[str, ...] = ("yaw", "pitch", "roll")
POSE_SPREAD = "[mean, sd, limit] in degrees (sd and limit >= 0)"


def pose_spread_ok(spread) -> bool:
    """Whether one angle's spread is :data:`POSE_SPREAD` (three numbers, sd and limit >= 0)."""
    return len(spread) == 3 and spread[1] >= 0 and spread[2] >= 0


# Expression strength a synthetic source may draw instead of its style's (``data.N.expression``)
EXPRESSION_RANGE = "[low, high] expression strength (0 <= low <= high <= 4)"


def expression_range_ok(strength) -> bool:
    """Whether ``strength`` is :data:`EXPRESSION_RANGE` (two numbers, 0 <= low <= high <= 4)."""
    return len(strength) == 2 and 0 <= strength[0] <= strength[1] <= 4


# Glasses frames a synthetic source may draw (``data.N.glasses_frames``): the renderer's first,
# small frames (default) or frames sized like real ones
GLASSES_FRAMES = ("small", "real")


# How the predictor makes a detected face's second crop (``recrop``): from the first pass's points
# (default), or its calibrated box turned so the predicted eyes are level
RECROPS = ("points", "turn")


# Largest resting brow drop a synthetic source may draw per subject (``data.N.brow_drop``)
BROW_DROP = "a distance in 0..0.2 (fractions of the inter-ocular distance)"


def brow_drop_ok(drop) -> bool:
    """Whether ``drop`` is :data:`BROW_DROP`."""
    return 0 <= drop <= 0.2
