"""Face-crop transforms: matrices, warps, flips, inverse round trips."""

import numpy as np
import pytest
import torch

from facemtl.data.transforms import (
    FaceCrop,
    face_crop_matrix,
    hflip,
    invert_affine,
    warp_image,
    warp_logits_back,
    warp_points,
)
from facemtl.errors import FacemtlError
from facemtl.tasks import POINT_SETS, STANDARD_TASKS

POINT_SET_FLIPS = {name: task.flip for name, task in POINT_SETS.items()}
PERMS = {t.name: t.flip for t in STANDARD_TASKS.values()}


def _raw(h=60, w=80):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    lm = np.array([[30, 25], [50, 26], [40, 35], [32, 45], [49, 46]], np.float32)
    parsing = np.zeros((h, w), np.uint8)
    parsing[20:30, 25:35] = 4  # left eye region (image-left)
    parsing[20:30, 45:55] = 5
    parsing[10:15, 25:35] = 2  # left brow
    return {"image": image, "landmarks": lm, "parsing": parsing, "pose": 1, "gender": 1, "meta": {"id": "x"}}


def test_face_crop_matrix_box_values():
    # Box 100 px wide centred at (150, 250), margin 0.25 -> 150 px across 128 px.
    m = face_crop_matrix(box=[100, 200, 200, 300], size=128, margin=0.25)
    s = 128 / 150
    assert m[0, 0] == pytest.approx(s) and m[1, 1] == pytest.approx(s)
    assert m[0, 1] == 0 and m[1, 0] == 0
    centre = warp_points([[150, 250]], m)[0]
    np.testing.assert_allclose(centre, [63.5, 63.5], atol=1e-5)
    # Left edge of the margin square (x = 150 - 75) lands on the left pixel edge -0.5.
    assert warp_points([[75, 250]], m)[0, 0] == pytest.approx(-0.5, abs=1e-5)


def test_face_crop_matrix_from_landmarks_uses_visible_points_and_inner_scale():
    lm = np.array([[10, 10], [30, 10], [20, 20], [12, 30], [28, 30], [500, 500]], np.float32)
    vis = np.array([1, 1, 1, 1, 1, 0], bool)
    m = face_crop_matrix(landmarks=lm, size=100, margin=0.0, visibility=vis)
    # 6 points (> 5): no inner-points scaling; box 20x20 centred (20, 20).
    np.testing.assert_allclose(warp_points([[10, 10], [30, 30]], m), [[-0.5, -0.5], [99.5, 99.5]], atol=1e-4)
    m5 = face_crop_matrix(landmarks=lm[:5], size=100, margin=0.0)
    assert m5[0, 0] == pytest.approx(100 / 40)  # 5-point box side doubled
    with pytest.raises(FacemtlError, match="box or landmarks"):
        face_crop_matrix()
    with pytest.raises(FacemtlError, match="x1 > x0"):
        face_crop_matrix(box=[10, 10, 5, 20])


def test_inverse_warp_round_trip_within_a_pixel():
    rng = np.random.default_rng(1)
    crop = FaceCrop(size=64, augment=True, max_rotation=30)
    raw = _raw()
    out = crop(raw, rng)
    m = out["meta"]["crop_matrix"]
    back = warp_points(out["landmarks"], invert_affine(m))
    # Flip permutes points: undo it by comparing as sets via the permutation.
    expected = raw["landmarks"]
    if out["meta"]["flipped"]:
        back = back[list(STANDARD_TASKS["landmarks"].flip)]
    np.testing.assert_allclose(back, expected, atol=1e-3)
    # Image round trip: warp a smooth image into a big crop and back, interior within ~1 level/pixel.
    yy, xx = np.mgrid[0:60, 0:80]
    smooth = np.dstack([xx * 3, yy * 4, (xx + yy) * 1.5]).astype(np.uint8)
    m2 = face_crop_matrix(box=[20, 15, 60, 45], size=128, margin=0.1)
    there = warp_image(smooth, m2, 128)
    again = warp_image(there, invert_affine(m2), (80, 60))
    inner = (slice(20, 40), slice(30, 55))
    assert np.abs(again[inner].astype(int) - smooth[inner].astype(int)).max() <= 3


