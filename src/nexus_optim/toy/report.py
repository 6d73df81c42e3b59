"""Markdown tables for toy.md (generated; the hand-written verdict lives in docs/results/toy.md)."""
from __future__ import annotations

import math

__all__ = ["render_markdown"]

COLS = [("steps", "outer steps", "{:.0f}"), ("grad_cos", "grad cos", "{:.3f}"),
        ("minima_var", "minima var", "{:.2e}"), ("minima_pair_dist", "pair dist", "{:.3f}"),
        ("minima_dist_from_start", "dist from start", "{:.3f}"), ("test_in_source", "in-source test", "{:.4f}"),
        ("heldout", "held-out", "{:.4f}"), ("heldout_ft", "held-out after FT", "{:.4f}")]
TESTED = ["grad_cos", "minima_var", "heldout", "heldout_ft", "test_in_source"]


def _pm(s, fmt):
    if s["n"] == 0 or math.isnan(s["mean"]):
        return "n/a"
    sd = "" if math.isnan(s["std"]) else " ± " + fmt.format(s["std"])
    return fmt.format(s["mean"]) + sd


def _p(x):
    return "n/a" if x is None or math.isnan(x) else f"{x:.2g}"


def _test_cell(t):
    if t["delta"] is None or math.isnan(t["delta"]):
        return "n/a"
    return (f"{t['delta']:+.3g} (W {_p(t['welch']['p'])}, P {_p(t['paired']['p'])}, "
            f"{t['paired']['frac_lower']:.0%}<)")


def _quad_table(q):
    lines = [f"N = {q['n_sources']} sources, d = {q['d']}, {q['n_draws']} Monte Carlo draws per variance level, "
             f"v in {q['v_grid'][0]:g}..{q['v_grid'][-1]:g} ({len(q['v_grid'])} levels).", "",
             "| setting | predicted slope | fitted slope ± SE | intercept ± SE | R² (linear fit) | "
             "R² (prediction) | max abs z (MC vs theory) | source-loss slope pred / fit |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in q["settings"].items():
        lines.append(f"| {name} | {s['slope_pred']:.4f} | {s['slope_fit']:.4f} ± {s['slope_fit_se']:.4f} | "
                     f"{s['intercept_fit']:.4f} ± {s['intercept_fit_se']:.4f} | {s['r2_fit']:.5f} | "
                     f"{s['r2_pred']:.5f} | {s['max_abs_z']:.2f} | "
                     f"{s['train_slope_pred']:.4f} / {s['train_slope_fit']:.4f} |")
    return lines


def _over_tables(ov):
    s = ov["summary"]
    orc = [r["oracle_heldout"] for r in ov["runs"]]
    lines = [f"Seeds: {ov['seeds']}. Methods: {', '.join(s['methods'])}.", "",
             f"Reference: held-out MSE of the mean teacher (best single predictor) = "
             f"{sum(orc) / len(orc):.4f} (mean over seeds); predicting 0 gives about 1.0."]
    for c in s["thresholds"]:
        lines += ["", f"### Matched summed training loss = {c}", "",
                  "| method | reached | " + " | ".join(h for _, h, _ in COLS) + " |",
                  "|---|---|" + "---|" * len(COLS)]
        for m in s["methods"]:
            row = s["table"][c][m]
            lines.append(f"| {m} | {s['reached'][c][m]}/{len(ov['seeds'])} | "
                         + " | ".join(_pm(row[k], f) for k, _, f in COLS) + " |")
        if s["tests"][c]:
            lines += ["", "Method minus AdamW over the seeds where both reached the threshold: mean delta, "
                      "Welch p (W), paired p (P), share of seeds with method < AdamW.", "",
                      "| method | " + " | ".join(TESTED) + " |", "|---|" + "---|" * len(TESTED)]
            for m, t in s["tests"][c].items():
                cells = [_test_cell(t[k]) for k in TESTED]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
        pr = s["premise"][c]
        lines += ["", f"Premise check at {c}: within-seed Pearson r(log minima var, held-out) = "
                  f"{pr['r']:.3f} (p = {_p(pr['p'])}, n = {pr['n']})."]
    return lines


def render_markdown(result: dict) -> str:
    cfg = result["config"]
    lines = ["# Nexus theory toy (generated)", "",
             f"Seed {result['seed']}, quick={result['quick']}, wall time {result['seconds']:.1f} s.", "",
             "## 1. Quadratic basins: E[L_new(theta*)] vs variance of source minima", "",
             "Theory: E[L_new(theta*)] = 1/2 tr(Hbar (A^-1 sum_i H_i Sigma H_i A^-1 + Sigma)); "
             "with Sigma = (v/d) I this is slope * v (shared H = I: slope = (1 + 1/N)/2).", ""]
    lines += _quad_table(result["quadratic"])
    lines += ["", "![quadratic](toy_quadratic.png)", "",
              "## 2. Over-parameterised multi-source regression: AdamW vs Nexus at matched training loss", "",
              f"Task: {cfg['overparam']['task']}; model: {cfg['overparam']['model']}; outer AdamW lr "
              f"{cfg['overparam']['lr']}, betas {tuple(cfg['overparam']['betas'])}, weight decay "
              f"{cfg['overparam']['weight_decay']}; per-source fine-tune: {cfg['overparam']['ft_steps']} GD steps, "
              f"lr {cfg['overparam']['ft_lr']}.", ""]
    lines += _over_tables(result["overparam"])
    lines += ["", "![metrics](toy_overparam_metrics.png)", "", "![curves](toy_overparam_curves.png)", "",
              "![premise](toy_premise.png)", ""]
    return "\n".join(lines)
