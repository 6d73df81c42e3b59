"""The study report (report/study.py) on summaries written by the test: the endpoint is read at
the declared levels, the family is a paired t-test with Holm, the regression slope with arm
fixed effects matches the within-arm (Frisch-Waugh) formula, and the report regenerates."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from nexus_optim.experiments.design import StudyDesign
from nexus_optim.report.paired import holm, min_detectable_difference
from nexus_optim.report.study import endpoint, fixed_effects_slope, levels_at, study_report
from nexus_optim.report.study_render import grid_edge
from nexus_optim.report.study import to_bits_per_byte

STEPS = 10
LEVELS = [3.5, 3.2]


def _curve(shift_ood: float, speed: float = 1.0):
    """val/id from 4.0 down by 0.1*speed per step; val/ood = val/id + 1 + shift_ood."""
    return [{"step": s, "tokens": 10 * s, "val/id": 4.0 - 0.1 * speed * s,
             "val/ood": 5.0 - 0.1 * speed * s + shift_ood, "geom/grad_sim": 0.01 * s} for s in range(1, STEPS + 1)]


def test_levels_at_reads_val_id_at_fractions_of_training():
    assert levels_at(_curve(0.0), [0.75, 0.9]) == pytest.approx([3.25, 3.1])
    assert levels_at([], [0.5]) is None


def test_endpoint_reads_ood_where_val_id_crosses_each_level():
    e = endpoint(_curve(0.25), LEVELS, STEPS)
    assert e["ood"] == pytest.approx([4.75, 4.45]) and e["value"] == pytest.approx(4.6)
    assert e["fraction"] == pytest.approx([0.5, 0.8])
    slow = endpoint(_curve(0.0, speed=0.5), LEVELS, STEPS)  # reaches 3.5 only, never 3.2
    assert slow["ood"][1] is None and slow["value"] is None


def _write(root, name, arm, seed, phase, shift, gap=None, speed=1.0, setting=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": seed}, "model": {"seq_len": 8}}))
    train = [{"step": 5, "train/loss": 4.0, "tokens": 50, "tokens_per_s": 100.0}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _curve(shift, speed) + train))
    (d / "run.json").write_text(json.dumps({"name": name, "phase": phase, "arm": arm, "seed": seed, "setting": setting or {}}))
    (d / "final_eval.json").write_text(json.dumps({"losses": {"summary": {"val/id": 3.0 + shift, "val/ood": 4.0 + shift}}}))
    if gap is not None:
        (d / "geometry.json").write_text(json.dumps({"closeness": {"n_params": 1234,
            "cross_loss_gap": gap, "displacement_cos": [[1.0, 0.2 + gap], [0.2 + gap, 1.0]],
            "mean_distance_over_path": 0.5, "pair_barrier": {
                "mean_barrier": 0.0, "alphas": [0.0, 0.5, 1.0],  # records before "excess" was stored
                "pairs": {"a|b": {"loss": [3.0, 3.0 - gap, 3.2], "barrier": 0.0}}}}}))


def _study(tmp_path, n_seeds=5):
    root = tmp_path / "summ"
    d = {**StudyDesign().to_dict(), "steps": STEPS}
    root.mkdir()
    (root / "design.json").write_text(json.dumps(d))
    (root / "selection.json").write_text(json.dumps({
        "lr": 1e-3, "gamma": 0.3, "gamma_rule": "test", "levels": LEVELS, "level_fractions": [0.75, 0.9],
        "pilot_val_id": {"adamw_lr": {"0.001": 3.0, "0.002": 3.1}, "nexus_gamma": {"0.3": 3.0}}}))
    (root / "ngram.json").write_text(json.dumps({"available": True, "lines": {
        "unigram": {"val/id": 5.0, "val/ood": 5.5}, "bigram": {"val/id": 3.5, "val/ood": 4.6}}}))
    rng = np.random.default_rng(0)
    shifts = {}
    for s in range(n_seeds):
        base = rng.normal(0, 0.05)  # the seed effect every arm shares: the reason to pair
        for arm, eff in (("adamw", 0.0), ("nexus", -0.02), ("nexus-mixed", 0.0)):
            shifts[(arm, s)] = base + eff + rng.normal(0, 0.005)
            _write(root, f"final/{arm}_s{s}", arm, s, "final", shifts[(arm, s)], gap=0.1 + s * 0.01 + eff)
    for s in range(2):
        _write(root, f"final/random_s{s}", "random", s, "final", rng.normal(0, 0.05))
    _write(root, "pilot/adamw_lr0.001_s1000", "adamw", 1000, "pilot", 0.03, gap=0.2, setting={"lr": 1e-3})
    _write(root, "pilot/nexus_g3_s1000", "nexus", 1000, "pilot", 0.0, gap=0.3, speed=0.5,  # never reaches 3.2
           setting={"lr": 1e-3, "gamma": 3.0})
    return root, shifts


def test_primary_family_is_paired_with_holm_and_power(tmp_path):
    root, shifts = _study(tmp_path)
    rep = study_report(root, tmp_path / "out")
    fam = rep["primary"]
    # the endpoint is val/ood at each crossing (= level + 1 + shift), averaged over the levels
    # final runs: the levels of the same seed's AdamW run at 75% / 90% of its training
    own = [4.0 - 0.1 * STEPS * f for f in (0.75, 0.9)]
    assert rep["runs"][0]["endpoint"]["levels"] == pytest.approx(own)
    for name, (a, b) in {"nexus - adamw": ("nexus", "adamw"), "nexus - nexus-mixed": ("nexus", "nexus-mixed")}.items():
        xa = [np.mean([lv + 1 + shifts[(a, s)] for lv in own]) for s in range(5)]
        xb = [np.mean([lv + 1 + shifts[(b, s)] for lv in own]) for s in range(5)]
        ref = stats.ttest_rel(xa, xb)
        assert fam[name]["diff"] == pytest.approx(np.mean(np.subtract(xa, xb)), abs=1e-12)
        assert fam[name]["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        sd = np.std(np.subtract(xa, xb), ddof=1)
        assert fam[name]["mde"] == pytest.approx(min_detectable_difference(sd, 5), rel=1e-9)
    adj = holm({k: v["p"] for k, v in fam.items()})
    assert all(fam[k]["p_holm"] == pytest.approx(adj[k]) for k in fam)
    assert fam["nexus - adamw"]["p_holm"] < 0.05 and fam["nexus - adamw"]["diff"] < 0
    # secondary arms are exploratory, never in the family; the pilot-level endpoint is reported
    assert "random - adamw" in rep["exploratory"] and "random - adamw" not in fam
    pilot_levels = rep["exploratory"]["nexus - nexus-mixed"]["endpoint at the pilot levels (as first declared)"]
    assert pilot_levels["n"] == 5
    assert [r for r in rep["runs"] if r["phase"] == "pilot"][0]["endpoint"]["levels"] == LEVELS


def test_report_regenerates_identically_and_says_the_verdict(tmp_path):
    root, _ = _study(tmp_path)
    a = study_report(root, tmp_path / "o1", tmp_path / "o1.md")
    b = study_report(root, tmp_path / "o2", tmp_path / "o2.md")
    strip = lambda r: json.dumps({k: v for k, v in r.items() if k not in ("paths",)}, sort_keys=True, default=str)  # noqa: E731
    assert strip(a) == strip(b)
    md = (tmp_path / "o1.md").read_text()
    assert "**nexus - adamw**: OOD at matched ID is lower (better)" in md
    assert "| bigram (counts, train data) | 3.5000 | 4.6000 |" in md
    assert {"ood_vs_id.png", "paired_diffs.png", "closeness_vs_ood.png", "grad_sim.png"} <= set(a["plots"])
    assert (tmp_path / "o1" / "paired_diffs.png").stat().st_size > 0
    # the regression uses every run with closeness and an endpoint: 15 final + 1 pilot
    assert a["regression"]["cross_loss_gap"]["n"] == 16
    assert a["regression"]["cross_loss_gap"]["left_out"] == ["pilot/nexus_g3_s1000"]
    assert "Left out (closeness but no endpoint: a level is never reached): 1 runs, pilot/nexus_g3_s1000." in md
    # the signed excess is read from the stored curve: (3 - gap) - (3 + 3.2) / 2 = -0.1 - gap
    pilot = [r for r in a["runs"] if r["phase"] == "pilot"][0]
    assert pilot["closeness"]["pair_excess"] == pytest.approx(-0.1 - 0.2)
    assert pilot["closeness"]["pair_barrier"] == 0.0
    assert "pair_excess: the same height at the interior points, signed" in md
    assert "Caveat: lr* is the smallest learning rate of the grid" in md
    assert "it is prepared and has not run (no GPU was available)." in md
    assert "Only the primary measure is declared; the other rows are exploratory, p uncorrected (Holm" in md
    # cost: tokens per run (design) / 100 tokens/s; 2 pilot + 17 final runs on 2 cores
    tokens = STEPS * 4 * 8 * 128
    assert (f"Size and cost: 1,234 parameters, vocabulary 512, {tokens:,} tokens per run, so one run "
            f"trains in about {tokens / 100 / 60:.1f} min") in md
    assert f"the 2 pilot and 17 final runs here are about {tokens / 100 / 60 * 19 / 2:.0f} min" in md


BPT = {"ood_a": 1.25, "ood_b": 1.5}  # bytes per token of the two OOD sources in _with_bytes


def _with_bytes(root):
    """Give every final summary a prepared.json and per-source OOD losses (ood_a = val/ood - 0.1,
    ood_b = val/ood + 0.1), as real summaries have."""
    prep = {"roles": {"id_x": "train", "ood_a": "ood", "ood_b": "ood"},
            "val_tokens": {"id_x": 100, "ood_a": 400, "ood_b": 200},
            "val_bytes": {"id_x": 200, "ood_a": 400 * BPT["ood_a"], "ood_b": 200 * BPT["ood_b"]}}
    for d in root.glob("final/*"):
        (d / "prepared.json").write_text(json.dumps(prep))
        recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        for r in recs:
            if "val/ood" in r:
                r["val/ood_a"], r["val/ood_b"] = r["val/ood"] - 0.1, r["val/ood"] + 0.1
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_endpoint_in_bits_per_byte_converts_each_ood_source_with_its_own_bytes_per_token(tmp_path):
    root, shifts = _study(tmp_path)
    _with_bytes(root)
    rep = study_report(root, tmp_path / "out", tmp_path / "out.md")
    run = next(r for r in rep["runs"] if r["name"] == "final/nexus_s2")
    e = run["endpoint"]
    # at each crossing val/ood = x, so the sources are x -+ 0.1; bits/byte per source, then the mean
    want = np.mean([np.mean([(x - 0.1) / (math.log(2) * 1.25), (x + 0.1) / (math.log(2) * 1.5)]) for x in e["ood"]])
    assert e["value_bpb"] == pytest.approx(want, rel=1e-12)
    assert to_bits_per_byte(math.log(2) * 3.0, 1.5) == pytest.approx(2.0, rel=1e-15)
    fam = rep["primary"]["nexus - adamw"]
    xa = {r["seed"]: r["endpoint"]["value_bpb"] for r in rep["runs"] if r["phase"] == "final" and r["arm"] == "nexus"}
    xb = {r["seed"]: r["endpoint"]["value_bpb"] for r in rep["runs"] if r["phase"] == "final" and r["arm"] == "adamw"}
    assert fam["bpb"]["diff"] == pytest.approx(np.mean([xa[s] - xb[s] for s in range(5)]), abs=1e-12)
    md = (tmp_path / "out.md").read_text()
    assert f"{fam['bpb']['diff']:+.4f}" in md and "bits/byte" in md
    # the pilot runs have no prepared.json: no bits/byte, the nats endpoint is unaffected
    pilot = next(r for r in rep["runs"] if r["phase"] == "pilot")
    assert pilot["endpoint"]["value_bpb"] is None and pilot["endpoint"]["value"] is not None


def test_the_report_says_what_the_study_can_and_cannot_say(tmp_path):
    """No "CI excludes the paper's effect" clause in the verdict; the scope section states the
    mechanism read-out, the units, the post-hoc clause as post hoc, the pairing of the mixed
    arm (by correlation over seeds) and the selection values that no longer regenerate."""
    root, shifts = _study(tmp_path)
    _with_bytes(root)
    sel = json.loads((root / "selection.json").read_text())
    sel["pilot_val_id"]["adamw_lr"] = {"0.001": 3.5}  # the pilot summary ends at val/id 3.0
    (root / "selection.json").write_text(json.dumps(sel))
    rep = study_report(root, tmp_path / "out", tmp_path / "out.md")
    md = (tmp_path / "out.md").read_text()
    verdict = md.split("## Verdict")[1].split("## What this study")[0]
    assert "excludes" not in verdict
    sc = rep["scope"]
    # every test curve has the same grad_sim: Nexus - AdamW is exactly 0, not engaged
    assert sc["grad_sim_nexus_minus_adamw"]["diff"] == pytest.approx(0.0, abs=1e-12)
    assert "did not detectably raise the between-source gradient cosine" in md
    assert "The treatment did not engage the mechanism" in md
    assert "Losses are nats/token at a 512-token vocabulary" in md and "1.25-1.50 bytes/token (ood)" in md
    assert "**Post hoc, not a declared test** (nexus - adamw)" in md
    xs = {a: [next(r["endpoint"]["value"] for r in rep["runs"] if r["name"] == f"final/{a}_s{s}") for s in range(5)]
          for a in ("adamw", "nexus-mixed")}
    assert sc["pairing"]["nexus-mixed"]["r"] == pytest.approx(np.corrcoef(xs["nexus-mixed"], xs["adamw"])[0, 1])
    assert "The mixed arm is not paired by data" in md
    assert sc["selection_drift"] == [{"run": "pilot/adamw_lr0.001_s1000", "selection": pytest.approx(3.5),
                                      "summary": pytest.approx(3.0)}]
    assert "does not regenerate from the committed pilot summaries**: 1 pilot summaries" in md


def test_grid_edge():
    assert grid_edge(1e-3, [1e-3, 2e-3]) == "smallest" and grid_edge(2e-3, [1e-3, 2e-3]) == "largest"
    assert grid_edge(2e-3, [1e-3, 2e-3, 4e-3]) is None and grid_edge(1e-3, [1e-3]) is None


def test_fixed_effects_slope_matches_the_within_arm_formula():
    rng = np.random.default_rng(1)
    groups = ["a"] * 7 + ["b"] * 6 + ["c"] * 5
    x = rng.normal(size=18)
    y = 0.7 * x + np.array([{"a": 0.0, "b": 1.0, "c": -2.0}[g] for g in groups]) + rng.normal(0, 0.3, 18)
    r = fixed_effects_slope(list(x), list(y), groups)
    xd = x.copy()
    yd = y.copy()
    for g in set(groups):
        m = np.array(groups) == g
        xd[m] -= x[m].mean()
        yd[m] -= y[m].mean()
    slope = (xd @ yd) / (xd @ xd)
    rss = float(((yd - slope * xd) ** 2).sum())
    df = 18 - 3 - 1
    se = math.sqrt(rss / df / (xd @ xd))
    assert r["slope"] == pytest.approx(slope, rel=1e-10) and r["se"] == pytest.approx(se, rel=1e-10)
    assert r["p"] == pytest.approx(2 * stats.t.sf(abs(slope / se), df), rel=1e-8)
    assert r["ci_low"] == pytest.approx(slope - stats.t.ppf(0.975, df) * se, rel=1e-10)
    assert "note" in fixed_effects_slope([1.0, 2.0], [1.0, 2.0], ["a", "b"])  # one run per arm: no fit
