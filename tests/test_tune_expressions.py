"""benchmarks/tune_expressions.py: the coordinate search, the patched rendering, the options."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tune_expressions as te  # noqa: E402

from facemtl.data import synth  # noqa: E402


def test_coordinate_search_climbs_to_the_optimum_on_the_step_grid():
    target = {"a": 1.2, "b": -0.6}

    def objective(c):
        return -sum((c.get(k, 0.0) - target.get(k, 0.0)) ** 2 for k in ("a", "b", "c"))

    lines = []
    found, score = te.coordinate_search(objective, {"a": 0.3, "c": 0.0}, ["a", "b", "c"], passes=10, report=lines.append)
    assert found == target and score == pytest.approx(0.0)
    assert lines and all("objective" in line for line in lines)


def test_coordinate_search_keeps_inside_the_bounds_and_drops_zeros():
    def objective(c):  # wants "a" as low and "b" as high as possible
        return -c.get("a", 0.0) + c.get("b", 0.0)

    found, _ = te.coordinate_search(objective, {"a": 0.5}, ["a", "b"], low=-1.0, high=0.9, lower={"a": 0.0},
                                    passes=10, report=lambda s: None)
    assert found == {"b": 0.9}  # "a" stopped at its own lower bound 0 and left the dict


def test_coordinate_search_stops_after_a_pass_without_gain():
    calls = []

    def objective(c):
        calls.append(c)
        return 0.0

    found, score = te.coordinate_search(objective, {"a": 1.0}, ["a", "b"], passes=5, report=lambda s: None)
    assert found == {"a": 1.0} and score == 0.0
    assert len(calls) == 1 + 2 * len(te.STEPS)  # the start, then one pass over both bases


def test_render_with_draws_every_face_with_the_given_row_and_restores_the_table():
    before = {k: dict(v) for k, v in synth.EMOTION_EXPR.items()}
    wide = te.render_with({"mouth_open": 1.5}, seed=4, n=3, styles=["studio"], size=64)
    plain = te.render_with({}, seed=4, n=3, styles=["studio"], size=64)
    assert synth.EMOTION_EXPR == before
    for w, p in zip(wide, plain):
        # the mouth opens: the lower lip's region (Helen 9) sits lower in the mask
        low_w = np.nonzero(w["parsing"] == 9)[0].mean()
        low_p = np.nonzero(p["parsing"] == 9)[0].mean()
        assert low_w > low_p + 1


def test_options_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        te.main(["--weights", str(tmp_path), "--emotions", "Joy"])
    assert "--emotions: unknown Joy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        te.main(["--weights", str(tmp_path), "--styles", "moon"])
    assert "--styles: expected names from" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--fetch"):
        te.main(["--weights", str(tmp_path)])
