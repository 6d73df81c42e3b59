"""The study's pre-declared rules (experiments/design.py) and its orchestration
(experiments/study.py) on summaries written by the test: selection reads val/id only, from
pilot seeds; the final runs are ordered and configured as declared; a changed design is refused."""

from __future__ import annotations

import json

import pytest
import yaml

from nexus_optim.experiments.design import (PRIMARY_ARMS, SECONDARY_ARMS, StudyDesign, arm_overrides,
                                            design_changes, select_gamma, select_lr)
from nexus_optim.experiments.study import Study

SMALL = dict(steps=20, eval_every=1, adamw_lrs=(1e-3, 3e-3), gammas=(0.1, 0.3, 1.0),
             final_seeds=(0, 1, 2), secondary_seeds=(0,))


def _curve(final_id, steps=20, ood_offset=1.0):
    """val/id falling linearly from final_id + 1 to final_id over the run."""
    return [{"step": s, "tokens": 100 * s, "val/id": final_id + 1 - s / steps,
             "val/ood": final_id + ood_offset + 1 - s / steps} for s in range(1, steps + 1)]


def _write_summary(root, name, curve, info):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": info["seed"]}, "model": {"seq_len": 8}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    (d / "run.json").write_text(json.dumps(info))


def test_select_lr_takes_the_lowest_mean_final_val_id_and_skips_unfinished_runs():
    lr, means = select_lr({1e-3: [_curve(3.0), _curve(3.2)], 3e-3: [_curve(3.05)], 1e-2: [[]]})
    assert lr == 3e-3 and means[1e-3] == pytest.approx(3.1) and means[1e-2] == float("inf")
    with pytest.raises(RuntimeError, match="no AdamW pilot run finished"):
        select_lr({1e-3: [[]]})


def test_select_gamma_takes_the_largest_within_tolerance_else_the_lowest():
    curves = {0.1: [_curve(3.01)], 0.3: [_curve(3.029)], 1.0: [_curve(3.031)], 3.0: [[]]}
    g, means, rule = select_gamma(curves, adamw_final=3.0, tolerance=0.03)
    assert g == 0.3 and "largest" in rule and means[3.0] == float("inf")
    g, _, rule = select_gamma({0.1: [_curve(3.2)], 0.3: [_curve(3.1)]}, 3.0, 0.03)
    assert g == 0.3 and "lowest" in rule


def test_design_refuses_overlapping_seeds_and_sparse_evals():
    with pytest.raises(ValueError, match="disjoint"):
        StudyDesign(pilot_seeds=(0,))
    with pytest.raises(ValueError, match="eval_every must be <= 5%"):
        StudyDesign(steps=100, eval_every=10)


def test_final_runs_are_primary_seed_by_seed_then_secondary_with_the_declared_settings(tmp_path):
    st = Study(tmp_path / "runs", tmp_path / "summ", design=StudyDesign(**SMALL))
    specs = st.final_runs({"lr": 3e-3, "gamma": 0.3})
    assert [s.name for s in specs[:3]] == [f"final/{a}_s0" for a in PRIMARY_ARMS]
    assert [s.arm for s in specs] == list(PRIMARY_ARMS) * 3 + list(SECONDARY_ARMS)
    by = {s.name: set(s.sets) for s in specs}
    assert "train.sampling=mixed" in by["final/nexus-mixed_s1"]
    assert "train.sampling=mixed" not in by["final/nexus_s1"]
    assert {"optim.name=random-control", "optim.inner_lr=0.3"} <= by["final/random_s0"]
    assert "optim.inner_lr_follows_lr=true" in by["final/nexus-follow_s0"]
    assert all(f"train.seed={s.seed}" in s.sets and "optim.lr=0.003" in s.sets for s in specs)
    assert len(st.final_runs({"lr": 3e-3, "gamma": 0.3}, n_final=1, n_secondary=0)) == 3
    big = Study(tmp_path / "r2", tmp_path / "s2", design=StudyDesign(**{**SMALL, "final_seeds": tuple(range(6)),
                                                                         "secondary_seeds": (0, 1, 2)}))
    order = [(s.arm in PRIMARY_ARMS, s.seed) for s in big.final_runs({"lr": 3e-3, "gamma": 0.3})]
    assert order == ([(True, s) for s in range(4) for _ in PRIMARY_ARMS] + [(False, s) for s in (0, 1) for _ in SECONDARY_ARMS]
                     + [(True, s) for s in (4, 5) for _ in PRIMARY_ARMS] + [(False, 2)] * len(SECONDARY_ARMS))
    with pytest.raises(ValueError, match="arm: 'fish' is not one of"):
        arm_overrides("fish", 1e-3, 0.1)


def test_declare_refuses_a_changed_design(tmp_path):
    Study(tmp_path, tmp_path / "summ", design=StudyDesign(**SMALL)).declare()
    Study(tmp_path, tmp_path / "summ", design=StudyDesign(**SMALL)).declare()  # same: fine
    with pytest.raises(ValueError, match="declares a different design .*gamma_tolerance"):
        Study(tmp_path, tmp_path / "summ", design=StudyDesign(**SMALL, gamma_tolerance=0.1)).declare()
    # more seeds extend the declared design (rewritten); other seeds or fewer are refused
    Study(tmp_path, tmp_path / "summ", design=StudyDesign(**{**SMALL, "final_seeds": (0, 1, 2, 3)})).declare()
    assert json.loads((tmp_path / "summ" / "design.json").read_text())["final_seeds"] == [0, 1, 2, 3]
    for seeds in ((0, 1, 2), (0, 1, 5, 3, 4), (1, 2, 3, 4, 5)):
        with pytest.raises(ValueError, match="declares a different design .*final_seeds"):
            Study(tmp_path, tmp_path / "summ", design=StudyDesign(**{**SMALL, "final_seeds": seeds})).declare()


