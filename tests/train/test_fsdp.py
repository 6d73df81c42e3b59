"""The trainer's memory and speed switches under torchrun: 2 CPU processes (gloo), FSDP2.

One launch (``fsdp_runs.py``: several trainings in one process group) trains the same tiny
model (tied embeddings, 2 decoder layers, Nexus K=2) for 6 outer steps with each switch,
checkpointing every 2 steps; the tests compare the runs' loss curves, checkpoints and
exports (train/parallel.py, docs/distributed.md "Memory and speed switches"):

* FSDP2 equals DDP up to the summation order of its collectives, for Nexus and AdamW;
* FSDP2 resume (a new Trainer from the step-2 checkpoint) is bitwise the uninterrupted run,
  in fp32 and with bf16 + activation checkpointing;
* activation checkpointing changes nothing (bitwise);
* bf16 (``MixedPrecisionPolicy``) changes the losses by bf16 rounding only, and the
  checkpointed weights and Nexus state stay fp32;
* the checkpoint has the single-process format (``load_weights`` into a plain model) and
  the HF export loads with ``AutoModelForCausalLM``;
* ``torch.compile`` (slow: compiling takes minutes on 2 shared cores) within rounding.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file

from nexus_optim.train.config import load_config
from nexus_optim.train.logging import read_metrics

STEPS = 6
LAUNCH_TIMEOUT_S = 300
FAST = ["ddp", "fsdp", "fsdp_resume", "fsdp_ac", "fsdp_bf16", "fsdp_bf16_ac", "fsdp_bf16_ac_resume",
        "ddp_adamw", "fsdp_adamw"]
# fp32 FSDP2 vs DDP: the same sums in another order (reduce-scatter of shards vs all-reduce,
# Nexus' gradient norm from shards). Measured after 6 steps: loss 2.4e-7 (Nexus and AdamW),
# weights 5.7e-6 (Nexus: the normalized inner steps carry the norm's rounding) and 1.4e-7
# (AdamW). A real change (a missing reduction, a skipped or doubled step at lr 1e-2) moves
# the loss by > 1e-3 and weights by ~1e-2.
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-4
# bf16 compute vs fp32: measured max |diff| 1.3e-3 in the loss over the 6 steps
BF16_LOSS_TOL = 1e-2

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo needed")


def _launch(cfg: Path, out: Path, variants: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(Path(__file__).with_name("fsdp_runs.py")), str(cfg), str(out), *variants]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               CUDA_VISIBLE_DEVICES="")  # CPU/gloo, also on a GPU machine
    log = out / "launch.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = "timeout"
    assert rc == 0, f"{' '.join(cmd)}: {rc}\n{log.read_text()[-6000:]}"


def _config(data: dict, out: Path) -> Path:
    """The tiny run: nano with 2 small layers (tied embeddings), Nexus K=2, 6 steps."""
    cfg = {
        "data": dict(data),
        "model": {"preset": "nano", "seq_len": 32,
                  "overrides": {"hidden_size": 32, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "num_key_value_heads": 2,
                                "intermediate_size": 64}},
        "optim": {"name": "nexus", "inner_steps": 2, "lr": 1e-2, "inner_lr": 0.05},
        "schedule": {"warmup_steps": 2},
        "train": {"steps": STEPS, "micro_batch_size": 4, "eval_every": 3, "ckpt_every": 2,
                  "keep_checkpoints": 10, "eval_tokens": 256, "log_every": 1,
                  "progress": False, "export_hf": True, "threads": 1, "device": "cpu",
                  "bf16": False},
    }
    path = out / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    _launch(_config(tiny_data, out), out, FAST)
    return out


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in read_metrics(run) if "train/loss" in r]


def _evals(run: Path) -> list[float]:
    return [r["val/mean"] for r in read_metrics(run) if "val/mean" in r]


def _weights(run: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(str(run / f"checkpoints/step_{step:06d}/model.safetensors"))


def _optimizer(run: Path, step: int = STEPS) -> dict:
    path = run / f"checkpoints/step_{step:06d}/optimizer.pt"
    return torch.load(path, weights_only=True)["optimizer"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@needs_gloo
@pytest.mark.parametrize("ddp, fsdp", [("ddp", "fsdp"), ("ddp_adamw", "fsdp_adamw")])
def test_fsdp_equals_ddp_up_to_summation_order(runs, ddp, fsdp):
    a, b = _losses(runs / ddp), _losses(runs / fsdp)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, STEPS + 1))
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < LOSS_TOL
    assert _max_diff(_weights(runs / ddp), _weights(runs / fsdp)) < WEIGHT_TOL
    assert _evals(runs / ddp) == pytest.approx(_evals(runs / fsdp), abs=LOSS_TOL)
    meta = yaml.safe_load((runs / fsdp / "meta.yaml").read_text())
    assert meta["world_size"] == 2 and meta["parallel"] == "fsdp"
    # the optimizer state has the single-process layout: full tensors, not shards
    wa, sa = _weights(runs / fsdp), _optimizer(runs / fsdp)["state"]
    shapes = sorted(tuple(t.shape) for t in wa.values())
    assert sorted(tuple(e["exp_avg"].shape) for e in sa.values()) == shapes


@needs_gloo
@pytest.mark.parametrize("name", ["fsdp", "fsdp_bf16_ac"])
def test_fsdp_resume_is_bitwise(runs, name):
    """fp32, and with bf16 mixed precision and activation checkpointing both on."""
    full, part = runs / name, runs / f"{name}_resume"
    assert yaml.safe_load((part / "meta.yaml").read_text())["resumed_from"].endswith("step_000002")
    assert _losses(part) == _losses(full)
    assert _max_diff(_weights(full), _weights(part)) == 0.0
    oa, ob = _optimizer(full)["state"], _optimizer(part)["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        assert oa[i].keys() == ob[i].keys()
        assert all(torch.equal(oa[i][k], ob[i][k]) for k in oa[i])


@needs_gloo
def test_activation_checkpointing_changes_nothing(runs):
    assert _losses(runs / "fsdp_ac") == _losses(runs / "fsdp")
    assert _max_diff(_weights(runs / "fsdp_ac"), _weights(runs / "fsdp")) == 0.0


@needs_gloo
def test_bf16_mixed_precision_rounds_only_and_keeps_fp32_state(runs):
    a, b = _losses(runs / "fsdp"), _losses(runs / "fsdp_bf16")
    diffs = [abs(x - y) for (_, x), (_, y) in zip(a, b)]
    assert 0 < max(diffs) < BF16_LOSS_TOL  # it computed in bf16, and only rounding changed
    assert all(t.dtype == torch.float32 for t in _weights(runs / "fsdp_bf16").values())
    for entry in _optimizer(runs / "fsdp_bf16")["state"].values():
        for key in ("nexus_anchor", "nexus_trajectory", "exp_avg", "exp_avg_sq"):
            assert entry[key].dtype == torch.float32, key


@needs_gloo
def test_fsdp_checkpoint_and_export_read_in_one_process(runs):
    from transformers import AutoModelForCausalLM

    from nexus_optim.models.presets import build_model
    from nexus_optim.train.checkpoint import load_weights

    run = runs / "fsdp"
    cfg = load_config(run / "config.yaml")
    plain = build_model("nano", vocab_size=300, max_seq_len=32, **cfg.model.overrides)
    load_weights(run / f"checkpoints/step_{STEPS:06d}", plain)  # strict, tied weights once
    hf = AutoModelForCausalLM.from_pretrained(run / "hf")
    ids = torch.arange(16).reshape(1, 16) % 300
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, hf(ids).logits)


@needs_gloo
@pytest.mark.slow
def test_compile_changes_only_rounding(tmp_path, tiny_data):
    _launch(_config(tiny_data, tmp_path), tmp_path, ["fsdp", "fsdp_compile"])
    a, b = _losses(tmp_path / "fsdp"), _losses(tmp_path / "fsdp_compile")
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < LOSS_TOL
    assert _max_diff(_weights(tmp_path / "fsdp"), _weights(tmp_path / "fsdp_compile")) < WEIGHT_TOL


@pytest.mark.parametrize("overrides, message", [
    (["train.parallel=zero3"], "train.parallel: 'zero3' is not one of 'ddp', 'fsdp'"),
    (["train.parallel=fsdp", "train.inner_sync=local"], "train.inner_sync: 'local' needs replicated"),
    (["train.parallel=fsdp", "train.grad_sim_batches=2"], "train.grad_sim_batches: not measured"),
    (["train.parallel=fsdp", "optim.name=nexus-muon"], "optim.name: 'nexus-muon' orthogonalizes"),
    (["model.activation_checkpointing=maybe"], "model.activation_checkpointing: expected bool"),
])
def test_switch_errors_are_one_line(overrides, message):
    with pytest.raises(ValueError) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
