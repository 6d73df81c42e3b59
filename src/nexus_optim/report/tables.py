"""Matched-loss interpolation along an eval curve, and the statistics tables of a report
(per-group summaries, each group against the baseline: ``report/stats.py``)."""

from __future__ import annotations

from nexus_optim.report.pairing import paired_comparison
from nexus_optim.report.runs import Run, is_num
from nexus_optim.report.stats import summarize, verdict, welch


def _lerp_records(a: dict, b: dict, f: float) -> dict:
    out = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if is_num(va) and is_num(vb):
            out[k] = va + f * (vb - va)
        elif f == 0.0 and is_num(va):
            out[k] = va
        elif f == 1.0 and is_num(vb):
            out[k] = vb
    return out


def crossing(curve: list[dict], metric: str, target: float) -> dict | None:
    """All metrics where ``metric`` first falls to ``target``, interpolated linearly in
    tokens between the eval before and the eval at the crossing; None if never reached.
    ``before_first_eval`` is True when the first eval is already below the target (the
    crossing happened earlier and is reported at that eval)."""
    pts = [r for r in curve if is_num(r.get(metric))]
    for i, r in enumerate(pts):
        if r[metric] <= target:
            if i == 0:
                return {**_lerp_records(r, r, 0.0), "before_first_eval": r[metric] < target}
            prev = pts[i - 1]
            f = (prev[metric] - target) / (prev[metric] - r[metric])
            out = _lerp_records(prev, r, f)
            out[metric] = float(target)
            return {**out, "before_first_eval": False}
    return None


def at_tokens(curve: list[dict], tokens: float) -> dict | None:
    """All metrics at ``tokens`` by linear interpolation between evals; None if outside."""
    pts = sorted(curve, key=lambda r: r["tokens"])
    for i, r in enumerate(pts):
        if r["tokens"] == tokens:
            return _lerp_records(r, r, 0.0)
        if r["tokens"] > tokens:
            if i == 0:
                return None
            prev = pts[i - 1]
            return _lerp_records(prev, r, (tokens - prev["tokens"]) / (r["tokens"] - prev["tokens"]))
    return None


# --------------------------------------------------------------------------- statistics
def _direction(metric: str) -> str | None:
    if (metric.startswith(("val/", "closeness/", "eval/")) or metric == "tokens"
            or "loss" in metric):
        return "lower"
    if metric.startswith(("downstream/", "geometry/", "geom/")):
        return "higher"
    return None


def stats_table(groups: dict[str, list[Run]], values: dict[int, dict], metrics: list[str],
                baseline: str | None, confidence: float, design: dict | None = None) -> dict:
    """{"summary": {metric: {label: summarize}}, "comparisons": {label: {metric: result}}}:
    a paired test on common seeds where ``design[label]["paired"]`` (``report/pairing.py``),
    else Welch (``test = "welch"``)."""
    summary = {m: {l: summarize([values[id(r)].get(m) for r in rs if values.get(id(r))])
                   for l, rs in groups.items()} for m in metrics}
    comps: dict[str, dict] = {}
    if baseline is not None:
        for l, rs in groups.items():
            if l == baseline:
                continue
            comps[l] = {}
            paired = bool((design or {}).get(l, {}).get("paired"))
            for m in metrics:
                if paired:
                    res = paired_comparison(rs, groups[baseline], values, m, confidence)
                    if res is None:
                        continue
                else:
                    a = summary[m][l]["values"]
                    b = summary[m][baseline]["values"]
                    if not a and not b:
                        continue
                    res = welch(a, b, confidence)
                    res["test"] = "welch"
                    res["verdict"] = verdict(res, l, baseline, m)
                res["direction"] = _direction(m)
                comps[l][m] = res
    return {"summary": summary, "comparisons": comps}


def metric_keys(dicts, prefixes=("val/", "geom/")) -> list[str]:
    keys = {k for d in dicts if d for k, v in d.items() if k.startswith(prefixes) and is_num(v)}

    def order(k):
        return (0 if k == "val/id" else 1 if k == "val/ood" else 2 if k.startswith("val/") else
                3 if k == "geom/grad_sim" else 4, k)
    return sorted(keys, key=order)


def curve_table(groups: dict[str, list[Run]], key: str, max_rows: int = 8) -> dict | None:
    """``key`` over training per group: {"metric", "rows": [{"step", "tokens", "groups":
    {label: mean over the group's runs at that eval}}], "over_training": {label: mean over
    runs of each run's mean over its evals}}; at most ``max_rows`` evals, evenly spaced and
    including the first and the last; None when no run logs ``key``."""
    at: dict[int, dict] = {}
    for label, rs in groups.items():
        for r in rs:
            for p in r.curve:
                if is_num(p.get(key)) and is_num(p.get("step")):
                    row = at.setdefault(int(p["step"]), {"tokens": p.get("tokens"), "groups": {}})
                    row["groups"].setdefault(label, []).append(float(p[key]))
    if not at:
        return None
    steps = sorted(at)
    if len(steps) > max_rows:
        steps = sorted({steps[round(i * (len(steps) - 1) / (max_rows - 1))] for i in range(max_rows)})
    rows = [{"step": s, "tokens": at[s]["tokens"],
             "groups": {l: sum(v) / len(v) for l, v in at[s]["groups"].items()}} for s in steps]
    over = {}
    for label, rs in groups.items():
        means = [sum(xs) / len(xs) for r in rs
                 if (xs := [float(p[key]) for p in r.curve if is_num(p.get(key))])]
        if means:
            over[label] = sum(means) / len(means)
    return {"metric": key, "rows": rows, "over_training": over}
