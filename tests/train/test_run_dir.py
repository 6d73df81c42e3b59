"""No lost runs: a run directory holds one run, locked while it trains; --resume continues
only the same run; checkpoints are verified, atomic, and damaged ones are skipped
(docs/reliability.md, "Run directories" and "Checkpoints")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from nexus_optim.train import checkpoint as ck
from nexus_optim.train.config import from_dict
from nexus_optim.train.logging import read_metrics
from nexus_optim.train.loop import Trainer, train
from nexus_optim.train.rundir import open_run_dir
from nexus_optim.train.runlock import LOCK_NAME, RunLock

SHORT = {"train.steps": 2, "train.ckpt_every": 0, "train.eval_every": 0}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "intermediate_size": 64}


def _snapshot(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


# ------------------------------------------------------------------------ new / overwrite
def test_new_run_refuses_a_directory_holding_a_run(tiny_config, cli, config_file):
    cfg = tiny_config(**SHORT)
    path = config_file(cfg)
    assert cli("train", "--config", path)[0] == 0
    out = Path(cfg["train"]["out_dir"])
    before = _snapshot(out)
    rc, err = cli("train", "--config", path, "--set", "train.seed=1")
    assert rc == 2 and "\n" not in err, err
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(out) == before  # the old run is untouched


def test_overwrite_replaces_the_run_and_keeps_other_files(tiny_config, cli, config_file):
    cfg = tiny_config(**{**SHORT, "train.steps": 4, "train.ckpt_every": 2})
    assert cli("train", "--config", config_file(cfg))[0] == 0
    out = Path(cfg["train"]["out_dir"])
    (out / "notes.txt").write_text("mine")
    cfg["train"].update(steps=2, ckpt_every=0, seed=1)
    assert cli("train", "--config", config_file(cfg), "--overwrite")[0] == 0
    assert [p.name for p in ck.list_checkpoints(out / "checkpoints")] == ["step_000002"]
    assert [r["step"] for r in read_metrics(out) if "train/loss" in r] == [1, 2]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 1
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(SystemExit):  # argparse: not allowed together
        cli("train", "--config", config_file(cfg), "--overwrite", "--resume")


# ------------------------------------------------------------------------------- lock
_HOLDER = textwrap.dedent("""
    import fcntl, os, socket, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\\n".encode())
    print("locked", flush=True)
    time.sleep(600)
