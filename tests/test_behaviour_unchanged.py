"""Bitwise behaviour fixture: the same config gives the same run as before the layout
refactor (issue 11). The values in ``tests/data/behaviour_unchanged.json`` were recorded
from the pre-refactor code; any change to the outer step, the optimizers, the sampler,
the evaluation or the closeness fine-tunes shows up here as a changed hash.

Re-record (only for an intended behaviour change, and say so in the commit):
``NEXUS_RECORD_BEHAVIOUR=1 python -m pytest tests/test_behaviour_unchanged.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nexus_optim.train.config import from_dict
from nexus_optim.train.logging import read_metrics
from nexus_optim.train.loop import Trainer

FIXTURE = Path(__file__).parent / "data" / "behaviour_unchanged.json"
RECORD = os.environ.get("NEXUS_RECORD_BEHAVIOUR") == "1"
CASES = {
    "adamw": {"optim.name": "adamw"},
    "nexus": {"optim.name": "nexus"},
    "nexus-gradsim": {"optim.name": "nexus", "train.grad_sim_batches": 2},
    "fish": {"optim.name": "fish", "optim.lr": 0.5, "optim.inner_lr": 0.5},
    "muon": {"optim.name": "muon"},
}


def weights_sha(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def floats_sha(values) -> str:
    return hashlib.sha256(np.asarray(values, dtype=np.float64).tobytes()).hexdigest()


def check(key: str, got: dict) -> None:
    data = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}
    if RECORD:
        data[key] = got
        FIXTURE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    assert key in data, f"{key}: no recorded fixture (NEXUS_RECORD_BEHAVIOUR=1 to record)"
    assert got == data[key], key


@pytest.mark.parametrize("case", list(CASES))
def test_training_run_bitwise(tiny_config, case):
    cfg = from_dict(tiny_config(**{"train.steps": 4, "train.eval_every": 2, "train.ckpt_every": 0,
                                   "train.eval_tokens": 128}, **CASES[case]))
    trainer = Trainer(cfg)
    result = trainer.run()
    # wall-clock throughput is the only non-deterministic value a run logs
    metrics = [{k: v for k, v in r.items() if k != "tokens_per_s"}
               for r in read_metrics(cfg.train.out_dir)]
    check(f"train/{case}", {"weights_sha256": weights_sha(trainer.model), "metrics": metrics,
                            "result": {k: result[k] for k in sorted(result)}})


@pytest.mark.parametrize("name", ["adamw", "nexus"])
def test_closeness_fine_tune_bitwise(name):
    from nexus_optim.models.presets import build_model

    tiny = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 2, "intermediate_size": 32}
    model = build_model("nano", vocab_size=40, max_seq_len=16, seed=0, **tiny)
    cfg = from_dict({"model": {"preset": "nano", "seq_len": 16, "overrides": tiny},
                     "optim": {"name": name, "inner_steps": 2, "lr": 1e-2},
                     "train": {"micro_batch_size": 2, "eval_tokens": 64, "bf16": False}})
    tokens = np.random.default_rng(1).integers(0, 40, 600).astype(np.uint16)
    from nexus_optim.diagnostics.closeness import fine_tune

    ft, losses = fine_tune(model, cfg, tokens, steps=3, seed=0)[:2]
    check(f"closeness/{name}", {"weights_sha256": weights_sha(ft), "losses": losses})


def test_toy_overparam_bitwise():
    from nexus_optim.toy.overparam import METHODS, TrainConfig, run_seed
    from nexus_optim.toy.tasks import ModelConfig, TaskConfig

    cfg = TrainConfig(lr=3e-2, thresholds=(0.5, 0.1), max_outer=60, ft_steps=5,
                      task=TaskConfig(d=5, r=3, n_sources=3, n_per_source=4, n_test=32, n_new=2),
                      model=ModelConfig(hidden=8))
    r = run_seed(0, cfg, {"adamw": None, "nexus g=0.1": METHODS["nexus g=0.1"]})
    got = {}
    for name, res in r["methods"].items():
        got[name] = {"curve": floats_sha(res["curve"]), "steps": res["steps"],
                     "at": {c: {k: v for k, v in sorted(m.items())} for c, m in res["at"].items()}}
    check("toy/overparam", got)
