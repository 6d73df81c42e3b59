"""Compare training runs at matched in-distribution loss and at equal tokens.

``compare_runs(run_dirs, out_dir)`` reads each run directory

    config.yaml      the run's Config (optimizer settings, seed)
    metrics.jsonl    eval records {"step", "tokens", "val/<source>", "val/id", "val/ood",
                     ["geom/grad_sim", "geom/cos/<a>/<b>" when train.grad_sim_batches > 0]}
    geometry.json    optional, from ``nexus geometry grad-sim|closeness`` (eval/geometry.py)
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
warnings (`CompareWarning`, also listed first in the notes): different mixture weights
(``val/id`` is then a differently weighted mean), and runs with fewer than two evals, for
which "tokens at matched loss" means nothing: they are left out of the matched-loss table
(the equal-token comparison keeps them).

Statistics (eval/stats.py): per group mean ± sample std over seeds with n; each group
against the baseline (the AdamW group unless ``baseline`` names another): difference of
means, Welch 95% CI and Welch t-test. n < 2 in a group: no test, said so.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nexus_optim.eval.geometry import GEOMETRY_FILE, write_json
from nexus_optim.eval.stats import summarize, verdict, welch

DOWNSTREAM_FILE = "downstream.json"
REPORT_MD, REPORT_JSON = "report.md", "report.json"

# config keys that do not make two runs different experiments
IGNORED_KEYS = {
    "train.seed", "train.out_dir", "train.progress", "train.device", "train.threads",
    "train.export_hf", "train.ckpt_every", "train.keep_checkpoints", "train.log_every",
    "train.eval_every", "train.eval_batch_size", "train.grad_sim_batches", "train.inner_sync",
    "model.compile", "model.init_seed", "data.data_dir",
}
_SKIP_LEAVES = {"n", "count", "seed", "step", "tokens", "seconds", "time", "elapsed", "total",
                "limit", "version", "seq_len", "fewshot", "digits", "n_choices", "chance",
                "correct", "no_answer", "passed", "timeouts", "samples", "traceback"}
SCORE_KEYS = ("accuracy", "acc", "acc_norm", "pass@1", "exact_match", "f1")
PREPARED_FILE = "prepared.json"  # the run's PreparedData (tokenizer and shard checksums)


class CompareWarning(UserWarning):
    """Runs that can be compared, but only with a caveat (see the module docstring)."""


# --------------------------------------------------------------------------- loading
@dataclass
class Run:
    path: Path
    cfg: dict
    curve: list[dict]  # eval records, one per step, sorted by tokens
    downstream: dict | None = None
    geometry: dict | None = None
    label: str = ""
    extra: dict = field(default_factory=dict)  # flat numbers from geometry/downstream
    prepared: dict | None = None  # prepared.json, when the run wrote one

    @property
    def seed(self) -> int:
        return int(self.cfg.get("train", {}).get("seed", 0))

    @property
    def optimizer(self) -> str:
        return str(self.cfg.get("optim", {}).get("name", "?"))


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def eval_curve(records: list[dict]) -> list[dict]:
    """Eval records (those with a ``val/`` key), one per step (the last one logged wins),
    sorted by step; ``tokens`` must be present."""
    by_step: dict[int, dict] = {}
    for r in records:
        if any(k.startswith("val/") for k in r):
            by_step[int(r["step"])] = {**by_step.get(int(r["step"]), {}), **r}
    curve = [by_step[s] for s in sorted(by_step)]
    for r in curve:
        if "tokens" not in r:
            raise ValueError(f"metrics.jsonl: eval record at step {r['step']} has no 'tokens'")
    return curve


def flatten_numeric(d, prefix: str) -> dict[str, float]:
    """Numeric leaves of a nested mapping as ``prefix/a/b`` (counts, timings, stderr skipped)."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            k = str(k)
            low = k.lower()
            if (low in _SKIP_LEAVES or low.startswith(("n_", "num_")) or "stderr" in low
                    or low.endswith(("_seconds", "_time", "_s"))):
                continue
            out.update(flatten_numeric(v, f"{prefix}/{k}"))
    elif _is_num(d):
        out[prefix] = float(d)
    return out


