"""A study's runs as the report reads them (``StudyRun``) and the per-seed pairing every
table of ``report/study.py`` and ``report/study_scope.py`` uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nexus_optim.report.paired import min_detectable_difference, paired_test, seeds_needed
from nexus_optim.report.runs import Run, is_num


@dataclass
class StudyRun:
    name: str
    phase: str
    arm: str
    seed: int
    setting: dict
    run: Run
    final: dict  # full validation sets at the end ({"val/<source>", "val/id", "val/ood"})
    closeness: dict  # CLOSENESS_KEYS -> number (those available)
    endpoint: dict | None = None  # {"levels", "ood": [per level], "fraction", "value": mean | None}
    declared: dict | None = None  # the same at the pilot levels for every run


def by_seed(runs: list[StudyRun], arm: str, value) -> dict[int, float]:
    """seed -> value(run) for the final runs of ``arm`` (runs without a value left out)."""
    out = {}
    for r in runs:
        if r.phase == "final" and r.arm == arm:
            v = value(r)
            if is_num(v):
                out[r.seed] = float(v)
    return out


def with_power(res: dict, design: dict) -> dict:
    """Adds the minimum detectable difference at the design's power (observed sd of the
    per-seed differences, n seeds) and the seeds that power would need for the paper's effect."""
    n, sd, alpha, power = res["n"], res["sd"], 1 - design["confidence"], design["power"]
    ok = n >= 2 and sd > 1e-12  # rounding-level spread (identical values): no power statement
    mde = min_detectable_difference(sd, n, alpha, power) if ok else None
    try:
        need = seeds_needed(sd, design["paper_ood_effect"], alpha, power) if ok else None
    except ValueError:  # more than seeds_needed's cap
        need = None
    return {**res, "mde": mde, "paper_effect": design["paper_ood_effect"], "seeds_for_paper_effect": need}


def paired_by_seed(runs, a, b, value, design) -> dict | None:
    xa, xb = by_seed(runs, a, value), by_seed(runs, b, value)
    common = sorted(set(xa) & set(xb))
    if len(common) < 2:
        return None
    res = paired_test({s: xa[s] for s in common}, {s: xb[s] for s in common}, design["confidence"])
    return with_power({**res.to_dict(), "seeds": common}, design)


def mean_over_training(r: StudyRun, key: str) -> float | None:
    """The mean of ``key`` over a run's evaluations (None when it has none)."""
    xs = [float(p[key]) for p in r.run.curve if is_num(p.get(key))]
    return float(np.mean(xs)) if xs else None
