"""``facemtl reproduce``: the verdict logic on hand-made numbers, and the smoke suite end to end."""

import base64
import json
import math
import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from facemtl.experiments import claims as C


def test_interval_matches_a_hand_computed_t_interval():
    diffs = [1.0, 2.0, 3.0]  # mean 2, sd 1, n 3: half width t(2) * 1 / sqrt(3)
    mean, low, high = C.interval(diffs)
    half = 4.303 / math.sqrt(3)
    assert mean == pytest.approx(2.0) and low == pytest.approx(2.0 - half) and high == pytest.approx(2.0 + half)


@pytest.mark.parametrize("diffs, expected", [
    ([1.0, 1.2, 0.9, 1.1], "reproduced"),      # interval above 0
    ([-1.0, -1.2, -0.9, -1.1], "refuted"),     # the opposite effect
    ([1.0, -1.0, 0.5, -0.4], "inconclusive"),  # interval contains 0
    ([5.0], "inconclusive"),                   # one seed: no interval
    ([], "inconclusive"),
    ([2.0, math.nan, 2.1, 1.9], "reproduced"),  # non-finite differences are left out
])
def test_verdicts(diffs, expected):
    assert C.verdict(diffs) == expected


def test_a_row_carries_the_claim_and_the_numbers():
    claim = C.Claim("x", "ifan", "A beats B", "Table 9", "1 vs 2", "B minus A")
    r = C.row(claim, [1.0, 3.0])
    assert r["id"] == "x" and r["n"] == 2 and r["mean"] == 2.0 and r["verdict"] == "inconclusive"
    assert r["ci95"][0] == pytest.approx(2.0 - 12.706 * math.sqrt(2) / math.sqrt(2), abs=1e-3)
    clear = C.row(claim, [5.0, 6.0, 7.0])
    assert clear["verdict"] == "reproduced" and "untested" not in clear
    noise = C.row(claim, [5.0, 6.0, 7.0], untested="no learning")
    assert noise["verdict"] == "inconclusive" and noise["untested"] == "no learning"
    assert noise["differences"] == clear["differences"] and noise["ci95"] == clear["ci95"]


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_single_task_runs_get_the_3t_runs_stage2_rounds_also_under_torchrun(monkeypatch):
    from facemtl.config import config_from_dict
    from facemtl.experiments.reproduce import _stage2_rounds, ifan_variants

    cfg = config_from_dict({"schedule": {"epochs": 3}, "data": [
        {"tasks": ["parsing"], "n_train": 40, "batch_size": 4},
        {"tasks": ["emotion"], "n_train": 31, "batch_size": 3},
        {"tasks": ["landmarks"], "n_train": 22, "batch_size": 4}]})
    # per epoch max_t floor(floor(n_t / W) / b_t): W=1 max(10, 10, 5); W=2 max(5, 5, 2); W=3 max(3, 3, 1)
    assert [_stage2_rounds(cfg, w) for w in (1, 2, 3)] == [30, 15, 9]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert ifan_variants(cfg)["single_emotion"].schedule.rounds == 15
    monkeypatch.delenv("WORLD_SIZE")
    assert ifan_variants(cfg)["single_landmarks"].schedule.rounds == 30


