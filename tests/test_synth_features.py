"""The realism features of the synthetic faces: each switch changes what it should (pixels, or
its own mask classes) and nothing else; features are validated; samples stay deterministic."""

import numpy as np
import pytest

from facemtl.data import synth_look
from facemtl.data.synth import (
    ALL_FEATURES,
    EMOTIONS,
    FEATURES,
    STYLES,
    SyntheticFaces,
    _mesh,
    render_face,
)
from facemtl.errors import FacemtlError

SIZE = 64
# features that only change pixels: mask and landmarks must not move when they are switched
APPEARANCE = [f for f in FEATURES if f not in ("expressions", "hair_texture", "ears")]
# (seed, index, style) pairs covering every style, both genders, beards, open mouths, poses
CASES = [(5, i, style) for style in STYLES for i in range(0, 36, 3)]


@pytest.fixture(scope="module")
def full():
    return {case: render_face(*case, SIZE) for case in CASES}


def test_feature_table():
    assert len(set(FEATURES)) == len(FEATURES)
    assert ALL_FEATURES == frozenset(FEATURES)
    assert {"smooth_shading", "eyes", "mouth_interior", "lighting", "camera", "expressions", "ears"} <= ALL_FEATURES


def test_default_is_all_features_and_any_iterable_works():
    a = render_face(2, 7, "wild", SIZE)
    b = render_face(2, 7, "wild", SIZE, features=list(FEATURES))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["parsing"], b["parsing"])


@pytest.mark.parametrize("bad", [{"smooth_shading", "sparkles"}, "eyes", 3])
def test_bad_features_raise_facemtl_error(bad):
    with pytest.raises(FacemtlError, match="feature"):
        render_face(0, 0, "studio", SIZE, features=bad)
    with pytest.raises(FacemtlError):
        SyntheticFaces(2, size=SIZE, features=bad)


def test_unknown_feature_is_named():
    with pytest.raises(FacemtlError, match="sparkles"):
        render_face(0, 0, "studio", SIZE, features={"sparkles"})


def test_detail_repaints_never_change_a_label():
    """Every detail type (pupil, teeth, crease, beard, lash...) maps materials to same-label ones."""
    labels = synth_look.LABEL_LUT
    for row in synth_look.DETAIL_LUT:
        np.testing.assert_array_equal(labels[row], labels)


@pytest.mark.parametrize("feature", APPEARANCE)
def test_appearance_feature_changes_pixels_but_not_labels(full, feature):
    changed = 0
    for case, s in full.items():
        t = render_face(*case, SIZE, features=ALL_FEATURES - {feature})
        np.testing.assert_array_equal(t["parsing"], s["parsing"], err_msg=f"{feature} {case}")
        np.testing.assert_array_equal(t["landmarks"], s["landmarks"], err_msg=f"{feature} {case}")
        assert (t["emotion"], t["gender"], t["glasses"], t["pose"]) == (s["emotion"], s["gender"], s["glasses"], s["pose"])
        changed += not np.array_equal(t["image"], s["image"])
    assert changed >= 1, f"switching {feature} off changed no image"


@pytest.mark.parametrize("feature", APPEARANCE)
def test_appearance_feature_alone_keeps_the_plain_labels(feature):
    """Switching one feature on from the plain renderer also leaves mask and landmarks alone."""
    for case in CASES[::4]:
        plain = render_face(*case, SIZE, features=())
        one = render_face(*case, SIZE, features={feature})
        np.testing.assert_array_equal(one["parsing"], plain["parsing"], err_msg=f"{feature} {case}")
        np.testing.assert_array_equal(one["landmarks"], plain["landmarks"])


def test_hair_texture_only_moves_hair_pixels(full):
    changed = 0
    for case, s in full.items():
        t = render_face(*case, SIZE, features=ALL_FEATURES - {"hair_texture"})
        np.testing.assert_array_equal(t["landmarks"], s["landmarks"])
        diff = t["parsing"] != s["parsing"]
        # strands, a ragged outline and a jagged fringe: hair where drawn, what was under elsewhere
        assert np.all((s["parsing"][diff] == 10) | (t["parsing"][diff] == 10)), case
        changed += diff.any()
    assert changed >= 5


def test_ears_add_skin_beside_the_head(full):
    added = 0
    for case, s in full.items():
        t = render_face(*case, SIZE, features=ALL_FEATURES - {"ears"})
        np.testing.assert_array_equal(t["landmarks"], s["landmarks"])
        diff = t["parsing"] != s["parsing"]
        assert np.all(s["parsing"][diff] == 1), case  # ears are labelled skin, as Helen has no ear class
        assert np.all(np.isin(t["parsing"][diff], (0, 10))), case  # over background or back hair
        added += diff.any()
    assert added >= 5


