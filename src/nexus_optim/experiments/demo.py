"""The README's main job: AdamW vs Nexus on a small LLaMA, then a matched-loss report.

The model is the CPU study's (``experiments/design.py``: the nano preset with 2 layers, a
512-token vocabulary, seq_len 128), trained for ``DEMO_SETTINGS["train.steps"]`` outer steps:
small enough for about 5 minutes on 2 CPU cores for all four runs, big enough to end well
below the bigram line, so the comparison is between models that learnt something. Nexus
uses the study's selected gamma (0.03; the lr 3e-3 is the default). Gradient cosines between
the train sources are logged at every evaluation (``train.grad_sim_batches``): the report's
"Mechanism" section shows them over training per optimizer.

With ``--config`` the file decides the model and run length instead (only
``train.export_hf=false`` is added); ``--steps`` and ``--set`` apply in both cases.

Every run uses the same data order, initial weights and schedule for a given seed;
only the optimizer differs. Finished runs are reused; interrupted ones resume.
"""

from __future__ import annotations

from pathlib import Path

from nexus_optim.experiments.design import DESIGNS
from nexus_optim.experiments.runs import finished
from nexus_optim.report import compare_runs
from nexus_optim.train.config import apply_overrides, from_dict, load_config
from nexus_optim.train.loop import Trainer

DEMO_OPTIMIZERS = ("adamw", "nexus")
_STUDY = DESIGNS["cpu"]
DEMO_SETTINGS = {
    "model.preset": _STUDY.preset,
    "model.overrides": "{" + ", ".join(f"{k}: {v}" for k, v in _STUDY.model_overrides.items()) + "}",
    "data.vocab_size": _STUDY.vocab_size, "model.seq_len": _STUDY.seq_len,
    "optim.inner_lr": 0.03,  # the study's gamma* (docs/results/cpu-study.md, "Selection")
    "train.steps": 300, "schedule.warmup_steps": 15, "schedule.min_lr_ratio": _STUDY.min_lr_ratio,
    "train.eval_every": 20, "train.eval_tokens": 8192, "train.grad_sim_batches": 2,
    "train.ckpt_every": 100,
}


def demo_config_dict(config: str | None = None, steps: int | None = None,
                     overrides: list[str] | None = None) -> dict:
    """The demo's configuration (before the per-run optimizer, seed and out_dir) as a dict."""
    base = load_config(config, None).to_dict() if config else \
        apply_overrides({}, [f"{k}={v}" for k, v in DEMO_SETTINGS.items()])
    base = apply_overrides(base, ["train.export_hf=false"])
    if steps is not None:
        base = apply_overrides(base, [f"train.steps={steps}"])
    return apply_overrides(base, overrides or [])


def run_demo(out: str | Path = "runs/demo", steps: int | None = None, seeds=(0, 1),
             config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Train ``DEMO_OPTIMIZERS`` x ``seeds`` and write ``out/report.md``."""
    out = Path(out)
    base = demo_config_dict(config, steps, overrides)
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
