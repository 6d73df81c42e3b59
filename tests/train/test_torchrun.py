"""The trainer under torchrun: 2 CPU processes (gloo), DDP, kill and resume.

Each test launches ``python -m torch.distributed.run --standalone --nproc_per_node 2
-m nexus_optim.cli train --config C`` (a subprocess with a timeout; about 12 s per
launch on a shared 2-core machine, most of it importing transformers). A run killed
mid-way (rank 1 SIGKILLs itself after outer step 3: ``kill_at_step.py``, a test-side
trainer callback; torchrun then stops rank 0) and restarted with ``--resume`` from its step-2
checkpoint gives the same loss curve, bitwise the same final weights and optimizer
state as an uninterrupted 2-process run; the replicas are bitwise identical at every
checkpoint (``dist/replica_mismatches``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file

from nexus_optim.train.logging import read_metrics

STEPS, CKPT_EVERY, KILL_AT = 6, 2, 3
LAUNCH_TIMEOUT_S = 180

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo needed")


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               CUDA_VISIBLE_DEVICES="")  # CPU/gloo, also on a GPU machine
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict, log: Path) -> int:
    """Run ``cmd`` (torchrun) in its own process group. On timeout: SIGTERM to torchrun,
    which stops its workers (they run in sessions of their own), then SIGKILL to the
    group; then fail."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{' '.join(cmd)} timed out; log:\n{log.read_text()[-6000:]}")


def _torchrun(cfg: Path, out: Path, mode: str, *extra: str, env: dict | None = None,
              log: str | None = None, launcher: tuple[str, ...] = (),
              kill_at: int | None = None) -> tuple[int, str]:
    """``kill_at``: the last rank SIGKILLs itself after that outer step (first attempt)."""
    entry = (["-m", "nexus_optim.cli"] if kill_at is None else
             [str(Path(__file__).with_name("kill_at_step.py")), str(kill_at)])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *launcher, *entry, "train", "--config", str(cfg),
           "--set", f"train.out_dir={out}", "--set", f"train.inner_sync={mode}", *extra]
    path = out.parent / f"{log or out.name}.log"
    rc = _run(cmd, env or _env(), path)
    return rc, path.read_text()


def _losses(run: Path) -> list[tuple[int, float, int]]:
    return [(r["step"], r["train/loss"], r["tokens"]) for r in read_metrics(run) if "train/loss" in r]


@pytest.fixture
def cfg_file(tiny_config, tmp_path) -> Path:
    cfg = tiny_config(**{"train.steps": STEPS, "train.ckpt_every": CKPT_EVERY,
                         "train.eval_every": 0, "train.keep_checkpoints": 10,
                         "train.device": "cpu", "train.threads": 1})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@needs_gloo
