"""The dose-response design (experiments/dose_design.py DoseDesign, DOSE_RULES) and its
orchestration (experiments/dose.py DoseStudy): the rules on numbers given by the test, and
the whole study end to end on a tiny design (real `nexus train` / `eval` / `geometry`
subprocesses on a synthetic corpus): every phase, decision files written once, the absolute
gamma of every Nexus run equal to r * lr * sqrt(#params), and a rerun that trains nothing."""

from __future__ import annotations

import json
import math
import random

import pytest
import yaml

from nexus_optim.experiments.design import DESIGNS
from nexus_optim.experiments.dose import DoseStudy
from nexus_optim.experiments.dose_design import (DoseDesign, DoseSize, dose_cost, dose_row, dose_select_lr,
                                                 large_settings, transfer)


def test_the_declared_dose_design_meets_the_issue_and_fits_its_budget():
    d = DESIGNS["dose"]
    s, l = d.sizes
    tokens = d.inner_steps * d.micro_batch_size * d.seq_len
    assert l.n_params >= 4 * s.n_params
    assert all(x.steps * tokens >= 20 * x.n_params for x in d.sizes)
    cost = dose_cost(d)
    assert cost["total_hours"] <= d.budget_hours
    assert set(d.readings) == {"trajectory", "displacement"} and set(d.schedules) == {"fixed", "follow"}
    assert d.to_dict()["rules"]["window"].startswith("engaged and cost <= window_id_bpb")
    with pytest.raises(ValueError, match="at least 4x apart"):
        DoseDesign(sizes=(s, DoseSize("l", {}, 3 * s.n_params, l.steps, l.eval_every)))
    with pytest.raises(ValueError, match="fewer than 20 per parameter"):
        DoseDesign(sizes=(DoseSize("s", {}, s.n_params, 10, 1), l))


def test_the_rules_select_lr_windows_neighbours_and_transfer():
    d = DoseDesign()
    assert dose_select_lr({1e-3: 2.5, 2e-3: 2.4, 4e-3: 2.45}) == (2e-3, None)
    assert dose_select_lr({1e-3: 2.5, 2e-3: 2.4, 4e-3: None}) == (2e-3, None)  # a diverged lr brackets it
    assert dose_select_lr({1e-3: 2.3, 2e-3: 2.4}) == (1e-3, "low")
    base = {0: {"bpb_id": 2.00, "grad_sim": 0.10}, 1: {"bpb_id": 2.10, "grad_sim": 0.12}}
    near = dose_row({0: {"bpb_id": 2.01, "grad_sim": 0.14}, 1: {"bpb_id": 2.12, "grad_sim": 0.15}}, base, d)
    assert near["cost"] == pytest.approx(0.015) and near["gain"] == pytest.approx(0.035)
    assert near["engaged"] and near["window"]
    costly = dose_row({0: {"bpb_id": 2.05, "grad_sim": 0.3}, 1: {"bpb_id": 2.15, "grad_sim": 0.3}}, base, d)
    assert costly["engaged"] and not costly["window"]
    flat = dose_row({0: {"bpb_id": 2.0, "grad_sim": 0.11}, 1: {"bpb_id": None, "grad_sim": 0.5}}, base, d)
    assert flat["n"] == 1 and not flat["engaged"]  # seed 1 has no end loss: left out of the cost
    rows = [{"r": r, "reading": "trajectory", "schedule": "follow", **x}
            for r, x in ((0.1, {**near, "gain": 0.03}), (0.3, {**near, "gain": 0.05}), (1.0, costly))]
    win = {"rows": rows, "windows": rows[:2], "engaged": rows}
    assert large_settings(win, d) == [(r, rd, "follow") for r in (0.1, 0.3, 1.0) for rd in d.readings]
    large = {"rows": [{**rows[1], "window": False}], "windows": []}
    t = transfer(win, large)
    assert t["window_small"] == [0.3, "trajectory", "follow"] and t["transfers"] is False
    assert transfer({"windows": [], "rows": []}, large)["transfers"] is None


def _corpus(path, words, seed):
    rng = random.Random(seed)
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(120)))
    return str(path)


