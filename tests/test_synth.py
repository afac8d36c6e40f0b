"""The synthetic face generator: determinism, label/pixel consistency, expressions, errors."""

import re

import numpy as np
import pytest

from facemtl.data.synth import EMOTIONS, IMAGES_PER_SUBJECT, STYLES, SyntheticFaces, render_face
from facemtl.errors import FacemtlError
from facemtl.tasks import pose_from_yaw

SIZE = 64
N_PER_STYLE = 36


@pytest.fixture(scope="module")
def samples():
    return {style: [render_face(3, i, style, SIZE) for i in range(N_PER_STYLE)] for style in STYLES}


def _near(mask: np.ndarray, xy, classes, radius: int) -> bool:
    x, y = int(round(float(xy[0]))), int(round(float(xy[1])))
    h, w = mask.shape
    win = mask[max(0, y - radius): min(h, y + radius + 1), max(0, x - radius): min(w, x + radius + 1)]
    return bool(np.isin(win, classes).any())


def test_styles_and_interface():
    assert STYLES == ("studio", "wild", "webcam", "snapshot", "classroom")  # new styles only at the end
    s = render_face(0, 0)
    assert s["image"].shape == (128, 128, 3) and s["image"].dtype == np.uint8
    assert s["parsing"].shape == (128, 128) and s["parsing"].dtype == np.uint8
    assert s["landmarks"].shape == (5, 2) and s["landmarks"].dtype == np.float32
    for key, n in (("emotion", 7), ("gender", 2), ("smile", 2), ("glasses", 2), ("pose", 5)):
        assert isinstance(s[key], int) and 0 <= s[key] < n
    assert {"style", "seed", "index", "yaw", "pitch", "roll", "subject"} <= set(s["meta"])
    assert render_face(0, 0, "wild", 80)["image"].shape == (80, 80, 3)


def test_calibrated_landmark_style_stays_within_detector_poses():
    """"snapshot" (the default landmark source) keeps |yaw| <= 45 like MTFL's detector crops;
    "wild" (the stress style) goes beyond."""
    yaws = {style: [abs(render_face(1, i, style, 64)["meta"]["yaw"]) for i in range(60)] for style in ("snapshot", "wild")}
    assert max(yaws["snapshot"]) <= 45 and max(yaws["wild"]) > 45


def test_pose_spread_replaces_the_style_s_for_the_angles_given_only():
    """data.N.pose: the roll given is drawn with its own spread from the same draw (a face
    whose roll is within both limits scales by sd 15 / sd 8); yaw and pitch stay the style's."""
    scaled = 0
    for i in range(12):
        base = render_face(1, i, "snapshot", SIZE)["meta"]
        wide = render_face(1, i, "snapshot", SIZE, pose={"roll": (0, 15, 45)})["meta"]
        assert wide["yaw"] == base["yaw"] and wide["pitch"] == base["pitch"]
        if abs(base["roll"]) < 25 and abs(wide["roll"]) < 45:
            assert wide["roll"] == pytest.approx(base["roll"] * 15 / 8)
            scaled += 1
    assert scaled >= 8  # most faces are within both limits: the check above ran
    rolls = [abs(render_face(1, i, "snapshot", SIZE, pose={"roll": (0, 15, 45)})["meta"]["roll"]) for i in range(60)]
    assert max(rolls) > 25 and max(rolls) <= 45
    ds = SyntheticFaces(3, style="snapshot", seed=1, size=SIZE, pose={"roll": [0, 15, 45]})
    np.testing.assert_array_equal(ds[2]["image"], render_face(1, 2, "snapshot", SIZE, pose={"roll": (0, 15, 45)})["image"])
    assert "roll" in repr(ds)


@pytest.mark.parametrize("pose, words", [({"tilt": (0, 1, 2)}, "yaw, pitch, roll"),
                                         ({"roll": (0, 15)}, "[mean, sd, limit] in degrees"),
                                         ({"yaw": (0, -1, 30)}, "sd and limit >= 0")])
