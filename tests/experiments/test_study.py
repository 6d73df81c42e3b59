"""``Study.select``: the best setting of each family from the sweep runs' final evals,
averaged over the sweep seeds, read from the settings each run carries (not its name)."""

from __future__ import annotations

import json

import pytest

from nexus_optim.experiments.study import SWEEP_FISH_INNER_LRS, SWEEP_INNER_LRS, SWEEP_LRS, Study


def _write_final(run_dir, step, val_id, val_ood):
    run_dir.mkdir(parents=True)
    rows = [{"step": step - 10, "val/id": 99.0, "val/ood": 99.0, "tokens": 1},  # not the final
            {"step": step, "train/loss": 1.0},
            {"step": step, "val/id": val_id, "val/ood": val_ood, "tokens": 2}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_select_picks_each_family_by_its_criterion_over_seeds(tmp_path):
    study = Study(tmp_path, steps=20, sweep_seeds=(100, 101))
    sweep = study.sweep_runs()
    for name, run in sweep.items():
        fam, setting, seed = run.family, run.setting, run.seed
        if fam == "adamw":  # lr 3e-3 is best on the mean; seed 101 alone would pick 1e-2
            val_id = {1e-3: 4.0, 3e-3: 3.0, 1e-2: 3.5}[setting]
            if seed == 101 and setting == 1e-2:
                val_id = 2.9
            val_ood = val_id + 1.0
        elif fam == "nexus":  # the lowest val/id is (trajectory, 0.1); the lowest gap is
            og, g = setting   # (displacement, 0.05): the gap decides
            val_id = 2.0 if (og, g) == ("trajectory", 0.1) else 3.0
            gap = 0.2 if (og, g) == ("displacement", 0.05) else 1.0
            val_ood = val_id + gap
        else:
            val_id = {0.1: 5.0, 0.3: 4.5}[setting]
            val_ood = val_id + 1.0
        _write_final(tmp_path / name, 20, val_id, val_ood)
    best = study.select(sweep)
    assert best["adamw_lr"] == 3e-3
    assert best["nexus"] == ("displacement", 0.05)
    assert best["fish_inner_lr"] == 0.3
    assert best["sweep"]["adamw_val_id"][1e-2] == pytest.approx((3.5 + 2.9) / 2)
    assert set(best["sweep"]["adamw_val_id"]) == set(SWEEP_LRS)
    assert len(best["sweep"]["nexus_ood_minus_id"]) == 2 * len(SWEEP_INNER_LRS)
    assert set(best["sweep"]["fish_val_id"]) == set(SWEEP_FISH_INNER_LRS)
    # the settings come from the runs, not their names: renaming a run changes nothing
    renamed = {f"sweep/run{i}": r for i, r in enumerate(sweep.values())}
    for (old, _), new in zip(sweep.items(), renamed):
        (tmp_path / old).rename(tmp_path / new.replace("/", "_"))
    renamed = {n.replace("/", "_"): r for n, r in renamed.items()}
    assert study.select(renamed) == best


def test_select_refuses_a_sweep_run_without_a_final_eval(tmp_path):
    study = Study(tmp_path, steps=20, sweep_seeds=(100,))
    sweep = study.sweep_runs()
    with pytest.raises(RuntimeError, match="has no final eval"):
        study.select(sweep)
