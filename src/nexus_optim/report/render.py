"""report.md from the report.json content built by ``compare_runs``."""

from __future__ import annotations

from nexus_optim.report.stats import fmt, fmt_summary


_DIRECTION_NOTE = {"lower": " (lower is better)", "higher": " (higher is better)"}


def _summary_table(section: dict, groups: list[str], metrics: list[str]) -> list[str]:
    lines = ["| metric | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for m in metrics:
        row = [fmt_summary(section["summary"][m].get(g, {})) for g in groups]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return lines


def _comparison_lines(section: dict, baseline: str) -> list[str]:
    lines = []
    for label, comps in section["comparisons"].items():
        if not comps:
            continue
        lines += ["", f"**{label} − {baseline}** (difference of means, Welch "
                      f"{int(round(100 * next(iter(comps.values()))['confidence']))}% CI, Welch t-test):", ""]
        lines += ["| metric | difference | CI | t | p | n | verdict |", "|---|---|---|---|---|---|---|"]
        for m, r in comps.items():
            better = _DIRECTION_NOTE.get(r.get("direction"), "")
            if m.startswith(("geom/", "geometry/")):
                better = " (higher = more aligned gradients)"
            elif m.startswith("closeness/"):
                better = " (lower = closer minima)"
            if r.get("testable"):
                sig = "**significant**" if r["significant"] else "not significant"
                lines.append(f"| {m}{better} | {fmt(r['diff'])} | [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}] "
                             f"| {r['t']:.2f} | {r['p']:.3g} | {r['n_a']} vs {r['n_b']} | {sig} |")
            else:
                lines.append(f"| {m}{better} | {fmt(r['diff'])} | – | – | – | {r['n_a']} vs {r['n_b']} "
                             f"| {r['reason']} |")
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


def render_markdown(report: dict) -> str:
    groups = list(report["groups"])
    base = report["baseline"]
    t = report["target"]
    out = ["# Optimizer comparison", ""]
    out.append(f"Runs: {len(report['runs'])} in {len(groups)} group(s); baseline: **{base}**. "
               f"Matched metric: `{report['metric']}`, target {fmt(t['value'])} ({t['how']}).")
    findings = _plain_findings(report)
    if findings:
        out += ["", "## Findings (each group minus the baseline)", "", *findings]
    out += ["", "## Runs", "", "| group | seed | run | final tokens | final " + report["metric"]
            + " | tokens at matched loss |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        m = r["matched"]
        out.append(f"| {r['group']} | {r['seed']} | `{r['dir']}` | {r['final'].get('tokens', 0):.0f} | "
                   f"{fmt(r['final'].get(report['metric']))} | "
                   f"{'not reached' if m is None else format(m['tokens'], '.0f')} |")
    out += _section("At matched in-distribution loss",
                    f"Each run's eval curve is interpolated linearly in tokens to where `{report['metric']}` "
                    f"first reaches {fmt(t['value'])}; the other losses are interpolated at the same point. "
                    "`tokens` is the number of training tokens needed to get there.",
                    report["matched"], groups, base)
    out += _section("At equal tokens",
                    f"All metrics at {report['equal_tokens']['tokens']:.0f} tokens (the end of training "
                    "when all runs have the same length).", report["equal_tokens"], groups, base)
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
            "- Statistics: mean ± sample standard deviation (ddof = 1) over seeds; the difference of "
            "means with a Welch confidence interval (Welch–Satterthwaite degrees of freedom) and "
            "`scipy.stats.ttest_ind(equal_var=False)`, two-sided. A difference is called significant "
            f"when p < {1 - report['confidence']:.2g}; \"not significant\" means the data do not rule out "
            "a zero difference. No correction for multiple comparisons. A group with fewer than two "
            "runs allows no test."]
    if report.get("notes"):
        out += ["", "## Notes", "", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(out) + "\n"
