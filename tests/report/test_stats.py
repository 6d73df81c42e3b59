"""report/stats.py against scipy's own computations on fixed numbers."""

import math

import numpy as np
import pytest
from scipy import stats as st

from nexus_optim.report.stats import fmt_summary, summarize, verdict, welch

A = [3.10, 3.02, 2.95, 3.07, 3.00]
B = [3.21, 3.15, 3.30, 3.12]


def test_summarize_uses_sample_std_and_drops_nonfinite():
    s = summarize([1.0, 2.0, 4.0, float("nan"), None])
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(7 / 3)
    assert s["std"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    one = summarize([5.0])
    assert one["n"] == 1 and one["std"] is None and one["mean"] == 5.0
    assert summarize([])["mean"] is None
    assert fmt_summary(summarize([1.0, 3.0])) == "2.0000 ± 1.4142 (n=2)"


def test_welch_matches_scipy():
    r = welch(A, B)
    ref = st.ttest_ind(A, B, equal_var=False)
    assert r["testable"]
    assert r["t"] == pytest.approx(float(ref.statistic), rel=1e-12)
    assert r["p"] == pytest.approx(float(ref.pvalue), rel=1e-12)
    assert r["df"] == pytest.approx(float(ref.df), rel=1e-12)
    ci = ref.confidence_interval(confidence_level=0.95)
    assert r["ci_low"] == pytest.approx(float(ci.low), rel=1e-10)
    assert r["ci_high"] == pytest.approx(float(ci.high), rel=1e-10)
    assert r["diff"] == pytest.approx(np.mean(A) - np.mean(B))
    # by hand: Welch-Satterthwaite
    va, vb = np.var(A, ddof=1) / len(A), np.var(B, ddof=1) / len(B)
    df = (va + vb) ** 2 / (va ** 2 / (len(A) - 1) + vb ** 2 / (len(B) - 1))
    half = st.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert r["ci_high"] - r["ci_low"] == pytest.approx(2 * half, rel=1e-10)
    assert r["significant"] and r["p"] < 0.05
    assert "significant at the 0.05 level" in verdict(r, "nexus", "adamw")


def test_welch_other_confidence_matches_scipy():
    r = welch(A, B, confidence=0.9)
    ci = st.ttest_ind(A, B, equal_var=False).confidence_interval(confidence_level=0.9)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((float(ci.low), float(ci.high)), rel=1e-10)


def test_not_significant_is_said_plainly():
    a, b = [1.0, 2.0, 3.0], [2.0, 3.0, 5.0]
    r = welch(a, b)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert r["p"] == pytest.approx(float(ref.pvalue))
    assert not r["significant"]
    assert r["ci_low"] < 0 < r["ci_high"]
    assert "not significant" in verdict(r, "nexus", "adamw")


@pytest.mark.parametrize("a,b", [([1.0], [2.0, 3.0]), ([1.0, 2.0], [3.0]), ([], [1.0, 2.0])])
def test_n_below_two_no_test(a, b):
    r = welch(a, b)
    assert not r["testable"]
    assert "no test is possible" in r["reason"]
    assert "t" not in r and "p" not in r
    assert "no test is possible" in verdict(r) or "no data" in verdict(r)


def test_zero_variance_no_test():
    r = welch([1.0, 1.0], [1.0, 1.0])
    assert not r["testable"] and "zero variance" in r["reason"]