def test_design_changes_allows_only_prefix_extensions_of_the_extensible_keys():
    old = {"final_seeds": [0, 1], "amendments": ["a"], "steps": 10}
    assert design_changes(old, {**old, "final_seeds": [0, 1, 2], "amendments": ["a", "b"]}) == (
        [], ["amendments", "final_seeds"])
    assert design_changes(old, {**old, "amendments": ["b", "a"]}) == (["amendments"], [])
    assert design_changes(old, {**old, "steps": [10, 20]}) == (["steps"], [])
    assert design_changes(old, {k: v for k, v in old.items() if k != "steps"}) == (["steps"], [])


def _pilot_summaries(root, st, ood_offsets):
    finals = {1e-3: 3.10, 3e-3: 3.00}
    for s in st.pilot_lr_runs():
        lr = dict(s.setting)["lr"]
        _write_summary(root, s.name, _curve(finals[lr], ood_offset=ood_offsets.get(("lr", lr), 1.0)), s.info())
    gfinal = {0.1: 3.01, 0.3: 3.02, 1.0: 3.2}
    for s in st.pilot_gamma_runs(3e-3):
        g = dict(s.setting)["gamma"]
        _write_summary(root, s.name, _curve(gfinal[g], ood_offset=ood_offsets.get(("g", g), 1.0)), s.info())


@pytest.mark.parametrize("ood_offsets", [{}, {("g", 0.1): -5.0, ("g", 1.0): -9.0, ("lr", 1e-3): -3.0}])
def test_pilot_selection_reads_val_id_only(tmp_path, ood_offsets):
    """Finished pilot summaries are reused (no training); OOD values cannot move the choice."""
    st = Study(tmp_path / "runs", tmp_path / "summ", design=StudyDesign(**SMALL))
    st.declare()
    _pilot_summaries(tmp_path / "summ", st, ood_offsets)
    sel = st.pilot()
    assert (sel["lr"], sel["gamma"]) == (3e-3, 0.3)
    # levels: the pilot AdamW(lr*) val/id at 70% and 80% of training
    assert sel["levels"] == pytest.approx([3.0 + 1 - 0.7, 3.0 + 1 - 0.8])
    assert json.loads((tmp_path / "summ" / "selection.json").read_text())["gamma"] == 0.3
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_pilot_extends_the_gamma_grid_when_none_is_within_tolerance(tmp_path):
    st = Study(tmp_path / "runs", tmp_path / "summ", design=StudyDesign(**SMALL, gamma_extension=(0.03, 0.01)))
    root = tmp_path / "summ"
    for s in st.pilot_lr_runs():
        _write_summary(root, s.name, _curve({1e-3: 3.10, 3e-3: 3.00}[dict(s.setting)["lr"]]), s.info())
    finals = {0.1: 3.10, 0.3: 3.2, 1.0: 3.5, 0.03: 3.025, 0.01: 3.005}
    for s in st.pilot_gamma_runs(3e-3) + st.pilot_gamma_runs(3e-3, (0.03, 0.01)):
        _write_summary(root, s.name, _curve(finals[dict(s.setting)["gamma"]]), s.info())
    sel = st.pilot()
    assert sel["gamma"] == 0.03 and "grid extended by [0.03, 0.01]" in sel["gamma_rule"]
    assert "pilot/nexus_g0.01_s1000" in sel["pilot_runs"]


def _fake_run(run_dir, steps, final_id):
    """A finished run directory as `nexus train` leaves it (the files a summary copies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": 0}}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _curve(final_id, steps)))


def test_summaries_are_written_once_and_a_retrain_is_refused(tmp_path):
    """A summary only gains missing files; a changed file (a retrain) or a summarized run whose
    run directory is gone is refused instead of overwriting what is committed."""
    import nexus_optim.experiments.study as study_mod

    st = Study(tmp_path / "runs", tmp_path / "summ", design=StudyDesign(**SMALL))
    spec = st.pilot_lr_runs()[0]
    run_dir = tmp_path / "runs" / spec.name
    _fake_run(run_dir, SMALL["steps"], 3.0)
    st._summarize(spec)  # after training (pilot selection reads it)
    dst = tmp_path / "summ" / spec.name
    first = (dst / "metrics.jsonl").read_bytes()
    (run_dir / "final_eval.json").write_text("{}")
    st._summarize(spec)  # the post-processing adds a file; the others are identical
    assert (dst / "final_eval.json").exists() and (dst / "metrics.jsonl").read_bytes() == first
    _fake_run(run_dir, SMALL["steps"], 3.1)  # a retrain with other numbers
    with pytest.raises(study_mod.SummaryExists, match="metrics.jsonl differ.*written once"):
        st._summarize(spec)
    assert (dst / "metrics.jsonl").read_bytes() == first
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".tmp-")]
    # a summarized run whose run directory is gone would be retrained: refused before training
    (dst / "geometry.json").unlink(missing_ok=True)
    import shutil
    shutil.rmtree(run_dir)
    with pytest.raises(study_mod.SummaryExists, match="is not finished"):
        st._job(spec, post=True)
