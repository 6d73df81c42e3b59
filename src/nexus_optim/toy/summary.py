"""Aggregate per-seed toy runs: mean/std per metric, tests against AdamW, and the premise check.

Tests (per threshold c, per metric, method M vs AdamW over seeds):
  Welch t-test  scipy.stats.ttest_ind(M, AdamW, equal_var=False)  (what the issue asks for);
  paired t-test scipy.stats.ttest_rel (same task and init per seed) and the share of seeds with M < AdamW.
Premise check ("closer minima -> lower held-out loss at equal training loss"): within each seed, centre
log(minima_var) and the held-out loss over methods, pool the seeds, and report Pearson r and p.
"""
from __future__ import annotations

import math

import numpy as np

from nexus_optim.report.stats import welch

from .metrics import paired

__all__ = ["METRICS", "summarize"]

METRICS = ["train_loss", "grad_cos", "minima_var", "minima_pair_dist", "minima_dist_from_start", "ft_source_loss",
           "test_in_source", "heldout", "heldout_ft", "dist_to_mean_teacher", "param_norm"]


def _welch_tp(a, b) -> dict:
    """Welch t and p (``report/stats.py``); NaN where no test is possible."""
    w = welch(a, b)
    return {"t": w["t"], "p": w["p"]} if w["testable"] else {"t": math.nan, "p": math.nan}


def _vals(runs, method, c, key):
    out = []
    for r in runs:
        m = r["methods"].get(method)
        if m is None or c not in m["at"]:
            out.append(math.nan)
        elif key == "steps":
            out.append(float(m["steps"][c]))
        else:
            out.append(float(m["at"][c][key]))
    return np.asarray(out, float)


def _ms(v):
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if len(v) else math.nan,
            "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "n": int(len(v))}


def _premise(runs, methods, c):
    from scipy import stats

    xs, ys = [], []
    for r in runs:
        x = np.array([np.log(r["methods"][m]["at"][c]["minima_var"]) for m in methods if c in r["methods"][m]["at"]])
        y = np.array([r["methods"][m]["at"][c]["heldout"] for m in methods if c in r["methods"][m]["at"]])
        if len(x) > 1:
            xs.append(x - x.mean())
            ys.append(y - y.mean())
    if not xs:
        return {"r": math.nan, "p": math.nan, "n": 0}
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return {"r": math.nan, "p": math.nan, "n": int(len(x))}
    res = stats.pearsonr(x, y)
    return {"r": float(res.statistic), "p": float(res.pvalue), "n": int(len(x))}


def summarize(runs: list[dict], thresholds, baseline: str = "adamw") -> dict:
    methods = list(runs[0]["methods"])
    out = {"thresholds": [str(c) for c in thresholds], "methods": methods, "table": {}, "tests": {},
           "premise": {}, "reached": {}}
    for c in map(str, thresholds):
        out["table"][c] = {m: {k: _ms(_vals(runs, m, c, k)) for k in METRICS + ["steps"]} for m in methods}
        out["reached"][c] = {m: int(np.isfinite(_vals(runs, m, c, "heldout")).sum()) for m in methods}
        out["tests"][c] = {}
        for m in methods:
            if m == baseline or baseline not in methods:
                continue
            out["tests"][c][m] = {}
            for k in METRICS[1:] + ["steps"]:        # train_loss is matched by construction
                a, b = _vals(runs, m, c, k), _vals(runs, baseline, c, k)
                ok = np.isfinite(a) & np.isfinite(b)
                out["tests"][c][m][k] = {"delta": float(a[ok].mean() - b[ok].mean()) if ok.any() else math.nan,
                                         "welch": _welch_tp(a[ok], b[ok]), "paired": paired(a[ok], b[ok])}
        out["premise"][c] = _premise(runs, methods, c)
    return out
