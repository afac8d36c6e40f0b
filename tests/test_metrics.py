import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from facemtl.errors import FacemtlError
from facemtl.metrics import (
    PARSING_GROUPS,
    ConfusionMatrix,
    LandmarkMeter,
    ParsingF1,
    auc,
    ced_curve,
    failure_rate,
    nme,
    per_point_nme,
)

# Two images, three points (left eye, right eye, one more).
# Image 0: eyes 10 apart; errors 5 (3-4-5), 0, 2 -> per point 0.5, 0, 0.2 -> NME 0.7/3.
# Image 1: eyes 20 apart (vertical); errors 0, 6, 0 -> per point 0, 0.3, 0 -> NME 0.1.
TARGET = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]], [[0.0, 0.0], [0.0, 20.0], [7.0, 3.0]]])
PRED = torch.tensor([[[3.0, 4.0], [10.0, 0.0], [5.0, 7.0]], [[0.0, 0.0], [6.0, 20.0], [7.0, 3.0]]])


def test_per_point_and_per_image_nme_by_hand():
    pp = per_point_nme(PRED, TARGET)
    assert torch.allclose(pp, torch.tensor([[0.5, 0.0, 0.2], [0.0, 0.3, 0.0]], dtype=torch.float64))
    e = nme(PRED, TARGET)
    assert e.shape == (2,)
    assert e.tolist() == pytest.approx([0.7 / 3, 0.1])
    # Same in normalised units: scaling both by 1/100 leaves NME unchanged; numpy accepted.
    assert nme(PRED.numpy() / 100, TARGET.numpy() / 100).tolist() == pytest.approx([0.7 / 3, 0.1])


def test_nme_visibility_norm_and_inter_pupil():
    pred, target = PRED.clone(), TARGET.clone()
    target[0, 2] = float("nan")  # invisible points may hold anything
    visible = torch.tensor([[True, True, False], [True, True, True]])
    assert nme(pred, target, visible=visible).tolist() == pytest.approx([0.5 / 2, 0.1])
    # norm overrides the inter-ocular distance (e.g. AFLW box size).
    assert nme(PRED, TARGET, norm=torch.tensor([5.0, 10.0])).tolist() == pytest.approx([1.4 / 3, 0.2])
    # Inter-pupil: each eye is the mean of its points -> centres (0, 1) and (10, 1), d = 10.
    g = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]]])
    p = g.clone()
    p[0, 3, 0] += 4.0
    assert nme(p, g, eye_indices=([0, 1], [2, 3])).item() == pytest.approx(4.0 / 10 / 4)
    # Inter-ocular with outer corners 0 and 2 instead: same d here.
    assert nme(p, g, eye_indices=(0, 2)).item() == pytest.approx(0.1)


def test_nme_errors_are_clear():
    with pytest.raises(FacemtlError, match=r"\(B, K, 2\)"):
        nme(torch.zeros(5, 2), torch.zeros(5, 2))
    with pytest.raises(FacemtlError, match="normaliser must be a positive number"):
        nme(torch.zeros(1, 5, 2), torch.zeros(1, 5, 2))
    with pytest.raises(FacemtlError, match="pass norm="):
        nme(PRED, TARGET.clone().index_fill_(1, torch.tensor([0]), float("nan")))
    with pytest.raises(FacemtlError, match="not a valid point index"):
        nme(PRED, TARGET, eye_indices=(0, 7))
    with pytest.raises(FacemtlError, match="one per image"):
        nme(PRED, TARGET, norm=[1.0])


def test_failure_rate_boundary_is_not_a_failure():
    assert failure_rate(torch.tensor([0.10, 0.05, 0.1000001, 0.3])) == pytest.approx(0.5)
    assert failure_rate(np.array([0.10])) == 0.0
    assert failure_rate([0.2], threshold=0.08) == 1.0