def test_warp_points_matches_warp_image_pixel_position():
    image = np.zeros((50, 70, 3), np.uint8)
    image[20, 30] = 255
    m = face_crop_matrix(box=[10, 5, 60, 45], size=100, margin=0.2)
    warped = warp_image(image, m, 100, interpolation=0)  # nearest
    p = warp_points([[30, 20]], m)[0]
    ys, xs = np.nonzero(warped[..., 0])
    assert abs(xs.mean() - p[0]) <= 1.0 and abs(ys.mean() - p[1]) <= 1.0


def test_hflip_twice_is_identity_and_swaps_left_right():
    raw = _raw()
    once = hflip(raw, PERMS)
    # Left eye (index 0, x=30) becomes the right eye at x = W-1-30 = 49.
    np.testing.assert_allclose(once["landmarks"][1], [49, 25])
    np.testing.assert_allclose(once["landmarks"][0], [79 - 50, 26])
    assert once["pose"] == 3  # left -> right
    assert once["gender"] == 1  # no permutation: unchanged
    # Left eye class 4 at columns 25..34 is now class 5 at columns 45..54.
    assert np.all(once["parsing"][20:30, 45:55] == 5) and np.all(once["parsing"][20:30, 25:35] == 4)
    assert np.all(once["parsing"][10:15, 45:55] == 3)
    twice = hflip(once, PERMS)
    np.testing.assert_array_equal(twice["image"], raw["image"])
    np.testing.assert_allclose(twice["landmarks"], raw["landmarks"])
    np.testing.assert_array_equal(twice["parsing"], raw["parsing"])
    assert twice["pose"] == raw["pose"]
    with pytest.raises(FacemtlError, match="no flip permutation"):
        hflip({"image": raw["image"], "landmarks": np.zeros((7, 2), np.float32)}, PERMS)


def test_facecrop_flip_equals_hflip_then_crop():
    raw = _raw()
    plain = FaceCrop(size=48, margin=0.3)
    base = plain(raw)
    flipped_raw = hflip(raw, PERMS)
    direct = plain(flipped_raw)

    # Force the flip branch: random() < 0.5 needed; find a seed that flips.
    for seed in range(20):
        rng = np.random.default_rng(seed)
        if rng.random() < 0.5:
            rng = np.random.default_rng(seed)
            break
    fc = FaceCrop(size=48, margin=0.3, flip=True)
    out = fc(raw, rng)
    assert out["meta"]["flipped"]
    np.testing.assert_allclose(out["landmarks"], direct["landmarks"], atol=1e-3)
    assert (out["parsing"] != direct["parsing"]).mean() < 0.02
    assert out["pose"] == 3
    # The flip crop is the mirror of the plain crop.
    np.testing.assert_allclose(out["landmarks"][1, 0], 47 - base["landmarks"][0, 0], atol=1e-3)


def test_facecrop_masks_nearest_and_outside_is_background():
    raw = _raw()
    raw["parsing"][:] = 1  # whole image skin
    out = FaceCrop(size=64, margin=1.0)(raw)  # big margin: crop reaches outside the image
    values = set(np.unique(out["parsing"]).tolist())
    assert values == {0, 1}  # no interpolated ids; outside -> background
    assert out["parsing"][0, 0] == 0
    assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.uint8
    assert out["meta"]["crop"] == {"size": 64, "margin": 1.0}
    ignore = FaceCrop(size=64, margin=1.0, outside_label=255)(raw)
    assert ignore["parsing"][0, 0] == 255