def downstream_numbers(d: dict | None) -> dict[str, float]:
    """The comparable numbers of a downstream.json (module docstring)."""
    if not d:
        return {}
    if isinstance(d.get("results"), dict) and not isinstance(d.get("tasks"), dict):  # lm-eval
        return flatten_numeric(d["results"], "downstream")
    if not isinstance(d.get("tasks"), dict):
        return flatten_numeric(d, "downstream")
    out: dict[str, float] = {}
    for task, res in d["tasks"].items():
        if isinstance(res, dict) and "error" not in res:
            for k in SCORE_KEYS:
                if _is_num(res.get(k)):
                    out[f"downstream/{task}/{k}"] = float(res[k])
    summary = (d.get("losses") or {}).get("summary") or {}
    for k, v in summary.items():
        if k.startswith("bpb/") and _is_num(v):
            out[f"eval/{k}"] = float(v)
    return out


def geometry_numbers(geo: dict | None) -> dict[str, float]:
    """The scalar summaries of a geometry.json worth comparing across runs."""
    out: dict[str, float] = {}
    if not geo:
        return out
    g = geo.get("grad_sim") or {}
    for k in ("grad_sim", "grad_sim_batch"):
        if _is_num(g.get(k)):
            out[f"geometry/{k}"] = float(g[k])
    c = geo.get("closeness") or {}
    for k in ("variance", "mean_distance_from_start", "mean_pairwise_distance", "cross_loss_gap"):
        if _is_num(c.get(k)):
            out[f"closeness/{k}"] = float(c[k])
    return out


def load_run(run_dir: str | Path) -> Run:
    """Read config.yaml, metrics.jsonl and the optional geometry/downstream files."""
    p = Path(run_dir)
    if not (p / "config.yaml").is_file() or not (p / "metrics.jsonl").is_file():
        raise ValueError(f"compare: {str(p)!r} is not a run directory (needs config.yaml and metrics.jsonl)")
    cfg = yaml.safe_load((p / "config.yaml").read_text()) or {}
    records = [json.loads(l) for l in (p / "metrics.jsonl").read_text().splitlines() if l.strip()]
    curve = eval_curve(records)
    if not curve:
        raise ValueError(f"compare: {str(p)!r} has no eval records in metrics.jsonl")
    run = Run(p, cfg, curve)
    if (p / PREPARED_FILE).is_file():
        try:
            run.prepared = json.loads((p / PREPARED_FILE).read_text())
        except ValueError:
            run.prepared = None
    if (p / DOWNSTREAM_FILE).is_file():
        run.downstream = json.loads((p / DOWNSTREAM_FILE).read_text())
    if (p / GEOMETRY_FILE).is_file():
        run.geometry = json.loads((p / GEOMETRY_FILE).read_text())
    run.extra = {**geometry_numbers(run.geometry), **downstream_numbers(run.downstream)}
    return run


# --------------------------------------------------------------------------- sanity checks
def _data_keys(cfg: dict) -> dict[str, str]:
    """The data settings that decide what a loss is measured on (weights and data_dir excluded)."""
    data = dict(cfg.get("data") or {})
    data.pop("data_dir", None)
    sources = data.pop("sources", None)
    out = {f"data.{k}": json.dumps(v, sort_keys=True, default=str) for k, v in data.items()}
    if isinstance(sources, list):
        for i, src in enumerate(sources):
            src = dict(src) if isinstance(src, dict) else {"value": src}
            src.pop("weight", None)
            out[f"data.sources[{i}]"] = json.dumps(src, sort_keys=True, default=str)
        out["data.sources"] = str(len(sources))
    return out


def _weights(cfg: dict) -> dict:
    return {s.get("name"): s.get("weight", 1.0) for s in (cfg.get("data") or {}).get("sources") or []
            if isinstance(s, dict)}