def test_auc_and_ced_of_known_distribution():
    e = torch.tensor([0.0, 0.05, 0.2])  # areas 1, 0.5, 0 (normalised) -> 0.5
    assert auc(e) == pytest.approx(0.5)
    t, frac = ced_curve(e, steps=10)
    assert t.shape == frac.shape == (11,)
    assert t[0] == 0 and t[-1] == pytest.approx(0.1)
    assert frac[0].item() == pytest.approx(1 / 3) and frac[5].item() == pytest.approx(2 / 3)
    assert frac[-1].item() == pytest.approx(2 / 3)
    # Uniform errors on [0, 0.1] -> CED is the diagonal -> AUC 1/2; the exact AUC agrees
    # with a finely sampled trapezoid of the curve.
    u = torch.linspace(0, 0.1, 10001)
    assert auc(u) == pytest.approx(0.5, abs=1e-4)
    r = torch.rand(200, generator=torch.Generator().manual_seed(0)) * 0.15
    t, frac = ced_curve(r, steps=20000)
    assert auc(r) == pytest.approx(float(torch.trapezoid(frac, t) / 0.1), abs=1e-3)


def test_landmark_meter_matches_functions_and_reports_percent():
    m = LandmarkMeter(3)
    m.update(PRED[:1], TARGET[:1])
    m.update(PRED[1:], TARGET[1:])
    r = m.compute()
    assert r["nme"] == pytest.approx(100 * (0.7 / 3 + 0.1) / 2)
    assert r["failure_rate"] == pytest.approx(50.0)  # image 1 sits exactly on 10 %
    assert r["nme_per_point"] == pytest.approx([25.0, 15.0, 10.0])
    assert r["auc"] == pytest.approx(100 * auc(nme(PRED, TARGET)))
    assert m.per_image_nme.tolist() == pytest.approx([0.7 / 3, 0.1])
    # Invisible points leave per-point averages and image counts alone.
    m.reset()
    m.update(PRED, TARGET, visible=torch.tensor([[True, True, False], [False, False, False]]))
    r = m.compute()
    assert r["nme"] == pytest.approx(25.0) and m.state()["count"].item() == 1
    assert r["nme_per_point"][:2] == pytest.approx([50.0, 0.0]) and math.isnan(r["nme_per_point"][2])
    with pytest.raises(FacemtlError, match="expected 5 points"):
        LandmarkMeter(5).update(PRED, TARGET)
    with pytest.raises(FacemtlError, match="nothing accumulated"):
        LandmarkMeter(3).compute()


# Tiny Helen masks (ids: 0 bg, 1 skin, 4 left eye, 5 right eye, 6 nose, 7 upper lip, 255 ignore).
PARSE_T = torch.tensor([[4, 4, 5], [6, 0, 255]])
PARSE_P = torch.tensor([[4, 5, 5], [6, 1, 7]])


def test_parsing_f1_per_class_and_groups_by_hand():
    m = ParsingF1()
    m.update(PARSE_P, PARSE_T)
    r = m.compute()
    # left eye: |G| 2, |P| 1, TP 1; right eye: |G| 1, |P| 2, TP 1 (the left->right pixel is wrong).
    assert r["f1"]["left_eye"] == pytest.approx(200 / 3)
    assert r["f1"]["right_eye"] == pytest.approx(200 / 3)
    assert r["f1"]["nose"] == pytest.approx(100.0)
    assert r["f1"]["background"] == 0.0 and r["f1"]["skin"] == 0.0
    # ...but right for the binary "eyes" group, and overall (eyes + nose here) is perfect.
    assert r["eyes"] == pytest.approx(100.0)
    assert r["overall"] == pytest.approx(100.0)
    # Classes/groups with no GT and no prediction pixel are omitted (upper lip only on an ignored pixel).
    assert "upper_lip" not in r["f1"] and "hair" not in r["f1"]
    assert "brows" not in r and "mouth_all" not in r
    assert set(r["f1"]) == {"background", "skin", "left_eye", "right_eye", "nose"}


