"""What a study can and cannot say (``scope``): the numbers behind the study doc's section of
that name (``study_render._scope_lines``), computed from the same runs as the report."""

from __future__ import annotations

import numpy as np

from nexus_optim.report.runs import is_num
from nexus_optim.report.study_runs import StudyRun, by_seed, mean_over_training, paired_by_seed


def _corr(runs: list[StudyRun], a: str, b: str, value) -> dict | None:
    """Pearson correlation over seeds of two arms' values (how much a pairing by seed shares)."""
    xa, xb = by_seed(runs, a, value), by_seed(runs, b, value)
    common = sorted(set(xa) & set(xb))
    if len(common) < 3:
        return None
    return {"r": float(np.corrcoef([xa[s] for s in common], [xb[s] for s in common])[0, 1]), "n": len(common)}


def scope(runs: list[StudyRun], design: dict, sel: dict, report: dict) -> dict:
    """The numbers behind "what this study can and cannot say" (rendered in the doc):

    mechanism   Nexus - AdamW on the mean between-source gradient cosine over training (paired),
                the largest |Nexus - AdamW| of the per-arm closeness means, and the pilot's dose
                response (each pilot setting's similarity and end val/id against the pilot AdamW
                at lr*): was the treatment engaged at gamma*?
    units       vocabulary and bytes per token of the validation splits (nats/token here; the
                paper's 0.012 is in its own units)
    post_hoc    per family comparison, the CI's lower end against the paper's effect (the
                clause "the CI excludes the paper's effect" entered after the n = 20 result)
    pairing     endpoint correlation over seeds of each arm with AdamW (a paired arm shares the
                seed's data windows; ``train.sampling=mixed`` draws other windows)
    random      sd over seeds of random - AdamW on the endpoint (a control that moves nothing)
    selection   selection.json's pilot val/id against the committed pilot summaries' end val/id
    tokens_per_param
    """
    fam = [tuple(s.strip() for s in n.split(" - ")) for n in design["family"]]
    sim = lambda r: mean_over_training(r, "geom/grad_sim")  # noqa: E731
    out: dict = {"gamma": sel.get("gamma"), "lr": sel.get("lr")}
    res = paired_by_seed(runs, "nexus", "adamw", sim, design)
    out["grad_sim_nexus_minus_adamw"] = res
    per = report.get("per_arm") or {}
    diffs = [abs(per["nexus"][k]["mean"] - per["adamw"][k]["mean"]) for k in per.get("nexus", {})
             if k.startswith("closeness") and "adamw" in per and per["nexus"][k]["mean"] is not None
             and per["adamw"][k]["mean"] is not None]
    out["closeness_max_abs_diff"] = max(diffs) if diffs else None
    pilot = [r for r in runs if r.phase == "pilot"]
    base = [r for r in pilot if r.arm == "adamw" and r.setting.get("lr") == sel.get("lr")]
    dose = []
    if base:
        b_sim = np.mean([sim(r) for r in base if is_num(sim(r))]) if any(is_num(sim(r)) for r in base) else None
        b_id = np.mean([r.run.curve[-1]["val/id"] for r in base])
        for r in pilot:
            if r.arm != "adamw" and is_num(sim(r)) and b_sim is not None:
                dose.append({"run": r.name, "gamma": r.setting.get("gamma"), "grad_sim_gain": float(sim(r) - b_sim),
                             "val_id_cost": float(r.run.curve[-1]["val/id"] - b_id)})
    out["pilot_dose"] = sorted(dose, key=lambda x: x["gamma"] if is_num(x["gamma"]) else 0.0)
    out["post_hoc"] = {f"{a} - {b}": {"ci_low": r["ci_low"], "paper": design["paper_ood_effect"],
                                      "margin": r["ci_low"] + design["paper_ood_effect"]}
                       for (a, b), r in zip(fam, (report.get("primary") or {}).values()) if "ci_low" in r}
    out["pairing"] = {a: _corr(runs, a, "adamw", lambda r: r.endpoint["value"])
                      for a in report["arms"] if a != "adamw"}
    rnd = paired_by_seed(runs, "random", "adamw", lambda r: r.endpoint["value"], design)
    out["random_sd"] = rnd["sd"] if rnd else None
    bpt = {}
    for r in runs:
        p = r.run.prepared or {}
        for s_, role in (p.get("roles") or {}).items():
            if (p.get("val_tokens") or {}).get(s_):
                bpt.setdefault(role, {})[s_] = p["val_bytes"][s_] / p["val_tokens"][s_]
        if bpt:
            break
    out["bytes_per_token"] = bpt
    out["vocab_size"] = design.get("vocab_size")
    n_params = report.get("n_params")
    if n_params and "steps" in design:
        from nexus_optim.report.study_render import tokens_per_run
        out["tokens_per_param"] = tokens_per_run(design) / n_params
    recorded = {**{("adamw", k): v for k, v in sel.get("pilot_val_id", {}).get("adamw_lr", {}).items()},
                **{("nexus", k): v for k, v in sel.get("pilot_val_id", {}).get("nexus_gamma", {}).items()}}
    drift = []
    for r in pilot:
        key = (r.arm, f"{r.setting.get('lr' if r.arm == 'adamw' else 'gamma'):g}") if r.setting else None
        if key in recorded and r.run.curve and abs(r.run.curve[-1]["val/id"] - recorded[key]) > 1e-6:
            drift.append({"run": r.name, "selection": recorded[key], "summary": r.run.curve[-1]["val/id"]})
    out["selection_drift"] = drift
    return out