def check_same_data(runs: list[Run]) -> list[str]:
    """Problems that make the runs' losses incomparable (empty list: same data). Checks the
    config's data section and, when both runs wrote a prepared.json, the tokenizer's and the
    val shards' checksums."""
    problems = []
    ref = runs[0]
    ref_keys = _data_keys(ref.cfg)
    for r in runs[1:]:
        keys = _data_keys(r.cfg)
        for k in sorted(set(ref_keys) | set(keys)):
            if ref_keys.get(k) != keys.get(k):
                problems.append(f"{k} is {ref_keys.get(k, 'absent')} in {str(ref.path)!r} but "
                                f"{keys.get(k, 'absent')} in {str(r.path)!r}")
                break
        a, b = ref.prepared or {}, r.prepared or {}
        if a.get("tokenizer_sha256") and b.get("tokenizer_sha256"):
            if a["tokenizer_sha256"] != b["tokenizer_sha256"]:
                problems.append(f"the tokenizers differ (sha256 of tokenizer.json) between {str(ref.path)!r} "
                                f"and {str(r.path)!r}")
            else:
                va = {s: c.get("val") for s, c in (a.get("checksums") or {}).items()}
                vb = {s: c.get("val") for s, c in (b.get("checksums") or {}).items()}
                if va and vb and va != vb:
                    bad = sorted(s for s in set(va) | set(vb) if va.get(s) != vb.get(s))
                    problems.append(f"the val data of {', '.join(bad)} differs (shard sha256) between "
                                    f"{str(ref.path)!r} and {str(r.path)!r}")
    return problems


def _check_distinct(run_dirs: list[Path], runs: list[Run]) -> None:
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        key = d.resolve()
        if key in seen:
            raise ValueError(f"compare: run {str(d)!r} is given twice (as {str(seen[key])!r} and {str(d)!r}); "
                             f"each run may appear once")
        seen[key] = d
    sigs: dict[str, Run] = {}
    for r in runs:
        flat = {k: v for k, v in _flat_cfg(r.cfg).items() if k not in IGNORED_KEYS or k == "train.seed"}
        sig = json.dumps([flat, r.curve], sort_keys=True, default=str)
        if sig in sigs:
            raise ValueError(f"compare: {str(sigs[sig].path)!r} and {str(r.path)!r} have the same config and "
                             f"identical metrics (the same run copied?); each run may appear once")
        sigs[sig] = r


def _loud(warns: list[str], msg: str) -> None:
    warnings.warn(msg, CompareWarning, stacklevel=3)
    warns.append(f"WARNING: {msg}")


