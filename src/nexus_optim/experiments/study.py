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
import tempfile
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nexus_optim.experiments.design import (PRIMARY_ARMS, SECONDARY_ARMS, DoseDesign, StudyDesign, arm_overrides,
                                            design_changes, dose_row, dose_select_lr, large_settings,
                                            select_gamma, select_lr, transfer)
from nexus_optim.experiments.runs import eval_records, finished
from nexus_optim.report.study import dose_report, levels_at, study_report
from nexus_optim.runtime import write_json
from nexus_optim.train.config import SAMPLINGS

PAIRED_MIXED = "mixed-paired"  # the truly paired mixed-micro-batch sampling the dose design declares

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
        d, run_dir = self.design, self.out / spec.name
        log = run_dir / "post.log"
        if not (run_dir / "final_eval.json").exists():
            _run([*self.cli, "eval", str(run_dir), "--out", str(run_dir / "final_eval.json"),
                  "--no-progress", "--device", d.device], log, self.env)
        self._closeness(spec, run_dir / "geometry.json", d.closeness_seed)
        self._summarize(spec)

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


# ====================================================================== the dose study
def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


class DoseStudy(Study):
    """`nexus study --design dose` (``design.DoseDesign``, rules ``design.DOSE_RULES``).

    Phases, each a directory of per-run summaries (written once) and a decision file written
    once when its phase is complete: ``s-adamw`` -> ``s-lr.json``; ``s-nexus`` ->
    ``s-window.json``; ``s-controls``; ``l-adamw`` -> ``l-lr.json``; ``l-nexus`` ->
    ``l-window.json`` and ``transfer.json``. Rerunning the same command resumes: finished
    summaries are skipped, an unfinished run resumes from its checkpoint, a decision once
    written is read back, never recomputed. Each run also gets the fixed closeness protocol
    with ``closeness_seeds[0]`` (``geometry.json``) and, for seed-0 runs of the small size,
    ``closeness_seeds[1]`` (``geometry_retest.json``, the test-retest reading)."""

    summary_files = (*SUMMARY_FILES, "meta.yaml", "geometry_retest.json")

    def __init__(self, out="runs/dose", summaries=None, design: DoseDesign | None = None, workers: int = 1,
                 max_minutes: float | None = None):
        super().__init__(out, summaries, design or DoseDesign(), workers, max_minutes)

    # ---------------------------------------------------------------- specs and runs
    def _base(self, spec: RunSpec) -> list[str]:
        return self.design.base_overrides(dict(spec.setting)["size"])

    def _steps(self, spec: RunSpec) -> int:
        return self.design.size(dict(spec.setting)["size"]).steps

    def spec(self, size: str, arm: str, seed: int, lr: float, r: float | None = None,
             reading: str = "trajectory", schedule: str = "fixed") -> RunSpec:
        """One run: ``arm`` in adamw | nexus | random | adamw-paired-mixed | nexus-paired-mixed."""
        setting = {"size": size, "lr": lr}
        sets = [f"optim.lr={lr}"]
        tag = f"_lr{lr:g}"
        base = arm.replace("-paired-mixed", "")
        if base == "adamw":
            sets.insert(0, "optim.name=adamw")
        else:
            setting.update(r=r, reading=reading, schedule=schedule)
            name = "nexus" if base == "nexus" else "random-control"
            sets = [f"optim.name={name}", *sets, "optim.inner_lr_scale=lr_sqrt_params", f"optim.inner_lr={r}",
                    f"optim.inner_lr_follows_lr={'true' if schedule == 'follow' else 'false'}"]
            if base == "nexus":
                sets.append(f"optim.outer_grad={reading}")
            tag += f"_r{r:g}" + (f"_{reading[:4]}" if base == "nexus" else "") + f"_{schedule}"
        if arm.endswith("-paired-mixed"):
            sets.append("train.sampling=mixed-paired")
        phase = f"{size}-{'adamw' if arm == 'adamw' else 'nexus' if arm == 'nexus' else 'controls'}"
        return RunSpec(f"{phase}/{arm}{tag}_s{seed}", phase, arm, seed, tuple(setting.items()),
                       (*sets, f"train.seed={seed}"))

    def _post(self, spec: RunSpec) -> None:
        super()._post(spec)  # full validation, closeness seed 0, the summary
        d, setting = self.design, dict(spec.setting)
        if setting["size"] == d.sizes[0].label and spec.seed == d.seeds[0] and len(d.closeness_seeds) > 1:
            self._closeness(spec, self.out / spec.name / "geometry_retest.json", d.closeness_seeds[1])
            self._summarize(spec)  # adds geometry_retest.json (write-once: nothing else changes)

    def summarized(self, spec: RunSpec, post: bool = True) -> bool:
        if not super().summarized(spec, post):
            return False
        d, setting = self.design, dict(spec.setting)
        retest = setting["size"] == d.sizes[0].label and spec.seed == d.seeds[0] and len(d.closeness_seeds) > 1
        return not (post and retest) or (self.summaries / spec.name / "geometry_retest.json").exists()

    # ---------------------------------------------------------------- read-outs
    def readout(self, spec: RunSpec) -> dict:
        """End bpb/id (full validation) and the mean between-source gradient cosine over
        training, from the summary."""
        dst = self.summaries / spec.name
        fe = dst / "final_eval.json"
        summ = (json.loads(fe.read_text()).get("losses") or {}).get("summary", {}) if fe.exists() else {}
        sims = [r["geom/grad_sim"] for r in eval_records(dst) if isinstance(r.get("geom/grad_sim"), (int, float))]
        return {"bpb_id": summ.get("bpb/id"), "grad_sim": _mean(sims)}

    def _decision(self, name: str, make) -> dict | None:
        """A decision file: read back when written, else ``make()`` written once; None (and
        nothing written) while its phase is not complete."""
        path = self.summaries / name
        if path.exists():
            return json.loads(path.read_text())
        dec = make()
        if dec is None:
            return None
        dec = {**dec, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(path, dec, indent=2)
        return dec

    def _complete(self, specs: list[RunSpec]) -> bool:
        left = self.execute(specs)
        if left:
            print(f"[study] {len(left)} run(s) not done: {', '.join(s.name for s in left)}; "
                  f"rerun the same command to continue", flush=True)
        return not left

    def _lr_phase(self, size: str, lrs: list[float], seeds: tuple, extend: bool = True) -> dict | None:
        """AdamW over ``lrs`` (extended once at an edge when ``extend``), then lr* (``dose_select_lr``)."""
        specs = [self.spec(size, "adamw", s, lr) for lr in lrs for s in seeds]
        if not self._complete(specs):
            return None
        means = {lr: _mean([self.readout(self.spec(size, "adamw", s, lr))["bpb_id"] for s in seeds]) for lr in lrs}
        lr, edge = dose_select_lr(means)
        if edge and extend:
            ext = lr * 2 if edge == "high" else lr / 2
            if not self._complete([self.spec(size, "adamw", s, ext) for s in seeds]):
                return None
            means[ext] = _mean([self.readout(self.spec(size, "adamw", s, ext))["bpb_id"] for s in seeds])
            lr, edge = dose_select_lr(means)
        return {"lr": lr, "edge": edge, "mean_end_bpb_id": {f"{k:g}": v for k, v in sorted(means.items())},
                "seeds": list(seeds), "read": "bpb/id only"}

    def _window_phase(self, size: str, lr: float, settings: list[tuple], seeds: tuple) -> dict | None:
        """Nexus at ``settings`` ((r, reading, schedule)); the cost/gain table and the windows."""
        specs = [self.spec(size, "nexus", s, lr, r, rd, sc) for r, rd, sc in settings for s in seeds]
        if not self._complete(specs):
            return None
        d = self.design
        base = {s: self.readout(self.spec(size, "adamw", s, lr)) for s in seeds}
        rows = []
        for r, rd, sc in settings:
            outs = {s: self.readout(self.spec(size, "nexus", s, lr, r, rd, sc)) for s in seeds}
            rows.append({"r": r, "reading": rd, "schedule": sc, **dose_row(outs, base, d)})
        return {"lr": lr, "rows": rows, "windows": [x for x in rows if x["window"]],
                "engaged": [x for x in rows if x["engaged"]], "seeds": list(seeds),
                "margin": d.similarity_margin, "window_id_bpb": d.window_id_bpb}

    def run(self, tier: str = "final", report_out=None, report_md=None, **_ignored) -> dict:
        if tier not in ("final", "report"):
            raise ValueError(f"study --tier: {tier!r}: the dose design has 'final' (run and resume) and 'report'")
        d = self.design
        small, large = d.sizes[0].label, d.sizes[-1].label
        if tier == "final":
            self.declare()
            lr_s = self._decision(f"{small}-lr.json", lambda: self._lr_phase(small, list(d.adamw_lrs), d.seeds))
            if lr_s is None:
                return self._stop(f"{small}-lr.json")
            grid = [(r, rd, sc) for r in d.relative_gammas for rd in d.readings for sc in d.schedules]
            win_s = self._decision(f"{small}-window.json", lambda: self._window_phase(small, lr_s["lr"], grid, d.seeds))
            if win_s is None:
                return self._stop(f"{small}-window.json")
            self._complete(self.control_runs(win_s))
            lrs_l = [lr_s["lr"] * f for f in d.large_lr_factors]
            lr_l = self._decision(f"{large}-lr.json", lambda: self._lr_phase(large, lrs_l, d.large_seeds, extend=False))
            if lr_l is None:
                return self._stop(f"{large}-lr.json")
            win_l = self._decision(f"{large}-window.json", lambda: self._window_phase(
                large, lr_l["lr"], large_settings(win_s, d), d.large_seeds))
            if win_l is None:
                return self._stop(f"{large}-window.json")
            self._decision("transfer.json", lambda: transfer(win_s, win_l))
        if report_out is not None or report_md is not None or tier == "report":
            dose_report(self.summaries, report_out or self.summaries.parent, report_md)
        return {"summaries": str(self.summaries),
                "decisions": sorted(p.name for p in self.summaries.glob("*.json"))}

    def _stop(self, name: str) -> dict:
        print(f"[study] stopped before {name}: rerun the same command to continue", flush=True)
        return {"summaries": str(self.summaries), "stopped_before": name}

    def control_runs(self, win: dict) -> list[RunSpec]:
        """The random-direction control at up to ``random_max`` smallest engaging r (at the
        schedule they engaged with), and the paired mixed-micro-batch control (Nexus and AdamW)
        at the best window, else the cheapest engaging setting (``DOSE_RULES`` "controls")."""
        d, size, lr = self.design, self.design.sizes[0].label, win["lr"]
        engaged = sorted(win["engaged"], key=lambda x: (x["r"], x["cost"]))
        picked: dict = {}
        for x in engaged:
            picked.setdefault(x["r"], x["schedule"])
        specs = [self.spec(size, "random", s, lr, r, "trajectory", sc)
                 for r, sc in list(picked.items())[:d.random_max] for s in d.seeds]
        at = (max(win["windows"], key=lambda x: x["gain"]) if win["windows"]
              else min(engaged, key=lambda x: x["cost"]) if engaged else None)
        if at is not None:
            if PAIRED_MIXED in SAMPLINGS:
                specs += [self.spec(size, "nexus-paired-mixed", s, lr, at["r"], at["reading"], at["schedule"])
                          for s in d.seeds] + [self.spec(size, "adamw-paired-mixed", s, lr) for s in d.seeds]
            else:
                print(f"[study] the paired mixed-micro-batch control is declared but not run: "
                      f"train.sampling={PAIRED_MIXED!r} is not implemented yet (data/sampler.py)", flush=True)
        return specs


def run_study(out: str | Path = "runs/study", tier: str = "final", **kwargs) -> dict:
    run_kw = {k: kwargs.pop(k) for k in ("n_final", "n_secondary", "report_out", "report_md") if k in kwargs}
    if isinstance(kwargs.get("design"), DoseDesign):
        return DoseStudy(out, **kwargs).run(tier, **run_kw)
    return Study(out, **kwargs).run(tier, **run_kw)
