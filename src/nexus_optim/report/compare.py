"""Compare training runs at matched in-distribution loss and at equal tokens.

``compare_runs(run_dirs, out_dir)`` reads each run directory

    config.yaml      the run's Config (optimizer settings, seed)
    metrics.jsonl    eval records {"step", "tokens", "val/<source>", "val/id", "val/ood",
                     ["geom/grad_sim", "geom/cos/<a>/<b>" when train.grad_sim_batches > 0]}
                     (geom/grad_sim over training per group: ``grad_sim`` in report.json)
    geometry.json    optional, from ``nexus geometry grad-sim|closeness`` (diagnostics/store.py)
    downstream.json  optional: ``nexus eval RUN --tasks ... --out RUN/downstream.json``.
                     From its ``tasks`` the scores (accuracy, acc, acc_norm, pass@1,
                     exact_match, f1) become ``downstream/<task>/<score>`` (tasks with an
                     ``error`` are skipped) and ``losses.summary``'s ``bpb/*`` become
                     ``eval/bpb/<source>``. Any other nested mapping of numbers (e.g.
                     lm-eval's ``results``) is flattened to ``downstream/<path>``, skipping
                     counts (``n``, ``n_*``, ``num_*``, ...), timings and ``*stderr*`` (of an lm-eval
                     output only its ``results``).

and writes ``report.md``, ``report.json`` and PNG plots into ``out_dir``.

Groups: runs with the same configuration except the seed (and bookkeeping keys such as
out_dir, device, logging and checkpoint intervals) form a group, labelled by the
optimizer and its distinguishing settings, e.g. ``nexus(global,trajectory,gamma=0.05)``
(gamma = optim.inner_lr); keys that differ between groups with the same label are appended.

Matched loss: the target is ``target_loss`` or, by default, the largest final ``metric``
(``val/id``) over all runs, a loss every run reached. Each run's eval curve is
interpolated linearly in tokens between the two evals around its first crossing of the
target; every other logged metric (val/ood, per-source losses, geom/*) is interpolated
at the same fraction. ``tokens`` at the crossing is the tokens-to-target.
Equal tokens: all metrics at the smallest final token count over runs (the end of
training when all runs are equally long).

Refused (a one-line ValueError): the same run directory given twice (or two directories with
the same config and identical metrics, i.e. a copy), and runs on different data: a different
tokenizer, vocabulary, sources, val split or data seed (from ``config.yaml``, and from the
tokenizer and shard checksums in ``prepared.json`` when runs have one) make losses in
nats/token incomparable; ``allow_different_data=True`` turns that into a warning. Loud
warnings (`CompareWarning`, also listed first in the notes): different models (``model.preset``,
``model.overrides`` or ``model.seq_len``: a scaling comparison may mean it, an optimizer one
does not), different mixture weights (``val/id`` is then a differently weighted mean), and runs with fewer than two evals, for
which "tokens at matched loss" means nothing: they are left out of the matched-loss table
(the equal-token comparison keeps them).

Where the pieces live: ``report/runs.py`` (reading a run), ``report/groups.py`` (labels,
groups, data checks), ``report/tables.py`` (interpolation, statistics tables),
``report/render.py`` and ``report/plots.py`` (report.md, PNGs).

Statistics: per group mean ± sample std over seeds with n; each group against the baseline
(the AdamW group unless ``baseline`` names another). Groups that share >= 2 seeds with the
baseline (each seed once per group) are compared seed by seed (report/pairing.py: paired
t-test, mean per-seed difference, 95% CI); the primary family (matched-loss val/ood of each
group vs the baseline) gets Holm-adjusted p-values and a minimum detectable difference at 80%
power (``statistics`` in report.json); every other test is exploratory. Unpaired groups fall
back to Welch (report/stats.py), with a note. n < 2: no test, said so.

Reference lines (report/reference.py): unigram and bigram losses of the runs' recorded
prepared data (``ngram`` in report.json); skipped with a note when it cannot be read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from nexus_optim.report.groups import (check_distinct, check_same_data, check_same_model, group_runs,
                                     mixture_weights)
from nexus_optim.report.pairing import apply_holm, pairing_design, power_table
from nexus_optim.report.reference import ngram_lines
from nexus_optim.report.runs import Run, is_num, load_run
from nexus_optim.report.tables import at_tokens, crossing, curve_table, metric_keys, stats_table
from nexus_optim.runtime import json_safe, write_json, write_text

REPORT_MD, REPORT_JSON = "report.md", "report.json"


class CompareWarning(UserWarning):
    """Runs that can be compared, but only with a caveat (see the module docstring)."""


def _loud(warns: list[str], msg: str) -> None:
    warnings.warn(msg, CompareWarning, stacklevel=4)
    warns.append(f"WARNING: {msg}")


def _check_runs(runs: list[Run], allow_different_data: bool, warns: list[str]) -> None:
    problems = check_same_data(runs)
    if problems and not allow_different_data:
        raise ValueError(f"compare: the runs use different data: {problems[0]}; losses are not comparable "
                         f"across tokenizers or val sets (allow_different_data=True to compare anyway)")
    for p in problems:
        _loud(warns, f"the runs use different data: {p}; losses may not be comparable")
    for p in check_same_model(runs):  # a scaling comparison may mean it; an optimizer one does not
        _loud(warns, f"the runs train different models: {p}; differences mix the model with the optimizer")
    w0 = mixture_weights(runs[0].cfg)
    for r in runs[1:]:
        if mixture_weights(r.cfg) != w0:
            _loud(warns, f"mixture weights differ ({w0} in {str(runs[0].path)!r}, {mixture_weights(r.cfg)} in "
                         f"{str(r.path)!r}): val/id is a differently weighted mean of the per-source losses; "
                         f"compare val/<source> instead")
            break


def _pick_baseline(groups: dict[str, list[Run]], baseline: str | None) -> str:
    if baseline is None:
        return next((l for l, rs in groups.items() if rs[0].optimizer == "adamw"), next(iter(groups)))
    if baseline not in groups:
        raise ValueError(f"compare --baseline: {baseline!r} is not one of: " + ", ".join(groups))
    return baseline


def _target(runs: list[Run], metric: str, target_loss: float | None) -> tuple[float, str, dict]:
    """(matched-loss target, how it was chosen, final ``metric`` of each run)."""
    finals = {}
    for r in runs:
        pts = [x for x in r.curve if is_num(x.get(metric))]
        if not pts:
            raise ValueError(f"compare --metric: {metric!r} is not logged in {str(r.path)!r}")
        finals[id(r)] = pts[-1][metric]
    if target_loss is None:
        return max(finals.values()), f"largest final {metric} over all runs (a loss every run reached)", finals
    return float(target_loss), f"given (--target-loss {target_loss:g})", finals


def _matched(runs: list[Run], metric: str, target: float, finals: dict, notes: list[str],
             warns: list[str]) -> dict:
    """Each run's metrics where ``metric`` first reaches ``target`` (None: left out)."""
    single = [r for r in runs if len([x for x in r.curve if is_num(x.get(metric))]) < 2]
    if single:
        names = ", ".join(repr(str(r.path)) for r in single)
        _loud(warns, f"{names} logged fewer than two evals of {metric} (train.eval_every = 0?): tokens at "
                     f"matched loss are meaningless for {'it' if len(single) == 1 else 'them'}, left out of "
                     f"the matched-loss comparison (the equal-token comparison keeps them)")
    single_ids = {id(r) for r in single}
    matched = {}
    for r in runs:
        m = None if id(r) in single_ids else crossing(r.curve, metric, target)
        matched[id(r)] = m
        if id(r) in single_ids:
            continue
        if m is None:
            notes.append(f"{r.path} never reached {metric} = {target:.4f} "
                         f"(final {finals[id(r)]:.4f}); left out of the matched-loss comparison")
        elif m.get("before_first_eval"):
            notes.append(f"{r.path} was already below the target at its first eval "
                         f"(tokens {m['tokens']:.0f}); its matched point is that eval")
    return matched


