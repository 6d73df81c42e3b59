"""The CPU-scale pretraining study: AdamW vs Nexus (+ controls) at equal tokens.

Phase 1 (sweep, seeds ``sweep_seeds``, disjoint from the final seeds):
    adamw   lr in SWEEP_LRS
    nexus   lr = BASE_LR, inner_lr in SWEEP_INNER_LRS x outer_grad in {trajectory, displacement}
    fish    inner_lr in SWEEP_FISH_INNER_LRS (meta step 0.5)
Selection: AdamW lr = lowest mean final val/id; Nexus setting = lowest mean final
(val/ood - val/id), the OOD gap at the run's own in-distribution loss (the claim's
quantity, not merely faster training); Fish inner_lr = lowest mean final val/id.
Phase 2 (final, seeds ``final_seeds``): adamw(best lr), nexus(best setting, same outer lr),
random-control (same inner_lr, outer lr), fish(best). Each final run then gets downstream
tasks (``downstream.json``) and geometry (grad-sim, closeness: ``geometry.json``), and
``compare_runs`` writes the matched-loss report. Runs execute as parallel single-threaded
subprocesses; finished runs are reused and interrupted ones resume from checkpoints.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nexus_optim.experiments.runs import final_eval, finished
from nexus_optim.report import compare_runs
from nexus_optim.runtime import write_json

SWEEP_LRS = (1e-3, 3e-3, 1e-2)
BASE_LR = 3e-3
SWEEP_INNER_LRS = (0.02, 0.05, 0.1)
SWEEP_FISH_INNER_LRS = (0.1, 0.3)
FISH_META_LR = 0.5


@dataclass(frozen=True)
class SweepRun:
    """One sweep run: its family ("adamw" | "nexus" | "fish"), the setting it tries (adamw:
    lr; nexus: (outer_grad, inner_lr); fish: inner_lr), its seed and its config overrides."""

    family: str
    setting: object
    seed: int
    sets: tuple[str, ...]


def _run(cmd: list[str], log: Path, env: dict) -> int:
    with open(log, "a") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


class Study:
    def __init__(self, out: str | Path, preset: str = "nano", steps: int = 100,
                 sweep_seeds=(100,), final_seeds=(0, 1, 2, 3, 4), workers: int = 2,
                 config: str | None = None, overrides: list[str] | None = None,
                 eval_limit: int = 40, closeness_steps: int = 10):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.steps, self.workers = steps, workers
        self.sweep_seeds, self.final_seeds = list(sweep_seeds), list(final_seeds)
        self.eval_limit, self.closeness_steps = eval_limit, closeness_steps
        self.base = [f"model.preset={preset}", f"train.steps={steps}", "train.eval_every=20",
                     "train.eval_tokens=8192", "train.ckpt_every=20", "train.export_hf=false",
                     "train.progress=false", "train.threads=1", "train.device=cpu",
                     *(overrides or [])]
        self.config = config
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    # ---------------------------------------------------------------------- running
    def _train_cmd(self, run_dir: Path, sets: list[str]) -> list[str]:
        cmd = [sys.executable, "-m", "nexus_optim.cli", "train"]
        if self.config:
            cmd += ["--config", self.config]
        for s in [*self.base, *sets, f"train.out_dir={run_dir}"]:
            cmd += ["--set", s]
        cmd.append("--resume-or-start")  # continue an interrupted run, else start it
        return cmd

    def _train_one(self, item: tuple[str, list[str]]) -> tuple[str, int]:
        name, sets = item
        run_dir = self.out / name
        if finished(run_dir, self.steps):
            return name, 0
        run_dir.mkdir(parents=True, exist_ok=True)
        t = time.time()
        rc = _run(self._train_cmd(run_dir, sets), run_dir / "train.log", self.env)
        print(f"[study] {name}: rc={rc} in {time.time() - t:.0f}s", flush=True)
        return name, rc

    def _parallel(self, fn, items) -> list:
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(fn, items))

    def train_all(self, runs: dict[str, list[str]]) -> None:
        failed = [n for n, rc in self._parallel(self._train_one, list(runs.items())) if rc]
        if failed:
            raise RuntimeError(f"study: runs failed (see their train.log): {', '.join(failed)}")

    def _evaluate_one(self, name: str) -> None:
        run_dir = self.out / name
        cli = [sys.executable, "-m", "nexus_optim.cli"]
        jobs = []
        if not (run_dir / "downstream.json").exists():
            jobs.append(cli + ["eval", str(run_dir), "--no-losses", "--tasks", "arith,mc,code", "--limit",
                               str(self.eval_limit), "--out", str(run_dir / "downstream.json"),
                               "--no-progress", "--device", "cpu"])
        geo = run_dir / "geometry.json"
        have = json.loads(geo.read_text()) if geo.exists() else {}
        if "grad_sim" not in have:
            jobs.append(cli + ["geometry", "grad-sim", str(run_dir), "--device", "cpu"])
        if "closeness" not in have:
            jobs.append(cli + ["geometry", "closeness", str(run_dir), "--steps",
                               str(self.closeness_steps), "--device", "cpu"])
        for cmd in jobs:
            _run(cmd, run_dir / "eval.log", self.env)

    # ------------------------------------------------------------------------ phases
    def sweep_runs(self) -> dict[str, SweepRun]:
        runs = {}
        for seed in self.sweep_seeds:
            for lr in SWEEP_LRS:
                runs[f"sweep/adamw_lr{lr:g}_s{seed}"] = SweepRun(
                    "adamw", lr, seed, ("optim.name=adamw", f"optim.lr={lr}", f"train.seed={seed}"))
            for g in SWEEP_INNER_LRS:
                for og in ("trajectory", "displacement"):
                    runs[f"sweep/nexus_{og}_g{g:g}_s{seed}"] = SweepRun("nexus", (og, g), seed, (
                        "optim.name=nexus", f"optim.lr={BASE_LR}", f"optim.inner_lr={g}",
                        f"optim.outer_grad={og}", f"train.seed={seed}"))
            for g in SWEEP_FISH_INNER_LRS:
                runs[f"sweep/fish_g{g:g}_s{seed}"] = SweepRun("fish", g, seed, (
                    "optim.name=fish", f"optim.lr={FISH_META_LR}", f"optim.inner_lr={g}",
                    f"train.seed={seed}"))
        return runs

    def select(self, sweep: dict[str, SweepRun]) -> dict:
        """The best setting of each family over the sweep seeds (module docstring)."""
        finals: dict[tuple[str, object], list[dict]] = {}
        for name, run in sweep.items():
            rec = final_eval(self.out / name)
            if rec is None:
                raise RuntimeError(f"study: sweep run {name} has no final eval")
            finals.setdefault((run.family, run.setting), []).append(rec)

        def mean_of(family: str, key: str) -> dict:
            return {setting: statistics.mean(r[key] for r in recs)
                    for (fam, setting), recs in finals.items() if fam == family}

        lrs = mean_of("adamw", "val/id")
        ood, idl = mean_of("nexus", "val/ood"), mean_of("nexus", "val/id")
        nexus = {k: ood[k] - idl[k] for k in ood}
        fish = mean_of("fish", "val/id")
        return {"adamw_lr": min(lrs, key=lrs.get), "nexus": min(nexus, key=nexus.get),
                "fish_inner_lr": min(fish, key=fish.get),
                "sweep": {"adamw_val_id": lrs,
                          "nexus_ood_minus_id": {f"{k[0]},{k[1]}": v for k, v in nexus.items()},
                          "fish_val_id": fish}}

    def final_runs(self, best: dict) -> dict[str, list[str]]:
        lr = best["adamw_lr"]
        og, g = best["nexus"]
        runs = {}
        for seed in self.final_seeds:
            runs[f"final/adamw_s{seed}"] = ["optim.name=adamw", f"optim.lr={lr}", f"train.seed={seed}"]
            runs[f"final/nexus_s{seed}"] = ["optim.name=nexus", f"optim.lr={lr}", f"optim.inner_lr={g}",
                                            f"optim.outer_grad={og}", f"train.seed={seed}"]
            runs[f"final/random_s{seed}"] = ["optim.name=random-control", f"optim.lr={lr}",
                                             f"optim.inner_lr={g}", f"train.seed={seed}"]
            runs[f"final/fish_s{seed}"] = ["optim.name=fish", f"optim.lr={FISH_META_LR}",
                                           f"optim.inner_lr={best['fish_inner_lr']}", f"train.seed={seed}"]
        return runs

    def run(self) -> dict:
        t0 = time.time()
        sweep = self.sweep_runs()
        self.train_all({n: list(r.sets) for n, r in sweep.items()})
        best = self.select(sweep)
        print(f"[study] selected: {best}", flush=True)
        final = self.final_runs(best)
        self.train_all(final)
        self._parallel(self._evaluate_one, list(final))
        # matched loss is the largest final val/id: Fish trains far slower, so it gets its
        # own report (with it, the target would sit at AdamW's first evaluation)
        compare_runs([str(self.out / n) for n in final if "/fish_" not in n], str(self.out / "report"))
        compare_runs([str(self.out / n) for n in final], str(self.out / "report_with_fish"))
        sweep_report = compare_runs([str(self.out / n) for n in sweep], str(self.out / "sweep_report"))
        summary = {"selection": {**best, "nexus": list(best["nexus"])}, "steps": self.steps,
                   "sweep_seeds": self.sweep_seeds, "final_seeds": self.final_seeds,
                   "runtime_s": time.time() - t0, "base_overrides": self.base}
        write_json(self.out / "study.json", summary, indent=2, default=str)
        print(f"[study] done in {summary['runtime_s']:.0f}s: {self.out / 'report' / 'report.md'}")
        return {"summary": summary, "sweep_report": sweep_report.get("target") if isinstance(sweep_report, dict) else None}


def run_study(out: str | Path = "runs/study", **kwargs) -> dict:
    return Study(out, **kwargs).run()
