"""`nexus study --design dose`: the orchestration of the dose-response study
(``experiments/dose_design.py``), on the machinery of ``experiments/study.py`` (single-threaded
``nexus train`` / ``eval`` / ``geometry`` subprocesses, per-run summaries written once)."""

from __future__ import annotations

import json
import time

from nexus_optim.experiments.dose_confirm import confirm_plan, confirm_specs
from nexus_optim.experiments.dose_design import DoseDesign, dose_row, dose_select_lr, large_settings, transfer
from nexus_optim.experiments.runs import eval_records
from nexus_optim.experiments.study import SUMMARY_FILES, RunSpec, Study
from nexus_optim.report.dose import dose_report
from nexus_optim.report.dose_confirm import confirm_analysis
from nexus_optim.report.study import final_eval_summary
from nexus_optim.runtime import write_json

PAIRED_MIXED = "mixed-paired"  # the truly paired mixed-micro-batch sampling (data/sampler.py)


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
            sets.append(f"train.sampling={PAIRED_MIXED}")
        phase = f"{size}-{'adamw' if arm == 'adamw' else 'nexus' if arm == 'nexus' else 'controls'}"
        return RunSpec(f"{phase}/{arm}{tag}_s{seed}", phase, arm, seed, tuple(setting.items()),
                       (*sets, f"train.seed={seed}"))

    def _post(self, spec: RunSpec) -> None:
        if spec.phase.endswith("-confirm"):  # full validation and the summary (CONFIRM_RULES "closeness")
            self._final_eval(spec)
            self._summarize(spec)
            return
        super()._post(spec)  # full validation, closeness seed 0, the summary
        d, setting = self.design, dict(spec.setting)
        if setting["size"] == d.sizes[0].label and spec.seed == d.seeds[0] and len(d.closeness_seeds) > 1:
            self._closeness(spec, self.out / spec.name / "geometry_retest.json", d.closeness_seeds[1])
            self._summarize(spec)  # adds geometry_retest.json (write-once: nothing else changes)

    def summarized(self, spec: RunSpec, post: bool = True) -> bool:
        if spec.phase.endswith("-confirm"):
            return all((self.summaries / spec.name / f).exists() for f in ("run.json", "metrics.jsonl", "final_eval.json"))
        if not super().summarized(spec, post):
            return False
        d, setting = self.design, dict(spec.setting)
        retest = setting["size"] == d.sizes[0].label and spec.seed == d.seeds[0] and len(d.closeness_seeds) > 1
        return not (post and retest) or (self.summaries / spec.name / "geometry_retest.json").exists()

    # ---------------------------------------------------------------- read-outs
    def readout(self, spec: RunSpec) -> dict:
        """End bpb/id (full validation) and the mean between-source gradient cosine over
        training, from the summary."""
        sims = [r["geom/grad_sim"] for r in eval_records(self.summaries / spec.name)
                if isinstance(r.get("geom/grad_sim"), (int, float))]
        return {"bpb_id": self.final_summary(spec).get("bpb/id"), "grad_sim": _mean(sims)}

    def final_summary(self, spec: RunSpec) -> dict:
        """The summary of the run's full validation sets (``final_eval.json``; {} before it)."""
        return final_eval_summary(self.summaries / spec.name)

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
        if tier not in ("final", "confirm", "report"):
            raise ValueError(f"study --tier: {tier!r}: the dose design has 'final' (run and resume), 'confirm' "
                             f"(the confirmatory comparison, after 'final' found a window) and 'report'")
        d = self.design
        if tier == "confirm":
            self.confirm()
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

    def confirm(self) -> dict | None:
        """The confirmatory comparison (``experiments/dose_confirm.py``): the first call declares
        it in ``confirm-design.json`` (written once, from the small size's decisions) and runs
        nothing, so the plan can be committed before any of its runs; later calls run (and
        resume) its runs, then write ``confirm.json`` once all are summarized."""
        d, small = self.design, self.design.sizes[0].label
        self.declare()
        decs = {n: self.summaries / f"{small}-{n}.json" for n in ("lr", "window")}
        if not all(p.exists() for p in decs.values()):
            raise ValueError(f"study --tier confirm: needs {decs['lr'].name} and {decs['window'].name} in "
                             f"{self.summaries}: run --tier final first")
        lr, win = (json.loads(p.read_text()) for p in decs.values())
        path = self.summaries / "confirm-design.json"
        if not path.exists():
            plan = confirm_plan(d, lr, win, self._window_bpb(small, lr, win),
                                [s["name"] for s in d.sources if s.get("role") == "ood"])
            if plan is None:
                print("[study] no window at the small size: no confirmatory comparison (DOSE_RULES go/no-go)")
                return None
            write_json(path, {**plan, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2)
            print(f"[study] declared {path}: commit it, then rerun the same command to start its runs", flush=True)
            return None
        plan = json.loads(path.read_text())
        if not self._complete(confirm_specs(self, plan)):
            return None
        return self._decision("confirm.json", lambda: confirm_analysis(self.summaries, plan))

    def _window_bpb(self, size: str, lr: dict, win: dict) -> dict:
        """Full-set bits/byte per source of the AdamW(lr*) and window runs (for the planning power)."""
        bpb = self.final_summary
        out = {"adamw": {s: bpb(self.spec(size, "adamw", s, lr["lr"])) for s in self.design.seeds}}
        for x in win["windows"]:
            out[(x["r"], x["reading"], x["schedule"])] = {
                s: bpb(self.spec(size, "nexus", s, lr["lr"], x["r"], x["reading"], x["schedule"]))
                for s in self.design.seeds}
        return out

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
            specs += [self.spec(size, "nexus-paired-mixed", s, lr, at["r"], at["reading"], at["schedule"])
                      for s in d.seeds] + [self.spec(size, "adamw-paired-mixed", s, lr) for s in d.seeds]
        return specs
