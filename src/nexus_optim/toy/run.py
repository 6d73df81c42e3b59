"""Entry point of the theory toy: run_toy(out_dir, seed=0, quick=False) -> dict.

Part 1 (quadratic.py): Monte Carlo check that E[L_new(theta*)] is linear in the variance of the
source minima with the closed-form slope.  Part 2 (overparam.py): AdamW vs Nexus on an
over-parameterised multi-source regression, compared at identical summed training loss over seeds.
Writes toy.json, toy.md and PNG figures into out_dir.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

from nexus_optim.runtime import write_json, write_text

__all__ = ["run_toy", "toy_config"]


def toy_config(quick: bool = False):
    """Configurations of both parts; quick=True is the smoke-test size used by the tests."""
    from .overparam import METHODS, TrainConfig

    quad = dict(d=8, n_sources=6, n_draws=4000, v_grid=[0.4 * i for i in range(11)])
    cfg, n_seeds, methods = TrainConfig(), 5, dict(METHODS)
    if quick:
        quad.update(n_draws=300, v_grid=[0.0, 1.0, 2.0, 3.0])
        cfg = replace(cfg, thresholds=(0.4, 0.1), ft_steps=20, max_outer=200)
        cfg.task.n_per_source, cfg.task.n_new, cfg.task.n_test = 8, 2, 128
        n_seeds = 2
        methods = {k: METHODS[k] for k in ("adamw", "nexus g=0.1")}
    return quad, cfg, n_seeds, methods


def _headline(quad: dict, summary: dict, out: str) -> dict:
    """A few key numbers first in the result (the CLI prints the head of the JSON)."""
    h = {"out_dir": out, "quadratic_slope_pred_vs_fit": {
        k: [round(s["slope_pred"], 4), round(s["slope_fit"], 4)] for k, s in quad["settings"].items()}}
    for c in summary["thresholds"]:
        for m, t in summary["tests"][c].items():
            h[f"{m} - adamw @ loss {c}"] = {
                k: (None if t[k]["delta"] is None or not math.isfinite(t[k]["delta"])
                    else {"delta": round(t[k]["delta"], 5), "paired_p": float(f"{t[k]['paired']['p']:.2g}")
                          if math.isfinite(t[k]["paired"]["p"]) else None})
                for k in ("grad_cos", "minima_var", "heldout")}
    return h


def run_toy(out_dir, seed: int = 0, quick: bool = False) -> dict:
    """Run both parts with base seed `seed` (part 2 uses seeds seed..seed+4) and write results."""
    import torch

    from .overparam import config_dict, run_seed
    from .plots import plot_all
    from .quadratic import variance_sweep
    from .report import render_markdown
    from .summary import summarize

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quad_cfg, cfg, n_seeds, methods = toy_config(quick)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threading only adds overhead
    try:
        quad = variance_sweep(seed=seed, **quad_cfg)
        seeds = [seed + i for i in range(n_seeds)]
        runs = [run_seed(s, cfg, methods) for s in seeds]
    finally:
        torch.set_num_threads(threads)
    summary = summarize(runs, cfg.thresholds)
    result = {
        "headline": _headline(quad, summary, str(out)),
        "seed": seed, "quick": quick,
        "config": {"quadratic": quad_cfg, "overparam": config_dict(cfg),
                   "methods": {m: o for m, o in methods.items()}},
        "quadratic": quad,
        "overparam": {"seeds": seeds, "summary": summary, "runs": runs},
    }
    result["seconds"] = time.perf_counter() - t0
    result["files"] = ["toy.json", "toy.md"] + plot_all(result, out)
    result["seconds"] = time.perf_counter() - t0
    write_text(out / "toy.md", render_markdown(result))
    write_json(out / "toy.json", result)
    return result
