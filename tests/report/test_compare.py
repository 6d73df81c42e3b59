"""Comparison report from synthetic run directories (no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from scipy import stats as st

from nexus_optim.report import compare_runs
from nexus_optim.report.groups import base_label, group_runs
from nexus_optim.report.runs import downstream_numbers, load_run
from nexus_optim.report.tables import at_tokens, crossing
from nexus_optim.train.config import Config


def make_run(root, name, optim="adamw", seed=0, ids=(5.0, 4.0, 3.0, 2.5), oods=(6.0, 5.5, 5.2, 5.0),
             tokens=(100, 200, 300, 400), grad_sim=None, geometry=None, downstream=None, **optim_kw):
    run = root / name
    run.mkdir(parents=True)
    cfg = Config().to_dict()
    cfg["optim"].update(name=optim, **optim_kw)
    cfg["train"].update(seed=seed, out_dir=str(run))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = []
    for i, (t, l_id, l_ood) in enumerate(zip(tokens, ids, oods)):
        step = (i + 1) * 10
        lines.append({"step": step, "train/loss": l_id + 0.1, "lr": 1e-3, "tokens": t})
        rec = {"step": step, "val/prose": l_id + 0.2, "val/math": l_id - 0.2, "val/code": l_ood,
               "val/id": l_id, "val/ood": l_ood, "tokens": t}
        if grad_sim is not None:
            rec.update({"geom/cos/prose/math": grad_sim[i], "geom/grad_sim": grad_sim[i]})
        lines.append(rec)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if geometry is not None:
        (run / "geometry.json").write_text(json.dumps(geometry))
    if downstream is not None:
        (run / "downstream.json").write_text(json.dumps(downstream))
    return run


CURVE = [{"step": 10 * (i + 1), "tokens": t, "val/id": a, "val/ood": b}
         for i, (t, a, b) in enumerate(zip((100, 200, 300, 400), (5.0, 4.0, 3.0, 2.5), (6.0, 5.5, 5.2, 5.0)))]


def test_crossing_hand_computed():
    m = crossing(CURVE, "val/id", 3.5)  # between 200 (4.0) and 300 (3.0): halfway
    assert m["tokens"] == pytest.approx(250.0)
    assert m["val/ood"] == pytest.approx(5.35)
    assert m["step"] == pytest.approx(25.0)
    assert m["val/id"] == 3.5 and not m["before_first_eval"]
    m = crossing(CURVE, "val/id", 2.8)  # f = (3.0 - 2.8) / 0.5 = 0.4
    assert m["tokens"] == pytest.approx(340.0)
    assert m["val/ood"] == pytest.approx(5.2 - 0.4 * 0.2)
    assert crossing(CURVE, "val/id", 2.5)["tokens"] == 400  # the final point exactly
    assert crossing(CURVE, "val/id", 2.0) is None  # never reached
    first = crossing(CURVE, "val/id", 5.5)
    assert first["tokens"] == 100 and first["before_first_eval"]
    # not monotonic: the first crossing counts
    bumpy = [dict(r, **{"val/id": v}) for r, v in zip(CURVE, (5.0, 3.0, 4.0, 2.0))]
    assert crossing(bumpy, "val/id", 3.5)["tokens"] == pytest.approx(175.0)


def test_at_tokens():
    assert at_tokens(CURVE, 250)["val/id"] == pytest.approx(3.5)
    assert at_tokens(CURVE, 400)["val/ood"] == 5.0
    assert at_tokens(CURVE, 50) is None and at_tokens(CURVE, 401) is None


def test_labels_and_grouping(tmp_path):
    runs = [load_run(make_run(tmp_path, n, o, s, **kw)) for n, o, s, kw in [
        ("a0", "adamw", 0, {}), ("a1", "adamw", 1, {}), ("b0", "adamw", 0, {"lr": 1e-3}),
        ("n0", "nexus", 0, {}), ("n1", "nexus", 1, {}), ("f0", "nexus", 0, {"outer_grad": "displacement"})]]
    assert base_label(runs[3].cfg) == "nexus(global,trajectory,gamma=0.05)"
    groups = group_runs(runs)
    assert list(groups) == ["adamw[lr=0.001]", "adamw[lr=0.003]",
                            "nexus(global,displacement,gamma=0.05)", "nexus(global,trajectory,gamma=0.05)"]
    assert [r.seed for r in groups["adamw[lr=0.003]"]] == [0, 1]


def test_report_two_runs(tmp_path):
    """Two tiny run dirs, one per optimizer: everything written, no test possible."""
    a = make_run(tmp_path, "adamw", "adamw", 0)
    n = make_run(tmp_path, "nexus", "nexus", 0, ids=(5.0, 3.5, 3.0, 2.8), oods=(6.0, 5.0, 4.8, 4.6))
    out = tmp_path / "report"
    rep = compare_runs([a, n], out)
    for f in ("report.md", "report.json", "loss_curves.png", "ood_vs_id.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert rep["plots"] == ["loss_curves.png", "ood_vs_id.png"]
    saved = json.loads((out / "report.json").read_text())
    assert set(saved) >= {"metric", "target", "baseline", "groups", "runs", "matched", "equal_tokens",
                          "extra", "notes", "plots"}
    assert saved["baseline"] == "adamw"
    assert saved["target"]["value"] == 2.8  # largest final val/id
    nexus = "nexus(global,trajectory,gamma=0.05)"
    # adamw crosses 2.8 at f = 0.4 between 300 and 400; nexus at its end
    by = {r["group"]: r for r in saved["runs"]}
    assert by["adamw"]["matched"]["tokens"] == pytest.approx(340.0)
    assert by["adamw"]["matched"]["val/ood"] == pytest.approx(5.12)
    assert by[nexus]["matched"]["tokens"] == 400
    assert saved["matched"]["summary"]["val/ood"][nexus]["mean"] == pytest.approx(4.6)
    c = saved["matched"]["comparisons"][nexus]["val/ood"]
    assert not c["testable"] and c["diff"] == pytest.approx(4.6 - 5.12)
    assert saved["equal_tokens"]["tokens"] == 400
    md = (out / "report.md").read_text()
    assert "no test is possible" in md and "At matched in-distribution loss" in md


def eval_json(acc):
    """What ``nexus eval RUN --tasks arith,gsm --out RUN/downstream.json`` writes."""
    return {"checkpoint": "x", "step": 40, "tokens": 400, "seed": 0, "seq_len": 32, "device": "cpu",
            "losses": {"summary": {"val/id": 2.5, "bpb/id": 1.5, "bpb/ood": 2.0}, "seconds": 1.0},
            "tasks": {"arith": {"n": 100, "correct": int(acc * 100), "accuracy": acc, "no_answer": 0,
                                "fewshot": 3, "digits": 2, "seconds": 2.0},
                      "gsm": {"error": "ValueError: templates not available offline", "seconds": 0.1}}}


def test_downstream_numbers():
    assert downstream_numbers(eval_json(0.25)) == {"downstream/arith/accuracy": 0.25,
                                                   "eval/bpb/id": 1.5, "eval/bpb/ood": 2.0}
    lm_eval = {"results": {"hellaswag": {"acc,none": 0.3, "acc_stderr,none": 0.01, "alias": "hs"}},
               "n-samples": {"hellaswag": {"original": 10}}, "config": {"batch_size": 1, "limit": 5}}
    nums = downstream_numbers(lm_eval)
    assert nums == {"downstream/hellaswag/acc,none": 0.3}


def _seeded(tmp_path, shift, n=3, geometry=False):
    rng = np.random.default_rng(0)
    dirs = []
    for opt, off in (("adamw", 0.0), ("nexus", shift)):
        for s in range(n):
            noise = rng.normal(0, 0.05)
            ids = tuple(np.array([5.0, 4.0, 3.0, 2.5]) + rng.normal(0, 0.02, 4))
            oods = tuple(np.array([6.0, 5.5, 5.2, 5.0]) + noise + off)
            geo = {"closeness": {"variance": 1.0 + off + noise, "mean_distance_from_start": 2.0,
                                 "mean_pairwise_distance": 1.0, "cross_loss_gap": 0.3},
                   "grad_sim": {"grad_sim": 0.1 - off}} if geometry else None
            dirs.append(make_run(tmp_path, f"{opt}{s}", opt, s, ids=ids, oods=oods,
                                 grad_sim=[0.1, 0.2, 0.3, 0.4] if geometry else None, geometry=geo,
                                 downstream=eval_json(0.2 - off) if geometry else None))
    return dirs


def test_report_not_significant(tmp_path):
    out = tmp_path / "rep"
    rep = compare_runs(_seeded(tmp_path, shift=0.0), out)
    nexus = "nexus(global,trajectory,gamma=0.05)"
    c = rep["matched"]["comparisons"][nexus]["val/ood"]
    a = rep["matched"]["summary"]["val/ood"][nexus]["values"]
    b = rep["matched"]["summary"]["val/ood"]["adamw"]["values"]
    ref = st.ttest_rel(a, b)  # seeds 0, 1, 2 in both groups: paired by seed
    assert c["test"] == "paired" and c["seeds"] == [0, 1, 2]
    assert c["testable"] and c["p"] == pytest.approx(float(ref.pvalue))
    assert (c["ci_low"], c["ci_high"]) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert c["n"] == c["n_a"] == c["n_b"] == 3
    assert not c["significant"] and "not significant" in c["verdict"]
    md = (out / "report.md").read_text()
    assert "not significant" in md


def test_report_significant_with_geometry_and_downstream(tmp_path):
    out = tmp_path / "rep"
    rep = compare_runs(_seeded(tmp_path, shift=-0.5, geometry=True), out)
    nexus = "nexus(global,trajectory,gamma=0.05)"
    c = rep["matched"]["comparisons"][nexus]["val/ood"]
    assert c["significant"] and c["diff"] < 0
    assert "significant at the 0.05 level" in c["verdict"]
    assert set(rep["plots"]) == {"loss_curves.png", "ood_vs_id.png", "grad_sim.png", "closeness.png",
                                 "downstream.png"}
    for p in rep["plots"]:
        assert (out / p).is_file()
    extra = rep["extra"]["summary"]
    assert {"closeness/variance", "geometry/grad_sim", "downstream/arith/accuracy", "eval/bpb/ood"} <= set(extra)
    assert not any(k.startswith("downstream/gsm") or k.endswith(("/n", "correct")) for k in extra)
    assert rep["extra"]["comparisons"][nexus]["closeness/variance"]["diff"] < 0
    assert "geom/grad_sim" in rep["matched"]["summary"]


def test_target_loss_and_cli(tmp_path, capsys):
    from nexus_optim.cli import main

    a = make_run(tmp_path, "a", "adamw", 0)
    n = make_run(tmp_path, "n", "nexus", 0, ids=(5.0, 3.5, 3.0, 2.8))
    out = tmp_path / "cli"
    assert main(["compare", str(a), str(n), "--out", str(out), "--target-loss", "2.6"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["target"]["value"] == 2.6
    assert any("never reached" in note for note in rep["notes"])  # nexus ends at 2.8
    assert main(["compare", str(a), "--out", str(out), "--metric", "val/nope"]) == 2
    assert "val/nope" in capsys.readouterr().err