@pytest.mark.parametrize("mode, restart", [("local", "relaunch"), ("sync", "torchrun")])
def test_torchrun_kill_and_resume_is_bitwise(cfg_file, tmp_path, mode, restart):
    """``relaunch``: the killed torchrun fails; a second ``torchrun ... --resume``
    continues. ``torchrun``: ``--max_restarts 1`` and ``--resume-or-start`` from the
    start, so torchrun itself restarts the workers, which resume (the callback kills only in
    the first attempt)."""
    full, part = tmp_path / "full", tmp_path / "part"
    rc, log = _torchrun(cfg_file, full, mode)
    assert rc == 0, log[-6000:]

    # uninterrupted run: 2 ranks, tokens of both, replicas identical at every checkpoint
    losses = _losses(full)
    tokens_per_step = 2 * 2 * 4 * 32  # ranks x K x micro-batch x seq_len
    assert [s for s, _, _ in losses] == list(range(1, STEPS + 1))
    assert [t for _, _, t in losses] == [s * tokens_per_step for s in range(1, STEPS + 1)]
    checks = [r["dist/replica_mismatches"] for r in read_metrics(full)
              if "dist/replica_mismatches" in r]
    assert checks == [0] * (STEPS // CKPT_EVERY)
    trainer_pt = torch.load(full / "checkpoints/step_000006/trainer.pt", weights_only=True)
    assert trainer_pt["world_size"] == 2 and len(trainer_pt["ranks"]) == 2
    states = trainer_pt["ranks"]
    # one source schedule (the seed), each rank its own windows (its rank)
    assert states[0]["sampler"]["seed"] == states[1]["sampler"]["seed"]
    assert [r["sampler"]["rank"] for r in states] == [0, 1]
    assert [r["sampler"]["step"] for r in trainer_pt["ranks"]] == [STEPS * 2] * 2
    meta = yaml.safe_load((full / "meta.yaml").read_text())
    assert meta["world_size"] == 2 and meta["inner_sync"] == mode

    kill = _env()  # rank 1 SIGKILLs itself after step KILL_AT (kill_at_step.py)
    if restart == "relaunch":
        rc, log = _torchrun(cfg_file, part, mode, env=kill, kill_at=KILL_AT)
        assert rc != 0 and "exitcode: -9" in log, log[-6000:]
        ckpts = sorted(p.name for p in (part / "checkpoints").iterdir())
        assert ckpts == ["step_000002"], ckpts  # step 4 never completed
        rc, log = _torchrun(cfg_file, part, mode, "--resume", log="part_resume")
    else:
        # a restart reusing the rendezvous TCPStore can read the previous attempt's
        # gloo addresses and fail to connect or hang (torch 2.13; docs/distributed.md)
        kill["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        rc, log = _torchrun(cfg_file, part, mode, "--resume-or-start", env=kill,
                            launcher=("--max_restarts", "1"), kill_at=KILL_AT)
        assert "exitcode: -9" in log, log[-6000:]  # rank 1 was killed, then restarted
    assert rc == 0, log[-6000:]

    # continues as if uninterrupted: loss curve, weights and optimizer state bitwise
    assert _losses(part) == losses
    wa = load_file(str(full / "checkpoints/step_000006/model.safetensors"))
    wb = load_file(str(part / "checkpoints/step_000006/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = torch.load(full / "checkpoints/step_000006/optimizer.pt", weights_only=True)
    ob = torch.load(part / "checkpoints/step_000006/optimizer.pt", weights_only=True)
    ma, mb = oa["optimizer"]["state"], ob["optimizer"]["state"]
    assert ma.keys() == mb.keys()
    assert all(torch.equal(ma[i][k], mb[i][k]) for i in ma for k in ("exp_avg", "exp_avg_sq"))
    assert yaml.safe_load((part / "meta.yaml").read_text())["resumed_from"].endswith("step_000002")


_CHECK = textwrap.dedent("""
    import os, sys, json, torch, torch.distributed as dist
    from nexus_optim.train.distributed import replica_mismatches
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=rank, world_size=2)
    ts = [torch.arange(6.0).reshape(2, 3), torch.ones(4, dtype=torch.bfloat16),
          torch.full((3,), 0.5, dtype=torch.float64), torch.zeros(2)]
    same = replica_mismatches(ts)
    if rank == 1:
        ts[1][2] = 1.0078125  # 1 + 2**-7: one bf16 ulp above 1
        ts[2][0] = -0.5
    diff = replica_mismatches(ts)
    print(json.dumps([same, diff]))
    dist.destroy_process_group()
""")


@needs_gloo
def test_replica_mismatches_counts_bitwise_differences(tmp_path):
    """The checksum check the trainer logs at each checkpoint (dist/replica_mismatches)
    sees one-ulp differences: 2 processes, FileStore rendezvous."""
    procs = [subprocess.Popen([sys.executable, "-c", _CHECK, str(tmp_path / "store")],
                              env=_env(RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for r in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=LAUNCH_TIMEOUT_S)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            pytest.fail("replica check timed out")
    assert all(p.returncode == 0 for p in procs), outs
    assert [json.loads(o.strip().splitlines()[-1]) for o in outs] == [[0, 2], [0, 2]]