def test_facecrop_uses_box_then_landmarks_then_mask_then_image():
    raw = _raw()
    raw["box"] = np.array([20, 10, 60, 50], np.float32)
    out = FaceCrop(size=40, margin=0.0)(raw)
    np.testing.assert_allclose(out["box"], [-0.5 + 0.0, -0.5, 39.5, 39.5], atol=0.6)
    emo = {"image": np.zeros((48, 48, 3), np.uint8), "emotion": 3}
    out = FaceCrop(size=96)(emo)
    assert out["meta"]["crop_matrix"][0, 0] == pytest.approx(2.0)
    assert out["emotion"] == 3
    mask_only = {"image": np.zeros((60, 80, 3), np.uint8), "parsing": _raw()["parsing"]}
    m = FaceCrop(size=64, margin=0.0)(mask_only)["meta"]["crop_matrix"]
    # Face classes span x 25..54, y 10..29 -> side 30 (x), centre (39.5, 19.5).
    assert m[0, 0] == pytest.approx(64 / 30)


def test_aflw_visibility_follows_flip():
    rng = np.random.default_rng(3)
    lm = rng.uniform(10, 50, (21, 2)).astype(np.float32)
    vis = np.ones(21, bool)
    vis[0] = False  # LeftBrowLeftCorner missing
    raw = {"image": np.zeros((60, 60, 3), np.uint8), "landmarks": lm, "visibility": vis,
           "meta": {"point_set": "aflw21"}}
    out = hflip(raw, {"landmarks": POINT_SET_FLIPS["aflw21"]})
    assert not out["visibility"][5] and out["visibility"][0]  # now RightBrowRightCorner is missing
    crop = FaceCrop(size=32, flip=True)
    for seed in range(10):
        o = crop(raw, np.random.default_rng(seed))
        if o["meta"]["flipped"]:
            assert not o["visibility"][5]
            break
    else:
        pytest.fail("no flip in 10 seeds")


@pytest.mark.parametrize("name", sorted(POINT_SET_FLIPS))
def test_point_set_flips_are_involutions(name):
    perm = np.array(POINT_SET_FLIPS[name])
    assert sorted(perm.tolist()) == list(range(len(perm)))
    np.testing.assert_array_equal(perm[perm], np.arange(len(perm)))


def test_ibug68_flip_pairs():
    perm = POINT_SET_FLIPS["ibug68"]
    assert perm[36] == 45 and perm[39] == 42 and perm[48] == 54 and perm[30] == 30 and perm[0] == 16


def test_warp_logits_back_recovers_mask_at_original_resolution():
    h, w = 60, 80
    mask = np.zeros((h, w), np.int64)
    mask[15:45, 20:60] = 1
    mask[25:35, 30:40] = 2
    m = face_crop_matrix(box=[10, 5, 70, 55], size=128, margin=0.1)
    crop_mask = warp_image(mask.astype(np.uint8), m, 128, interpolation=0)
    logits = np.eye(3, dtype=np.float32)[crop_mask].transpose(2, 0, 1)  # one-hot (3, 128, 128)
    back = warp_logits_back(logits, m, (h, w))
    assert isinstance(back, np.ndarray) and back.shape == (3, h, w)
    pred = back.argmax(0)
    inside = (slice(8, 53), slice(13, 67))
    assert (pred[inside] == mask[inside]).mean() > 0.97
    t = warp_logits_back(torch.from_numpy(logits), m, (h, w))
    assert isinstance(t, torch.Tensor) and torch.allclose(t, torch.from_numpy(back), atol=1e-5)
    # Identity matrix: values unchanged.
    same = warp_logits_back(logits[:, :60, :80], np.array([[1.0, 0, 0], [0, 1.0, 0]]), (60, 80))
    np.testing.assert_allclose(same, logits[:, :60, :80], atol=1e-5)


def test_photometric_and_augment_keep_shapes_and_are_seeded():
    raw = _raw()
    crop = FaceCrop(size=32, augment=True)
    a = crop(raw, np.random.default_rng(5))
    b = crop(raw, np.random.default_rng(5))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].shape == (32, 32, 3) and a["parsing"].shape == (32, 32)
    assert a["landmarks"].dtype == np.float32


