"""Paired statistics over seeds (`nexus_optim.report.paired`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from nexus_optim.report.paired import (holm, min_detectable_difference, paired_family, paired_power,
                                       paired_test, seeds_needed)


def test_paired_test_equals_ttest_rel_and_manual():
    rng = np.random.default_rng(0)
    a = rng.normal(5.0, 0.3, 12)
    b = a - 0.02 + rng.normal(0, 0.03, 12)
    r = paired_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert r.t == pytest.approx(ref.statistic, rel=1e-12)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-10)
    d = a - b
    n = len(d)
    mean, sd = d.sum() / n, math.sqrt(((d - d.mean()) ** 2).sum() / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert (r.diff, r.sd, r.n, r.df) == (pytest.approx(mean), pytest.approx(sd), 12, 11)
    assert (r.ci_low, r.ci_high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    lo, hi = ref.confidence_interval(0.95)
    assert (r.ci_low, r.ci_high) == (pytest.approx(lo, rel=1e-10), pytest.approx(hi, rel=1e-10))
    assert paired_test(a, b, confidence=0.9).ci_high < r.ci_high
    assert set(r.to_dict()) >= {"diff", "sd", "t", "p", "ci_low", "ci_high", "n"}


def test_paired_significant_where_welch_is_not():
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(6.0, 0.2, 10)  # shared by both arms (same init and data order)
    a = seed_effect + 0.02 + rng.normal(0, 0.005, 10)
    b = seed_effect + rng.normal(0, 0.005, 10)
    assert np.corrcoef(a, b)[0, 1] > 0.99
    assert stats.ttest_ind(a, b, equal_var=False).pvalue > 0.5
    r = paired_test(a, b)
    assert r.p < 1e-4 and r.ci_low > 0


def test_mappings_pair_by_seed_and_errors():
    a = {0: 1.0, 1: 2.0, 2: 3.5, 7: 9.0}
    b = {2: 3.0, 1: 1.0, 0: 0.5, 3: 4.0}
    r = paired_test(a, b)  # seeds 0, 1, 2
    assert r.n == 3 and r.diff == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    with pytest.raises(ValueError, match="at least 2"):
        paired_test([1.0], [2.0])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        paired_test([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(TypeError):
        paired_test(a, [1.0, 2.0])
    const = paired_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])  # all differences 0.5
    assert const.p == 0.0 and const.t == math.inf and const.ci_low == const.ci_high == 0.5
    assert paired_test([1.0, 2.0], [1.0, 2.0]).p == 1.0


def test_holm_hand_worked_and_monotone():
    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert holm({"x": 0.6, "y": 0.5}) == {"x": 1.0, "y": 1.0}  # capped at 1
    assert holm({"only": 0.2}) == {"only": 0.2}
    rng = np.random.default_rng(2)
    for _ in range(50):
        p = dict(enumerate(rng.uniform(0, 0.2, 6).tolist()))
        adj = holm(p)
        order = sorted(p, key=p.get)
        vals = [adj[k] for k in order]
        assert vals == sorted(vals)  # monotone in the raw p
        assert all(p[k] <= adj[k] <= 1 for k in p)
        assert all(adj[k] <= min(1.0, len(p) * p[k]) + 1e-15 for k in p)  # never above Bonferroni
    with pytest.raises(ValueError):
        holm({"a": 1.5})


def test_paired_family_adds_holm():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 8)
    fam = paired_family({"nexus-adamw": (base + 0.1 + rng.normal(0, 0.05, 8), base),
                         "nexus-mixed": (base + rng.normal(0, 0.05, 8), base)})
    raw = {k: v["p"] for k, v in fam.items()}
    assert {k: v["p_holm"] for k, v in fam.items()} == pytest.approx(holm(raw))


@pytest.mark.parametrize("n", [6, 10])
def test_power_at_the_mde_is_the_target_by_simulation(n):
    sd = 0.015
    mde = min_detectable_difference(sd, n)
    assert paired_power(mde, sd, n) == pytest.approx(0.8, abs=1e-9)
    rng = np.random.default_rng(n)
    d = rng.normal(mde, sd, size=(4000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    power = float(np.mean(2 * stats.t.sf(np.abs(t), n - 1) < 0.05))
    assert power == pytest.approx(0.8, abs=0.03)
    approx = min_detectable_difference(sd, n, method="approx")
    assert approx == pytest.approx(mde, rel=0.05)  # the t-approximation is close


def test_mde_scales_and_seeds_needed_inverts_it():
    assert min_detectable_difference(2.0, 10) == pytest.approx(2 * min_detectable_difference(1.0, 10))
    assert min_detectable_difference(1.0, 20) < min_detectable_difference(1.0, 10)
    for n in (3, 5, 10, 17, 40):
        mde = min_detectable_difference(0.02, n)
        assert seeds_needed(0.02, mde * (1 + 1e-9)) == n
        assert seeds_needed(0.02, mde * 0.99) == n + 1
    n = seeds_needed(0.02, 0.012)
    assert min_detectable_difference(0.02, n) <= 0.012 < min_detectable_difference(0.02, n - 1)
    with pytest.raises(ValueError):
        seeds_needed(0.02, 0.0)
    with pytest.raises(ValueError):
        min_detectable_difference(0.0, 10)
