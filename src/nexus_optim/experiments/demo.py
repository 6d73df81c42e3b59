"""The README's main job: AdamW vs Nexus on the nano preset, then a matched-loss report.

Every run uses the same data order, initial weights and schedule for a given seed;
only the optimizer differs. Finished runs are reused; interrupted ones resume.
"""

from __future__ import annotations

from pathlib import Path

from nexus_optim.experiments.runs import finished
from nexus_optim.report import compare_runs
from nexus_optim.train.config import apply_overrides, from_dict, load_config
from nexus_optim.train.loop import Trainer

DEMO_OPTIMIZERS = ("adamw", "nexus")
DEMO_DEFAULTS = {"train.steps": 120, "train.eval_every": 20, "train.eval_tokens": 8192,
                 "train.ckpt_every": 40, "train.export_hf": False}


def run_demo(out: str | Path = "runs/demo", steps: int | None = None, seeds=(0, 1),
             config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Train ``DEMO_OPTIMIZERS`` x ``seeds`` and write ``out/report.md``."""
    out = Path(out)
    base = load_config(config, None).to_dict() if config else {}
    base = apply_overrides(base, [f"{k}={v}" for k, v in DEMO_DEFAULTS.items()])
    if steps is not None:
        base = apply_overrides(base, [f"train.steps={steps}"])
    base = apply_overrides(base, overrides or [])
    run_dirs = []
    for seed in seeds:
        for name in DEMO_OPTIMIZERS:
            run_dir = out / f"{name}_seed{seed}"
            cfg = from_dict(apply_overrides(base, [f"optim.name={name}", f"train.seed={seed}",
                                                   f"train.out_dir={run_dir}"]))
            run_dirs.append(run_dir)
            if finished(run_dir, cfg.train.steps):
                print(f"[demo] {run_dir} is complete; reusing it")
                continue
            Trainer(cfg, resume="or-start").run()
    result = compare_runs([str(d) for d in run_dirs], str(out))
    print(f"[demo] report: {out / 'report.md'}")
    return result