def test_bad_arguments():
    with pytest.raises(FacemtlError, match="2x3"):
        warp_points([[0, 0]], np.eye(3))
    with pytest.raises(FacemtlError, match="singular"):
        invert_affine(np.zeros((2, 3)))
    with pytest.raises(FacemtlError, match="margin"):
        FaceCrop(margin=-1)


def test_untrained_labels_are_flipped_too():
    # FaceCrop for a landmarks-only task still relabels pose: no wrong label stays in the sample.
    raw = _raw()
    crop = FaceCrop(size=32, flip=True, tasks=("landmarks",))
    for seed in range(10):
        out = crop(raw, np.random.default_rng(seed))
        if out["meta"]["flipped"]:
            assert out["pose"] == 3
            assert (out["parsing"] == 3).any() and not (out["parsing"] == 2).any()
            break
    else:
        pytest.fail("no flip in 10 seeds")


def test_hflip_falls_back_to_point_set():
    lm = np.random.default_rng(0).uniform(0, 50, (68, 2)).astype(np.float32)
    raw = {"image": np.zeros((60, 60, 3), np.uint8), "landmarks": lm, "meta": {"point_set": "ibug68"}}
    out = hflip(raw, PERMS)
    np.testing.assert_allclose(out["landmarks"][45], [59 - lm[36, 0], lm[36, 1]])


def test_random_convolution_changes_the_look_not_the_layout_and_is_reproducible():
    from facemtl.data.transforms import random_convolution

    x = torch.randn(6, 3, 16, 16)
    x[:, :, 4:12, 4:12] += 3.0  # a bright square: the shape a random convolution must keep in place
    same = random_convolution(x, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(same, x) and same is not x
    y = random_convolution(x, 1.0, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert all(not torch.allclose(y[i], x[i]) for i in range(6))
    # alpha * x + (1 - alpha) * (conv brought to x's mean): each channel keeps its mean
    torch.testing.assert_close(y.mean((2, 3)), x.mean((2, 3)), atol=1e-4, rtol=0)
    inside, outside = y[:, :, 6:10, 6:10].mean(), y[:, :, :2, :2].mean()
    assert inside > outside  # a 1-7 px kernel blurs the square's edges, not its place
    torch.testing.assert_close(random_convolution(x, 1.0, torch.Generator().manual_seed(0)), y)
    assert not torch.allclose(random_convolution(x, 1.0, torch.Generator().manual_seed(1)), y)
    half = random_convolution(x, 0.5, torch.Generator().manual_seed(3))
    kept = sum(torch.equal(half[i], x[i]) for i in range(6))
    assert 0 < kept < 6


def test_random_detail_loss_keeps_the_layout_and_mean_and_is_reproducible():
    from facemtl.data.transforms import random_detail_loss

    x = torch.zeros(8, 3, 32, 32)
    x[:, :, 8:24, 8:24] = 1.0  # a square: its place must stay, its fine checker pattern go
    x[:, :, 12:20, 12:20] += torch.tensor([[1.0, -1.0] * 4, [-1.0, 1.0] * 4] * 4)
    assert torch.equal(random_detail_loss(x, 0.0, torch.Generator().manual_seed(0)), x)
    y = random_detail_loss(x, 1.0, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    changed = [i for i in range(8) if not torch.equal(y[i], x[i])]
    assert len(changed) >= 7  # only a side drawn as the full 32 px is kept
    for i in changed:
        checker = y[i, :, 12:20, 12:20]
        assert float((checker - 1.0).abs().mean()) < 0.9  # the +-1 checker (mean |.| 1) averaged away
        assert float(y[i, :, 14:18, 14:18].mean()) > 0.8 > float(y[i, :, :4, :4].abs().max())  # the square stays put
        torch.testing.assert_close(y[i].mean(), x[i].mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(random_detail_loss(x, 1.0, torch.Generator().manual_seed(0)), y)
    half = random_detail_loss(x, 0.5, torch.Generator().manual_seed(3))
    assert 0 < sum(torch.equal(half[i], x[i]) for i in range(8)) < 8
