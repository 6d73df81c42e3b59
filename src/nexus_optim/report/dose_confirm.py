"""The dose study's confirmatory paired comparison (``experiments/dose_confirm.py`` declares
it in ``confirm-design.json`` before its runs; this reads the summaries they write).

Per seed i (both arms: same init, data windows and order, schedule), Nexus minus AdamW:

    manipulation  mean geom/grad_sim over training: paired t-test; passes when the mean gain
                  is > 0 with two-sided p < alpha. Read first: a failed check means the outcome
                  below is not a test of the mechanism.
    primary       near-OOD bits/byte on the full held-out sets (``final_eval.json``, mean over
                  the declared near-OOD sources): paired t-test, two-sided, alpha; power as the
                  minimum detectable difference at 80 % (observed sd: post hoc; planning sd:
                  declared)
    secondary     a Holm family of three: the paired ANCOVA (d_near_i = a + b d_id_i, OLS; the
                  intercept a is the near-OOD difference at equal end ID, t with n - 2 df); the
                  crossing-based near-OOD (each arm's near-OOD where its val/id curve first
                  crosses the same seed's AdamW val/id at ``crossing_fraction`` of training,
                  nats/token converted with each source's bytes/token); far-OOD bits/byte on
                  the full sets
    ID cost       end bits/byte on the full ID sets: paired t-test (the window's cost, re-read)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from nexus_optim.report.paired import holm, min_detectable_difference, paired_test
from nexus_optim.report.runs import is_num
from nexus_optim.report.study import (final_eval_summary, levels_at, load_summaries, ood_bytes_per_token,
                                      to_bits_per_byte)
from nexus_optim.report.tables import crossing


def _final_bpb(run_dir: Path) -> dict:
    return {k: float(v) for k, v in final_eval_summary(run_dir).items() if k.startswith("bpb/") and is_num(v)}


def _mean_of(d: dict, keys: list[str]) -> float | None:
    xs = [d.get(k) for k in keys]
    return float(np.mean(xs)) if xs and all(is_num(x) for x in xs) else None


def paired_ancova(d_out, d_cov, confidence: float = 0.95) -> dict:
    """OLS of the per-seed outcome differences on the per-seed covariate differences,
    ``d_out = a + b d_cov``: the intercept ``a`` (the outcome difference at equal covariate),
    its standard error, t (n - 2 df), two-sided p and CI; the slope ``b``. Needs n >= 3."""
    y, x = np.asarray(d_out, np.float64), np.asarray(d_cov, np.float64)
    n = len(y)
    if n < 3 or len(x) != n:
        raise ValueError(f"paired_ancova: needs at least 3 paired seeds with both values, got {n}")
    X = np.column_stack([np.ones(n), x])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    df = n - 2
    s2 = float(resid @ resid) / df
    cov = s2 * np.linalg.pinv(X.T @ X)
    se = float(np.sqrt(max(float(cov[0, 0]), 0.0)))
    a, b = float(coef[0]), float(coef[1])
    t = a / se if se > 0 else (float(np.copysign(np.inf, a)) if a else float("nan"))
    p = float(2 * stats.t.sf(abs(t), df)) if se > 0 else (0.0 if a else 1.0)
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return {"diff": a, "slope": b, "se": se, "t": float(t), "p": p, "ci_low": a - half, "ci_high": a + half,
            "n": n, "df": df}


def confirm_values(root: str | Path, plan: dict) -> dict[str, dict[int, dict]]:
    """arm -> seed -> the run's numbers (near, far, id: full-set bits/byte; grad_sim: mean
    over training; cross_near: near-OOD bits/byte at the crossing), from the summaries of
    the plan's phase."""
    phase, near, far = plan["phase"], plan["near_ood"], plan["far_ood"]
    runs = [r for r in load_summaries(root) if r.phase == phase]
    out: dict[str, dict[int, dict]] = {arm: {} for arm in plan["arms"]}
    level = {r.seed: levels_at(r.run.curve, [plan["crossing_fraction"]]) for r in runs if r.arm == "adamw"}
    for r in runs:
        fin = _final_bpb(Path(root) / r.name)
        sims = [float(p["geom/grad_sim"]) for p in r.run.curve if is_num(p.get("geom/grad_sim"))]
        hit = crossing(r.run.curve, "val/id", level[r.seed][0]) if level.get(r.seed) else None
        bpt = ood_bytes_per_token(r.run.prepared)
        cross = [to_bits_per_byte(hit[f"val/{s}"], bpt[s]) for s in near
                 if hit and s in bpt and is_num(hit.get(f"val/{s}"))]
        out.setdefault(r.arm, {})[r.seed] = {
            "near": _mean_of(fin, [f"bpb/{s}" for s in near]), "far": _mean_of(fin, [f"bpb/{s}" for s in far]),
            "id": fin.get("bpb/id"), "grad_sim": float(np.mean(sims)) if sims else None,
            "cross_near": float(np.mean(cross)) if len(cross) == len(near) and near else None}
    return out


