"""benchmarks/real_photo.py --perturb: each condition moves the five labelled points exactly as
it moves the pixels (a wrong label transform would make its table meaningless)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_photo  # noqa: E402

TRUTH = np.array([[202.0, 101.0], [245.0, 103.0], [223.0, 128.0], [199.0, 140.0], [244.5, 139.5]])
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], np.uint8)


def marked_photo() -> np.ndarray:
    """A grey 512 x 512 image with a 9 x 9 square of its own colour on each labelled point."""
    image = np.full((512, 512, 3), 100, np.uint8)
    for (x, y), colour in zip(np.rint(TRUTH).astype(int), COLOURS):
        image[y - 4 : y + 5, x - 4 : x + 5] = colour
    return image


@pytest.mark.parametrize("name", list(real_photo.CONDITIONS))
def test_each_condition_moves_the_points_with_the_pixels(name):
    image, points = real_photo.perturbed(marked_photo(), TRUTH, name)
    assert image.dtype == np.uint8 and image.ndim == 3 and points.shape == (5, 2)
    if name in ("eyes covered", "mouth covered", "dark", "bright", "low contrast", "grey"):
        np.testing.assert_array_equal(points, TRUTH)  # pixels hidden or recoloured, places unchanged
        return
    # the mirror swaps left and right: the image-left eye is the right eye's marker
    order = [1, 0, 2, 4, 3] if name == "mirror" else [0, 1, 2, 3, 4]
    for k, (x, y) in enumerate(points):
        pixel = image[int(round(y)), int(round(x))].astype(float)
        expected = COLOURS[order[k]].astype(float)
        assert np.abs(pixel - expected).max() < 80, (name, k, pixel, expected)


def test_unknown_condition_is_refused():
    with pytest.raises(ValueError, match="unknown condition"):
        real_photo.perturbed(marked_photo(), TRUTH, "upside down")
