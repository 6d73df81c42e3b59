"""Markdown of the study report (``report/study.py`` builds the dict)."""

from __future__ import annotations

import os
from pathlib import Path

from nexus_optim.report.paired import holm
from nexus_optim.report.stats import fmt

REGENERATE = ("nexus study --tier report --summaries docs/results/cpu-study/runs "
              "--report-out docs/results/cpu-study --report-md docs/results/cpu-study.md")
RUN = ("nexus study --tier final --out runs/study --summaries docs/results/cpu-study/runs "
       "--report-out docs/results/cpu-study --report-md docs/results/cpu-study.md")


def tokens_per_run(d: dict) -> int:
    """Training tokens of one run of a design (``design.json``): steps x K x micro-batch x seq_len."""
    return d["steps"] * d["inner_steps"] * d["micro_batch_size"] * d["seq_len"]


def _ci(r: dict, d: int = 4) -> str:
    return f"{r['diff']:+.{d}f} [{r['ci_low']:+.{d}f}, {r['ci_high']:+.{d}f}]"


def _bpb(r: dict) -> str:
    """The same paired difference in bits/byte, when the summaries have the byte counts."""
    b = r.get("bpb")
    return f" ({_ci(b)} bits/byte)" if b else ""


def verdict_lines(report: dict) -> list[str]:
    out = []
    paper = report["design"]["paper_ood_effect"]
    for name, r in (report.get("primary") or {}).items():
        if "diff" not in r:
            out.append(f"- **{name}**: not testable yet ({r['n']} paired seed(s)).")
            continue
        mde = f"{r['mde']:.4f}" if r.get("mde") is not None else "n/a"
        if r["p_holm"] < 0.05:
            word = "lower (better)" if r["diff"] < 0 else "higher (worse)"
            out.append(f"- **{name}**: OOD at matched ID is {word} for the first arm: {_ci(r)} nats/token{_bpb(r)}, "
                       f"Holm p = {r['p_holm']:.3g}, n = {r['n']} seeds.")
        else:
            reach = "smaller than" if r.get("mde") is not None and r["mde"] <= paper else "larger than"
            out.append(f"- **{name}**: no detectable difference: {_ci(r)} nats/token{_bpb(r)}, Holm p = "
                       f"{r['p_holm']:.3g}, n = {r['n']} seeds; the minimum detectable difference at 80% power "
                       f"is {mde} nats/token, {reach} the paper's {paper:g} (about "
                       f"{r.get('seeds_for_paper_effect') or 'n/a'} paired seeds would detect {paper:g} at this "
                       f"sd; the paper's number is in its own units, see below).")
    reg = (report.get("regression") or {}).get("cross_loss_gap")
    if reg and "slope" in reg:
        sig = "predicts" if reg["p"] < 0.05 else "does not detectably predict"
        out.append(f"- **Closeness -> OOD** (all runs, arm fixed effects): a run's cross-loss gap {sig} its "
                   f"endpoint OOD: slope {reg['slope']:+.3g} [{reg['ci_low']:+.3g}, {reg['ci_high']:+.3g}] "
                   f"nats per nat, p = {reg['p']:.3g}, n = {reg['n']} runs.")
    return out


