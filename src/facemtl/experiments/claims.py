"""The papers' claims as rows with a declared test and a verdict.

Each :class:`Claim` states what a paper reports (with its numbers), which of our measurements
stands for it, and the test declared here before anything runs: the paired differences
(per seed, or per trial / cell where the paper's claim is about a distribution) are oriented so
that a positive value supports the claim; their mean gets a two-sided 95% Student-t interval.

* ``reproduced``: the interval lies above zero;
* ``refuted``: the interval lies below zero (the opposite effect, with 95% confidence);
* ``inconclusive``: the interval contains zero, or there are fewer than two differences.

A refuted claim is a result, not a failure of the suite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t (df 1..30); above 30 the normal 1.96 is within 2%.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)

TEST_OVER_SEEDS = "paired over seeds: 95% t-interval of the mean difference (positive supports the claim)"


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str  # "ifan" | "dcnet"
    statement: str
    where: str  # the paper's table / figure / section
    paper_numbers: str
    measure: str  # what our difference is, in words (units)
    test: str = TEST_OVER_SEEDS


def t_quantile(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


def interval(diffs) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% t-interval; low = high = mean for fewer than two values."""
    values = [float(d) for d in diffs if d is not None and math.isfinite(float(d))]
    if not values:
        return math.nan, math.nan, math.nan
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def verdict(diffs) -> str:
    """``reproduced`` / ``refuted`` / ``inconclusive`` for differences oriented so that positive
    supports the claim (see the module docstring)."""
    _, low, high = interval(diffs)
    if math.isnan(low):
        return "inconclusive"
    if low > 0:
        return "reproduced"
    if high < 0:
        return "refuted"
    return "inconclusive"


def row(claim: Claim, diffs, extra: dict | None = None, untested: str | None = None) -> dict:
    """One row of claims.json. ``untested``: why the models compared did not learn (they do not
    beat a trivial baseline); the row is then ``inconclusive`` whatever the differences, which it
    still reports, and carries the reason."""
    values = [float(d) for d in diffs if d is not None and math.isfinite(float(d))]
    mean, low, high = interval(values)
    out = {"id": claim.id, "paper": claim.paper, "statement": claim.statement, "where": claim.where,
           "paper_numbers": claim.paper_numbers, "measure": claim.measure, "test": claim.test,
           "n": len(values), "differences": values, "mean": _num(mean), "ci95": [_num(low), _num(high)],
           "verdict": verdict(values), **(extra or {})}
    if untested:
        out.update(verdict="inconclusive", untested=untested)
    return out


def _num(v: float):
    return None if v is None or not math.isfinite(v) else round(v, 4)