def _pairs(vals: dict, key: str) -> tuple[dict, dict]:
    a, b = vals.get("nexus", {}), vals.get("adamw", {})
    seeds = sorted(s for s in set(a) & set(b) if is_num(a[s].get(key)) and is_num(b[s].get(key)))
    return {s: a[s][key] for s in seeds}, {s: b[s][key] for s in seeds}


def _test(vals: dict, key: str, conf: float) -> dict | None:
    a, b = _pairs(vals, key)
    return {**paired_test(a, b, conf).to_dict(), "seeds": sorted(a)} if len(a) >= 2 else None


def confirm_analysis(root: str | Path, plan: dict) -> dict:
    """The declared analysis of ``plan`` (``confirm-design.json``) on the summaries under ``root``."""
    conf = 1 - plan["alpha"]
    vals = confirm_values(root, plan)
    manip = _test(vals, "grad_sim", conf)
    passed = bool(manip and manip["diff"] > 0 and manip["p"] < plan["alpha"])
    prim = _test(vals, "near", conf)
    if prim:
        prim["mdd_observed_post_hoc"] = (min_detectable_difference(prim["sd"], prim["n"], plan["alpha"])
                                         if prim["sd"] > 1e-12 else None)  # _test: n >= 2
        prim["mdd_planned"] = plan.get("planning", {}).get("mdd")
    sec: dict[str, dict | None] = {"crossing_near_ood": _test(vals, "cross_near", conf),
                                   "far_ood": _test(vals, "far", conf)}
    a_n, b_n = _pairs(vals, "near")
    a_i, b_i = _pairs(vals, "id")
    common = sorted(set(a_n) & set(a_i))
    sec["ancova_near_ood_at_equal_id"] = (
        {**paired_ancova([a_n[s] - b_n[s] for s in common], [a_i[s] - b_i[s] for s in common], conf),
         "seeds": common} if len(common) >= 3 else None)
    done = {k: v for k, v in sec.items() if v}
    adj = holm({k: v["p"] for k, v in done.items()}) if done else {}
    for k, v in done.items():
        v["p_holm"] = adj[k]
    return {"plan": {k: plan[k] for k in ("setting", "seeds", "near_ood", "far_ood")},
            "n_runs": {arm: len(v) for arm, v in vals.items()},
            "crossing_missing": {arm: sorted(k for k, x in v.items() if x["cross_near"] is None) for arm, v in vals.items()},
            "manipulation": manip, "manipulation_passed": passed, "primary": prim, "secondary": sec,
            "id_cost": _test(vals, "id", conf), "verdict": confirm_verdict(prim, passed, plan["alpha"])}


def same_analysis(stored: dict, fresh: dict, rel: float = 1e-9) -> dict:
    """``fresh`` (recomputed from the summaries) after checking that every test it shares with
    ``stored`` (``confirm.json``, written once) has the same mean difference and p (relative
    ``rel``: summation order may differ between machines); a mismatch means a summary changed."""
    def tests(r):
        out = {"manipulation": r.get("manipulation"), "primary": r.get("primary"), "id_cost": r.get("id_cost")}
        return {**out, **(r.get("secondary") or {})}
    old, new = tests(stored), tests(fresh)
    for k, a in old.items():
        b = new.get(k)
        if a and b and any(abs(a[f] - b[f]) > max(rel * max(abs(a[f]), abs(b[f])), 1e-15) for f in ("diff", "p")):
            raise ValueError(f"confirm.json: {k} differs from the summaries' ({a['diff']} vs {b['diff']}): "
                             f"a confirmatory summary changed after confirm.json was written")
    return fresh


def confirm_verdict(prim: dict | None, passed: bool, alpha: float) -> str:
    """The declared reading of the primary endpoint, one sentence."""
    if prim is None:
        return "not testable: fewer than 2 paired seeds"
    head = ("" if passed else "The manipulation check failed (gradient similarity not raised): the outcome "
            "below is not a test of the mechanism. ")
    ci = f"{prim['diff']:+.4f} bits/byte (95% CI {prim['ci_low']:+.4f} to {prim['ci_high']:+.4f}, p = {prim['p']:.3g}, n = {prim['n']})"
    if prim["p"] < alpha:
        word = "lower (better)" if prim["diff"] < 0 else "higher (worse)"
        return head + f"Nexus's near-OOD bits/byte is {word} than AdamW's: {ci}."
    mdd = prim.get("mdd_observed_post_hoc")
    power = f"; the smallest difference this design detects with 80% power is {mdd:.4f} (observed sd)" if mdd else ""
    return head + f"No near-OOD difference detected: {ci}{power}."