def _scope_lines(report: dict) -> list[str]:
    """What the study can and cannot say (``report/study.scope``), stated before any table."""
    sc = report.get("scope")
    if not sc:
        return []
    g = sc.get("gamma")
    lines = ["## What this study can and cannot say", ""]
    sim = sc.get("grad_sim_nexus_minus_adamw")
    close = sc.get("closeness_max_abs_diff")
    if sim:
        engaged = sim["p"] < 0.05 and sim["diff"] > 0
        word = ("raised" if engaged else "did not detectably raise")
        lines.append(
            f"- **Mechanism.** At the selected gamma* = {g:g}, Nexus {word} the between-source gradient cosine "
            f"over training: Nexus - AdamW {_ci(sim)} (p = {sim['p']:.2g}, n = {sim['n']})"
            + (f"; every closeness measure agrees with AdamW within {close:.3f}" if close is not None else "")
            + (". The treatment did not engage the mechanism, so the null result below says nothing about "
               "common minima; it says that Nexus at this gamma is AdamW in effect." if not engaged else "."))
    dose = sc.get("pilot_dose") or []
    if dose:
        lines.append("- **Pilot dose response** (one seed, from the committed pilot summaries; gradient cosine "
                     "averaged over training and end val/id, each minus the pilot AdamW at lr*): "
                     + "; ".join(f"gamma {d['gamma']:g}: similarity {d['grad_sim_gain']:+.3f}, ID "
                                 f"{d['val_id_cost']:+.3f} nats/token" for d in dose)
                     + ". Selection kept the largest gamma within tolerance on ID loss alone.")
    bpt, v = sc.get("bytes_per_token") or {}, sc.get("vocab_size")
    if bpt:
        rng = {role: (min(x.values()), max(x.values())) for role, x in bpt.items()}
        lines.append(
            f"- **Units.** Losses are nats/token at a {v}-token vocabulary: the validation splits have "
            + ", ".join(f"{lo:.2f}-{hi:.2f} bytes/token ({'in-distribution' if role == 'train' else role})"
                        for role, (lo, hi) in rng.items())
            + ". Bits/byte are given beside them (nats/token / (ln 2 x bytes/token)). The paper's 0.012 is "
            "an OOD loss difference at its own tokenizer and scale; it is a reference size, not a number "
            "this study can be compared with.")
    for name, ph in (sc.get("post_hoc") or {}).items():
        lines.append(
            f"- **Post hoc, not a declared test** ({name}): whether the 95% CI excludes an improvement as large "
            f"as the paper's {ph['paper']:g} was never declared (in this study it entered the verdict after "
            f"the n = 20 result was seen, and was taken out again); the lower end {ph['ci_low']:+.4f} "
            f"{'clears' if ph['margin'] > 0 else 'does not clear'} -{ph['paper']:g} by {abs(ph['margin']):.4f} "
            "nats/token, in units that are not the paper's.")
    return lines + _scope_caveats(sc)


def _scope_caveats(sc: dict) -> list[str]:
    """The controls, the size and the selection table's record (``_scope_lines``' second half)."""
    g, lines = sc.get("gamma"), []
    pair = sc.get("pairing") or {}
    if pair.get("nexus-mixed"):
        nx = pair.get("nexus") or {}
        lines.append(
            f"- **The mixed arm is not paired by data.** `train.sampling=mixed` draws other windows from the "
            f"same seed, so nexus-mixed shares only the initialisation with the other arms: its endpoint "
            f"correlates {pair['nexus-mixed']['r']:+.2f} with AdamW's over seeds"
            + (f", against {nx['r']:+.2f} for Nexus" if nx else "")
            + ". Its tests are paired by seed but not by windows, and there is no AdamW arm on the mixed "
            "windows, so Nexus - nexus-mixed mixes the treatment with the data draw.")
    if sc.get("random_sd") is not None:
        lines.append(
            f"- **The random control is inert at gamma* = {g:g}**: random - AdamW endpoint sd of the per-seed "
            f"differences {sc['random_sd']:.4f} nats/token; a move of length {g:g} in a random direction "
            "changes nothing measurable, so it controls nothing at this gamma.")
    if sc.get("tokens_per_param"):
        lines.append(f"- **Size.** {sc['tokens_per_param']:.1f} training tokens per parameter (under-trained; "
                     "in-distribution loss still falls at the end), so the per-source fine-tunes of the "
                     "closeness protocol are specialisations, not minima.")
    drift = sc.get("selection_drift") or []
    if drift:
        worst = max(abs(d["summary"] - d["selection"]) for d in drift)
        lines.append(
            f"- **The Selection table does not regenerate from the committed pilot summaries**: {len(drift)} pilot "
            f"summaries were overwritten by a later retrain (before summaries became write-once), differing "
            f"from the val/id selection used by up to {worst:.3f} nats/token ("
            + ", ".join(d["run"] for d in drift) + "). The table shows `selection.json`'s values, the ones "
            "selection was made on.")
    return lines + [""]


