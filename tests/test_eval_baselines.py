"""Trivial baselines of ``evaluate``: mean shape, all-background / all-skin, majority class."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from facemtl.data.mixing import Source
from facemtl.engine.evaluate import evaluate, format_tables
from facemtl.models.base import FaceModel
from facemtl.tasks import STANDARD_TASKS

TASKS = (STANDARD_TASKS["landmarks"], STANDARD_TASKS["parsing"], STANDARD_TASKS["emotion"])
H, W = 24, 32


class FakeModel(FaceModel):
    """Predicts the image centre, all background and 'Angry' for every face (one iteration)."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks = TASKS
        self.weight = nn.Parameter(torch.zeros(()))  # evaluate() looks up the model's device

    def decode(self, name, out):
        return out

    def forward(self, images, source=None, iterations=None):
        b, _, h, w = images.shape
        return [{"landmarks": torch.full((b, 5, 2), 0.5), "parsing": torch.zeros(b, 11, h, w),
                 "emotion": torch.zeros(b, 7)}]


def _samples() -> list[dict]:
    pts = [
        [[8, 8], [24, 8], [16, 12], [12, 20], [20, 20]],
        [[8, 8], [24, 8], [16, 13], [12, 20], [21, 19]],
        [[8, 7], [25, 8], [99, 99], [12, 20], [20, 20]],  # nose not visible: its coordinates are junk
        [[11, 11], [27, 11], [19, 15], [15, 23], [23, 23]],  # shifted 3 px: the one failure (NME > 10%)
    ]
    vis = [[True] * 5, [True] * 5, [True, True, False, True, True], [True] * 5]
    out = []
    for i, emotion in enumerate([3, 3, 6, 0]):  # Happy is the majority: 2 of 4
        parsing = np.zeros((H, W), np.uint8)
        parsing[1:, 2:6] = 1  # skin
        parsing[2, 2 + i] = 6  # a nose pixel
        parsing[0, 0] = 255  # ignored
        if i == 1:
            parsing[3:5, 3] = 8  # inner mouth
        out.append({"image": np.zeros((H, W, 3), np.uint8), "landmarks": np.array(pts[i], np.float32),
                    "visibility": np.array(vis[i]), "parsing": parsing, "emotion": emotion})
    return out


INFO = {"sources": [{"name": "a", "tasks": [t.name for t in TASKS]}], "task_sources": [0, 0, 0]}


def _mean_shape_by_hand(samples):
    g = np.stack([s["landmarks"] / np.array([W, H], np.float64) for s in samples])  # normalised (N, 5, 2)
    v = np.stack([s["visibility"] for s in samples])
    mean = np.array([g[v[:, k], k].mean(0) for k in range(5)])
    d = np.linalg.norm(g[:, 0] - g[:, 1], axis=1)  # inter-ocular: points 0 and 1
    err = np.linalg.norm(mean[None] - g, axis=2) / d[:, None]
    per_image = np.array([err[i, v[i]].mean() for i in range(len(g))])
    per_point = [err[v[:, k], k].mean() * 100 for k in range(5)]
    return per_image.mean() * 100, (per_image > 0.1).mean() * 100, per_point


