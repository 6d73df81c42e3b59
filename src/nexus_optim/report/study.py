"""The study report, from the per-run summaries alone (``experiments/study.py`` writes them):

    endpoint     a run's val/ood where its val/id curve first crosses each of two levels
                 (linear in tokens between evaluations, ``report/tables.crossing``), averaged
                 over the two; the levels are the same seed's AdamW run's val/id at
                 ``level_fractions`` of training (pilot runs: ``selection.json`` ``levels``,
                 the pilot AdamW(lr*)'s); missing when a level is never reached (the run is
                 then left out of every test that needs it, and counted). The endpoint at
                 the pilot levels for every run (the rule before amendment 4) is reported too
    primary      the declared family (``design.json`` ``family``): paired t-test over the seeds
                 both arms have, 95% CI, Holm over the family; minimum detectable difference at
                 80% power from the observed sd of the per-seed differences, next to the paper's
                 0.012
    exploratory  every other comparison (secondary arms, each level alone, full validation
                 sets at the end, per-source OOD, closeness, gradient similarity): paired tests,
                 no correction, labelled exploratory
    regression   the referee's test: across all runs with a closeness record and an endpoint
                 (pilot + final, every arm), endpoint ~ slope * closeness + arm fixed effects
                 (OLS, one intercept per arm); slope, 95% CI, p; for each closeness measure
    standing     unigram / bigram reference lines (``eval/ngram.py``), cached in
                 ``summaries/ngram.json`` so the report regenerates without the data
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from nexus_optim.eval.lines import line_excess
from nexus_optim.report.paired import paired_family
from nexus_optim.report.runs import is_num, load_run
from nexus_optim.report.study_runs import StudyRun, by_seed, mean_over_training, paired_by_seed, with_power
from nexus_optim.report.tables import at_tokens, crossing
from nexus_optim.runtime import one_line, write_json, write_text
from nexus_optim.train.logging import read_metrics

CLOSENESS_KEYS = ("cross_loss_gap", "displacement_cos", "distance_over_path", "pair_barrier",
                  "pair_excess")
PRIMARY_CLOSENESS = "cross_loss_gap"


BPB_KEYS = ("bpb/id", "bpb/ood")  # the full-validation bits/byte kept beside every val/ loss


def final_eval_summary(path: Path) -> dict:
    """The flat summary of a run's full validation sets (``final_eval.json`` ``losses.summary``:
    ``val/<source>``, ``bpb/<source>``, ``val/id`` ...); {} when the run has none."""
    f = Path(path) / "final_eval.json"
    if not f.exists():
        return {}
    losses = json.loads(f.read_text()).get("losses") or {}
    return losses.get("summary", losses)


def _final_losses(path: Path) -> dict:
    return {k: v for k, v in final_eval_summary(path).items() if (k.startswith("val/") or k in BPB_KEYS) and is_num(v)}


def ood_bytes_per_token(prepared: dict | None) -> dict[str, float]:
    """OOD source -> UTF-8 bytes per val token (``prepared.json``: ``val_bytes / val_tokens`` of
    the whole val split, ``PreparedData.bytes_per_token``); {} without a prepared record."""
    p = prepared or {}
    vb, vt, roles = p.get("val_bytes") or {}, p.get("val_tokens") or {}, p.get("roles") or {}
    return {s: vb[s] / vt[s] for s, r in roles.items() if r == "ood" and vt.get(s) and vb.get(s)}


def to_bits_per_byte(nats_per_token: float, bytes_per_token: float) -> float:
    """nats/token -> bits/byte."""
    return nats_per_token / (math.log(2) * bytes_per_token)


def _offdiag_mean(m: list[list[float]]) -> float | None:
    vals = [x for i, row in enumerate(m) for j, x in enumerate(row) if i != j and is_num(x)]
    return float(np.mean(vals)) if vals else None


def _mean_excess(pb: dict) -> float | None:
    """Mean over pairs of the signed excess over the chord (``eval/lines.line_excess``), from
    the stored curves (records before ``excess`` was stored have them too)."""
    alphas = pb.get("alphas") or []
    vals = [line_excess(p["loss"], alphas) for p in (pb.get("pairs") or {}).values()
            if len(p.get("loss") or []) == len(alphas) and all(is_num(x) for x in p["loss"])]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def closeness_numbers(geo: dict | None) -> dict:
    """The closeness measures of a fixed-protocol closeness record (missing keys skipped)."""
    c = (geo or {}).get("closeness") or {}
    pb = c.get("pair_barrier") or {}
    out = {"cross_loss_gap": c.get("cross_loss_gap"),
           "displacement_cos": _offdiag_mean(c.get("displacement_cos") or []),
           "distance_over_path": c.get("mean_distance_over_path"),
           "pair_barrier": pb.get("mean_barrier"),
           "pair_excess": _mean_excess(pb)}
    return {k: float(v) for k, v in out.items() if is_num(v)}


def endpoint(curve: list[dict], levels: list[float] | None, steps: int,
             bytes_per_token: dict[str, float] | None = None) -> dict:
    """OOD at the crossing of each in-distribution level; ``value`` their mean (None if a
    level is never reached or there are no levels). With ``bytes_per_token`` (OOD source ->
    bytes/token, ``ood_bytes_per_token``) also ``value_bpb``: the same in bits/byte, each OOD
    source's nats/token at the crossing over ln 2 times its bytes/token, averaged over the
    sources as ``val/ood`` is (the eval reads the first ``eval_tokens`` of each source, the
    ratio is the whole split's, so this is a conversion, not a byte-exact measurement)."""
    ood, frac, bpb = [], [], []
    for level in levels or []:
        hit = crossing(curve, "val/id", level)
        ood.append(hit.get("val/ood") if hit else None)
        frac.append(hit["step"] / steps if hit and is_num(hit.get("step")) else None)
        per = [to_bits_per_byte(hit[f"val/{s}"], b) for s, b in (bytes_per_token or {}).items()
               if hit and is_num(hit.get(f"val/{s}"))]
        bpb.append(float(np.mean(per)) if per and len(per) == len(bytes_per_token) else None)
    ok = bool(ood) and all(is_num(x) for x in ood)
    ok_b = ok and all(is_num(x) for x in bpb)
    return {"levels": levels, "ood": ood, "fraction": frac, "value": float(np.mean(ood)) if ok else None,
            "value_bpb": float(np.mean(bpb)) if ok_b else None}


def levels_at(curve: list[dict], fractions: list[float]) -> list[float] | None:
    """val/id at ``fractions`` of training (linear in tokens between evals; the last eval is
    the end of training); None if the curve does not cover them."""
    if not curve:
        return None
    pts = [at_tokens(curve, f * curve[-1]["tokens"]) for f in fractions]
    return [p["val/id"] for p in pts] if all(p and is_num(p.get("val/id")) for p in pts) else None


def seed_levels(runs: list[StudyRun], fractions: list[float]) -> dict[int, list[float] | None]:
    """seed -> the levels of that seed's AdamW final run (the baseline's own curve)."""
    return {r.seed: levels_at(r.run.curve, fractions) for r in runs if r.phase == "final" and r.arm == "adamw"}


def assign_endpoints(runs: list[StudyRun], sel: dict, steps: int) -> None:
    """``endpoint``: at the levels of the same seed's AdamW run (final runs) or the pilot
    levels (pilot runs, which are the pilot AdamW(lr*)'s levels); ``declared``: at the pilot
    levels for every run (the rule declared before amendment 4)."""
    per_seed = seed_levels(runs, sel["level_fractions"])
    for r in runs:
        own = per_seed.get(r.seed) if r.phase == "final" else sel["levels"]
        bpt = ood_bytes_per_token(r.run.prepared)
        r.endpoint = endpoint(r.run.curve, own, steps, bpt)
        r.declared = endpoint(r.run.curve, sel["levels"], steps, bpt)


def load_summaries(root: str | Path) -> list[StudyRun]:
    out = []
    for info_path in sorted(Path(root).glob("*/*/run.json")):
        d = info_path.parent
        info = json.loads(info_path.read_text())
        run = load_run(d)
        out.append(StudyRun(info["name"], info["phase"], info["arm"], int(info["seed"]),
                            info.get("setting", {}), run, _final_losses(d), closeness_numbers(run.geometry)))
    return out


# ------------------------------------------------------------------------ comparisons
def primary(runs: list[StudyRun], design: dict) -> dict:
    """The declared family on the endpoint (Holm), with MDE; a comparison with < 2 paired
    seeds is reported as not testable."""
    pairs, counts = {}, {}
    for name in design["family"]:
        a, b = (s.strip() for s in name.split(" - "))
        xa, xb = (by_seed(runs, arm, lambda r: r.endpoint["value"]) for arm in (a, b))
        common = sorted(set(xa) & set(xb))
        counts[name] = {"seeds": common, "missing_endpoint": _missing(runs, (a, b))}
        if len(common) >= 2:
            pairs[name] = ({s: xa[s] for s in common}, {s: xb[s] for s in common})
    fam = paired_family(pairs, design["confidence"]) if pairs else {}
    out = {name: ({**with_power(fam[name], design), **counts[name]} if name in fam
                  else {"n": len(counts[name]["seeds"]), "note": "fewer than 2 paired seeds", **counts[name]})
           for name in design["family"]}
    for name, r in out.items():  # the same comparison in bits/byte (not a second test of the family)
        a, b = (s.strip() for s in name.split(" - "))
        if "diff" in r:
            r["bpb"] = paired_by_seed(runs, a, b, lambda x: x.endpoint.get("value_bpb"), design)
    return out


def _missing(runs: list[StudyRun], arms) -> list[str]:
    return [r.name for r in runs if r.phase == "final" and r.arm in arms and r.endpoint["value"] is None]


def exploratory(runs: list[StudyRun], design: dict, arms: list[str]) -> dict:
    """Uncorrected paired comparisons of every other arm against AdamW (and Nexus against the
    controls) on the endpoint, each level alone, the full-validation losses at the end and
    the closeness measures."""
    metrics = {"endpoint": lambda r: r.endpoint["value"],
               "endpoint at the pilot levels (as first declared)": lambda r: r.declared["value"],
               "ood at level 1": lambda r: r.endpoint["ood"][0],
               "ood at level 2": lambda r: r.endpoint["ood"][1]}
    finals = sorted({k for r in runs for k in r.final})
    metrics.update({f"end {k} (full val)": (lambda r, k=k: r.final.get(k)) for k in finals})
    metrics.update({f"closeness {k}": (lambda r, k=k: r.closeness.get(k)) for k in CLOSENESS_KEYS})
    metrics["end geom/grad_sim"] = lambda r: (r.run.curve[-1].get("geom/grad_sim") if r.run.curve else None)
    metrics["mean geom/grad_sim over training"] = lambda r: mean_over_training(r, "geom/grad_sim")
    family = set(design["family"])
    comps = [(a, "adamw") for a in arms if a != "adamw"] + [("nexus", a) for a in arms if a not in ("adamw", "nexus")]
    out = {}
    for a, b in comps:
        name = f"{a} - {b}"
        for m, fn in metrics.items():
            if m == "endpoint" and name in family:
                continue  # the primary test
            res = paired_by_seed(runs, a, b, fn, design)
            if res is not None:
                out.setdefault(name, {})[m] = res
    return out


# ------------------------------------------------------------------------ regression
def fixed_effects_slope(x: list[float], y: list[float], groups: list[str], confidence: float = 0.95) -> dict:
    """OLS of y on x with one intercept per group; the slope of x with its CI and p."""
    labels = sorted(set(groups))
    X = np.column_stack([np.asarray(x, float)] + [[1.0 if g == lab else 0.0 for g in groups] for lab in labels])
    Y = np.asarray(y, float)
    n, p = X.shape
    if n <= p or np.linalg.matrix_rank(X) < p:
        return {"n": n, "groups": labels, "note": "too few runs (or no spread in x within arms) for the fit"}
    beta, *_ = np.linalg.lstsq(X, Y, rcond=None)
    resid = Y - X @ beta
    df = n - p
    s2 = float(resid @ resid) / df
    se = math.sqrt(s2 * np.linalg.inv(X.T @ X)[0, 0])
    t = float(beta[0] / se) if se > 0 else math.inf
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    sx = float(np.std(x, ddof=1)) if n > 1 else float("nan")
    return {"slope": float(beta[0]), "se": se, "ci_low": float(beta[0] - half), "ci_high": float(beta[0] + half),
            "t": t, "p": float(2 * stats.t.sf(abs(t), df)), "n": n, "df": df, "groups": labels,
            "slope_per_sd": float(beta[0] * sx), "intercepts": dict(zip(labels, map(float, beta[1:])))}


def regression(runs: list[StudyRun], confidence: float = 0.95) -> dict:
    out = {}
    for key in CLOSENESS_KEYS:
        rows = [(r.closeness[key], r.endpoint["value"], r.arm, r.name) for r in runs
                if key in r.closeness and is_num(r.endpoint["value"])]
        if not rows:
            continue
        x, y, g, names = (list(t) for t in zip(*rows))
        out[key] = {**fixed_effects_slope(x, y, g, confidence), "primary": key == PRIMARY_CLOSENESS,
                    "points": [{"run": nm, "arm": a, "x": xv, "y": yv} for xv, yv, a, nm in rows],
                    "left_out": [r.name for r in runs if key in r.closeness and not is_num(r.endpoint["value"])]}
    return out


# ---------------------------------------------------------------------------- report
def _ngram(root: Path, runs: list[StudyRun]) -> dict:
    """Unigram / bigram lines on the full validation sets (like ``final_eval.json``), cached in
    ``summaries/ngram.json`` (computed once from the run's recorded prepared data)."""
    cache = root / "ngram.json"
    if cache.exists():
        return json.loads(cache.read_text())
    if not runs:
        return {"available": False, "lines": {}, "note": "no runs"}
    from nexus_optim.eval.ngram import ngram_reference
    from nexus_optim.train.artifacts import recorded_data

    run = runs[0].run
    try:
        ref = ngram_reference(recorded_data(run.path), int(run.cfg["model"]["seq_len"]), None)
    except (ValueError, OSError, KeyError, TypeError) as e:
        return {"available": False, "lines": {}, "note": f"n-gram lines skipped: {one_line(e)}"}
    lines = {o: {f"val/{k[len(f'ngram/{o}/val/'):]}": v for k, v in ref.items() if k.startswith(f"ngram/{o}/val/")}
             for o in ("unigram", "bigram")}
    ng = {"available": True, "lines": lines, "discount": ref.get("ngram/discount"), "max_tokens": None,
          "from": run.path.name}
    write_json(cache, ng, indent=2)
    return ng


def arm_table(runs: list[StudyRun], arms: list[str]) -> dict:
    """Per arm (final runs): mean and sd of the endpoint, end val/id, val/ood and closeness."""
    vals = {"endpoint": lambda r: r.endpoint["value"], "end val/id": lambda r: r.final.get("val/id"),
            "end val/ood": lambda r: r.final.get("val/ood"), "end bpb/id": lambda r: r.final.get("bpb/id"),
            "end bpb/ood": lambda r: r.final.get("bpb/ood"),
            **{f"closeness {k}": (lambda r, k=k: r.closeness.get(k)) for k in CLOSENESS_KEYS}}
    out = {}
    for arm in arms:
        out[arm] = {}
        for m, fn in vals.items():
            xs = [float(fn(r)) for r in runs if r.phase == "final" and r.arm == arm and is_num(fn(r))]
            out[arm][m] = {"n": len(xs), "mean": float(np.mean(xs)) if xs else None,
                           "sd": float(np.std(xs, ddof=1)) if len(xs) > 1 else None}
    return out


def _throughput(runs: list[StudyRun]) -> float | None:
    """Median over runs of each run's median logged training tokens/s."""
    per = []
    for r in runs:
        try:
            xs = [x["tokens_per_s"] for x in read_metrics(r.run.path) if is_num(x.get("tokens_per_s"))]
        except (FileNotFoundError, ValueError):
            continue
        if xs:
            per.append(float(np.median(xs)))
    return float(np.median(per)) if per else None


def _n_params(runs: list[StudyRun]) -> int | None:
    """The model's parameter count, from the first closeness record that has it."""
    for r in runs:
        n = ((r.run.geometry or {}).get("closeness") or {}).get("n_params")
        if isinstance(n, int):
            return n
    return None


def study_report(summaries: str | Path, out: str | Path, markdown: str | Path | None = None) -> dict:
    """report.json, plots and the markdown report of a study's summaries."""
    from nexus_optim.report.study_plots import study_plots
    from nexus_optim.report.study_render import render_study

    root, out = Path(summaries), Path(out)
    design = json.loads((root / "design.json").read_text())
    sel_path = root / "selection.json"
    sel = json.loads(sel_path.read_text()) if sel_path.exists() else None
    runs = load_summaries(root)
    if sel:
        assign_endpoints(runs, sel, design["steps"])
    arms = [a for a in design["primary_arms"] + design["secondary_arms"]
            if any(r.arm == a and r.phase == "final" for r in runs)]
    report = {"design": design, "selection": sel, "arms": arms,
              "runs": [{"name": r.name, "arm": r.arm, "seed": r.seed, "phase": r.phase,
                        "endpoint": r.endpoint, "endpoint_pilot_levels": r.declared, "final": r.final,
                        "closeness": r.closeness} for r in runs],
              "ngram": _ngram(root, runs), "train_tokens_per_s": _throughput(runs),
              "n_params": _n_params(runs)}
    if sel:
        report.update(primary=primary(runs, design), exploratory=exploratory(runs, design, arms),
                      regression=regression(runs, design["confidence"]), per_arm=arm_table(runs, arms))
        from nexus_optim.report.study_scope import scope

        report["scope"] = scope(runs, design, sel, report)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = study_plots(runs, report, out) if sel else []
    md = Path(markdown) if markdown else out / "report.md"
    report["paths"] = {"json": str(out / "report.json"), "markdown": str(md)}
    write_json(out / "report.json", report, indent=1, default=str)
    write_text(md, render_study(report, out, md))
    return report