def _design_lines(report: dict) -> list[str]:
    d, sel = report["design"], report["selection"] or {}
    lines = ["## Design (declared before the final runs: `design.json` beside the run summaries)", "",
             f"- Model: `{d['preset']}` with {d['model_overrides']}, vocabulary {d['vocab_size']}, "
             f"seq_len {d['seq_len']}; {d['steps']} outer steps x K = {d['inner_steps']} x "
             f"{d['micro_batch_size']} x {d['seq_len']} = "
             f"{tokens_per_run(d):,} tokens per run; "
             f"cosine schedule, warmup {d['warmup_steps']}, final lr ratio {d['min_lr_ratio']}.",
             f"- Evaluation every {d['eval_every']} outer steps ({100 * d['eval_every'] / d['steps']:g}% of "
             f"training), {d['eval_tokens']:,} tokens per source; full validation sets at the end; "
             f"gradient cosines ({d['grad_sim_batches']} batches per source) at every evaluation.",
             f"- Arms: primary {', '.join(d['primary_arms'])} (seeds {list(d['final_seeds'])}); secondary "
             f"{', '.join(d['secondary_arms'])} (seeds {list(d['secondary_seeds'])}); pilot seeds "
             f"{list(d['pilot_seeds'])}.",
             f"- Selection: {d['selection']}",
             f"- Endpoint: {d['endpoint']}. Family: {', '.join(d['family'])}.",
             f"- Closeness: every checkpoint fine-tuned per source with AdamW, K = 1, lr "
             f"{d['closeness_lr']:g} cosine-decayed to {d['closeness_min_lr_ratio']:g}x over "
             f"{d['closeness_steps']} steps, seed {d['closeness_seed']}, for every arm.",
             *[f"- Amendment: {a}" for a in d.get("amendments", [])], ""]
    if sel:
        pv = sel["pilot_val_id"]
        lines += ["### Selection (pilot, val/id at the end only)", "",
                  "| setting | val/id |", "|---|---|",
                  *[f"| AdamW lr {k} | {fmt(v)} |" for k, v in pv["adamw_lr"].items()],
                  *[f"| Nexus gamma {k} (lr {sel['lr']:g}) | {fmt(v)} |" for k, v in pv["nexus_gamma"].items()],
                  "", f"Selected: lr* = {sel['lr']:g}, gamma* = {sel['gamma']:g} ({sel['gamma_rule']}); "
                  f"pilot levels val/id = {', '.join(f'{x:.4f}' for x in sel['levels'])} "
                  f"(pilot AdamW at {sel['level_fractions']} of training; the final runs use their "
                  f"own seed's AdamW levels, amendment 4).", ""]
        edge = grid_edge(sel["lr"], [float(k) for k in pv["adamw_lr"]])
        if edge:
            lines += [f"Caveat: lr* is the {edge} learning rate of the grid, so the grid does not "
                      "bracket AdamW's best lr; every arm uses lr*, and the comparison holds at it "
                      "(a wider grid is a new design, not an amendment of this one).", ""]
    return lines


def grid_edge(value: float, grid: list[float]) -> str | None:
    """"smallest" / "largest" when ``value`` is at that end of a grid of >= 2 values."""
    if len(grid) < 2:
        return None
    return "smallest" if value <= min(grid) else "largest" if value >= max(grid) else None


