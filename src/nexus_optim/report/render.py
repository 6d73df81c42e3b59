"""report.md from the report.json content built by ``compare_runs``."""

from __future__ import annotations

from nexus_optim.report.format import (decimals, fmt_column, fmt_count, fmt_number, fmt_p, fmt_pm,
                                       fmt_value, formatter)


_DIRECTION_NOTE = {"lower": " (lower is better)", "higher": " (higher is better)"}


def _summary_table(section: dict, groups: list[str], metrics: list[str]) -> list[str]:
    lines = ["| metric | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for m in metrics:
        cells = [section["summary"][m].get(g, {}) for g in groups]
        f = formatter([c.get(k) for c in cells for k in ("mean", "std")], m)
        row = [fmt_pm(c, f) for c in cells]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return lines


def _better(m: str, r: dict) -> str:
    if m.startswith(("geom/", "geometry/")):
        return " (higher = more aligned gradients)"
    if m.startswith("closeness/"):
        return " (lower = closer minima)"
    return _DIRECTION_NOTE.get(r.get("direction"), "")


def _test_header(label: str, baseline: str, comps: dict) -> str:
    first = next(iter(comps.values()))
    ci = int(round(100 * first["confidence"]))
    if first.get("test") == "paired":
        return (f"**{label} − {baseline}**, paired by seed (seeds {first.get('seeds')}): mean of the "
                f"per-seed differences, {ci}% t-interval, paired t-test; p (Holm) only for the primary "
                f"endpoint, every other row is exploratory (unadjusted):")
    return (f"**{label} − {baseline}**, unpaired (the groups share no seeds): difference of means, Welch "
            f"{ci}% CI, Welch t-test:")


def _row(m: str, r: dict) -> str:
    n = f"{r['n']} pairs" if r.get("test") == "paired" else f"{r['n_a']} vs {r['n_b']}"
    fam = r.get("family", "exploratory")
    f = formatter([r.get(k) for k in ("diff", "ci_low", "ci_high")], m, signed=True)
    if not r.get("testable"):
        return f"| {m}{_better(m, r)} | {f(r['diff'])} | – | – | – | – | {n} | {fam} | {r['reason']} |"
    sig = "**significant**" if r["significant"] else "not significant"
    holm = fmt_p(r["p_holm"]) if r.get("p_holm") is not None else "–"
    return (f"| {m}{_better(m, r)} | {f(r['diff'])} | [{f(r['ci_low'])}, {f(r['ci_high'])}] "
            f"| {r['t']:.2f} | {fmt_p(r['p'])} | {holm} | {n} | {fam} | {sig} |")


def _comparison_lines(section: dict, baseline: str) -> list[str]:
    lines = []
    for label, comps in section["comparisons"].items():
        if not comps:
            continue
        lines += ["", _test_header(label, baseline, comps), ""]
        lines += ["| metric | difference | CI | t | p | p (Holm) | n | family | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [_row(m, r) for m, r in comps.items()]
    return lines


def _section(title: str, intro: str, section: dict, groups: list[str], baseline: str) -> list[str]:
    metrics = list(section["summary"])
    if not metrics:
        return []
    out = ["", f"## {title}", "", intro, "", "Mean ± sample std over seeds (n = number of runs):", ""]
    out += _summary_table(section, groups, metrics)
    out += _comparison_lines(section, baseline)
    return out


def _plain_findings(report: dict) -> list[str]:
    """One line per tested comparison of the headline metrics."""
    lines = []
    heads = [("matched", "val/ood", "OOD loss at matched in-distribution loss"),
             ("matched", "tokens", "tokens to reach the matched loss"),
             ("equal_tokens", report["metric"], f"{report['metric']} at equal tokens"),
             ("equal_tokens", "val/ood", "OOD loss at equal tokens")]
    for sec, m, what in heads:
        for label, comps in report[sec]["comparisons"].items():
            if m in comps:
                lines.append(f"- {what}: {comps[m]['verdict']}.")
    return lines


def _primary_lines(report: dict) -> list[str]:
    """The declared primary endpoint: test used, Holm family and the power statement."""
    st = report.get("statistics") or {}
    prim = st.get("primary") or {}
    comps = report["matched"]["comparisons"]
    rows = [(l, c[prim["metric"]]) for l, c in comps.items() if prim and prim["metric"] in c]
    if not rows:
        return []
    out = ["", "## Primary endpoint: OOD loss at matched in-distribution loss", "",
           f"Each group minus **{report['baseline']}** in `val/ood` where `{report['metric']}` first reaches "
           f"{fmt_number(report['target']['value'])}. Paired by seed when the groups share seeds (same init, data "
           "order and schedule per seed: a paired t-test on the per-seed differences), else Welch; p-values "
           "Holm-adjusted over this family of "
           f"{len(prim.get('members') or [])} comparison(s). MDE: the smallest true difference the paired "
           "test detects with 80% power at the 0.05 level, from the observed sd of the per-seed differences.",
           "", "| group | test | difference | 95% CI | p | p (Holm) | n | sd of differences | MDE (80%) "
           "| paper's effect |", "|---|---|---|---|---|---|---|---|---|---|"]
    power = {label: (st.get("power") or {}).get(label, {}) for label, _ in rows}
    d = decimals([r.get(k) for _, r in rows for k in ("diff", "ci_low", "ci_high")]
                 + [pw.get(k) for pw in power.values() for k in ("sd_diff", "mde", "paper_effect")])
    for label, r in rows:
        pw = power[label]
        ci = (f"[{fmt_value(r['ci_low'], d, True)}, {fmt_value(r['ci_high'], d, True)}]"
              if r.get("testable") else "–")
        p = fmt_p(r["p"]) if r.get("testable") else "–"
        holm = fmt_p(r["p_holm"]) if r.get("p_holm") is not None else "–"
        n = r["n"] if r.get("test") == "paired" else f"{r['n_a']} vs {r['n_b']}"
        out.append(f"| {label} | {r.get('test')} | {fmt_value(r.get('diff'), d, True)} | {ci} | {p} | {holm} | "
                   f"{n} | {fmt_value(pw.get('sd_diff'), d)} | {fmt_value(pw.get('mde'), d)} | "
                   f"{fmt_value(pw.get('paper_effect'), d)} |")
    return out


def _ngram_lines(report: dict) -> list[str]:
    """"Where the models stand": the n-gram lines and each group's mean relative to the bigram."""
    from nexus_optim.report.reference import standing

    ng = report.get("ngram") or {}
    if not ng.get("available"):
        return ["", "## Where the models stand", "", f"- {ng.get('note', 'n-gram reference lines not computed')}"]
    keys = [k for k in dict.fromkeys(("val/id", report["metric"], "val/ood")) if k in ng["lines"]["bigram"]]
    out = ["", "## Where the models stand", "",
           "Count n-gram losses (nats/token) of the same data: fitted on the training splits, evaluated on "
           f"the val splits with the runs' eval windows (seq_len {ng['seq_len']}, first {ng['max_tokens']} "
           "tokens per source). A model above the bigram line has not yet learnt more than adjacent-token "
           "statistics.", "", "| reference | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    cols = {k: fmt_column([line.get(k) for line in ng["lines"].values()]) for k in keys}
    for i, order in enumerate(ng["lines"]):
        out.append(f"| {order} | " + " | ".join(cols[k][i] for k in keys) + " |")
    rel = standing(report)
    if rel:
        cols = sorted({c for v in rel.values() for c in v})
        out += ["", "Group mean minus the bigram line (negative: better than the bigram):", "",
                "| group | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        cells = {c: fmt_column([v.get(c) for v in rel.values()], signed=True) for c in cols}
        out += [f"| {l} | " + " | ".join(cells[c][i] for c in cols) + " |" for i, l in enumerate(rel)]
    return out


def _mechanism_lines(report: dict) -> list[str]:
    """The mechanism Nexus relies on: the cosine between train sources' gradients over training."""
    gs = report.get("grad_sim")
    out = ["", "## Mechanism: gradient cosine between the train sources", ""]
    if not gs:
        return out + ["Not logged (`train.grad_sim_batches` = 0): rerun with "
                      "`--set train.grad_sim_batches=2` to see it."]
    groups = [g for g in report["groups"] if any(g in r["groups"] for r in gs["rows"])]
    d = decimals([v for r in gs["rows"] for v in r["groups"].values()] + list(gs["over_training"].values()))
    out += ["Nexus is meant to move the weights where the gradients of the different train sources "
            "point the same way. `geom/grad_sim` is the mean, over pairs of train sources, of the cosine "
            "between their mean gradients at the current weights (logged at evaluations; "
            "`train.grad_sim_batches` batches per source); higher means more aligned. Group mean over "
            "seeds:", "", "| step | tokens | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
    for r in gs["rows"]:
        out.append(f"| {r['step']} | {fmt_count(r['tokens'])} | "
                   + " | ".join(fmt_value(r["groups"].get(g), d) for g in groups) + " |")
    out.append("| mean over training | | " + " | ".join(fmt_value(gs["over_training"].get(g), d) for g in groups)
               + " |")
    return out


def render_markdown(report: dict) -> str:
    groups = list(report["groups"])
    base = report["baseline"]
    t = report["target"]
    out = ["# Optimizer comparison", ""]
    out.append(f"Runs: {len(report['runs'])} in {len(groups)} group(s); baseline: **{base}**. "
               f"Matched metric: `{report['metric']}`, target {fmt_number(t['value'])} ({t['how']}).")
    findings = _plain_findings(report)
    if findings:
        out += ["", "## Findings (each group minus the baseline)", "", *findings]
    out += _primary_lines(report)
    out += _ngram_lines(report)
    out += ["", "## Runs", "", "| group | seed | run | final tokens | final " + report["metric"]
            + " | tokens at matched loss |", "|---|---|---|---|---|---|"]
    finals = fmt_column([r["final"].get(report["metric"]) for r in report["runs"]])
    for r, final in zip(report["runs"], finals):
        m = r["matched"]
        out.append(f"| {r['group']} | {r['seed']} | `{r['dir']}` | {fmt_count(r['final'].get('tokens', 0))} | "
                   f"{final} | {'not reached' if m is None else fmt_count(m['tokens'])} |")
    out += _section("At matched in-distribution loss",
                    f"Each run's eval curve is interpolated linearly in tokens to where `{report['metric']}` "
                    f"first reaches {fmt_number(t['value'])}; the other losses are interpolated at the same point. "
                    "`tokens` is the number of training tokens needed to get there.",
                    report["matched"], groups, base)
    out += _section("At equal tokens",
                    f"All metrics at {fmt_count(report['equal_tokens']['tokens'])} tokens (the end of training "
                    "when all runs have the same length).", report["equal_tokens"], groups, base)
    out += _mechanism_lines(report)
    out += _section("Geometry and downstream (final checkpoints)",
                    "From `geometry.json` (`nexus geometry grad-sim|closeness`) and `downstream.json` "
                    "(`nexus eval`) in each run directory, where present.",
                    report["extra"], groups, base)
    if report.get("plots"):
        out += ["", "## Plots", ""]
        out += [f"![{p}]({p})" for p in report["plots"]]
    out += ["", "## Method", "",
            "- Groups: same configuration except the seed; labels name the optimizer and its settings "
            "(gamma = optim.inner_lr).",
            "- Statistics: mean ± sample standard deviation (ddof = 1) over seeds. Groups that share "
            ">= 2 seeds with the baseline are compared seed by seed (paired t-test on the per-seed "
            "differences, t-interval); otherwise the difference of means with a Welch interval and "
            "`scipy.stats.ttest_ind(equal_var=False)` (the notes say which groups). Two-sided; a difference "
            f"is called significant when p < {1 - report['confidence']:.2g} (the Holm-adjusted p for the "
            "primary endpoint); \"not significant\" means the data do not rule out a zero difference. "
            "Holm's correction covers the primary family only; every other row is exploratory and "
            "unadjusted. A group with fewer than two runs allows no test.",
            "- Numbers: losses, differences and cosines with 4 significant digits at the scale of the "
            "cells they share a row or column with (the same decimals for all of them), token counts as "
            "integers, p-values with 2 significant digits."]
    if report.get("notes"):
        out += ["", "## Notes", "", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(out) + "\n"