def test_bad_pose_spreads_are_named(pose, words):
    with pytest.raises(FacemtlError, match=re.escape(words)):
        render_face(0, 0, "studio", SIZE, pose=pose)


def test_expression_range_scales_the_action_units_of_the_same_draws():
    """data.N.expression: the strength is drawn from the range given, from the same draw, so the
    labels stay; an emotion's landmark displacement from strength 0 is linear in the strength, and a
    neutral face (no action units) does not move."""
    moved = 0
    for i in range(14):
        base = render_face(1, i, "studio", SIZE)
        at = {s: render_face(1, i, "studio", SIZE, expression=(s, s)) for s in (0.0, 1.0, 2.0)}
        for face in at.values():
            assert face["emotion"] == base["emotion"] and face["meta"] == base["meta"]
        # eyes and mouth corners: the nose tip sits near the jaw's width line (y = 0.6), which
        # the strength can move it across
        one = (at[1.0]["landmarks"] - at[0.0]["landmarks"])[[0, 1, 3, 4]]
        two = (at[2.0]["landmarks"] - at[0.0]["landmarks"])[[0, 1, 3, 4]]
        if base["emotion"] == 6:
            np.testing.assert_array_equal(at[2.0]["image"], base["image"])
        elif np.abs(one).max() > 0.05:  # landmarks this emotion moves (some move only brows and lids)
            np.testing.assert_allclose(two, 2 * one, atol=2e-3)
            moved += 1
    assert moved >= 4
    ds = SyntheticFaces(3, style="studio", seed=1, size=SIZE, expression=[1.5, 2.5])
    np.testing.assert_array_equal(ds[2]["image"], render_face(1, 2, "studio", SIZE, expression=(1.5, 2.5))["image"])
    assert ds.expression == (1.5, 2.5) and "expression=(1.5, 2.5)" in repr(ds)
    np.testing.assert_array_equal(ds.prerender()[1]["landmarks"], render_face(1, 1, "studio", SIZE, expression=(1.5, 2.5))["landmarks"])


def test_creases_drawn_whatever_the_emotion_change_only_pixels():
    """data.N.creases: each crease is drawn with the probability given on any face, instead of by
    the emotion: 0 takes the creases off expressive faces, 1 puts them on neutral ones, and neither
    changes a label, a landmark or another draw."""
    neutral = expressive = 0
    for i in range(24):
        base = render_face(1, i, "studio", SIZE)
        none, every = (render_face(1, i, "studio", SIZE, creases=c) for c in (0.0, 1.0))
        for face in (none, every):
            assert face["emotion"] == base["emotion"] and face["meta"] == base["meta"]
            np.testing.assert_array_equal(face["landmarks"], base["landmarks"])
            np.testing.assert_array_equal(face["parsing"], base["parsing"])
        assert not np.array_equal(every["image"], none["image"])  # every face can carry creases
        if base["emotion"] == 6:  # no action unit strong enough for a crease
            np.testing.assert_array_equal(none["image"], base["image"])
            neutral += 1
        elif base["emotion"] in (0, 1, 3):  # frown lines, nose wrinkles, nasolabial folds
            assert not np.array_equal(none["image"], base["image"])
            expressive += 1
    assert neutral >= 2 and expressive >= 4
    ds = SyntheticFaces(3, style="studio", seed=1, size=SIZE, creases=np.float32(0.5))
    assert ds.creases == 0.5 and "creases=0.5" in repr(ds)
    np.testing.assert_array_equal(ds.prerender()[2]["image"], render_face(1, 2, "studio", SIZE, creases=0.5)["image"])
    for bad in (1.5, -0.1, "often", True):
        with pytest.raises(FacemtlError, match=re.escape(f"creases: expected a probability in 0..1 or None, got {bad!r}")):
            render_face(0, 0, "studio", SIZE, creases=bad)


def _brow_row(parsing: np.ndarray) -> float:
    """Mean row of both brows' pixels (Helen ids 2, 3)."""
    return float(np.argwhere(np.isin(parsing, (2, 3)))[:, 0].mean())


