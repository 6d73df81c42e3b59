"""`nexus demo`: its configuration (the CPU study's model, gradient cosines logged) and a
tiny end-to-end run whose report shows the mechanism table."""

from __future__ import annotations

import json
from pathlib import Path

from nexus_optim.experiments.demo import demo_config_dict, run_demo
from nexus_optim.experiments.design import DESIGNS
from nexus_optim.train.config import from_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_demo_trains_the_study_model_and_logs_gradient_cosines():
    cfg = from_dict(demo_config_dict())
    study = DESIGNS["cpu"]
    assert (cfg.model.preset, cfg.model.overrides, cfg.data.vocab_size, cfg.model.seq_len) == \
        (study.preset, study.model_overrides, study.vocab_size, study.seq_len)
    assert cfg.train.grad_sim_batches > 0 and cfg.train.eval_every > 0 and not cfg.train.export_hf
    assert cfg.train.steps // cfg.train.eval_every >= 5  # enough evals for a curve
    assert cfg.optim.inner_lr == 0.03
    assert from_dict(demo_config_dict(steps=7, overrides=["optim.lr=1e-3"])).train.steps == 7
    assert from_dict(demo_config_dict(overrides=["train.steps=9"])).train.steps == 9


def test_a_config_file_decides_the_model_instead():
    cfg = from_dict(demo_config_dict(str(CONFIGS / "nano.yaml"), steps=5))
    assert cfg.data.vocab_size == 4096 and cfg.model.overrides == {}  # the file's, not the demo's
    assert cfg.train.steps == 5 and not cfg.train.export_hf


def test_a_tiny_demo_writes_a_report_with_the_mechanism_table(tiny_data, tiny_config, tmp_path, capsys):
    # the tiny model of tests/conftest.py (through its fixture: `from conftest import` would
    # pick whichever conftest was imported last)
    m = ", ".join(f"{k}: {v}" for k, v in tiny_config()["model"]["overrides"].items())
    overrides = [f"data.sources={json.dumps(tiny_data['sources'])}", f"data.data_dir={tiny_data['data_dir']}",
                 f"data.vocab_size={tiny_data['vocab_size']}", f"model.overrides={{{m}}}", "model.seq_len=32",
                 "optim.inner_steps=2", "train.micro_batch_size=4", "train.eval_every=2", "train.eval_tokens=256",
                 "train.ckpt_every=4", "train.progress=false", "train.threads=null", "schedule.warmup_steps=1"]
    rep = run_demo(tmp_path / "demo", steps=4, seeds=(0,), overrides=overrides)
    md = (tmp_path / "demo" / "report.md").read_text()
    table = md.split("## Mechanism: gradient cosine between the train sources")[1].split("\n## ")[0]
    groups = list(rep["groups"])
    assert groups[0] == "adamw" and groups[1].startswith("nexus(") and len(groups) == 2
    assert f"| step | tokens | {groups[0]} | {groups[1]} |" in table
    rows = [l for l in table.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [int(l.split("|")[1]) for l in rows] == [2, 4]  # every eval of 4 steps, eval_every 2
    for l in rows:  # a cosine for both groups at each eval
        assert all(-1.0 <= float(c) <= 1.0 for c in l.strip("| ").split(" | ")[2:])
    assert "n/a" not in table
    capsys.readouterr()
    run_demo(tmp_path / "demo", steps=4, seeds=(0,), overrides=overrides)  # finished runs are reused
    assert capsys.readouterr().out.count("is complete; reusing it") == 2