# --------------------------------------------------------------------------- grouping
def _flat_cfg(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "model.overrides":
            out.update(_flat_cfg(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True, default=str)
    return out


def base_label(cfg: dict) -> str:
    """Optimizer name plus its defining settings, e.g. ``nexus(global,trajectory,gamma=0.05)``."""
    o = cfg.get("optim", {})
    name = o.get("name", "?")
    g = f"gamma={o.get('inner_lr'):g}" if _is_num(o.get("inner_lr")) else "gamma=?"
    follows = ",gamma~lr" if o.get("inner_lr_follows_lr") else ""
    if name == "nexus":
        return f"nexus({o.get('inner_norm')},{o.get('outer_grad')},{g}{follows})"
    if name in ("fish", "random-control"):
        return f"{name}({g}{follows})"
    return str(name)


def assign_labels(runs: list[Run]) -> None:
    """Set ``run.label``: base label + the settings that distinguish same-label groups."""
    sigs = {}
    for r in runs:
        flat = {k: v for k, v in _flat_cfg(r.cfg).items() if k not in IGNORED_KEYS}
        sigs[id(r)] = flat
    by_base: dict[str, list[Run]] = {}
    for r in runs:
        by_base.setdefault(base_label(r.cfg), []).append(r)
    for base, members in by_base.items():
        distinct = {json.dumps(sigs[id(r)], sort_keys=True) for r in members}
        if len(distinct) == 1:
            for r in members:
                r.label = base
            continue
        keys = sorted({k for r in members for k in sigs[id(r)]})
        differing = [k for k in keys if len({sigs[id(r)].get(k) for r in members}) > 1]
        for r in members:
            parts = []
            for k in differing:
                short = k.split(".")[-1]
                if sum(1 for kk in differing if kk.split(".")[-1] == short) > 1:
                    short = k
                v = sigs[id(r)].get(k, "null")
                parts.append(f"{short}={json.loads(v) if v != 'null' else None}")
            r.label = f"{base}[{','.join(parts)}]"


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """label -> runs (sorted by seed); labels in order: AdamW first, then alphabetical."""
    assign_labels(runs)
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    order = sorted(groups, key=lambda l: (groups[l][0].optimizer != "adamw", l))
    return {l: sorted(groups[l], key=lambda r: (r.seed, str(r.path))) for l in order}


# --------------------------------------------------------------------------- interpolation
def _lerp_records(a: dict, b: dict, f: float) -> dict:
    out = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if _is_num(va) and _is_num(vb):
            out[k] = va + f * (vb - va)
        elif f == 0.0 and _is_num(va):
            out[k] = va
        elif f == 1.0 and _is_num(vb):
            out[k] = vb
    return out


def crossing(curve: list[dict], metric: str, target: float) -> dict | None:
    """All metrics where ``metric`` first falls to ``target``, interpolated linearly in
    tokens between the eval before and the eval at the crossing; None if never reached.
    ``before_first_eval`` is True when the first eval is already below the target (the
    crossing happened earlier and is reported at that eval)."""
    pts = [r for r in curve if _is_num(r.get(metric))]
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


def _table(groups: dict[str, list[Run]], values: dict[int, dict], metrics: list[str],
           baseline: str | None, confidence: float) -> dict:
    """{"summary": {metric: {label: summarize}}, "comparisons": {label: {metric: welch}}}."""
    summary = {m: {l: summarize([values[id(r)].get(m) for r in rs if values.get(id(r))])
                   for l, rs in groups.items()} for m in metrics}
    comps: dict[str, dict] = {}
    if baseline is not None:
        for l, rs in groups.items():
            if l == baseline:
                continue
            comps[l] = {}
            for m in metrics:
                a = summary[m][l]["values"]
                b = summary[m][baseline]["values"]
                if not a and not b:
                    continue
                res = welch(a, b, confidence)
                res["direction"] = _direction(m)
                res["verdict"] = verdict(res, l, baseline)
                comps[l][m] = res
    return {"summary": summary, "comparisons": comps}


def _metric_keys(dicts, prefixes=("val/", "geom/")) -> list[str]:
    keys = {k for d in dicts if d for k, v in d.items() if k.startswith(prefixes) and _is_num(v)}

    def order(k):
        return (0 if k == "val/id" else 1 if k == "val/ood" else 2 if k.startswith("val/") else
                3 if k == "geom/grad_sim" else 4, k)
    return sorted(keys, key=order)


# --------------------------------------------------------------------------- main entry
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
    _check_distinct(run_dirs, runs)
    warns: list[str] = []
    problems = check_same_data(runs)
    if problems and not allow_different_data:
        raise ValueError(f"compare: the runs use different data: {problems[0]}; losses are not comparable "
                         f"across tokenizers or val sets (allow_different_data=True to compare anyway)")
    for p in problems:
        _loud(warns, f"the runs use different data: {p}; losses may not be comparable")
    w0 = _weights(runs[0].cfg)
    for r in runs[1:]:
        if _weights(r.cfg) != w0:
            _loud(warns, f"mixture weights differ ({w0} in {str(runs[0].path)!r}, {_weights(r.cfg)} in "
                         f"{str(r.path)!r}): val/id is a differently weighted mean of the per-source losses; "
                         f"compare val/<source> instead")
            break
    groups = group_runs(runs)
    if baseline is None:
        baseline = next((l for l, rs in groups.items() if rs[0].optimizer == "adamw"), next(iter(groups)))
    elif baseline not in groups:
        raise ValueError(f"compare --baseline: {baseline!r} is not one of: " + ", ".join(groups))
    if len(groups) < 2:
        baseline_cmp = None
    else:
        baseline_cmp = baseline
    notes: list[str] = []

    finals = {}
    for r in runs:
        pts = [x for x in r.curve if _is_num(x.get(metric))]
        if not pts:
            raise ValueError(f"compare --metric: {metric!r} is not logged in {str(r.path)!r}")
        finals[id(r)] = pts[-1][metric]
    if target_loss is None:
        target = max(finals.values())
        how = f"largest final {metric} over all runs (a loss every run reached)"
    else:
        target = float(target_loss)
        how = f"given (--target-loss {target_loss:g})"

    matched = {}
    single = [r for r in runs if len([x for x in r.curve if _is_num(x.get(metric))]) < 2]
    if single:
        names = ", ".join(repr(str(r.path)) for r in single)
        _loud(warns, f"{names} logged fewer than two evals of {metric} (train.eval_every = 0?): tokens at "
                     f"matched loss are meaningless for {'it' if len(single) == 1 else 'them'}, left out of "
                     f"the matched-loss comparison (the equal-token comparison keeps them)")
    single_ids = {id(r) for r in single}
    for r in runs:
        if id(r) in single_ids:
            matched[id(r)] = None
            continue
        m = crossing(r.curve, metric, target)
        matched[id(r)] = m
        if m is None:
            notes.append(f"{r.path} never reached {metric} = {target:.4f} "
                         f"(final {finals[id(r)]:.4f}); left out of the matched-loss comparison")
        elif m.get("before_first_eval"):
            notes.append(f"{r.path} was already below the target at its first eval "
                         f"(tokens {m['tokens']:.0f}); its matched point is that eval")
    end_tokens = [r.curve[-1]["tokens"] for r in runs]
    t_equal = min(end_tokens)
    if len(set(end_tokens)) > 1:
        notes.append(f"runs end at different token counts ({sorted(set(end_tokens))}); "
                     f"the equal-token comparison uses {t_equal}")
    equal = {id(r): at_tokens(r.curve, t_equal) for r in runs}
    for l, rs in groups.items():
        seeds = [r.seed for r in rs]
        if len(set(seeds)) < len(seeds):
            notes.append(f"group {l} has repeated seeds {seeds}")
        if len(rs) < 2:
            notes.append(f"group {l} has n = {len(rs)} run(s): no test is possible for it")

    m_metrics = ["tokens"] + [k for k in _metric_keys(matched.values()) if k != metric]
    e_metrics = _metric_keys(equal.values())
    x_metrics = sorted({k for r in runs for k in r.extra})
    report = {
        "metric": metric,
        "target": {"value": target, "how": how},
        "baseline": baseline,
        "confidence": confidence,
        "groups": {l: {"optimizer": rs[0].optimizer, "seeds": [r.seed for r in rs],
                       "runs": [str(r.path) for r in rs], "n": len(rs),
                       "optim": rs[0].cfg.get("optim", {})} for l, rs in groups.items()},
        "runs": [{"dir": str(r.path), "group": r.label, "seed": r.seed,
                  "final": {k: v for k, v in r.curve[-1].items() if _is_num(v)},
                  "matched": matched[id(r)], "equal_tokens": equal[id(r)], "extra": r.extra}
                 for l, rs in groups.items() for r in rs],
        "matched": {"target": target, **_table(groups, {k: v or {} for k, v in matched.items()},
                                               m_metrics, baseline_cmp, confidence)},
        "equal_tokens": {"tokens": t_equal, **_table(groups, {k: v or {} for k, v in equal.items()},
                                                     e_metrics, baseline_cmp, confidence)},
        "extra": _table(groups, {id(r): r.extra for r in runs}, x_metrics, baseline_cmp, confidence),
        "notes": notes,
        "files": {"report_md": REPORT_MD, "report_json": REPORT_JSON},
    }
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
    (out / REPORT_MD).write_text(render_markdown(report))
    write_json(out / REPORT_JSON, report)
    return json.loads((out / REPORT_JSON).read_text())
