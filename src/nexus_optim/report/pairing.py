"""Paired statistics for a comparison whose groups share seeds (``report/paired.py``).

Every run of a seed uses the same initial weights, data order and schedule whatever its
optimizer, so a group and the baseline are compared seed by seed: ``paired_test`` on
``{seed: value}`` (the per-seed differences, their mean, a t-interval and a paired t-test).
A group is paired with the baseline when both have distinct seeds and share >= 2 of them;
otherwise (different seeds, a repeated seed) the comparison falls back to Welch
(``report/stats.py``) and the report says so.

Family: the declared primary endpoint is the OOD loss at matched in-distribution loss
(``matched`` / ``val/ood``) of each non-baseline group against the baseline; Holm's
correction runs over that family only. Every other comparison is exploratory (unadjusted p).
Power: the minimum true OOD difference the paired test detects with 80% power at the 0.05
level, from the observed sd of the per-seed differences (``min_detectable_difference``),
next to the 0.012 nats of the paper.
"""

from __future__ import annotations

import math

from nexus_optim.report.paired import holm, min_detectable_difference, paired_test
from nexus_optim.report.runs import Run, is_num
from nexus_optim.report.format import formatter, p_is

PRIMARY_SECTION, PRIMARY_METRIC = "matched", "val/ood"
PAPER_EFFECT = 0.012  # nats: the OOD improvement reported by the paper
POWER, ALPHA = 0.8, 0.05


def pairing_design(groups: dict[str, list[Run]], baseline: str | None) -> dict[str, dict]:
    """label -> {"paired": bool, "seeds": common seeds, "reason": why not paired}."""
    if baseline is None:
        return {}

    def seeds(rs):
        return [r.seed if "seed" in (r.cfg.get("train") or {}) else None for r in rs]

    base = seeds(groups[baseline])
    out = {}
    for label, rs in groups.items():
        if label == baseline:
            continue
        mine = seeds(rs)
        common = sorted(set(mine) & set(base) - {None})
        if None in mine or None in base:
            reason = "a run records no train.seed"
        elif len(set(mine)) < len(mine) or len(set(base)) < len(base):
            reason = "a seed is repeated within a group"
        elif len(common) < 2:
            reason = f"fewer than 2 seeds shared with {baseline} (shared: {common})"
        else:
            reason = ""
        out[label] = {"paired": not reason, "seeds": common, "reason": reason}
    return out


def paired_verdict(res: dict, a_name: str, b_name: str, metric: str | None = None) -> str:
    """One plain sentence about a paired comparison (numbers as in report.md: ``report/format.py``)."""
    f = formatter([res.get(k) for k in ("diff", "ci_low", "ci_high")], metric, signed=True)
    head = f"{a_name} − {b_name} = {f(res.get('diff'))}"
    if not res.get("testable"):
        return f"{head}; {res['reason']}"
    ci = int(round(res["confidence"] * 100))
    p = p_is(res["p"])
    if res.get("p_holm") is not None:
        p += f", {p_is(res['p_holm'], 'Holm-adjusted p')} (primary)"
    else:
        p += " (exploratory, unadjusted)"
    body = (f"{head} (mean of {res['n']} per-seed differences), {ci}% CI "
            f"[{f(res['ci_low'])}, {f(res['ci_high'])}], paired t = {res['t']:.2f}, {p}")
    if res["significant"]:
        return f"{body}: significant at the {1 - res['confidence']:.2g} level"
    return f"{body}: not significant (the difference may be zero)"


def paired_comparison(rs: list[Run], base: list[Run], values: dict[int, dict], metric: str,
                      confidence: float) -> dict | None:
    """``paired_test`` of ``metric`` between two groups on their common seeds with a value."""
    a = {r.seed: values[id(r)][metric] for r in rs if is_num((values.get(id(r)) or {}).get(metric))}
    b = {r.seed: values[id(r)][metric] for r in base if is_num((values.get(id(r)) or {}).get(metric))}
    if not a and not b:
        return None
    common = sorted(set(a) & set(b))
    out: dict = {"test": "paired", "confidence": confidence, "seeds": common, "n": len(common),
                 "n_a": len(a), "n_b": len(b)}
    if len(common) < 2:
        diff = a[common[0]] - b[common[0]] if common else None
        out.update(testable=False, diff=diff,
                   reason=f"{len(common)} paired seed(s) with a value: a paired test needs 2")
        return out
    res = paired_test({s: a[s] for s in common}, {s: b[s] for s in common}, confidence).to_dict()
    out.update(res, testable=math.isfinite(res["p"]), family="exploratory",
               significant=bool(res["p"] < 1 - confidence))
    if not out["testable"]:
        out["reason"] = "all per-seed differences are zero"
    return out


def apply_holm(report: dict) -> dict:
    """Holm over the primary family (matched val/ood of each group vs the baseline); marks
    those comparisons ``family = "primary"`` with ``p_holm`` and returns the family record."""
    comps = report[PRIMARY_SECTION]["comparisons"]
    members = {l: c[PRIMARY_METRIC] for l, c in comps.items()
               if PRIMARY_METRIC in c and c[PRIMARY_METRIC].get("testable")}
    adjusted = holm({l: c["p"] for l, c in members.items()}) if members else {}
    for l, c in members.items():
        c.update(family="primary", p_holm=adjusted[l], significant=bool(adjusted[l] < 1 - c["confidence"]))
    for section in ("matched", "equal_tokens", "extra"):
        for l, c in report[section]["comparisons"].items():
            for m, r in c.items():
                r.setdefault("family", "exploratory")
                if r.get("test") == "paired":
                    r["verdict"] = paired_verdict(r, l, report["baseline"], m)
    return {"section": PRIMARY_SECTION, "metric": PRIMARY_METRIC, "members": list(members),
            "correction": "holm", "p_holm": adjusted}


def power_table(report: dict) -> dict[str, dict]:
    """label -> minimum detectable primary difference at 80% power (paired groups only)."""
    out = {}
    for l, c in report[PRIMARY_SECTION]["comparisons"].items():
        r = c.get(PRIMARY_METRIC) or {}
        if r.get("test") != "paired" or r.get("n", 0) < 2:
            continue
        sd = r.get("sd")
        mde = (min_detectable_difference(sd, r["n"], ALPHA, POWER)
               if is_num(sd) and sd > 0 else None)
        out[l] = {"metric": f"{PRIMARY_SECTION} {PRIMARY_METRIC}", "sd_diff": sd, "n": r["n"],
                  "power": POWER, "alpha": ALPHA, "mde": mde, "paper_effect": PAPER_EFFECT,
                  "detects_paper_effect": None if mde is None else bool(mde <= PAPER_EFFECT)}
    return out