def test_brow_drop_lowers_the_brows_and_changes_no_label():
    """data.N.brow_drop: the brows sit lower by the subject's own draw, at most the limit; the
    labels stay, the landmarks within 0.01 px (the lids at the brow field's edge), the brows' mask
    moves down; 0 changes nothing."""
    drops = []
    for i in range(2 * IMAGES_PER_SUBJECT):
        base = render_face(1, i, "studio", SIZE)
        low = render_face(1, i, "studio", SIZE, brow_drop=0.2)
        assert low["emotion"] == base["emotion"] and low["meta"] == base["meta"]
        np.testing.assert_allclose(low["landmarks"], base["landmarks"], atol=0.01)
        np.testing.assert_array_equal(render_face(1, i, "studio", SIZE, brow_drop=0.0)["image"], base["image"])
        iod = float(np.linalg.norm(base["landmarks"][1] - base["landmarks"][0]))
        drops.append((_brow_row(low["parsing"]) - _brow_row(base["parsing"])) / iod)
    assert 0 < min(drops) and max(drops) < 0.2
    ds = SyntheticFaces(3, style="studio", seed=1, size=SIZE, brow_drop=np.float32(0.125))
    assert ds.brow_drop == 0.125 and "brow_drop=0.125" in repr(ds)
    np.testing.assert_array_equal(ds.prerender()[2]["parsing"], render_face(1, 2, "studio", SIZE, brow_drop=0.125)["parsing"])
    for bad in (0.3, -0.1, "low", True):
        with pytest.raises(FacemtlError, match=re.escape(f"brow_drop: expected a distance in 0..0.2 (fractions of the "
                                                         f"inter-ocular distance) or None, got {bad!r}")):
            render_face(0, 0, "studio", SIZE, brow_drop=bad)


def test_angry_shout_opens_the_mouth_of_some_angry_faces_and_changes_no_other_face():
    """data.N.angry_shout: with probability p an Angry face shouts (mouth open: the mouth's mask
    grows, the mouth corners move); every other face, label and draw stays the same."""
    inner_mouth = 8  # Helen's class

    angry = shouted = 0
    for i in range(120):
        closed = render_face(4, i, "studio", SIZE)
        if closed["emotion"] != EMOTIONS.index("Angry"):
            np.testing.assert_array_equal(render_face(4, i, "studio", SIZE, angry_shout=1.0)["image"], closed["image"])
            continue
        angry += 1
        never, always = (render_face(4, i, "studio", SIZE, angry_shout=p) for p in (0.0, 1.0))
        np.testing.assert_array_equal(never["image"], closed["image"])
        assert (always["emotion"], always["meta"]) == (closed["emotion"], closed["meta"])
        inside = (always["parsing"] == inner_mouth).sum() - (closed["parsing"] == inner_mouth).sum()
        assert inside > 0, f"face {i}: a shouting mouth shows its inside"
        corners = np.abs(always["landmarks"][3:] - closed["landmarks"][3:]).max()
        assert corners > 0.1, f"face {i}: a shouting mouth moves its corners"
        shouted += not np.array_equal(render_face(4, i, "studio", SIZE, angry_shout=0.5)["image"], closed["image"])
    assert angry >= 10 and 0 < shouted < angry
    plain = render_face(4, 0, "studio", SIZE, features=[], angry_shout=1.0)  # no "expressions": no shout
    np.testing.assert_array_equal(plain["image"], render_face(4, 0, "studio", SIZE, features=[])["image"])
    ds = SyntheticFaces(3, style="studio", seed=4, size=SIZE, angry_shout=0.5)
    assert ds.angry_shout == 0.5 and "angry_shout=0.5" in repr(ds) and "angry_shout" not in repr(SyntheticFaces(2))
    for bad in (1.5, -0.1, "often", True):
        with pytest.raises(FacemtlError, match=re.escape(f"angry_shout: expected a probability in 0..1 or None, got {bad!r}")):
            render_face(0, 0, "studio", SIZE, angry_shout=bad)


