"""Behaviour fixture: the same config gives the same run as when it was recorded. The
values in ``tests/data/behaviour_unchanged.json`` were first recorded from the pre-refactor
code (issue 11); any change to the outer step, the optimizers, the sampler, the evaluation or
the closeness fine-tunes shows up here.

Float32 kernels round differently on different CPUs (AVX2 vs AVX-512 dispatch in torch and
MKL: last-bit differences, about 1e-7 relative, seen on 2026-12-02), so the fixture records
its platform (torch version, torch's CPU capability, machine). On that platform every value
must match exactly (the weight hashes included); on another the numbers must agree to
``REL`` / ``ABS`` and the hashes are not compared (they cannot match across kernels).

Re-record (only for an intended behaviour change or a new platform, and say so in the
commit): ``NEXUS_RECORD_BEHAVIOUR=1 python -m pytest tests/test_behaviour_unchanged.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
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


REL, ABS = 1e-4, 1e-6  # across platforms: float32 rounding after a few steps, nothing more


def this_platform() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine()}


def weights_sha(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def floats_sha(values) -> str:
    return hashlib.sha256(np.asarray(values, dtype=np.float64).tobytes()).hexdigest()


def weights_record(model: torch.nn.Module) -> dict:
    """The weights' hash (exact, same platform) and each tensor's float64 sum and sum of
    squares (compared at tolerance on another platform)."""
    sums = {name: [float(t.double().sum()), float(t.double().pow(2).sum())]
            for name, t in sorted(model.state_dict().items())}
    return {"weights_sha256": weights_sha(model), "weights_sums": sums}


def assert_close(got, want, path: str) -> None:
    """Same structure, same ints / strings / bools; floats within REL / ABS; ``*sha256`` skipped."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            if not k.endswith("sha256"):
                assert_close(got[k], want[k], f"{path}/{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: length"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=REL, abs=ABS), f"{path}: {got} != {want}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def check(key: str, got: dict) -> None:
    data = json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}
    got = json.loads(json.dumps(got))  # as the fixture stores it (tuples -> lists)
    if RECORD:
        if data.get("platform") != this_platform():
            data = {"platform": this_platform(), "records": {}}
        data["records"][key] = got
        FIXTURE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    records = data.get("records", {})
    assert key in records, f"{key}: no recorded fixture (NEXUS_RECORD_BEHAVIOUR=1 to record)"
    if data["platform"] == this_platform():
        assert got == records[key], key
    else:
        assert_close(got, records[key], key)


def test_assert_close_catches_a_changed_number_and_skips_only_hashes():
    want = {"a": [1.0, 2.0], "n": 3, "weights_sha256": "x"}
    assert_close({"a": [1.0 + 1e-7, 2.0], "n": 3, "weights_sha256": "y"}, want, "t")
    for bad in ({"a": [1.001, 2.0], "n": 3, "weights_sha256": "x"}, {"a": [1.0, 2.0], "n": 4, "weights_sha256": "x"},
                {"a": [1.0], "n": 3, "weights_sha256": "x"}, {"a": [1.0, 2.0], "n": 3}):
        with pytest.raises(AssertionError):
            assert_close(bad, want, "t")


@pytest.mark.parametrize("case", list(CASES))
def test_training_run_bitwise(tiny_config, case):
    cfg = from_dict(tiny_config(**{"train.steps": 4, "train.eval_every": 2, "train.ckpt_every": 0,
                                   "train.eval_tokens": 128}, **CASES[case]))
    trainer = Trainer(cfg)
    result = trainer.run()
    # wall-clock throughput is the only non-deterministic value a run logs
    metrics = [{k: v for k, v in r.items() if k != "tokens_per_s"}
               for r in read_metrics(cfg.train.out_dir)]
    check(f"train/{case}", {**weights_record(trainer.model), "metrics": metrics,
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
    check(f"closeness/{name}", {**weights_record(ft), "losses": losses})


def test_toy_overparam_bitwise():
    from nexus_optim.toy.overparam import METHODS, TrainConfig, run_seed
    from nexus_optim.toy.tasks import ModelConfig, TaskConfig

    cfg = TrainConfig(lr=3e-2, thresholds=(0.5, 0.1), max_outer=60, ft_steps=5,
                      task=TaskConfig(d=5, r=3, n_sources=3, n_per_source=4, n_test=32, n_new=2),
                      model=ModelConfig(hidden=8))
    r = run_seed(0, cfg, {"adamw": None, "nexus g=0.1": METHODS["nexus g=0.1"]})
    got = {}
    for name, res in r["methods"].items():
        got[name] = {"curve_sha256": floats_sha(res["curve"]), "curve": np.asarray(res["curve"], np.float64).tolist(),
                     "steps": res["steps"],
                     "at": {c: {k: v for k, v in sorted(m.items())} for c, m in res["at"].items()}}
    check("toy/overparam", got)