def test_expressions_keep_neutral_faces_and_move_the_others():
    moved = 0
    for i in range(40):
        s = render_face(9, i, "classroom", SIZE)
        t = render_face(9, i, "classroom", SIZE, features=ALL_FEATURES - {"expressions"})
        assert s["emotion"] == t["emotion"]
        if EMOTIONS[s["emotion"]] == "Neutral":  # nothing to strengthen, no creases
            np.testing.assert_array_equal(s["landmarks"], t["landmarks"])
            np.testing.assert_array_equal(s["image"], t["image"])
        else:
            moved += not np.array_equal(s["landmarks"], t["landmarks"])
    assert moved >= 20


def _cues(s):
    """Brow height above the eyes, eye-white area and nose-to-upper-lip gap, in IOD units."""
    lm, m = s["landmarks"].astype(np.float64), s["parsing"]
    iod = np.linalg.norm(lm[1] - lm[0])
    ys, _ = np.nonzero(np.isin(m, (2, 3)))
    brow = (lm[:2, 1].mean() - ys.mean()) / iod
    eye = np.isin(m, (4, 5)).sum() / iod**2
    ys, xs = np.nonzero(m == 7)
    near = np.abs(xs - lm[2, 0]) < 0.15 * iod
    lip = (ys[near].min() - lm[2, 1]) / iod
    return np.array([brow, eye, lip])


def _mean_cues(name, count=5):
    out, i = [], 0
    while len(out) < count:
        s = render_face(11, i, "studio", 128)
        if EMOTIONS[s["emotion"]] == name and abs(s["meta"]["yaw"]) <= 20 and not s["meta"]["occluded"]:
            out.append(_cues(s))
        i += 1
    return np.mean(out, 0)


def test_angry_disgust_fear_differ_from_neutral():
    neutral = _mean_cues("Neutral")
    angry, disgust, fear = _mean_cues("Angry"), _mean_cues("Disgust"), _mean_cues("Fear")
    assert angry[0] < neutral[0] - 0.04, (angry, neutral)  # lowered brows
    assert disgust[2] < neutral[2] - 0.03, (disgust, neutral)  # upper lip raised towards the nose
    assert disgust[1] < 0.85 * neutral[1], (disgust, neutral)  # narrowed eyes
    assert fear[1] > 1.25 * neutral[1], (fear, neutral)  # wide eyes: white shows around the iris
    assert fear[0] > neutral[0] + 0.02, (fear, neutral)  # raised brows


def test_deterministic_per_feature_set():
    feats = ALL_FEATURES - {"camera", "makeup"}
    a = render_face(4, 13, "snapshot", SIZE, features=feats)
    b = render_face(4, 13, "snapshot", SIZE, features=frozenset(feats))
    for key in ("image", "parsing", "landmarks"):
        np.testing.assert_array_equal(a[key], b[key])


def test_dataset_passes_features_on():
    feats = frozenset({"smooth_shading", "eyes"})
    ds = SyntheticFaces(3, style="studio", seed=2, size=SIZE, features=feats)
    np.testing.assert_array_equal(ds[1]["image"], render_face(2, 1, "studio", SIZE, features=feats)["image"])
    assert "eyes" in repr(ds) and "features" not in repr(SyntheticFaces(3, size=SIZE))


def test_smooth_shading_has_no_facets():
    """Inside one material region the plain renderer steps between flat facets; the smooth one
    varies gently: its mean absolute neighbour difference on skin is clearly lower."""
    rough = smooth = 0.0
    for i in range(6):
        feats = {"smooth_shading"}
        a = render_face(1, i, "studio", 128, features=feats)
        b = render_face(1, i, "studio", 128, features=())
        for img, acc in ((a, "smooth"), (b, "rough")):
            g = img["image"].astype(np.float64).mean(2)
            skin = img["parsing"] == 1
            both = skin[:, 1:] & skin[:, :-1]
            step = np.abs(np.diff(g, axis=1))[both].mean()
            if acc == "smooth":
                smooth += step
            else:
                rough += step
    assert smooth < 0.8 * rough, (smooth, rough)


def test_mesh_tables_cover_every_triangle_once():
    m = _mesh()
    assert m.patch_of.shape == (len(m.tris),) and m.region_of.shape == (len(m.tris),)
    # every patch belongs to exactly one region, and regions only join patches of one material
    assert np.all(m.region_material[m.region_of_patch] == m.patch_material)
    assert np.all(m.patch_material[m.patch_of] == m.material)