def test_real_glasses_frames_change_only_the_pixels_of_faces_with_glasses():
    """data.N.glasses_frames=real: the same faces, labels and later draws (occluder, camera);
    only the faces that wear glasses look different."""
    worn = 0
    for i in range(40):
        small = render_face(2, i, "snapshot", SIZE)
        real = render_face(2, i, "snapshot", SIZE, glasses_frames="real")
        np.testing.assert_array_equal(real["landmarks"], small["landmarks"])
        np.testing.assert_array_equal(real["parsing"], small["parsing"])
        assert (real["emotion"], real["glasses"], real["meta"]) == (small["emotion"], small["glasses"], small["meta"])
        if small["glasses"] == 0:  # MTFL's 0: wears glasses
            worn += 1
            assert not np.array_equal(real["image"], small["image"])
        else:
            np.testing.assert_array_equal(real["image"], small["image"])
    assert worn >= 5
    np.testing.assert_array_equal(render_face(2, 0, "snapshot", SIZE, glasses_frames="small")["image"],
                                  render_face(2, 0, "snapshot", SIZE)["image"])
    ds = SyntheticFaces(2, style="snapshot", seed=2, size=SIZE, glasses_frames="real")
    assert "glasses_frames='real'" in repr(ds) and "glasses_frames" not in repr(SyntheticFaces(2))
    for bad in ("large", 1, True):
        with pytest.raises(FacemtlError, match=re.escape(f"glasses_frames: expected one of small, real or None, got {bad!r}")):
            render_face(0, 0, "studio", SIZE, glasses_frames=bad)


def test_real_glasses_frames_are_wider_than_the_small_ones():
    """A lens of the real frames reaches about 0.8-1.0 of the inter-ocular distance from the face's
    middle (0.5 to the eye, 0.32-0.42 of half-lens, up to 0.05 further out), the small ones'
    about 0.65-0.8 (0.22-0.28 of half-lens), measured on a frontal mean face a little below the
    eyes (clear of the bridge and the temples, inside every lens)."""
    from facemtl.data import synth

    m = synth._mesh()
    iod, size = 40.0, 200
    centre = np.array([size / 2, size / 2])
    anchor = np.array([0.0, 0.45, 0.0])
    row = int(round(centre[1] + (0.12 - 0.45) * iod))  # 0.12 below the eyes' centres
    reach = {}
    for frames in ("small", "real"):
        reach[frames] = []
        for k in range(24):
            image = np.full((size, size, 3), 255, np.uint8)
            cam = synth._Cam(np.eye(3), anchor, iod, centre)
            synth._draw_glasses(image, synth._rng(k), synth._rng(k, 5), m.neutral, m, cam, centre, frames=frames)
            cols = np.flatnonzero((image[row] < 245).any(1))
            reach[frames] += [(centre[0] - cols.min()) / iod, (cols.max() - centre[0]) / iod]
    small, real = np.array(reach["small"]), np.array(reach["real"])
    assert 0.6 <= small.min() and small.max() <= 0.85, small
    assert 0.76 <= real.min() and real.max() <= 1.05, real
    assert real.mean() - small.mean() >= 0.1


@pytest.mark.parametrize("strength", [(2.0, 1.0), (-0.5, 1.0), (1.0,), (0.5, 5.0), "strong", 2.0])
def test_bad_expression_ranges_are_named(strength):
    with pytest.raises(FacemtlError, match=re.escape("expected [low, high] expression strength (0 <= low <= high <= 4)")):
        render_face(0, 0, "studio", SIZE, expression=strength)


def test_deterministic_and_index_dependent():
    for style in STYLES:
        a, b = render_face(7, 5, style, SIZE), render_face(7, 5, style, SIZE)
        for key in ("image", "parsing", "landmarks"):
            np.testing.assert_array_equal(a[key], b[key])
        assert a["meta"] == b["meta"] and a["emotion"] == b["emotion"]
        c = render_face(7, 6, style, SIZE)
        assert not np.array_equal(a["image"], c["image"])
        assert not np.array_equal(a["landmarks"], c["landmarks"])
    # the seed and the style change the sample too
    assert not np.array_equal(render_face(8, 5, "wild", SIZE)["image"], render_face(7, 5, "wild", SIZE)["image"])
    assert not np.array_equal(render_face(7, 5, "webcam", SIZE)["landmarks"], render_face(7, 5, "wild", SIZE)["landmarks"])


