"""The dose study's confirmatory paired comparison (issue 20 item 4; go/no-go rule of
``DOSE_RULES``): declared in ``confirm-design.json`` from the small size's decision files
before any of its runs, then run by ``nexus study --design dose --tier confirm`` and read by
``report/dose_confirm.py``.

The plan is fixed by rules written here before any confirmatory run:
- the setting is the small size's best window (largest similarity gain, as ``DOSE_RULES``
  "controls" and "large" pick it), AdamW at the same size's lr*;
- fresh seeds (``CONFIRM_SEEDS``, disjoint from the selection seeds, so the window's
  selection does not bias its confirmation); both arms per seed, paired by seed;
- the endpoints, tests and family of ``report/dose_confirm.py``; near-OOD = the held-out
  sets that are a shifted form of a training source (``NEAR_OOD``), far-OOD the rest;
- the planning power from the dose study's own small-size window runs (pooled within-setting
  sd of the per-seed near-OOD difference), declared as a planning estimate.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nexus_optim.report.paired import min_detectable_difference
from nexus_optim.report.runs import is_num

CONFIRM_SEEDS = tuple(range(100, 112))
CONFIRM_ALPHA = 0.05
CROSSING_FRACTION = 0.8
# a held-out set -> the training source it shifts (the design's sources, data/sources/)
NEAR_OOD = {"ood_gsm_multilingual": "math (English GSM-style problems): the same kind of problem in other languages",
            "ood_cpp": "code (Python standard library): code in another language"}

CONFIRM_RULES = (
    ("setting", "the small size's window with the largest similarity gain (s-window.json), Nexus at it and "
                "AdamW at lr* (s-lr.json); no window: no confirmatory comparison"),
    ("seeds", "fresh seeds disjoint from the selection seeds; both arms per seed (same init, data windows and "
              "order, schedule): a paired design"),
    ("manipulation check", "read first: mean geom/grad_sim over training, Nexus - AdamW per seed, paired t-test; "
                           "passes when the mean gain is > 0 with two-sided p < alpha; if it fails the outcome "
                           "is reported as not a test of the mechanism"),
    ("primary", "near-OOD bits/byte on the full held-out sets at the end (mean over near_ood), Nexus - AdamW, "
                "two-sided paired t-test at alpha; 95% CI; minimum detectable difference at 80% power"),
    ("secondary", "a Holm family: paired ANCOVA (per-seed near-OOD difference on per-seed end ID difference, "
                  "intercept = difference at equal ID); crossing-based near-OOD (each arm where its val/id "
                  "crosses the same seed's AdamW val/id at crossing_fraction of training); far-OOD bits/byte"),
    ("ID cost", "end ID bits/byte, paired t-test (the window's cost on fresh seeds); descriptive"),
    ("closeness", "not measured on the confirmatory runs (the question is the OOD endpoint; the dose study "
                  "measured the closeness read-outs and their reliability)"),
)


def _near_diffs(runs: dict, adamw: dict, near: list[str]) -> list[float]:
    out = []
    for seed, fin in runs.items():
        a, b = ([x.get(f"bpb/{s}") for s in near] for x in (fin, adamw.get(seed, {})))
        if near and all(is_num(v) for v in a + b):
            out.append(float(np.mean(a) - np.mean(b)))
    return out


def planning_power(final_bpb: dict, win: dict, near: list[str], n: int, alpha: float) -> dict:
    """The pooled within-setting sd of the per-seed near-OOD difference (Nexus - AdamW) over the
    small size's windows, and the minimum detectable difference with ``n`` seeds at 80 % power.
    ``final_bpb``: {"adamw": {seed: {"bpb/<src>": x}}, (r, reading, schedule): {seed: {...}}}."""
    ss, df = 0.0, 0
    for x in win["windows"]:
        d = _near_diffs(final_bpb.get((x["r"], x["reading"], x["schedule"]), {}), final_bpb.get("adamw", {}), near)
        if len(d) >= 2:
            ss += float(np.sum((np.asarray(d) - np.mean(d)) ** 2))
            df += len(d) - 1
    sd = (ss / df) ** 0.5 if df else None
    mdd = min_detectable_difference(sd, n, alpha) if sd and sd > 1e-12 else None
    return {"sd_diff": sd, "df": df, "n": n, "mdd": mdd,
            "note": "planning estimate from the dose study's small-size window runs (selection seeds)"}


def confirm_plan(design, lr_dec: dict, win_dec: dict, final_bpb: dict, ood: list[str],
                 seeds: tuple = CONFIRM_SEEDS, near: dict | None = None) -> dict | None:
    """The declared confirmatory comparison, or None when the small size has no window.
    ``ood``: the design's held-out source names; ``near``: NEAR_OOD (name -> why it is near)."""
    if not win_dec["windows"]:
        return None
    near = NEAR_OOD if near is None else near
    overlap = set(seeds) & set(design.seeds)
    if overlap or len(seeds) < 12:
        raise ValueError(f"confirm: needs >= 12 seeds disjoint from the selection seeds, got {list(seeds)}")
    at = max(win_dec["windows"], key=lambda x: x["gain"])
    size = design.sizes[0].label
    near_ood = [s for s in ood if s in near]
    if not near_ood:
        raise ValueError(f"confirm: none of the held-out sources {ood} is declared near-OOD ({sorted(near)})")
    return {"phase": f"{size}-confirm", "arms": ["adamw", "nexus"], "seeds": list(seeds), "alpha": CONFIRM_ALPHA,
            "setting": {"size": size, "lr": lr_dec["lr"], "r": at["r"], "reading": at["reading"],
                        "schedule": at["schedule"]},
            "selected_from": {"gain": at["gain"], "cost": at["cost"], "n": at["n"]},
            "near_ood": near_ood, "near_why": {s: near[s] for s in near_ood},
            "far_ood": [s for s in ood if s not in near], "crossing_fraction": CROSSING_FRACTION,
            "planning": planning_power(final_bpb, win_dec, near_ood, len(seeds), CONFIRM_ALPHA),
            "rules": dict(CONFIRM_RULES)}


def confirm_specs(study, plan: dict) -> list:
    """The plan's runs (``DoseStudy.spec`` with the confirmatory phase), AdamW then Nexus per seed."""
    s = plan["setting"]
    out = []
    for seed in plan["seeds"]:
        for arm in plan["arms"]:
            spec = (study.spec(s["size"], "adamw", seed, s["lr"]) if arm == "adamw" else
                    study.spec(s["size"], "nexus", seed, s["lr"], s["r"], s["reading"], s["schedule"]))
            out.append(dataclasses.replace(spec, name=f"{plan['phase']}/{spec.name.split('/', 1)[1]}",
                                           phase=plan["phase"]))
    return out