def _standing_lines(report: dict) -> list[str]:
    ng = (report.get("ngram") or {}).get("lines", {})
    per = report.get("per_arm") or {}
    if not ng:
        return ["## Where the models stand", "", (report.get("ngram") or {}).get("note", "no n-gram lines"), ""]
    lines = ["## Where the models stand (full validation sets at the end)", "",
             "| | val/id (nats/token) | val/ood (nats/token) | id (bits/byte) | ood (bits/byte) |",
             "|---|---|---|---|---|"]
    for order in ("unigram", "bigram"):
        o = ng[order]
        lines.append(f"| {order} (counts, train data) | {fmt(o.get('val/id'))} | {fmt(o.get('val/ood'))} | "
                     f"{fmt(o.get('bpb/id'))} | {fmt(o.get('bpb/ood'))} |")
    for arm, m in per.items():
        lines.append(f"| {arm} (mean of {m['end val/id']['n']}) | {fmt(m['end val/id']['mean'])} | "
                     f"{fmt(m['end val/ood']['mean'])} | {fmt((m.get('end bpb/id') or {}).get('mean'))} | "
                     f"{fmt((m.get('end bpb/ood') or {}).get('mean'))} |")
    adamw, big = (per.get("adamw") or {}).get("end val/id", {}).get("mean"), ng.get("bigram", {}).get("val/id")
    if adamw is not None and big is not None:
        ok = "meets" if big - adamw >= 0.3 else "misses"
        lines += ["", f"AdamW ends {big - adamw:.3f} nats below the bigram val/id ({ok} the design's >= 0.3)."]
    tps = report.get("train_tokens_per_s")
    if tps:
        lines += [""]
        lines.append(f"Training throughput (median over runs of each run's median, one thread per run, "
                     f"two runs at a time on 2 cores): {tps:,.0f} tokens/s.")
        lines += ["", _cost_line(report, tps)]
    return lines + [""]


def _cost_line(report: dict, tps: float) -> str:
    """The size choice and its cost, estimated from the measured throughput."""
    d = report["design"]
    tokens = tokens_per_run(d)
    n_runs = {ph: sum(r["phase"] == ph for r in report["runs"]) for ph in ("pilot", "final")}
    per_run = tokens / tps / 60
    size = f"{report['n_params']:,} parameters, " if report.get("n_params") else ""
    return (f"Size and cost: {size}vocabulary {d['vocab_size']}, {tokens:,} tokens per run, so one run "
            f"trains in about {per_run:.1f} min on one core at this throughput (the dense evaluations, "
            f"the full-validation evaluation and the closeness fine-tunes come on top); the "
            f"{n_runs['pilot']} pilot and {n_runs['final']} final runs here are about "
            f"{per_run * (n_runs['pilot'] + n_runs['final']) / 2:.0f} min of training on 2 cores.")