@pytest.mark.usefixtures("one_thread")  # tiny runs: a second thread only waits when the cores are shared
def test_smoke_suite_end_to_end(tmp_path, monkeypatch, capsys):
    import facemtl.engine.loop
    from facemtl.cli import main

    out = tmp_path / "suite"
    suite = ["reproduce", "all", "--budget", "smoke", "--seeds", "2", "--out", str(out)]
    # two shards train the suite between them (as two GPUs would) and write no claims ...
    for k, shard in enumerate(("0/2", "1/2")):
        assert main([*suite, "--shard", shard]) == 0
        assert f"shard {shard}: its runs are finished" in capsys.readouterr().out
        assert len(list(out.glob("ifan/seed*/*/metrics.json"))) == 8 * (k + 1)  # half of the runs each
    assert not (out / "claims.json").exists()
    assert len(list(out.glob("ifan/seed*/*/metrics.json"))) == 16  # 8 iFAN runs per seed, split between them

    def no_training(*args, **kwargs):
        raise AssertionError("a run the shards finished was trained again")

    # ... then the unsharded command reuses every run and writes the claims
    with monkeypatch.context() as patch:
        patch.setattr(facemtl.engine.loop, "train", no_training)
        assert main(suite) == 0
    result = json.loads((out / "claims.json").read_text())
    assert [r.get("shard") for r in result["invocations"]] == ["0/2", "1/2", None]
    ids = {r["id"] for r in result["claims"]}
    tasks = ("landmarks", "parsing", "emotion")
    expected = ({f"{c}.{t}" for c in "abcde" for t in tasks} | {"a2.landmarks", "a2.parsing", "f", "g.degrade",
                                                                "g.recover", "h", "k", "l"}
                | {f"i.alexnet.{m}" for m in ("single", "hps", "cross-stitch")}
                | {f"j.{m}" for m in ("single", "hps", "cross-stitch")})
    assert ids == expected
    for r in result["claims"]:
        assert r["verdict"] in ("reproduced", "refuted", "inconclusive") and r["paper_numbers"] and r["test"]
        # rows of models that beat no trivial baseline are inconclusive whatever their differences
        assert r["verdict"] == ("inconclusive" if r.get("untested") else C.verdict(r["differences"]))
    compared = json.loads((out / "dcnet" / "seed0" / "alexnet" / "compare" / "compare.json").read_text())["models"]
    assert all(m["mean_shape_nme"] > 0 for m in compared.values())  # each result carries its trivial baseline
    seeded = [r for r in result["claims"] if r["id"][0] in "abcdefhij"]
    assert all(r["n"] == 2 for r in seeded)  # one difference per seed
    page = (out / "report.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert len(parser.sources) >= 8
    for src in parser.sources:  # every figure is embedded and decodes
        data = base64.b64decode(re.sub("^data:image/png;base64,", "", src))
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    assert all(f">{r['id']}<" in page for r in result["claims"])
    # a second call reuses every finished run (same claims, no training)
    again = json.loads(json.dumps(result))
    assert main(["reproduce", "all", "--budget", "smoke", "--seeds", "2", "--out", str(out)]) == 0
    rerun = json.loads((out / "claims.json").read_text())
    assert [r["differences"] for r in rerun["claims"]] == [r["differences"] for r in again["claims"]]
    # the suite's time is the sum of its invocations', not the reusing rerun's alone
    times = [r["wall_seconds"] for r in rerun["invocations"]]
    assert times[2:] == [result["wall_seconds"], rerun["wall_seconds"]] and len(times) == 4
    assert f"{sum(times):.0f} s over the 4 invocations" in (out / "report.html").read_text()


def test_a_training_run_and_eval_report_leave_a_readable_report(tmp_path):
    from facemtl.cli import main

    run = tmp_path / "run"
    assert main(["train", "configs/ifan_synth_smoke.yaml", "--out", str(run), "--quiet"]) == 0
    page = (run / "report.html").read_text()
    parser = _Images()
    parser.feed(page)
    # loss and epoch curves, the emotion confusion matrix, the landmark CED curves, the strip
    assert len(parser.sources) >= 4
    for src in parser.sources:
        data = base64.b64decode(re.sub("^data:image/png;base64,", "", src))
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    assert "Iter1" in page and "majority" in page  # the result tables with their baselines
    # the same figures as PNG files beside the CSVs
    pngs = sorted(p.name for p in run.glob("*.png"))
    assert {"training_loss.png", "confusion_emotion.png", "ced_landmarks.png", "predictions.png"} <= set(pngs)
    assert len(pngs) == len(parser.sources)
    for name in pngs:
        assert cv2.imread(str(run / name)) is not None
    (run / "report.html").unlink()
    assert main(["eval", str(run), "--report"]) == 0
    assert (run / "report.html").exists()


def test_deep_collaboration_rows_are_untested_when_dcnet_does_not_beat_the_mean_shape():
    from facemtl.experiments.reproduce import dcnet_claims

    def result(dcnet_nme):
        per_model = {m: {"failure_rate": f, "nme": 20.0} for m, f in (("single", 40.0), ("hps", 35.0))}
        per_model["dcnet"] = {"failure_rate": 10.0, "nme": dcnet_nme, "mean_shape_nme": 15.0}
        return {"experiment": {"compare_models": ["single", "hps", "dcnet"], "scarcity_models": ["single", "dcnet"]},
                "compare": {"alexnet": {0: per_model, 1: {**per_model, "single": {"failure_rate": 45.0, "nme": 21.0}}}},
                "scarcity": {0: {"0.5": {"single": {"failure_rate": 40.0}, "dcnet": {"failure_rate": 10.0}}},
                             1: {"0.5": {"single": {"failure_rate": 42.0}, "dcnet": {"failure_rate": 11.0}}}},
                "task_weights": {"trials": [{"improvement": 5.0}, {"improvement": 6.0}], "summary": {"wins": 2}},
                "ablation": {"cells": {"landmarks": [{"nme_relative_change": 3.0}, {"nme_relative_change": 4.0}]}}}

    learned = {r["id"]: r for r in dcnet_claims(result(dcnet_nme=9.0))}
    assert learned["i.alexnet.single"]["verdict"] == "reproduced" and "untested" not in learned["i.alexnet.single"]
    assert learned["j.single"]["verdict"] == "reproduced"
    # DCNet no better than the mean shape (seed 1): every row inconclusive, with the reason
    noise = dcnet_claims(result(dcnet_nme=15.0))
    assert {r["verdict"] for r in noise} == {"inconclusive"}
    assert all("DCNet 15.0 vs mean shape 15.0" in r["untested"] for r in noise)
    assert noise[0]["differences"] == learned["i.alexnet.single"]["differences"]  # the numbers are still reported


def test_ifan_rows_are_untested_where_a_run_does_not_beat_its_trivial_baseline(tmp_path):
    from facemtl.experiments.reproduce import ifan_claims

    def metrics(nme, f1, acc, iterations=3):
        per_iter = {"landmarks": {"nme": nme}, "parsing": {"overall": f1}, "emotion": {"accuracy": acc,
                                                                                      "mean_class_accuracy": acc}}
        return {"iterations": {str(i): per_iter for i in range(iterations)},
                "baselines": {"landmarks": {"mean_shape_nme": 20.0}, "parsing": {"all_background": {"overall": 0.0}},
                              "emotion": {"majority_accuracy": 15.0}}}

    results = {}
    for s in (0, 1):
        results[s] = {name: metrics(8.0 + s, 80.0 + s, 50.0 + s) for name in
                      ("3T", "2T", "single_landmarks", "single_parsing", "single_emotion", "resize", "shared_bn")}
        results[s]["iter4"] = metrics(8.0, 80.0, 50.0, iterations=5)
        run = tmp_path / "ifan" / f"seed{s}" / "3T"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"data": [{"tasks": ["parsing"]}], "schedule": {"pretrain_epochs": 1}}))
        (run / "epochs.csv").write_text("step,stage,epoch,name,value\n")
    results[1]["single_parsing"] = metrics(9.0, 0.0, 51.0)  # parsing not learned: F1 0 = all background
    results[0]["resize"] = metrics(25.0, 80.0, 50.0)  # landmarks worse than the mean shape
    rows = {r["id"]: r for r in ifan_claims(results, tmp_path)}
    assert "seed 1 single_parsing: overall 0.0 vs trivial 0.0" in rows["a.parsing"]["untested"]
    assert "single_parsing" in rows["a2.parsing"]["untested"]
    assert "seed 0 resize: nme 25.0 vs trivial 20.0" in rows["d.landmarks"]["untested"]
    assert rows["a.parsing"]["verdict"] == rows["d.landmarks"]["verdict"] == "inconclusive"
    assert rows["a.parsing"]["differences"] == [0.0, 81.0]  # still reported
    for learned in ("a.landmarks", "a.emotion", "b.parsing", "d.parsing", "e.landmarks", "f", "h", "g.recover"):
        assert "untested" not in rows[learned], learned


@pytest.mark.parametrize("shard", ["2/2", "a/2", "1"])
def test_a_bad_shard_is_refused_before_any_run(tmp_path, capsys, shard):
    from facemtl.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["reproduce", "all", "--out", str(tmp_path / "suite"), "--shard", shard])
    assert stop.value.code == 2
    assert "--shard: expected" in capsys.readouterr().err
    assert not (tmp_path / "suite").exists()