def confirm_answer(res: dict | None, tol: float) -> list[str]:
    """The confirmatory comparison in the guide's answer (markdown lines; none before it is done)."""
    if res is None:
        return []
    s, m, c = res["plan"]["setting"], res["manipulation"], res.get("id_cost")
    cost = (f" It cost {c['diff']:+.4f} bits/byte of ID loss (95% CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}; "
            f"window tolerance {tol:g})." if c else "")
    return [f"Confirmatory comparison of the small size's best window (r = {s['r']:g}, {s['reading']}, {s['schedule']}) against "
            f"AdamW on {m['n']} fresh paired seeds: the gradient similarity rose by {m['diff']:+.4f} (manipulation "
            f"check {'passed' if res['manipulation_passed'] else 'failed'}).{cost} {res['verdict']} "
            "Details below.", ""]


def _row(name: str, r: dict | None, holm_col: bool = True) -> str:
    if not r:
        return f"| {name} | n/a | | | | |"
    p_holm = f"{r['p_holm']:.3g}" if holm_col and "p_holm" in r else "-"
    return (f"| {name} | {r['n']} | {r['diff']:+.4f} | {r['ci_low']:+.4f} to {r['ci_high']:+.4f} | "
            f"{r['p']:.3g} | {p_holm} |")


def render_confirm(plan: dict | None, res: dict | None, n_done: int, window_id_bpb: float | None = None) -> list[str]:
    """The gamma guide's section on the confirmatory comparison (markdown lines)."""
    if plan is None:
        return []
    s = plan["setting"]
    lines = ["## Confirmatory comparison", "",
             f"Declared in `confirm-design.json` before its runs: Nexus at r = {s['r']:g} ({s['reading']}, "
             f"{s['schedule']}) against AdamW, both at lr {s['lr']:g}, size {s['size']}, seeds "
             f"{plan['seeds'][0]}-{plan['seeds'][-1]} (fresh: not the selection seeds), paired by seed. Near-OOD: "
             + "; ".join(f"{k} ({v})" for k, v in plan["near_why"].items())
             + f"; far-OOD: {', '.join(plan['far_ood']) or 'none'}."]
    pl = plan.get("planning") or {}
    if pl.get("mdd") is not None:
        lines += [f"Planning power (declared): sd of the per-seed near-OOD difference {pl['sd_diff']:.4f} "
                  f"({pl['df']} df, {pl['note']}), so {pl['n']} seeds detect {pl['mdd']:.4f} bits/byte with 80% power."]
    lines.append("")
    if res is None:
        return lines + [f"Not finished: {n_done} of {2 * len(plan['seeds'])} runs summarized.", ""]
    m = res["manipulation"]
    lines += [f"**Manipulation check** (read first): gradient-similarity gain {m['diff']:+.4f} "
              f"(95% CI {m['ci_low']:+.4f} to {m['ci_high']:+.4f}, p = {m['p']:.3g}, n = {m['n']}): "
              + ("passed." if res["manipulation_passed"] else "**failed**."), "",
              f"**Primary**: {res['verdict']}", "",
              "| endpoint (Nexus - AdamW, bits/byte) | n | mean diff | 95% CI | p | p (Holm) |", "|---|---|---|---|---|---|",
              _row("primary: near-OOD, full sets", res["primary"], holm_col=False)]
    sec = res["secondary"]
    lines += [_row("ANCOVA: near-OOD at equal end ID (intercept)", sec.get("ancova_near_ood_at_equal_id")),
              _row(f"near-OOD at the crossing of AdamW's ID at {plan['crossing_fraction']:.0%}",
                   sec.get("crossing_near_ood")),
              _row("far-OOD, full sets", sec.get("far_ood")),
              _row("ID cost (descriptive)", res.get("id_cost"), holm_col=False), ""]
    c, tol = res.get("id_cost"), window_id_bpb
    if c and tol is not None:
        where = "inside" if c["ci_high"] <= tol else "outside" if c["ci_low"] > tol else "not resolved against"
        lines += [f"Descriptive: on these fresh seeds the setting's ID cost is {c['diff']:+.4f} bits/byte (95% CI "
                  f"{c['ci_low']:+.4f} to {c['ci_high']:+.4f}), {where} the window's {tol:g} tolerance; at selection "
                  f"(n = {plan['selected_from']['n']}) it was {plan['selected_from']['cost']:+.4f}.", ""]
    miss = {a: v for a, v in (res.get("crossing_missing") or {}).items() if v}
    lines += ["The crossing-based row counts the seeds where both arms reach the same seed's AdamW val/id at "
              f"{plan['crossing_fraction']:.0%} of training; "
              + ("; ".join(f"{a} never reached it on seeds {', '.join(map(str, v))}" for a, v in miss.items())
                 + " (the row leaves those seeds out, so it is not a random subset)" if miss else "every run reached it")
              + ".", ""]
    return lines
