"""Paired statistics for a paired multi-seed design (same init, data order and schedule per
seed across arms), a Holm-Bonferroni correction over a declared family, and power.

    paired_test(a, b)            d_i = a_i - b_i over seeds i = 1..n (arms paired by seed)
        mean = mean(d), sd = std(d, ddof=1), se = sd / sqrt(n), df = n - 1
        t = mean / se, p = 2 * (1 - F_t(|t|; df)),  CI = mean +- t_{1-alpha/2, df} * se
        (identical to ``scipy.stats.ttest_rel(a, b)``)
    holm(p)                      step-down Holm-Bonferroni over a family of m tests: with
        p_(1) <= ... <= p_(m), p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))
    paired_power(delta, sd, n)   exact power of the two-sided paired t-test at true mean
        difference delta: P(|T| > t_{1-alpha/2, n-1}) with T ~ noncentral t(n - 1,
        delta sqrt(n) / sd) (``scipy.stats.nct``)
    min_detectable_difference(sd, n)   the delta > 0 with paired_power = power (root of the
        exact noncentral-t power; ``method="approx"``: (t_{1-alpha/2,n-1} + t_{power,n-1}) sd / sqrt(n))
    seeds_needed(sd, delta)      the smallest n >= 2 with paired_power >= power (exact)

Sequences are paired by position; mappings (e.g. ``{seed: value}``) by their common keys,
so arms with different numbers of finished seeds compare on the seeds both have.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats


@dataclass(frozen=True)
class PairedTest:
    """The result of `paired_test`; ``diff`` is mean(a - b)."""

    diff: float
    sd: float
    se: float
    t: float
    p: float
    ci_low: float
    ci_high: float
    n: int
    df: int
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def paired_values(a: Sequence[float] | Mapping, b: Sequence[float] | Mapping) -> tuple[np.ndarray, np.ndarray]:
    """The two arms as aligned float arrays: by position for sequences (equal lengths
    required), by the sorted common keys for mappings."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError("paired_values: pass two sequences or two mappings (seed -> value)")
    if isinstance(a, Mapping):
        keys = sorted(set(a) & set(b), key=lambda k: (str(type(k)), k))
        xa, xb = [a[k] for k in keys], [b[k] for k in keys]
    else:
        xa, xb = list(a), list(b)
        if len(xa) != len(xb):
            raise ValueError(f"paired_values: arms have {len(xa)} and {len(xb)} values; pairs need equal lengths")
    xa, xb = np.asarray(xa, np.float64), np.asarray(xb, np.float64)
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(xb))):
        raise ValueError("paired_values: non-finite value in an arm")
    return xa, xb


def paired_test(a: Sequence[float] | Mapping, b: Sequence[float] | Mapping,
                confidence: float = 0.95) -> PairedTest:
    """Paired t-test of mean(a - b) = 0 over seeds, two-sided, with its ``confidence`` CI.

    Needs n >= 2 pairs. All differences equal: sd = 0, and t = +-inf, p = 0 (nan, p = 1 when
    they are all zero), CI = [diff, diff]."""
    xa, xb = paired_values(a, b)
    n = len(xa)
    if n < 2:
        raise ValueError(f"paired_test: needs at least 2 paired seeds, got {n}")
    d = xa - xb
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se, df = sd / math.sqrt(n), n - 1
    if se > 0:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), df))
    else:
        t = math.copysign(math.inf, mean) if mean != 0 else math.nan
        p = 0.0 if mean != 0 else 1.0
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return PairedTest(mean, sd, se, float(t), p, mean - half, mean + half, n, df, confidence)


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone in the raw p, capped at 1),
    keyed like the input. Rejecting every test with adjusted p <= alpha controls the
    family-wise error rate at alpha."""
    names = list(pvalues)
    p = np.asarray([float(pvalues[k]) for k in names], np.float64)
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"holm: p-values must be in [0, 1], got {dict(pvalues)}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj = np.maximum.accumulate(scaled)
    out = np.empty(m)
    out[order] = adj
    return {k: float(x) for k, x in zip(names, out)}


def paired_family(pairs: Mapping[str, tuple], confidence: float = 0.95) -> dict[str, dict]:
    """`paired_test` for each named (a, b) of a declared family, with ``p_holm`` added."""
    tests = {k: paired_test(a, b, confidence) for k, (a, b) in pairs.items()}
    adj = holm({k: r.p for k, r in tests.items()})
    return {k: {**r.to_dict(), "p_holm": adj[k]} for k, r in tests.items()}


def _check(sd_diff: float, alpha: float, power: float) -> None:
    if not (sd_diff > 0 and math.isfinite(sd_diff)):
        raise ValueError(f"sd_diff must be a positive number, got {sd_diff!r}")
    if not (0 < alpha < 1 and alpha < power < 1):
        raise ValueError(f"need 0 < alpha < power < 1, got alpha={alpha!r}, power={power!r}")


def paired_power(delta: float, sd_diff: float, n: int, alpha: float = 0.05) -> float:
    """Exact power of the two-sided paired t-test with n seeds at a true mean difference delta."""
    if n < 2:
        raise ValueError(f"paired_power: n must be >= 2, got {n}")
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(delta) * math.sqrt(n) / sd_diff
    # lower tail P(T < -crit) written as sf(crit; -nc): scipy's nct.cdf is nan far in the tail
    lower = float(np.nan_to_num(stats.nct.sf(crit, df, -nc)))
    return float(stats.nct.sf(crit, df, nc)) + lower


def min_detectable_difference(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8,
                              method: str = "exact") -> float:
    """Smallest true mean difference the two-sided paired t-test with n seeds detects with
    probability ``power`` at level ``alpha`` (in the units of ``sd_diff``, the sd of the
    per-seed differences). ``method="exact"``: root of the noncentral-t power (`paired_power`);
    ``"approx"``: the t-approximation (t_{1-alpha/2,df} + t_{power,df}) sd / sqrt(n), which
    ignores the far rejection tail and the noncentral skew (slightly smaller for small n)."""
    _check(sd_diff, alpha, power)
    if n < 2:
        raise ValueError(f"min_detectable_difference: n must be >= 2, got {n}")
    df = n - 1
    approx = (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd_diff / math.sqrt(n)
    if method == "approx":
        return float(approx)
    if method != "exact":
        raise ValueError(f"min_detectable_difference: method {method!r} is not 'exact' or 'approx'")
    f = lambda delta: paired_power(delta, sd_diff, n, alpha) - power  # noqa: E731
    hi = 2 * approx
    while f(hi) < 0:
        hi *= 2
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-12 * sd_diff, rtol=1e-12))


def seeds_needed(sd_diff: float, delta: float, alpha: float = 0.05, power: float = 0.8,
                 max_n: int = 100_000) -> int:
    """Smallest number of paired seeds n >= 2 whose exact power at ``delta`` is >= ``power``
    (the inverse of `min_detectable_difference`: MDE(seeds_needed(sd, d)) <= d)."""
    _check(sd_diff, alpha, power)
    if not delta > 0:
        raise ValueError(f"seeds_needed: delta must be > 0, got {delta!r}")
    ok = lambda n: paired_power(delta, sd_diff, n, alpha) >= power  # noqa: E731
    lo, hi = 2, 2
    while not ok(hi):
        lo, hi = hi + 1, hi * 2
        if hi > max_n:
            raise ValueError(f"seeds_needed: more than {max_n} seeds needed for delta={delta}, sd={sd_diff}")
    while lo < hi:  # power increases with n: bisect for the first n that reaches it
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo
