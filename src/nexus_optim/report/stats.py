"""Small statistics for comparing optimizers over seeds.

    summarize(xs)     mean, sample std (ddof=1), n
    welch(a, b)       difference of means a - b, its Welch 95% CI, Welch t-test

Welch (unequal variances): with s_a^2, s_b^2 the sample variances,

    se  = sqrt(s_a^2/n_a + s_b^2/n_b)
    df  = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))     (Welch-Satterthwaite)
    CI  = (mean_a - mean_b) +- t_{1-alpha/2, df} * se
    t, p from ``scipy.stats.ttest_ind(a, b, equal_var=False)`` (two-sided)

A test needs n >= 2 in both groups; otherwise ``welch`` says so instead of
returning numbers. ``verdict`` turns a result into one plain sentence.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from nexus_optim.report.format import fmt, formatter, p_is


def _clean(xs: Sequence[float] | None) -> list[float]:
    return [float(x) for x in (() if xs is None else xs) if x is not None and math.isfinite(float(x))]


def summarize(xs: Sequence[float] | None) -> dict:
    """``{"mean", "std", "n", "values"}``; std is the sample std (ddof=1), None for n < 2.
    Non-finite values and None are dropped (and not counted)."""
    v = _clean(xs)
    n = len(v)
    mean = float(np.mean(v)) if n else None
    std = float(np.std(v, ddof=1)) if n >= 2 else None
    return {"mean": mean, "std": std, "n": n, "values": v}


def welch(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Welch comparison of ``a`` (e.g. Nexus seeds) against ``b`` (e.g. AdamW seeds).

    Returns ``diff`` (mean a - mean b), ``n_a``, ``n_b`` and ``testable``. When both groups
    have n >= 2: ``ci_low``, ``ci_high`` (``confidence`` Welch CI of the difference),
    ``t``, ``p`` (two-sided, scipy's ``ttest_ind(equal_var=False)``), ``df``, ``se``,
    ``significant`` (p < 1 - confidence). Otherwise ``testable`` is False and ``reason``
    says why (fewer than 2 seeds; zero variance in both groups).
    """
    from scipy import stats

    a, b = _clean(a), _clean(b)
    na, nb = len(a), len(b)
    out: dict = {"n_a": na, "n_b": nb, "confidence": confidence,
                 "mean_a": float(np.mean(a)) if na else None,
                 "mean_b": float(np.mean(b)) if nb else None}
    out["diff"] = out["mean_a"] - out["mean_b"] if na and nb else None
    if na < 2 or nb < 2:
        out.update(testable=False, reason=f"n < 2 in a group (n = {na} vs {nb}): no test is possible")
        return out
    va, vb = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    se = math.sqrt(va / na + vb / nb)
    if se == 0.0:
        out.update(testable=False, se=0.0,
                   reason="zero variance in both groups: no test is possible")
        return out
    df = se ** 4 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
    p = float(res.pvalue)
    out.update(testable=True, se=se, df=float(df), t=float(res.statistic), p=p,
               ci_low=out["diff"] - half, ci_high=out["diff"] + half,
               significant=bool(p < 1 - confidence))
    return out


def fmt_summary(s: dict, digits: int = 4) -> str:
    """``mean ± std (n=k)``."""
    if not s or s.get("n", 0) == 0:
        return "n/a"
    std = f" ± {fmt(s['std'], digits)}" if s.get("std") is not None else ""
    return f"{fmt(s['mean'], digits)}{std} (n={s['n']})"


def verdict(res: dict, a_name: str = "a", b_name: str = "b", metric: str | None = None) -> str:
    """One plain sentence about a ``welch`` result (numbers as in report.md: ``report/format.py``)."""
    if res.get("diff") is None:
        return f"no data for {a_name if not res.get('n_a') else b_name}"
    f = formatter([res.get(k) for k in ("diff", "ci_low", "ci_high")], metric, signed=True)
    head = f"{a_name} − {b_name} = {f(res['diff'])}"
    if not res.get("testable"):
        return f"{head}; {res['reason']}"
    ci = int(round(res["confidence"] * 100))
    body = (f"{head}, {ci}% CI [{f(res['ci_low'])}, {f(res['ci_high'])}], "
            f"Welch t = {res['t']:.2f}, df = {res['df']:.1f}, {p_is(res['p'])} "
            f"(n = {res['n_a']} vs {res['n_b']})")
    if res["significant"]:
        return f"{body}: significant at the {1 - res['confidence']:.2g} level"
    return f"{body}: not significant (the difference may be zero)"