def _equal_tokens(runs: list[Run], groups: dict[str, list[Run]], notes: list[str]) -> tuple[float, dict]:
    end_tokens = [r.curve[-1]["tokens"] for r in runs]
    t_equal = min(end_tokens)
    if len(set(end_tokens)) > 1:
        notes.append(f"runs end at different token counts ({sorted(set(end_tokens))}); "
                     f"the equal-token comparison uses {t_equal}")
    for l, rs in groups.items():
        seeds = [r.seed for r in rs]
        if len(set(seeds)) < len(seeds):
            notes.append(f"group {l} has repeated seeds {seeds}")
        if len(rs) < 2:
            notes.append(f"group {l} has n = {len(rs)} run(s): no test is possible for it")
    return t_equal, {id(r): at_tokens(r.curve, t_equal) for r in runs}


def _report(runs, groups, metric, target, how, baseline, baseline_cmp, confidence, matched,
            t_equal, equal, notes, design=None) -> dict:
    m_metrics = ["tokens"] + [k for k in metric_keys(matched.values()) if k != metric]
    e_metrics = metric_keys(equal.values())
    x_metrics = sorted({k for r in runs for k in r.extra})
    return {
        "metric": metric,
        "target": {"value": target, "how": how},
        "baseline": baseline,
        "confidence": confidence,
        "groups": {l: {"optimizer": rs[0].optimizer, "seeds": [r.seed for r in rs],
                       "runs": [str(r.path) for r in rs], "n": len(rs),
                       "optim": rs[0].cfg.get("optim", {})} for l, rs in groups.items()},
        "runs": [{"dir": str(r.path), "group": r.label, "seed": r.seed,
                  "final": {k: v for k, v in r.curve[-1].items() if is_num(v)},
                  "matched": matched[id(r)], "equal_tokens": equal[id(r)], "extra": r.extra}
                 for l, rs in groups.items() for r in rs],
        "matched": {"target": target, **stats_table(groups, {k: v or {} for k, v in matched.items()},
                                                    m_metrics, baseline_cmp, confidence, design)},
        "equal_tokens": {"tokens": t_equal, **stats_table(groups, {k: v or {} for k, v in equal.items()},
                                                          e_metrics, baseline_cmp, confidence, design)},
        "extra": stats_table(groups, {id(r): r.extra for r in runs}, x_metrics, baseline_cmp, confidence, design),
        "grad_sim": curve_table(groups, "geom/grad_sim"),
        "notes": notes,
        "files": {"report_md": REPORT_MD, "report_json": REPORT_JSON},
    }