""")


def test_second_trainer_is_refused_and_a_dead_holder_does_not_block(tiny_config, cli, config_file):
    cfg = tiny_config(**SHORT)
    out = Path(cfg["train"]["out_dir"])
    out.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, err = cli("train", "--config", config_file(cfg))
        assert rc == 2 and "\n" not in err, err
        assert str(out) in err and f"pid {holder.pid}" in err and "in use" in err
        assert not (out / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert f"pid {holder.pid}" in (out / LOCK_NAME).read_text()  # a stale lock file is left
    assert cli("train", "--config", config_file(cfg))[0] == 0  # ... and does not block
    RunLock(out).acquire().release()  # released at the end of the run


def test_lock_within_one_process(tiny_config):
    cfg = from_dict(tiny_config(**SHORT))
    a = Trainer(cfg)
    with pytest.raises(ValueError, match="in use by another nexus train"):
        Trainer(cfg, resume="or-start")
    a.run()  # releases the lock at its end
    assert Trainer(cfg, resume=True).step == 2


# ---------------------------------------------------------------------------- resume
def test_resume_without_a_checkpoint(tiny_config, tmp_path, cli, config_file):
    cfg = tiny_config(**SHORT)
    cfg["train"]["out_dir"] = str(tmp_path / "typo")
    rc, err = cli("train", "--config", config_file(cfg), "--resume")
    assert rc == 2 and "\n" not in err and "--resume-or-start" in err and "does not exist" in err
    assert not (tmp_path / "typo").exists()
    # a run that died before its first checkpoint: --resume refuses, --resume-or-start starts
    cfg["train"]["out_dir"] = str(tmp_path / "early")
    Trainer(from_dict(cfg)).release()  # config.yaml, meta.yaml, no checkpoint
    rc, err = cli("train", "--config", config_file(cfg), "--resume")
    assert rc == 2 and "no checkpoint" in err and "--resume-or-start" in err, err
    rc, err = cli("train", "--config", config_file(cfg), "--resume-or-start")
    assert rc == 0 and "no checkpoint" in err and "starting a new run" in err, err
    assert [p.name for p in ck.list_checkpoints(tmp_path / "early/checkpoints")] == ["step_000002"]


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_keys") / "run"
    cfg = {"data": dict(tiny_data),
           "model": {"preset": "nano", "seq_len": 32, "overrides": dict(TINY)},
           "optim": {"name": "nexus", "inner_steps": 2, "lr": 1e-2},
           "train": {"out_dir": str(out), "steps": 2, "micro_batch_size": 4, "eval_every": 0,
                     "ckpt_every": 0, "eval_tokens": 256, "progress": False, "export_hf": False}}
    train(from_dict(cfg))
    return out, cfg


@pytest.mark.parametrize("override, key", [
    ("optim.name=adamw", "optim.name"),
    ("optim.inner_steps=4", "optim.inner_steps"),
    ("optim.lr=0.1", "optim.lr"),
    ("schedule.kind=wsd", "schedule.kind"),
    ("model.seq_len=16", "model.seq_len"),
    ("model.overrides.hidden_size=64", "model.overrides.hidden_size"),
    ("train.micro_batch_size=2", "train.micro_batch_size"),
    ("train.seed=3", "train.seed"),
    ("data.vocab_size=400", "data.vocab_size"),
    ("data.sources[0].weight=2", "data.sources[0].weight"),
])
def test_resume_refuses_a_changed_run_naming_the_key(finished_run, cli, config_file, override, key):
    out, cfg = finished_run
    cfg = yaml.safe_load(yaml.safe_dump(cfg))
    cfg["train"]["steps"] = 4  # allowed
    before = _snapshot(out)
    if override.startswith("data.sources[0]"):
        cfg["data"]["sources"][0]["weight"] = 2.0
        extra = []
    else:
        extra = ["--set", override]
    rc, err = cli("train", "--config", config_file(cfg), "--resume", *extra)
    assert rc == 2 and "\n" not in err, err
    assert f"in {key}:" in err and "train.steps" in err, err  # names the key and what may change
    assert _snapshot(out) == before  # config.yaml not overwritten


def test_resume_allows_run_length_and_cadence(tiny_config, cli, config_file):
    cfg = tiny_config(**SHORT)
    assert cli("train", "--config", config_file(cfg))[0] == 0
    cfg["train"].update(steps=4, eval_every=1, log_every=2, ckpt_every=1, keep_checkpoints=3,
                        eval_tokens=128, progress=False)
    rc, err = cli("train", "--config", config_file(cfg), "--resume")
    assert rc == 0, err
    out = Path(cfg["train"]["out_dir"])
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 4
    assert [p.name for p in ck.list_checkpoints(out / "checkpoints")][-1] == "step_000004"


# ------------------------------------------------------------------------ checkpoints
def _weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def _damage_truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-100])


def _damage_flip(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("name, damage", [
    ("optimizer.pt", _damage_truncate),
    ("model.safetensors", _damage_flip),
    ("trainer.pt", Path.unlink),
    ("checksums.json", _damage_truncate),
])
def test_resume_falls_back_to_the_previous_complete_checkpoint(tiny_config, tmp_path, name, damage):
    kw = {"train.steps": 6, "train.ckpt_every": 2, "train.eval_every": 0, "train.keep_checkpoints": 3}
    full = from_dict(tiny_config(**kw, **{"train.out_dir": str(tmp_path / "full")}))
    train(full)
    part = from_dict(tiny_config(**kw, **{"train.out_dir": str(tmp_path / "part")}))
    Trainer(part).run(until=4)  # checkpoints at 2 and 4
    bad = tmp_path / "part/checkpoints/step_000004"
    damage(bad / name)
    with pytest.warns(RuntimeWarning, match=rf"step_000004.*{name.replace('.', '[.]')}.*step_000002"):
        train(part, resume=True)
    assert (tmp_path / "part/checkpoints/step_000004.corrupt").is_dir()  # set aside, not deleted
    wa, wb = _weights(tmp_path / "full/checkpoints/step_000006"), _weights(tmp_path / "part/checkpoints/step_000006")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for p in ck.list_checkpoints(tmp_path / "part/checkpoints"):
        ck.verify_checkpoint(p)


def test_stale_temporaries_are_cleaned_and_pruning_is_atomic(tiny_config, monkeypatch):
    cfg = from_dict(tiny_config(**{"train.steps": 4, "train.ckpt_every": 1, "train.eval_every": 0,
                                   "train.keep_checkpoints": 2}))
    trainer = Trainer(cfg)
    trainer.run(until=2)
    root = trainer.out / "checkpoints"
    real_rmtree = ck.shutil.rmtree

    def killed_mid_delete(path, *a, **k):  # a crash while deleting the pruned directory
        if ".tmp-pruned-" in str(path):
            (Path(path) / "optimizer.pt").unlink()
            raise KeyboardInterrupt
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(ck.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, resume=True).run(until=3)  # writes step 3, prunes step 1
    monkeypatch.undo()
    names = sorted(p.name for p in root.iterdir())
    assert names[0].startswith(".tmp-pruned-step_000001")
    assert [p.name for p in ck.list_checkpoints(root)] == ["step_000002", "step_000003"]
    for p in ck.list_checkpoints(root):  # no step_* dir is ever incomplete
        ck.verify_checkpoint(p)
    (root / ".tmp-step_000009-12345").mkdir()  # a crash mid-write
    (root / ".tmp-step_000009-12345/model.safetensors").write_bytes(b"x" * 1000)
    lock, resume_from = open_run_dir(trainer.out, cfg, "resume")
    lock.release()
    assert resume_from.name == "step_000003"
    assert sorted(p.name for p in root.iterdir()) == ["step_000002", "step_000003"]


def test_checkpoints_hold_only_tensors_and_plain_values(tiny_config):
    cfg = from_dict(tiny_config(**SHORT))
    train(cfg)
    ckpt = Path(cfg.train.out_dir) / "checkpoints/step_000002"
    for name in ("optimizer.pt", "trainer.pt"):
        torch.load(ckpt / name, weights_only=True)
    manifest = ck.read_manifest(ckpt)
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "trainer.pt",
                                      "config.yaml", "meta.json", "prepared.json"}
    assert ck.verify_checkpoint(ckpt) is True