def test_global_rng_state_is_not_used():
    np.random.seed(0)
    a = render_face(1, 2, "wild", SIZE)
    np.random.seed(12345)
    np.random.random(100)
    b = render_face(1, 2, "wild", SIZE)
    np.testing.assert_array_equal(a["image"], b["image"])


def test_dataset_sequence():
    ds = SyntheticFaces(5, style="webcam", seed=2, size=SIZE)
    assert len(ds) == 5
    np.testing.assert_array_equal(ds[3]["image"], render_face(2, 3, "webcam", SIZE)["image"])
    np.testing.assert_array_equal(ds[-1]["landmarks"], ds[4]["landmarks"])
    with pytest.raises(IndexError):
        ds[5]
    assert sum(1 for _ in ds) == 5  # Sequence iteration stops on IndexError


def _same_face(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


def test_prerender_in_worker_processes_gives_the_faces_rendered_on_access(monkeypatch):
    import facemtl.data.synth as synth

    monkeypatch.setattr(synth, "PARALLEL_RENDER_MIN", 4)  # a pool for 7 faces: the test stays short
    on_access = SyntheticFaces(7, style="studio", seed=5, size=SIZE)
    kept = SyntheticFaces(7, style="studio", seed=5, size=SIZE).prerender(processes=3)  # ranges 3 + 3 + 1
    assert kept._rendered is not None and len(kept._rendered) == 7
    for i in range(7):
        _same_face(kept[i], on_access[i])
    assert kept[2] is kept[2]  # kept, not rendered again
    serial = SyntheticFaces(3, style="webcam", seed=1, size=SIZE).prerender(processes=1)
    _same_face(serial[-1], render_face(1, 2, "webcam", SIZE))


def test_prerender_worker_failure_is_reported(monkeypatch):
    import facemtl.data.synth as synth

    monkeypatch.setattr(synth, "PARALLEL_RENDER_MIN", 1)
    broken = SyntheticFaces(4, style="studio", seed=5, size=SIZE)
    broken.features = "not a feature set"  # the workers cannot render with it
    with pytest.raises(FacemtlError, match="worker process failed"):
        broken.prerender(processes=2)


@pytest.mark.parametrize("call", [
    lambda: render_face(0, 0, "cartoon"),
    lambda: render_face(0, 0, "studio", 63),
    lambda: render_face(-1, 0),
    lambda: SyntheticFaces(3, style="nope"),
    lambda: SyntheticFaces(3, size=32),
])
def test_bad_arguments_raise_facemtl_error(call):
    with pytest.raises(FacemtlError):
        call()


def test_error_messages_name_the_problem():
    with pytest.raises(FacemtlError, match="studio, wild, webcam"):
        render_face(0, 0, "cartoon")
    with pytest.raises(FacemtlError, match=">= 64"):
        SyntheticFaces(2, size=10)


def test_labels_valid_and_consistent(samples):
    for style, group in samples.items():
        for s in group:
            assert s["parsing"].max() <= 10
            assert s["pose"] == pose_from_yaw(s["meta"]["yaw"])
            assert s["smile"] == (0 if s["emotion"] == EMOTIONS.index("Happy") else 1)
            assert np.isfinite(s["landmarks"]).all()
            # every face has skin, nose and hair-or-scalp pixels
            assert (s["parsing"] == 1).any() and (s["parsing"] == 6).any() or s["meta"]["occluded"]


def test_landmarks_agree_with_mask(samples):
    checked = {"eyes": 0, "nose": 0, "mouth": 0}
    for style, group in samples.items():
        for s in group:
            if s["meta"]["occluded"]:
                continue
            m, lm, yaw = s["parsing"], s["landmarks"], s["meta"]["yaw"]
            if abs(yaw) <= 30:
                assert _near(m, lm[0], [4], 1), (style, s["meta"])
                assert _near(m, lm[1], [5], 1), (style, s["meta"])
                checked["eyes"] += 1
            if abs(yaw) <= 60:
                assert _near(m, lm[2], [6], 1), (style, s["meta"])
                checked["nose"] += 1
            if abs(yaw) <= 40 and abs(s["meta"]["pitch"]) <= 20:  # else the nose may hide a corner
                for corner in lm[3:]:
                    assert _near(m, corner, [7, 8, 9], 2), (style, s["meta"])
                checked["mouth"] += 1
    assert min(checked.values()) >= 30, checked


def test_left_right_order_on_frontal_faces(samples):
    n = 0
    for group in samples.values():
        for s in group:
            if abs(s["meta"]["yaw"]) <= 15 and abs(s["meta"]["roll"]) <= 15:
                lm = s["landmarks"]
                assert lm[0, 0] < lm[2, 0] < lm[1, 0]
                assert lm[3, 0] < lm[4, 0]
                # left eye class lies on the image-left of the right eye class
                xs4 = np.nonzero(s["parsing"] == 4)[1]
                xs5 = np.nonzero(s["parsing"] == 5)[1]
                if len(xs4) and len(xs5):
                    assert xs4.mean() < xs5.mean()
                n += 1
    assert n >= 10


def _by_emotion(name, count, style="studio"):
    target = EMOTIONS.index(name)
    out, i = [], 0
    while len(out) < count:
        s = render_face(11, i, style, SIZE)
        if s["emotion"] == target and abs(s["meta"]["yaw"]) <= 20 and not s["meta"]["occluded"]:
            out.append(s)
        i += 1
    return out


def _corner_drop(s):
    """Mouth-corner height below the nose tip, in inter-ocular distances (roll-free frame)."""
    lm = s["landmarks"].astype(np.float64)
    eye_axis = lm[1] - lm[0]
    iod = np.linalg.norm(eye_axis)
    down = np.array([-eye_axis[1], eye_axis[0]]) / iod  # perpendicular to the eye line, pointing down
    return float(np.mean((lm[3:] - lm[2]) @ down) / iod)


def test_happy_corners_higher_than_sad():
    happy = [_corner_drop(s) for s in _by_emotion("Happy", 6)]
    sad = [_corner_drop(s) for s in _by_emotion("Sad", 6)]
    assert np.mean(happy) + 0.05 < np.mean(sad), (happy, sad)


def test_surprise_opens_the_mouth_and_neutral_does_not():
    for s in _by_emotion("Surprise", 4):
        assert (s["parsing"] == 8).sum() >= 4
    neutral_inner = [(s["parsing"] == 8).sum() for s in _by_emotion("Neutral", 4)]
    surprise_inner = [(s["parsing"] == 8).sum() for s in _by_emotion("Surprise", 4)]
    assert np.mean(neutral_inner) < 0.25 * np.mean(surprise_inner)


def test_styles_differ_in_statistics(samples):
    def mean_abs_yaw(style):
        return np.mean([abs(s["meta"]["yaw"]) for s in samples[style]])

    def saturation(style):
        return np.mean([np.ptp(s["image"].astype(float), axis=2).mean() for s in samples[style]])

    assert mean_abs_yaw("wild") > 1.5 * mean_abs_yaw("studio")
    assert saturation("webcam") < saturation("studio")
    assert sum(s["meta"]["occluded"] for s in samples["wild"]) > sum(s["meta"]["occluded"] for s in samples["studio"])


def test_subjects_share_identity_traits():
    a, b = render_face(0, 0, "studio", SIZE), render_face(0, 1, "studio", SIZE)
    assert a["meta"]["subject"] == b["meta"]["subject"]
    assert a["gender"] == b["gender"] and a["meta"]["hair"] == b["meta"]["hair"]
    subjects = {render_face(0, i, "studio", SIZE)["meta"]["subject"] for i in range(0, 30, 6)}
    assert len(subjects) == 5
