"""`nexus study`: the pre-declared CPU study of ``experiments/design.py``.

    --tier pilot   the pilot (pilot seeds): AdamW lr grid, then the Nexus gamma grid at lr*;
                   writes ``selection.json`` (lr*, gamma*, the two endpoint levels)
    --tier final   the pilot if needed, then the final seeds: primary arms seed by seed, then
                   the secondary arms; then the report
    --tier report  only the report, from the per-run summaries

Every run is a single-threaded ``nexus train`` subprocess (``workers`` at a time) under
``out/<phase>/<name>`` that resumes when interrupted; after training each run gets its full
validation sets (``final_eval.json``) and the fixed-protocol closeness (``geometry.json``),
and a small summary (config, metrics.jsonl, final_eval.json, geometry.json, run.json; no
checkpoints) is copied to ``summaries/<phase>/<name>``. Finished summaries are never redone,
so adding seeds extends the study. Summaries are written once (``Study._summarize``): a file
already there is never replaced (a summary only gains missing files, identical ones are
fine), and a summarized run whose run directory is gone is refused rather than retrained;
a rerun goes to a new ``--summaries`` directory. ``design.json`` is written before the first run and must
not change between invocations (refused otherwise), except that a design may extend its seed
lists and amendments (``design.EXTENSIBLE``: the declared values stay a prefix).
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import shutil
import subprocess
import tempfile
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nexus_optim.experiments.design import (PRIMARY_ARMS, SECONDARY_ARMS, StudyDesign, arm_overrides,
                                            design_changes, select_gamma, select_lr)
from nexus_optim.experiments.dose_design import DoseDesign
from nexus_optim.experiments.runs import eval_records, finished
from nexus_optim.report.study import levels_at, study_report
from nexus_optim.runtime import write_json

FIRST_PRIMARY, FIRST_SECONDARY = 4, 2  # final_runs: the order runs start in


class SummaryExists(RuntimeError):
    """A committed per-run summary would be overwritten (summaries are written once)."""


@contextlib.contextmanager
def tempfile_dir(dst: Path):
    """A fresh temporary directory beside ``dst`` (same filesystem, so renames are atomic),
    removed afterwards if it still exists."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dst.name}-", dir=dst.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
SUMMARY_FILES = ("config.yaml", "metrics.jsonl", "prepared.json", "final_eval.json", "geometry.json")


@dataclass(frozen=True)
class RunSpec:
    """One run of the study: ``name`` = "<phase>/<arm>[_<setting>]_s<seed>"."""

    name: str
    phase: str  # pilot | final
    arm: str
    seed: int
    setting: tuple  # (("lr", x), ("gamma", y))
    sets: tuple[str, ...]

    def info(self) -> dict:
        return {"name": self.name, "phase": self.phase, "arm": self.arm, "seed": self.seed,
                "setting": dict(self.setting)}


def _run(cmd: list[str], log: Path, env: dict) -> int:
    with open(log, "a") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


