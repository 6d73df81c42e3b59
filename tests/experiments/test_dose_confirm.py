"""The dose study's confirmatory comparison: the plan (experiments/dose_confirm.py) follows its
declared rules, is written before any run and the first call runs nothing; its runs are paired
by seed; the analysis (report/dose_confirm.py) agrees with independent scipy computations on
summaries whose numbers the test sets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from nexus_optim.experiments.dose import DoseStudy
from nexus_optim.experiments.dose_confirm import CONFIRM_SEEDS, confirm_plan, confirm_specs, planning_power
from nexus_optim.experiments.dose_design import DoseDesign
from nexus_optim.report.dose_confirm import confirm_analysis, paired_ancova

OOD = ["ood_logic", "ood_cpp", "ood_gsm_multilingual"]
NEAR = ["ood_cpp", "ood_gsm_multilingual"]


def _win():
    rows = [{"r": 0.03, "reading": "trajectory", "schedule": "fixed", "n": 2, "cost": 0.006, "gain": 0.0223,
             "engaged": True, "window": True},
            {"r": 0.03, "reading": "displacement", "schedule": "fixed", "n": 2, "cost": -0.001, "gain": 0.0207,
             "engaged": True, "window": True},
            {"r": 1.0, "reading": "trajectory", "schedule": "fixed", "n": 2, "cost": 0.6, "gain": 0.1,
             "engaged": True, "window": False}]
    return {"lr": 0.004, "rows": rows, "windows": rows[:2], "engaged": rows}


def _fin(cpp, gsm, logic=6.0):
    return {"bpb/ood_cpp": cpp, "bpb/ood_gsm_multilingual": gsm, "bpb/ood_logic": logic}


def test_the_plan_takes_the_largest_gain_window_fresh_seeds_and_a_declared_power():
    d = DoseDesign()
    bpb = {"adamw": {0: _fin(3.0, 5.0), 1: _fin(3.2, 5.1)},
           (0.03, "trajectory", "fixed"): {0: _fin(3.01, 5.0), 1: _fin(3.2, 5.15)},
           (0.03, "displacement", "fixed"): {0: _fin(2.99, 5.0), 1: _fin(3.21, 5.1)}}
    plan = confirm_plan(d, {"lr": 0.004}, _win(), bpb, OOD)
    assert plan["setting"] == {"size": "s", "lr": 0.004, "r": 0.03, "reading": "trajectory", "schedule": "fixed"}
    assert plan["seeds"] == list(CONFIRM_SEEDS) and not set(plan["seeds"]) & set(d.seeds)
    assert plan["near_ood"] == NEAR and plan["far_ood"] == ["ood_logic"]
    # pooled within-setting sd of the per-seed near-OOD difference, by hand
    dt = [(0.01 + 0.0) / 2, (0.0 + 0.05) / 2]
    dd = [(-0.01 + 0.0) / 2, (0.01 + 0.0) / 2]
    ss = sum((x - np.mean(v)) ** 2 for v in (dt, dd) for x in v)
    assert plan["planning"]["df"] == 2 and plan["planning"]["sd_diff"] == pytest.approx(math.sqrt(ss / 2), rel=1e-12)
    assert plan["planning"]["mdd"] > plan["planning"]["sd_diff"] / math.sqrt(12)
    assert confirm_plan(d, {"lr": 0.004}, {**_win(), "windows": []}, bpb, OOD) is None
    with pytest.raises(ValueError, match="disjoint from the selection seeds"):
        confirm_plan(d, {"lr": 0.004}, _win(), bpb, OOD, seeds=tuple(range(12)))
    with pytest.raises(ValueError, match="declared near-OOD"):
        confirm_plan(d, {"lr": 0.004}, _win(), bpb, ["ood_logic"])
    assert planning_power({}, _win(), NEAR, 12, 0.05)["mdd"] is None  # no runs, no claim


def test_the_runs_are_paired_by_seed_under_the_confirm_phase(tmp_path):
    d = DoseDesign()
    plan = confirm_plan(d, {"lr": 0.004}, _win(), {}, OOD)
    specs = confirm_specs(DoseStudy(tmp_path / "runs", tmp_path / "summ", design=d), plan)
    assert len(specs) == 24 and {s.phase for s in specs} == {"s-confirm"}
    for a, n in zip(specs[::2], specs[1::2]):
        assert (a.arm, n.arm, a.seed) == ("adamw", "nexus", n.seed)
        assert a.name.startswith("s-confirm/adamw_lr0.004_s") and "_r0.03_traj_fixed_" in n.name
        assert f"train.seed={a.seed}" in a.sets and f"train.seed={a.seed}" in n.sets
        assert "optim.outer_grad=trajectory" in n.sets and "optim.inner_lr=0.03" in n.sets


def test_the_paired_ancova_matches_scipy_linregress():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.01, 12)
    y = -0.004 + 0.8 * x + rng.normal(0, 0.002, 12)
    res = paired_ancova(y, x)
    ref = stats.linregress(x, y)
    assert res["diff"] == pytest.approx(ref.intercept, abs=1e-14) and res["slope"] == pytest.approx(ref.slope, rel=1e-10)
    assert res["se"] == pytest.approx(ref.intercept_stderr, rel=1e-9) and res["df"] == 10
    assert res["p"] == pytest.approx(2 * stats.t.sf(abs(ref.intercept / ref.intercept_stderr), 10), rel=1e-9)
    assert res["ci_low"] < res["diff"] < res["ci_high"]
    with pytest.raises(ValueError, match="at least 3"):
        paired_ancova([0.1, 0.2], [0.0, 0.1])


def _summary(root, name, arm, seed, curve, fin, phase="s-confirm"):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("train: {seed: %d}\n" % seed)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    (d / "run.json").write_text(json.dumps({"name": name, "phase": phase, "arm": arm, "seed": seed, "setting": {}}))
    roles = {"a": "train", **{s: "ood" for s in OOD}}
    (d / "prepared.json").write_text(json.dumps({"roles": roles, "val_bytes": {s: 200 for s in OOD},
                                                 "val_tokens": {s: 100 for s in OOD}}))
    (d / "final_eval.json").write_text(json.dumps({"losses": {"summary": fin}}))


def _curve(shift, sim):
    """val/id 3.0 -> 2.0 over 10 evals (minus shift); near-OOD sources at 4 - val/id/4."""
    out = []
    for s in range(1, 11):
        vid = 3.0 - 0.1 * s - shift
        out.append({"step": s, "tokens": 10 * s, "val/id": vid, "val/ood_cpp": 4.0 - vid / 4,
                    "val/ood_gsm_multilingual": 4.5 - vid / 4, "val/ood_logic": 6.0, "geom/grad_sim": sim})
    return out


def _write_all(root, plan, names=None):
    rng = np.random.default_rng(1)
    want = {"near": {}, "id": {}, "sim": {}}
    for seed in plan["seeds"]:
        for arm in ("adamw", "nexus"):
            sim = 0.10 + (0.03 if arm == "nexus" else 0.0) + rng.normal(0, 0.005)
            cpp, gsm, vid = 3.4 + rng.normal(0, 0.01), 5.0 + rng.normal(0, 0.01), 2.4 + rng.normal(0, 0.005)
            fin = {"bpb/id": vid, **_fin(cpp, gsm, 6.9 + rng.normal(0, 0.01))}
            name = (names or {}).get((arm, seed), f"s-confirm/{arm}_s{seed}")
            _summary(root, name, arm, seed, _curve(0.02 if arm == "nexus" else 0.0, sim), fin)
            want["near"].setdefault(arm, {})[seed] = (cpp + gsm) / 2
            want["id"].setdefault(arm, {})[seed] = vid
            want["sim"].setdefault(arm, {})[seed] = sim
    return want


def test_the_analysis_agrees_with_scipy_on_known_summaries(tmp_path):
    plan = confirm_plan(DoseDesign(), {"lr": 0.004}, _win(), {}, OOD)
    root = tmp_path / "summ"
    want = _write_all(root, plan)
    # a run of another phase with the same seed is not read
    _summary(root, "s-adamw/adamw_s100", "adamw", 100, _curve(1.0, 0.9), {"bpb/id": 0.0, **_fin(0, 0)}, "s-adamw")
    res = confirm_analysis(root, plan)
    seeds = plan["seeds"]
    def arr(k, arm):
        return np.array([want[k][arm][s] for s in seeds])
    ref = stats.ttest_rel(arr("near", "nexus"), arr("near", "adamw"))
    assert res["primary"]["n"] == 12 and res["primary"]["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert res["primary"]["diff"] == pytest.approx(float(np.mean(arr("near", "nexus") - arr("near", "adamw"))), abs=1e-12)
    assert res["manipulation_passed"] and res["manipulation"]["diff"] == pytest.approx(
        float(np.mean(arr("sim", "nexus") - arr("sim", "adamw"))), abs=1e-12)
    anc = stats.linregress(arr("id", "nexus") - arr("id", "adamw"), arr("near", "nexus") - arr("near", "adamw"))
    sec = res["secondary"]
    assert sec["ancova_near_ood_at_equal_id"]["diff"] == pytest.approx(anc.intercept, abs=1e-12)
    # the crossing of AdamW's val/id at 80 % (2.2): both arms sit at the same val/id there, so the
    # near-OOD (4 - 2.2/4, 4.5 - 2.2/4 nats/token at 2 bytes/token) is equal: difference 0
    c = sec["crossing_near_ood"]
    assert c["n"] == 12 and abs(c["diff"]) < 1e-12
    ps = {k: v["p"] for k, v in sec.items()}
    m = sorted(ps.values())
    assert min(v["p_holm"] for v in sec.values()) == pytest.approx(min(1.0, 3 * m[0]), rel=1e-12)
    assert res["n_runs"] == {"adamw": 12, "nexus": 12}
    assert "near-OOD" in res["verdict"]


def test_the_first_confirm_call_declares_and_runs_nothing_then_the_runs_are_read_once(tmp_path):
    d = DoseDesign()
    summ, runs = tmp_path / "summ", tmp_path / "runs"
    with pytest.raises(ValueError, match="run --tier final first"):
        DoseStudy(runs, summ, design=d).run("confirm")
    (summ / "s-lr.json").write_text(json.dumps({"lr": 0.004}))
    (summ / "s-window.json").write_text(json.dumps(_win()))
    DoseStudy(runs, summ, design=d).run("confirm")
    plan = json.loads((summ / "confirm-design.json").read_text())
    assert plan["setting"]["r"] == 0.03 and not runs.exists()  # declared; nothing trained
    text = (summ / "confirm-design.json").read_bytes()
    # every run summarized, under the names confirm_specs gives them (as a finished study leaves them)
    specs = confirm_specs(DoseStudy(runs, summ, design=d), plan)
    _write_all(summ, plan, {(s.arm, s.seed): s.name for s in specs})
    DoseStudy(runs, summ, design=d).run("confirm")
    res = json.loads((summ / "confirm.json").read_text())
    assert res["n_runs"] == {"adamw": 12, "nexus": 12} and not runs.exists()
    assert res["primary"]["n"] == 12 and res["secondary"]["far_ood"]["n"] == 12
    assert (summ / "confirm-design.json").read_bytes() == text  # written once


def test_the_guide_recomputes_the_stored_analysis_and_refuses_a_changed_summary(tmp_path):
    from nexus_optim.report.dose_confirm import confirm_answer, render_confirm, same_analysis

    plan = confirm_plan(DoseDesign(), {"lr": 0.004}, _win(), {}, OOD)
    root = tmp_path / "summ"
    _write_all(root, plan)
    # seed 100's Nexus run never reaches AdamW's 80 % level: no crossing value for it
    slow = root / "s-confirm/nexus_s100/metrics.jsonl"
    slow.write_text("".join(json.dumps(r) + "\n" for r in _curve(-0.5, 0.13)))
    stored = json.loads(json.dumps(confirm_analysis(root, plan)))
    assert stored["crossing_missing"] == {"adamw": [], "nexus": [100]}
    assert stored["secondary"]["crossing_near_ood"]["n"] == 11
    assert same_analysis(stored, confirm_analysis(root, plan))["primary"] == stored["primary"]
    text = "\n".join(render_confirm(plan, stored, 24, 0.02))
    assert "nexus never reached it on seeds 100" in text and "**Primary**" in text and "passed." in text
    assert "(manipulation check passed)" in confirm_answer(stored, 0.02)[0] and confirm_answer(None, 0.02) == []
    fin = root / "s-confirm/nexus_s101/final_eval.json"
    f = json.loads(fin.read_text())
    f["losses"]["summary"]["bpb/ood_cpp"] += 0.5
    fin.write_text(json.dumps(f))
    with pytest.raises(ValueError, match="primary differs from the summaries'"):
        same_analysis(stored, confirm_analysis(root, plan))
    assert "Not finished: 3 of 24" in "\n".join(render_confirm(plan, None, 3, 0.02))