def test_parsing_overall_counts_cross_group_confusion_as_error():
    # GT brow predicted as eye: wrong for both eyes and brows, right for overall.
    m = ParsingF1()
    m.update(torch.tensor([4, 4]), torch.tensor([2, 4]))
    r = m.compute()
    assert r["brows"] == 0.0
    assert r["eyes"] == pytest.approx(100 * 2 * 1 / (1 + 2))
    assert r["overall"] == pytest.approx(100.0)
    # Logits are accepted as the prediction.
    logits = torch.nn.functional.one_hot(PARSE_P.clamp_max(10), 11).permute(2, 0, 1)[None].float()
    m2 = ParsingF1()
    m2.update(logits, PARSE_T[None])
    m3 = ParsingF1()
    m3.update(PARSE_P, PARSE_T)
    assert m2.compute() == m3.compute()


def test_parsing_accumulates_counts_not_batch_means():
    a_t, a_p = torch.tensor([6]), torch.tensor([6])  # nose F1 100 in this batch
    b_t, b_p = torch.full((9,), 6), torch.zeros(9, dtype=torch.long)  # nose F1 0 in this batch
    acc = ParsingF1()
    acc.update(a_p, a_t)
    acc.update(b_p, b_t)
    big = ParsingF1()
    big.update(torch.cat([a_p, b_p]), torch.cat([a_t, b_t]))
    assert acc.compute() == big.compute()
    assert acc.compute()["f1"]["nose"] == pytest.approx(100 * 2 / 11)  # 2*1 / (10 + 1)
    per_batch = []
    for p, t in ((a_p, a_t), (b_p, b_t)):
        one = ParsingF1()
        one.update(p, t)
        per_batch.append(one.compute()["f1"]["nose"])
    assert np.mean(per_batch) == pytest.approx(50.0)  # the wrong answer differs


def test_parsing_groups_by_name_and_errors():
    assert set(PARSING_GROUPS["overall"]) == set(
        PARSING_GROUPS["eyes"] + PARSING_GROUPS["brows"] + PARSING_GROUPS["mouth_all"] + ("nose",))
    m = ParsingF1(3, ["background", "left_eye", "right_eye"])
    assert set(m.groups) == {"eyes"}  # default groups kept only where all classes exist
    with pytest.raises(FacemtlError, match="unknown classes"):
        ParsingF1(3, ["background", "left_eye", "right_eye"], groups={"brows": ("left_brow",)})
    with pytest.raises(FacemtlError, match="same shape"):
        ParsingF1().update(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(FacemtlError, match=r"outside 0\.\.10"):
        ParsingF1().update(torch.tensor([11]), torch.tensor([0]))


def test_confusion_matrix_orientation_and_balanced_accuracy():
    m = ConfusionMatrix(3, ["a", "b", "c"])
    m.update(torch.tensor([1, 1, 1]), torch.tensor([0, 0, 1]))
    assert m.compute()["confusion"] == [[0, 2, 0], [0, 1, 0], [0, 0, 0]]  # rows = ground truth
    m.reset()
    # Imbalanced: 8 of class a all right, 2 of class b both wrong, none of class c.
    target = torch.tensor([0] * 8 + [1] * 2)
    pred = torch.zeros(10, dtype=torch.long)
    m.update(pred, target)
    r = m.compute()
    assert r["accuracy"] == pytest.approx(80.0)
    assert r["mean_class_accuracy"] == pytest.approx(50.0)  # (100 + 0) / 2, class c has no samples
    assert r["per_class_accuracy"] == {"a": 100.0, "b": 0.0}
    # Logits give the same counts as ids; numpy accepted.
    logits = torch.nn.functional.one_hot(pred, 3).float().numpy()
    m2 = ConfusionMatrix(3, ["a", "b", "c"])
    m2.update(logits, target.numpy())
    assert m2.compute() == r
    with pytest.raises(FacemtlError, match="0..2"):
        m2.update(torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(FacemtlError, match="2 predictions for 3 targets"):
        m2.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))