def _statistics(report: dict, design: dict, notes: list[str]) -> None:
    """Paired/Welch design per group, Holm over the primary family, power (``report/pairing.py``)."""
    report["statistics"] = {"design": design, "primary": apply_holm(report), "power": power_table(report)}
    for label, d in design.items():
        if not d["paired"]:
            notes.append(f"{label} vs {report['baseline']}: not paired ({d['reason']}); "
                         f"Welch's unpaired test is used instead")


def compare_runs(run_dirs, out_dir, metric: str = "val/id", target_loss: float | None = None,
                 baseline: str | None = None, confidence: float = 0.95, plots: bool = True,
                 allow_different_data: bool = False) -> dict:
    """Compare runs (see module docstring); writes report.md, report.json and PNGs into
    ``out_dir`` and returns the report.json content."""
    from nexus_optim.report.render import render_markdown

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("compare: no run directories given")
    runs = [load_run(d) for d in run_dirs]
    check_distinct(run_dirs, runs)
    warns: list[str] = []
    _check_runs(runs, allow_different_data, warns)
    groups = group_runs(runs)
    baseline = _pick_baseline(groups, baseline)
    baseline_cmp = baseline if len(groups) >= 2 else None
    notes: list[str] = []
    target, how, finals = _target(runs, metric, target_loss)
    matched = _matched(runs, metric, target, finals, notes, warns)
    t_equal, equal = _equal_tokens(runs, groups, notes)
    design = pairing_design(groups, baseline_cmp)
    report = _report(runs, groups, metric, target, how, baseline, baseline_cmp, confidence,
                     matched, t_equal, equal, notes, design)
    _statistics(report, design, notes)
    report["ngram"] = ngram_lines(runs, metric)
    notes += [report["ngram"][k] for k in ("settings_note", "note") if k in report["ngram"]]
    if baseline_cmp is None:
        notes.append("only one group: nothing to compare against")
    notes[:0] = warns
    report["warnings"] = warns
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = []
    if plots:
        from nexus_optim.report.plots import make_plots

        report["plots"] = make_plots(groups, report, out)
    write_text(out / REPORT_MD, render_markdown(report))
    write_json(out / REPORT_JSON, report)
    return json_safe(report)