def _tiny(tmp_path) -> DoseDesign:
    from nexus_optim.models.presets import build_model

    geo = {"s": {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32,
                 "num_attention_heads": 2, "num_key_value_heads": 2},
           "l": {"num_hidden_layers": 2, "hidden_size": 48, "intermediate_size": 96,
                 "num_attention_heads": 2, "num_key_value_heads": 2}}
    n = {k: sum(p.numel() for p in {id(p): p for p in build_model("nano", vocab_size=300, max_seq_len=16,
                                                                  seed=0, **v).parameters()}.values())
         for k, v in geo.items()}
    words = [f"w{i}" for i in range(200)]
    sources = ({"name": "a", "kind": "files", "paths": [_corpus(tmp_path / "a.txt", words[:120], 0)]},
               {"name": "b", "kind": "files", "paths": [_corpus(tmp_path / "b.txt", words[80:], 1)]},
               {"name": "o", "kind": "files", "role": "ood", "paths": [_corpus(tmp_path / "o.txt", words, 2)]})
    return DoseDesign(sizes=(DoseSize("s", geo["s"], n["s"], 20, 1), DoseSize("l", geo["l"], n["l"], 20, 1)),
                      sources=sources, data_dir=str(tmp_path / "data"), vocab_size=300, seq_len=16,
                      inner_steps=2, micro_batch_size=2, min_tokens_per_param=0.0, eval_tokens=128,
                      grad_sim_batches=1, seeds=(0,), large_seeds=(0,), adamw_lrs=(1e-3, 3e-3),
                      relative_gammas=(0.05,), readings=("trajectory",), schedules=("fixed",),
                      window_id_bpb=100.0, similarity_margin=-2.0, random_max=1, closeness_steps=2,
                      closeness_points=2, closeness_eval_tokens=64, tokens_per_s=(("s", 1e4), ("l", 1e4)), large_lr_factors=(0.5, 1.0))


@pytest.mark.slow
def test_the_dose_study_runs_end_to_end_and_resumes_without_training(tmp_path):
    d = _tiny(tmp_path)
    st = DoseStudy(tmp_path / "runs", tmp_path / "summ", design=d, workers=1)
    out = st.run("final")
    summ = tmp_path / "summ"
    assert out["decisions"] == ["design.json", "l-lr.json", "l-window.json", "s-lr.json", "s-window.json",
                                "transfer.json"]
    lr_s = json.loads((summ / "s-lr.json").read_text())
    assert lr_s["lr"] in (5e-4, 1e-3, 3e-3, 6e-3) and lr_s["read"] == "bpb/id only"
    win = json.loads((summ / "s-window.json").read_text())
    assert [(x["r"], x["reading"], x["schedule"]) for x in win["rows"]] == [(0.05, "trajectory", "fixed")]
    assert win["rows"][0]["window"]  # by the tiny design's margins
    runs = sorted(p.parent for p in summ.glob("*/*/run.json"))
    phases = {p.parent.name for p in runs}
    assert phases == {"s-adamw", "s-nexus", "s-controls", "l-adamw", "l-nexus"}
    assert any(p.name.startswith("random_") for p in runs)  # the control at the engaging r
    for p in runs:
        info = json.loads((p / "run.json").read_text())
        assert {"metrics.jsonl", "final_eval.json", "geometry.json", "meta.yaml"} <= {f.name for f in p.iterdir()}
        meta = yaml.safe_load((p / "meta.yaml").read_text())
        if info["arm"] == "adamw":
            assert "inner_lr_absolute" not in meta
        else:  # the absolute gamma of the relative r: r * lr * sqrt(#params)
            want = info["setting"]["r"] * info["setting"]["lr"] * math.sqrt(meta["n_params"])
            assert meta["inner_lr_absolute"] == pytest.approx(want, rel=1e-9)
            assert meta["inner_lr_scale"] == "lr_sqrt_params"
        retest = info["setting"]["size"] == "s" and info["seed"] == 0
        assert (p / "geometry_retest.json").exists() == retest
    before = {str(f): f.read_bytes() for f in summ.rglob("*") if f.is_file()}
    logs = {str(f): f.stat().st_size for f in (tmp_path / "runs").rglob("train.log")}
    st2 = DoseStudy(tmp_path / "runs", tmp_path / "summ", design=d, workers=1)
    st2.run("final")
    assert {str(f): f.read_bytes() for f in summ.rglob("*") if f.is_file()} == before
    assert {str(f): f.stat().st_size for f in (tmp_path / "runs").rglob("train.log")} == logs
    with pytest.raises(ValueError, match="declares a different design"):
        DoseStudy(tmp_path / "runs", summ, design=DoseDesign(**{**d.__dict__, "window_id_bpb": 0.5})).run("final")