def _primary_lines(report: dict) -> list[str]:
    lines = ["## Primary endpoint (Holm over the family)", "",
             "| comparison | n | mean diff [95% CI] (nats/token) | same in bits/byte | sd of diffs | p | Holm p | "
             "MDE (80%) | paper | seeds for 0.012 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in (report.get("primary") or {}).items():
        if "diff" in r:
            b = _ci(r["bpb"]) if r.get("bpb") else "n/a"
            lines.append(f"| {name} | {r['n']} | {_ci(r)} | {b} | {fmt(r['sd'])} | {r['p']:.3g} | {r['p_holm']:.3g} | "
                         f"{fmt(r['mde'])} | -{r['paper_effect']:g} | {r.get('seeds_for_paper_effect') or 'n/a'} |")
        else:
            lines.append(f"| {name} | {r['n']} | {r['note']} | | | | | | | |")
        if r.get("missing_endpoint"):
            lines.append(f"| (runs that never reached a level: {', '.join(r['missing_endpoint'])}) |||||||||")
    lines += ["", "The paper's column is a reference size in the paper's own units (its tokenizer and OOD "
              "sets), not comparable to nats/token at this vocabulary; no test here is against it."]
    return lines + [""]


def _exploratory_lines(report: dict) -> list[str]:
    lines = ["## Exploratory (paired, uncorrected)", "",
             "| comparison | metric | n | mean diff [95% CI] | p | MDE |", "|---|---|---|---|---|---|"]
    for name, metrics in (report.get("exploratory") or {}).items():
        for m, r in metrics.items():
            lines.append(f"| {name} | {m} | {r['n']} | {_ci(r)} | {r['p']:.3g} | {fmt(r['mde'])} |")
    per = report.get("per_arm") or {}
    if per:
        keys = [k for k in next(iter(per.values())) if k.startswith("closeness")]
        lines += ["", "Closeness per arm (fixed protocol; mean over final seeds):", "",
                  "| arm | " + " | ".join(k.replace("closeness ", "") for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for arm, m in per.items():
            lines.append(f"| {arm} | " + " | ".join(fmt(m[k]["mean"]) for k in keys) + " |")
        lines += ["", CLOSENESS_LEGEND]
    return lines + [""]


CLOSENESS_LEGEND = (
    "cross_loss_gap: mean over sources i != j of (loss on j at i's minimum - loss on j at j's); "
    "displacement_cos: mean cosine between two sources' displacements from the checkpoint; "
    "distance_over_path: distance from the checkpoint over the fine-tune's path length; "
    "pair_barrier: the val/id barrier on the straight line between two source minima "
    "(max(0, height above the chord)), 0 when the line never rises above the chord; "
    "pair_excess: the same height at the interior points, signed (negative: the mixture of "
    "two source minima is better in-distribution than the chord between them).")


def _regression_lines(report: dict) -> list[str]:
    lines = ["## Does closeness predict OOD? (all runs, arm fixed effects)", "",
             "| closeness measure | n runs | slope [95% CI] | slope per sd | p |", "|---|---|---|---|---|"]
    for key, r in (report.get("regression") or {}).items():
        tag = " (primary)" if r.get("primary") else ""
        if "slope" in r:
            lines.append(f"| {key}{tag} | {r['n']} | {r['slope']:+.4g} [{r['ci_low']:+.4g}, {r['ci_high']:+.4g}] | "
                         f"{r['slope_per_sd']:+.4g} | {r['p']:.3g} |")
        else:
            lines.append(f"| {key}{tag} | {r['n']} | {r['note']} | | |")
    lines += ["", "Endpoint = mean val/ood at the two levels; slope in nats of OOD per unit of the measure. "
              "Only the primary measure is declared; the other rows are exploratory, p uncorrected "
              "(Holm over the fitted rows: "
              + ", ".join(f"{k} {p:.3g}" for k, p in _holm_rows(report).items()) + ")."]
    left = next((r.get("left_out") or [] for r in (report.get("regression") or {}).values() if r.get("primary")), [])
    if left:
        lines += [f"Left out (closeness but no endpoint: a level is never reached): {len(left)} runs, "
                  f"{', '.join(left)}."]
    return lines + [""]


def _holm_rows(report: dict) -> dict:
    return holm({k: r["p"] for k, r in (report.get("regression") or {}).items() if "p" in r})


def _gpu_tier_line(md_path: Path) -> str:
    """Where the GPU tier stands: its summaries beside this doc (``gpu-study/runs``) or not."""
    ran = (md_path.parent / "gpu-study" / "runs" / "design.json").exists()
    if ran:
        return ("GPU tier: the `gpu-130m` design's summaries are under `gpu-study/runs`, its report in "
                "`gpu-study.md`.")
    return ("GPU tier: the `gpu-130m` design (130m on 3.3M tokens, 0.03 tokens/parameter) could not say "
            "anything and was replaced by a rung, `bash scripts/gpu_study.sh`: AdamW vs Nexus at the micro "
            "preset on about 100M tokens at a relative gamma (the dose study's window, else r = 1 following "
            "the schedule), under 10 minutes of one GPU; it is prepared and has not run (no GPU was available).")


def render_study(report: dict, out: Path, md_path: Path) -> str:
    rel = os.path.relpath(out, md_path.parent)
    n = {a: sum(1 for r in report["runs"] if r["phase"] == "final" and r["arm"] == a) for a in report["arms"]}
    lines = ["# CPU study: does Nexus generalize better at the same loss?", "",
             f"Generated from the per-run summaries by `{REGENERATE}`; the runs by `{RUN}` "
             "(resumable: rerunning continues the design's seeds). Do not edit by hand.", "",
             _gpu_tier_line(md_path), "",
             "## Verdict", "", *verdict_lines(report), "",
             *_scope_lines(report),
             f"Final runs per arm: {', '.join(f'{a} {k}' for a, k in n.items())}; pilot runs: "
             f"{sum(1 for r in report['runs'] if r['phase'] == 'pilot')}.", "",
             *_design_lines(report), *_standing_lines(report)]
    if report.get("selection"):
        lines += [*_primary_lines(report), *_exploratory_lines(report), *_regression_lines(report)]
    lines += ["## Plots", "", *[f"![{p}]({Path(rel) / p})" for p in report.get("plots", [])], ""]
    return "\n".join(lines)