def test_baselines_match_hand_counts_and_show_in_the_tables():
    samples = _samples()
    res = evaluate(FakeModel(), INFO, [samples], batch_size=3)  # 2 batches: totals, not batch means
    b = res["baselines"]
    assert set(b) == {"landmarks", "parsing", "emotion"}

    nme, failures, per_point = _mean_shape_by_hand(samples)
    assert b["landmarks"]["mean_shape_nme"] == pytest.approx(nme)
    assert b["landmarks"]["mean_shape_failure_rate"] == pytest.approx(failures) and 0 < failures < 100
    assert b["landmarks"]["mean_shape_nme_per_point"] == pytest.approx(per_point)

    masks = np.stack([s["parsing"] for s in samples]).astype(np.int64)
    valid = masks != 255
    n, bg, skin = valid.sum(), (masks == 0).sum(), (masks == 1).sum()
    allbg, allskin = b["parsing"]["all_background"], b["parsing"]["all_skin"]
    assert allbg["f1"]["background"] == pytest.approx(100 * 2 * bg / (bg + n))
    assert allbg["f1"]["skin"] == 0.0 and allbg["overall"] == 0.0 and allbg["mouth_all"] == 0.0
    assert "left_eye" not in allbg["f1"]  # absent from ground truth and prediction, like the model's
    assert allskin["f1"]["skin"] == pytest.approx(100 * 2 * skin / (skin + n))
    # The fake model predicts all background too: its scores are the baseline's.
    assert res["iterations"]["0"]["parsing"]["f1"] == pytest.approx(allbg["f1"])

    assert b["emotion"] == {"majority_class": "Happy", "majority_accuracy": 50.0,
                            "majority_mean_class_accuracy": pytest.approx(100 / 3)}

    table = format_tables(res, TASKS)
    lines = {line.split("  ")[0].strip(): line for line in table.splitlines()}
    assert f"{nme:.2f}" in lines["mean shape"]
    assert f"{100 * 2 * bg / (bg + n):.2f}" in lines["all background"]
    assert "all skin" in lines and "50.00" in lines["majority (Happy)"]
    # Baseline rows come after the iteration rows.
    assert table.index("Iter0") < table.index("mean shape")


def test_tables_of_a_result_without_baselines_still_format():
    res = evaluate(FakeModel(), INFO, [_samples()], batch_size=4)
    old = {"iterations": res["iterations"]}  # a metrics.json written before the baselines
    table = format_tables(old, TASKS)
    assert "Iter0" in table and "mean shape" not in table and "majority" not in table
    assert len(table.splitlines()) == len(format_tables(res, TASKS).splitlines()) - 4  # 4 baseline rows


def test_crops_are_baselined_at_the_raw_resolution():
    """With ``meta["crop_matrix"]`` the model is scored on the raw mask, so are the baselines."""
    raw = _samples()
    for s in raw:
        s["parsing"][1::2, :] = 1  # skin only on odd rows: a half-size crop would miss it all

    def half(sample):  # a crop at half resolution: original -> crop is a scale by 0.5
        return {**sample, "image": sample["image"][::2, ::2], "parsing": sample["parsing"][::2, ::2],
                "landmarks": sample["landmarks"] / 2, "meta": {"crop_matrix": [[0.5, 0, 0], [0, 0.5, 0]]}}

    src = Source(0, "a", TASKS, train=raw, test=raw, batch_size=1, eval_transform=half)
    res = evaluate(FakeModel(), INFO, [src], batch_size=2)
    masks = np.stack([s["parsing"] for s in raw]).astype(np.int64)
    n, skin = (masks != 255).sum(), (masks == 1).sum()
    assert res["baselines"]["parsing"]["all_skin"]["f1"]["skin"] == pytest.approx(100 * 2 * skin / (skin + n))


def _dist_worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results[rank] = evaluate(FakeModel(), INFO, [_samples()], batch_size=1, rank=rank, world_size=2)["baselines"]
    finally:
        dist.destroy_process_group()


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)
    return a == b


def test_baselines_over_two_gloo_processes_equal_the_single_process_ones(run_two_gloo_processes):
    whole = evaluate(FakeModel(), INFO, [_samples()])["baselines"]
    results = run_two_gloo_processes(_dist_worker)
    for rank in (0, 1):
        assert _close(results[rank], whole)



def test_a_task_with_an_empty_test_split_is_named_not_dropped():
    res = evaluate(FakeModel(), INFO, [[]], batch_size=4)
    assert set(res["not_evaluated"]) == {t.name for t in TASKS}
    assert "is empty" in res["not_evaluated"]["emotion"]
    table = format_tables(res, TASKS)
    assert "emotion: not evaluated: the test split of source 0 (a) is empty" in table
