"""Fault test: SIGKILL a training process at random moments of its checkpoint writes,
again and again (12 kills), resuming each time with ``--resume-or-start``; the run ends
bitwise where an uninterrupted one does, and no kill ever leaves a visible incomplete
checkpoint (docs/reliability.md, "Checkpoints").

The kills come from the test, not from the product: a helper process imports the
package once (a 1-step warm-up run), then forks one training child per attempt (a fresh
interpreter per attempt would spend most of the test importing); the test watches the child's
``checkpoints/.tmp-step_*-<pid>`` directory appear and SIGKILLs the child a random
0-5 ms (every other attempt 0-150 ms: into the rename, pruning and next step) later, in
its 1st or 2nd checkpoint write. Runs in about 25 s (default suite).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from nexus_optim.train import checkpoint as ck
from nexus_optim.train.config import from_dict
from nexus_optim.train.logging import read_metrics
from nexus_optim.train.loop import train

KILLS, STEPS, SEED = 12, 40, 1234
ATTEMPT_TIMEOUT_S = 120

# a warm-up run (single-threaded: no OpenMP worker threads to lose in fork) imports
# everything training needs; then, per "go" line, a forked child trains (resume-or-start);
# prints the child's pid, then its wait status when it ends
_ZYGOTE = textwrap.dedent("""
    import os, sys, traceback
    import torch
    torch.set_num_threads(1)
    from nexus_optim.train.config import load_config
    from nexus_optim.train.loop import train
    cfg_path, warm_dir = sys.argv[1], sys.argv[2]
    train(load_config(cfg_path, [f"train.out_dir={warm_dir}", "train.steps=1"]))
    print("ready", flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                train(load_config(cfg_path), resume="or-start")
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(status, flush=True)
""")


def _readline(proc: subprocess.Popen, what: str) -> str:
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"helper process ended while waiting for {what}")
    return line.strip()


def _kill_during_write(ckpt_root: Path, pid: int, nth: int, delay_s: float) -> bool:
    """SIGKILL ``pid`` ``delay_s`` after its ``nth`` checkpoint write began; False if it
    ended first."""
    seen: set[str] = set()
    deadline = time.monotonic() + ATTEMPT_TIMEOUT_S
    suffix = f"-{pid}"
    while time.monotonic() < deadline:
        try:
            names = os.listdir(ckpt_root)
        except FileNotFoundError:
            names = []
        seen.update(n for n in names if n.startswith(".tmp-step_") and n.endswith(suffix))
        if len(seen) >= nth:
            time.sleep(delay_s)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return False
            return True
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (the helper's): poll its existence
            done = 0
        if done:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.0005)
    pytest.fail("no checkpoint write seen in time")


def test_random_kills_during_checkpoint_writes_resume_bitwise(tiny_config, tmp_path):
    kw = {"train.steps": STEPS, "train.ckpt_every": 1, "train.eval_every": 0,
          "train.keep_checkpoints": 2, "train.log_every": 1, "train.threads": 1,
          "train.device": "cpu"}
    cfg = tiny_config(**kw, **{"train.out_dir": str(tmp_path / "killed")})
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    root = tmp_path / "killed/checkpoints"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    log = open(tmp_path / "helper.log", "w")
    helper = subprocess.Popen([sys.executable, "-c", _ZYGOTE, str(cfg_path), str(tmp_path / "warm")],
                              env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                              start_new_session=True)
    rng = random.Random(SEED)
    kills, left_temporaries = 0, 0
    try:
        # the uninterrupted run, while the helper warms up
        train(from_dict(tiny_config(**kw, **{"train.out_dir": str(tmp_path / "ref")})))
        assert _readline(helper, "ready") == "ready"
        for attempt in range(KILLS + 20):
            helper.stdin.write("go\n")
            helper.stdin.flush()
            pid = int(_readline(helper, "child pid"))
            final = kills >= KILLS
            # early in the write (model/optimizer files), or anywhere up to its rename,
            # pruning and the next step
            delay = rng.uniform(0.0, 0.005) if attempt % 2 else rng.uniform(0.0, 0.15)
            killed = False if final else _kill_during_write(root, pid, rng.randint(1, 2), delay)
            status = int(_readline(helper, "child status"))
            if killed:
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
                kills += 1
                left_temporaries += any(p.name.startswith(".tmp-") for p in root.iterdir())
                for p in ck.list_checkpoints(root):  # never a visible incomplete checkpoint
                    ck.verify_checkpoint(p)
            else:
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
                    (tmp_path / "helper.log").read_text()[-4000:])
                if final:
                    break
        else:
            pytest.fail(f"the run did not finish after {kills} kills")
    finally:
        helper.stdin.close()
        try:
            helper.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(helper.pid, signal.SIGKILL)
            helper.wait()
        log.close()

    assert kills >= 10
    assert left_temporaries >= 1, "no kill landed inside a checkpoint write"
    wa = load_file(str(tmp_path / f"ref/checkpoints/step_{STEPS:06d}/model.safetensors"))
    wb = load_file(str(root / f"step_{STEPS:06d}/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = torch.load(tmp_path / f"ref/checkpoints/step_{STEPS:06d}/optimizer.pt", weights_only=True)
    ob = torch.load(root / f"step_{STEPS:06d}/optimizer.pt", weights_only=True)
    assert _equal(oa, ob)
    losses = lambda run: [(r["step"], r["train/loss"]) for r in read_metrics(run) if "train/loss" in r]
    assert losses(tmp_path / "killed") == losses(tmp_path / "ref")
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert [p.name for p in ck.list_checkpoints(root)] == [f"step_{STEPS - 1:06d}", f"step_{STEPS:06d}"]
    print(json.dumps({"kills": kills, "kills_mid_write": left_temporaries}))


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b