class Study:
    def __init__(self, out: str | Path = "runs/study", summaries: str | Path | None = None,
                 design: StudyDesign | None = None, workers: int = 2, max_minutes: float | None = None):
        self.out = Path(out)
        self.summaries = Path(summaries) if summaries else self.out / "summaries"
        self.design = design or StudyDesign()
        self.workers, self.deadline = workers, (time.time() + 60 * max_minutes if max_minutes else None)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.cli = [sys.executable, "-m", "nexus_optim.cli"]

    # ------------------------------------------------------------------ declaration
    def declare(self) -> None:
        """Write ``design.json`` (or check the one there is the same design)."""
        self.summaries.mkdir(parents=True, exist_ok=True)
        path, mine = self.summaries / "design.json", json.loads(json.dumps(self.design.to_dict()))
        if path.exists():
            old = json.loads(path.read_text())
            refused, extended = design_changes(old, mine)
            if refused:
                raise ValueError(f"study: {path} declares a different design (keys {', '.join(refused)}); "
                                 f"use another --summaries directory")
            if extended:
                print(f"[study] design extended ({', '.join(f'{k} {len(old[k])} -> {len(mine[k])}' for k in extended)})",
                      flush=True)
                write_json(path, mine, indent=2)
        else:
            write_json(path, mine, indent=2)

    # ---------------------------------------------------------------------- the runs
    def _spec(self, phase: str, arm: str, seed: int, setting: dict, sets: list[str], tag: str = "") -> RunSpec:
        name = f"{phase}/{arm}{tag}_s{seed}"
        return RunSpec(name, phase, arm, seed, tuple(setting.items()), (*sets, f"train.seed={seed}"))

    def pilot_lr_runs(self) -> list[RunSpec]:
        return [self._spec("pilot", "adamw", s, {"lr": lr}, arm_overrides("adamw", lr, 0.0), f"_lr{lr:g}")
                for s in self.design.pilot_seeds for lr in self.design.adamw_lrs]

    def pilot_gamma_runs(self, lr: float, gammas: tuple | None = None) -> list[RunSpec]:
        gammas = self.design.gammas if gammas is None else gammas
        return [self._spec("pilot", "nexus", s, {"lr": lr, "gamma": g}, arm_overrides("nexus", lr, g), f"_g{g:g}")
                for s in self.design.pilot_seeds for g in gammas]

    def _select_gamma(self, lr: float, adamw_final: float) -> tuple[float, dict, str, list[RunSpec]]:
        """gamma* over the declared grid, extended by ``gamma_extension`` when none of the
        grid is within tolerance (design docstring)."""
        d = self.design
        runs = self.pilot_gamma_runs(lr)
        self.execute(runs, post=False)
        gamma, means, rule = select_gamma(self._curves(runs, "gamma"), adamw_final, d.gamma_tolerance)
        if min(means.values()) > adamw_final + d.gamma_tolerance and d.gamma_extension:
            ext = self.pilot_gamma_runs(lr, d.gamma_extension)
            self.execute(ext, post=False)
            runs = runs + ext
            gamma, means, rule = select_gamma(self._curves(runs, "gamma"), adamw_final, d.gamma_tolerance)
            rule += f" (none of {list(d.gammas)} was within; grid extended by {list(d.gamma_extension)})"
        return gamma, means, rule, runs

    def final_runs(self, sel: dict, n_final: int | None = None, n_secondary: int | None = None) -> list[RunSpec]:
        """The order runs start in (results do not depend on it): primary arms on the first
        ``FIRST_PRIMARY`` seeds, the secondary arms on their first ``FIRST_SECONDARY``, then
        the remaining primary seeds, then the remaining secondary ones, each seed by seed;
        so a sitting cut short by its time budget has the family at n >= 4 and the controls
        at n >= 2 before it adds more seeds."""
        d, lr, g = self.design, sel["lr"], sel["gamma"]
        finals = d.final_seeds[:n_final] if n_final is not None else d.final_seeds
        seconds = d.secondary_seeds[:n_secondary] if n_secondary is not None else d.secondary_seeds
        p, q = FIRST_PRIMARY, FIRST_SECONDARY
        blocks = [(PRIMARY_ARMS, finals[:p]), (SECONDARY_ARMS, seconds[:q]),
                  (PRIMARY_ARMS, finals[p:]), (SECONDARY_ARMS, seconds[q:])]
        setting = {"lr": lr, "gamma": g}
        return [self._spec("final", a, s, setting, arm_overrides(a, lr, g))
                for arms, seeds in blocks for s in seeds for a in arms]

    # --------------------------------------------------------------------- executing
    summary_files = SUMMARY_FILES

    def _base(self, spec: RunSpec) -> list[str]:
        """The ``--set`` overrides every run of ``spec``'s kind shares."""
        return self.design.base_overrides()

    def _steps(self, spec: RunSpec) -> int:
        return self.design.steps

    def _train(self, spec: RunSpec) -> bool:
        run_dir = self.out / spec.name
        if finished(run_dir, self._steps(spec)):
            return True
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [*self.cli, "train"]
        for s in [*self._base(spec), *spec.sets, f"train.out_dir={run_dir}"]:
            cmd += ["--set", s]
        t = time.time()
        rc = _run([*cmd, "--resume-or-start"], run_dir / "train.log", self.env)
        print(f"[study] {spec.name}: train rc={rc} in {time.time() - t:.0f}s", flush=True)
        return rc == 0 and finished(run_dir, self._steps(spec))

    def _post(self, spec: RunSpec) -> None:
        """Full validation sets and the fixed closeness protocol, then the summary."""
        self._final_eval(spec)
        self._closeness(spec, self.out / spec.name / "geometry.json", self.design.closeness_seed)
        self._summarize(spec)

    def _final_eval(self, spec: RunSpec) -> None:
        """The full validation sets at the end (``final_eval.json``; skipped when there)."""
        run_dir = self.out / spec.name
        if not (run_dir / "final_eval.json").exists():
            _run([*self.cli, "eval", str(run_dir), "--out", str(run_dir / "final_eval.json"),
                  "--no-progress", "--device", self.design.device], run_dir / "post.log", self.env)

    def _closeness(self, spec: RunSpec, geo: Path, seed: int) -> None:
        """The fixed closeness protocol on ``spec``'s run, into ``geo`` (skipped when there)."""
        d, run_dir = self.design, self.out / spec.name
        if "closeness" not in (json.loads(geo.read_text()) if geo.exists() else {}):
            _run([*self.cli, "geometry", "closeness", str(run_dir), "--protocol", "fixed",
                  "--lr", str(d.closeness_lr), "--min-lr-ratio", str(d.closeness_min_lr_ratio),
                  "--steps", str(d.closeness_steps), "--points", str(d.closeness_points),
                  "--eval-tokens", str(d.closeness_eval_tokens), "--seed", str(seed),
                  "--device", d.device, "--out", str(geo)], run_dir / "post.log", self.env)

    def _summarize(self, spec: RunSpec) -> None:
        """Write the run's summary once: a new summary directory is written whole (a temporary
        directory renamed into place); an existing one only gains the files it lacks (the
        post-processing of a run summarized after training), each written atomically, and
        every file it already has must be byte-identical to the run's, else `SummaryExists`:
        nothing committed is ever overwritten, so every table regenerates from git."""
        src, dst = self.out / spec.name, self.summaries / spec.name
        with tempfile_dir(dst) as tmp:
            for f in self.summary_files:
                if (src / f).exists():
                    shutil.copy2(src / f, tmp / f)
            write_json(tmp / "run.json", spec.info(), indent=2)
            if not dst.exists():
                tmp.rename(dst)
                return
            new = sorted(p.name for p in tmp.iterdir())
            differ = [f for f in new if (dst / f).exists() and not filecmp.cmp(tmp / f, dst / f, shallow=False)]
            if differ:
                raise SummaryExists(f"study: {dst} already holds a summary whose {', '.join(differ)} differ(s) from "
                                    f"{src}'s (a retrain?); summaries are written once: rerun into a new "
                                    f"--summaries directory")
            for f in new:
                if not (dst / f).exists():
                    os.replace(tmp / f, dst / f)

    def _check_not_retraining(self, spec: RunSpec) -> None:
        """A run whose summary holds a training record but whose run directory is not finished
        would be trained again and its new numbers would replace the committed ones: refused."""
        dst, run_dir = self.summaries / spec.name, self.out / spec.name
        if (dst / "metrics.jsonl").exists() and not finished(run_dir, self._steps(spec)):
            raise SummaryExists(f"study: {dst} holds the summary of a finished training but {run_dir} is not "
                                f"finished (deleted or moved?); its post-processing needs that run: restore it, "
                                f"or rerun into a new --summaries directory (summaries are written once)")

    def summarized(self, spec: RunSpec, post: bool = True) -> bool:
        dst = self.summaries / spec.name
        need = ("run.json", "metrics.jsonl", *(("final_eval.json", "geometry.json") if post else ()))
        return all((dst / f).exists() for f in need)

    def _job(self, spec: RunSpec, post: bool = True) -> bool:
        if self.summarized(spec, post):
            return True
        if self.deadline and time.time() > self.deadline:
            return False
        self._check_not_retraining(spec)
        ok = self._train(spec)
        if ok and post:
            self._post(spec)
        elif ok:
            self._summarize(spec)
        return ok

    def execute(self, specs: list[RunSpec], post: bool = True) -> list[RunSpec]:
        """Run (train, then post-process) ``specs``, ``workers`` at a time, in order; the
        runs that did not finish."""
        with ThreadPoolExecutor(self.workers) as pool:
            ok = list(pool.map(lambda s: self._job(s, post), specs))
        return [s for s, k in zip(specs, ok) if not k]

    # -------------------------------------------------------------------- selection
    def _curves(self, specs: list[RunSpec], key: str) -> dict:
        out: dict = {}
        for s in specs:
            out.setdefault(dict(s.setting)[key], []).append(eval_records(self.summaries / s.name))
        return out

    def _pilot_done(self, specs: list[RunSpec]) -> None:
        """Selection waits for every pilot run; only a failed (diverged) run counts as +inf."""
        if any(not self.summarized(s, post=False) for s in specs) and self.deadline and time.time() > self.deadline:
            raise TimeoutError("study: time budget spent during the pilot; rerun to continue")

    def pilot(self) -> dict:
        """Run the pilot and write ``selection.json`` (kept once written)."""
        path = self.summaries / "selection.json"
        if path.exists():
            return json.loads(path.read_text())
        d = self.design
        lr_runs = self.pilot_lr_runs()
        self.execute(lr_runs, post=False)
        self._pilot_done(lr_runs)
        lr, lr_means = select_lr(self._curves(lr_runs, "lr"))
        best = [eval_records(self.summaries / s.name) for s in lr_runs if dict(s.setting)["lr"] == lr]
        adamw_final = sum(c[-1]["val/id"] for c in best) / len(best)
        gamma, g_means, rule, g_runs = self._select_gamma(lr, adamw_final)
        self._pilot_done(g_runs)
        per_run = [levels_at(c, list(d.level_fractions)) for c in best]
        if any(lv is None for lv in per_run):
            raise RuntimeError("study: the pilot AdamW(lr*) curve does not cover the level fractions")
        levels = [sum(lv[i] for lv in per_run) / len(per_run) for i in range(len(d.level_fractions))]
        sel = {"lr": lr, "gamma": gamma, "gamma_rule": rule, "levels": levels,
               "level_fractions": list(d.level_fractions), "adamw_final_val_id": adamw_final,
               "pilot_val_id": {"adamw_lr": {f"{k:g}": v for k, v in lr_means.items()},
                                "nexus_gamma": {f"{k:g}": v for k, v in g_means.items()}},
               "pilot_runs": [s.name for s in lr_runs + g_runs], "read": "val/id only",
               "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(path, sel, indent=2)
        print(f"[study] selected lr*={lr:g} gamma*={gamma:g} levels={levels}", flush=True)
        return sel

    # --------------------------------------------------------------------- the tiers
    def run(self, tier: str = "final", n_final: int | None = None, n_secondary: int | None = None,
            report_out: str | Path | None = None, report_md: str | Path | None = None) -> dict:
        if tier not in ("pilot", "final", "report"):
            raise ValueError(f"study --tier: {tier!r} is not one of 'pilot', 'final', 'report'")
        t0 = time.time()
        if tier != "report":
            self.declare()
            sel = self.pilot()
            if tier == "final":
                left = self.execute(self.final_runs(sel, n_final, n_secondary))
                pilot_post = [s for s in self.pilot_lr_runs() + self.pilot_gamma_runs(sel["lr"])
                              + self.pilot_gamma_runs(sel["lr"], self.design.gamma_extension)
                              if s.name in sel["pilot_runs"]]
                left += self.execute(pilot_post)  # closeness of the pilot runs: the regression
                if left:
                    print(f"[study] {len(left)} run(s) not done (time budget or failure): "
                          f"{', '.join(s.name for s in left)}; rerun the same command to continue", flush=True)
        report = study_report(self.summaries, report_out or self.summaries.parent, report_md)
        print(f"[study] {tier} in {time.time() - t0:.0f}s; report: {report['paths']['markdown']}", flush=True)
        return report


def run_study(out: str | Path = "runs/study", tier: str = "final", **kwargs) -> dict:
    run_kw = {k: kwargs.pop(k) for k in ("n_final", "n_secondary", "report_out", "report_md") if k in kwargs}
    if isinstance(kwargs.get("design"), DoseDesign):
        from nexus_optim.experiments.dose import DoseStudy

        return DoseStudy(out, **kwargs).run(tier, **run_kw)
    return Study(out, **kwargs).run(tier, **run_kw)