def _split_meters():
    """(meter on all data, meter on first half, meter on second half) for each kind."""
    g = torch.Generator().manual_seed(1)
    tgt = torch.rand(6, 5, 2, generator=g) * 64
    tgt[:, 1, 0] += 80  # keep the eyes apart
    pred = tgt + torch.randn(6, 5, 2, generator=g) * 3
    vis = torch.rand(6, 5, generator=g) > 0.2
    masks_t = torch.randint(0, 11, (4, 8, 8), generator=g)
    masks_p = torch.randint(0, 11, (4, 8, 8), generator=g)
    cls_t, cls_p = torch.randint(0, 7, (20,), generator=g), torch.randn(20, 7, generator=g)
    out = []
    for make, feed in (
        (lambda: LandmarkMeter(5), lambda m, s: m.update(pred[s], tgt[s], visible=vis[s])),
        (lambda: ParsingF1(), lambda m, s: m.update(masks_p[s], masks_t[s])),
        (lambda: ConfusionMatrix(7), lambda m, s: m.update(cls_p[s], cls_t[s])),
    ):
        whole, first, second = make(), make(), make()
        feed(whole, slice(None))
        feed(first, slice(0, 2))
        feed(second, slice(2, None))
        out.append((whole, first, second))
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (_same(a[k], b[k]) if isinstance(a[k], dict) else np.allclose(a[k], b[k], equal_nan=True)) for k in a)


def test_merge_of_two_meters_equals_one_meter_on_all_data():
    for whole, first, second in _split_meters():
        first.merge(second.state())
        assert _same(first.compute(), whole.compute()), type(whole).__name__
        assert first.all_reduce() is first  # no-op without torch.distributed
        assert _same(first.compute(), whole.compute())
    with pytest.raises(FacemtlError, match="shape"):
        ParsingF1().merge(ParsingF1(3, ["a", "b", "c"]).state())
    with pytest.raises(FacemtlError, match="state keys"):
        ParsingF1().merge(LandmarkMeter(5).state())


def _dist_worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        metas = _split_meters()
        results[rank] = [(m[1 + rank].all_reduce().compute(), m[0].compute()) for m in metas]
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_gloo_processes(run_two_gloo_processes):
    results = run_two_gloo_processes(_dist_worker)
    for rank in (0, 1):
        for reduced, whole in results[rank]:
            assert _same(reduced, whole)


def test_meter_for_picks_the_meter_from_the_task_kind():
    from facemtl.metrics import meter_for
    from facemtl.tasks import Task

    assert isinstance(meter_for("landmarks"), LandmarkMeter)
    parsing = meter_for("parsing")
    assert isinstance(parsing, ParsingF1) and parsing.class_names[4] == "left_eye"
    assert set(parsing.groups) == set(PARSING_GROUPS)
    emotion = meter_for("emotion")
    assert isinstance(emotion, ConfusionMatrix) and emotion.class_names[3] == "Happy"
    ibug = Task("ibug68", "points", 68)
    with pytest.raises(FacemtlError, match="pass eye_indices"):
        meter_for(ibug)
    assert meter_for(ibug, eye_indices=(36, 45)).eye_indices == (36, 45)


def test_parsing_accepts_single_logit_maps_and_checks_their_classes():
    logits = torch.nn.functional.one_hot(PARSE_P.clamp_max(10), 11).permute(2, 0, 1).float()  # (C, H, W)
    m = ParsingF1()
    m.update(logits, PARSE_T)
    assert m.compute()["eyes"] == pytest.approx(100.0)
    with pytest.raises(FacemtlError, match="do not have 11 classes"):
        m.update(torch.zeros(1, 4, 2, 3), PARSE_T[None])
