"""Nothing a user owns is deleted or overwritten; every result reads the data it claims;
every stop can be resumed (docs/reliability.md, "Run files", "Data a result reads",
"Stops")."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from nexus_optim.train import artifacts
from nexus_optim.train import checkpoint as ck
from nexus_optim.train.config import from_dict
from nexus_optim.train.logging import read_metrics
from nexus_optim.train.loop import Trainer
from nexus_optim.train.rundir import RUN_MANIFEST, read_run_manifest

from reliability_helpers import rewrite

SHORT = {"train.steps": 2, "train.ckpt_every": 0, "train.eval_every": 0}
ROOT = Path(__file__).resolve().parents[2]


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(d.rglob("*"))}


def _one_line(rc: int, err: str, code: int = 2) -> str:
    assert rc == code and "\n" not in err, (rc, err)
    return err


# ------------------------------------------------------------------ user files are kept
def test_a_run_never_writes_over_or_deletes_user_files(tiny_config, tmp_path, cli, config_file):
    """The issue's case: the user's config.yaml and an unrelated hf/ in the out dir."""
    proj = tmp_path / "proj"
    (proj / "hf").mkdir(parents=True)
    (proj / "hf" / "config.json").write_text("{}")
    cfg = tiny_config(**SHORT)
    cfg["train"]["out_dir"] = str(proj)
    (proj / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = _tree(proj)
    for flags in ([], ["--overwrite"], ["--resume-or-start"], ["--resume"]):
        err = _one_line(*cli("train", "--config", proj / "config.yaml", *flags))
        assert "config.yaml" in err and "hf" in err and "nothing was changed" in err, err
    assert {k: v for k, v in _tree(proj).items() if ".nexus-train.lock" not in k} == before
    # a file that a run does not write is left alone, and the run starts beside it
    (proj / "config.yaml").rename(tmp_path / "cfg.yaml")
    shutil.rmtree(proj / "hf")
    (proj / "notes.txt").write_text("mine")
    assert cli("train", "--config", tmp_path / "cfg.yaml", "--overwrite")[0] == 0
    assert (proj / "notes.txt").read_text() == "mine"
    assert set(read_run_manifest(proj)["created"]) >= {"config.yaml", "metrics.jsonl", "checkpoints"}


def test_resume_or_start_keeps_a_run_whose_checkpoints_are_gone(tiny_config, cli, config_file):
    cfg = tiny_config(**{**SHORT, "train.steps": 4, "train.ckpt_every": 2, "train.eval_every": 2})
    path = config_file(cfg)
    assert cli("train", "--config", path)[0] == 0
    out = Path(cfg["train"]["out_dir"])
    metrics = (out / "metrics.jsonl").read_bytes()
    # every checkpoint set aside as damaged (step_*.corrupt), or deleted by the user
    for p in ck.list_checkpoints(out / "checkpoints"):
        p.rename(p.with_name(p.name + ".corrupt"))
    err = _one_line(*cli("train", "--config", path, "--resume-or-start"))
    assert "wrote checkpoint step 4" in err and "--overwrite" in err, err
    assert (out / "metrics.jsonl").read_bytes() == metrics
    # --overwrite starts again but keeps the .corrupt directories (kept for inspection)
    rc, err = cli("train", "--config", path, "--overwrite")
    assert rc == 0 and "kept" in err and "step_000004.corrupt" in err, err
    assert (out / "checkpoints" / "step_000004.corrupt" / "model.safetensors").is_file()
    shutil.rmtree(out / "checkpoints")
    assert "wrote checkpoint" in cli("train", "--config", path, "--resume-or-start")[1]


def test_an_attempt_without_checkpoint_is_replaced_and_a_legacy_run_adopted(tiny_config, cli,
                                                                           config_file):
    cfg = tiny_config(**SHORT)
    path = config_file(cfg)
    out = Path(cfg["train"]["out_dir"])
    Trainer(from_dict(cfg)).release()  # died before its first checkpoint
    rc, err = cli("train", "--config", path, "--resume-or-start")
    assert rc == 0 and "starting a new run" in err, err
    # a run written before manifests: recognised by its meta.yaml, replaced by --overwrite
    (out / RUN_MANIFEST).unlink()
    (out / "notes.txt").write_text("mine")
    assert cli("train", "--config", path, "--overwrite")[0] == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / RUN_MANIFEST).is_file()
    # ... and adopted by --resume
    (out / RUN_MANIFEST).unlink()
    cfg["train"]["steps"] = 2
    assert cli("train", "--config", path, "--resume")[0] == 0
    assert "metrics.jsonl" in read_run_manifest(out)["created"]
    # a damaged manifest: one line, nothing changed
    (out / RUN_MANIFEST).write_text("{not json")
    before = _tree(out)
    err = _one_line(*cli("train", "--config", path, "--overwrite"))
    assert RUN_MANIFEST in err and "damaged" in err, err
    assert _tree(out) == before


def test_deleting_never_follows_a_symlink(tiny_config, tmp_path, cli, config_file):
    cfg = tiny_config(**{**SHORT, "train.ckpt_every": 1})
    path = config_file(cfg)
    assert cli("train", "--config", path)[0] == 0
    out = Path(cfg["train"]["out_dir"])
    elsewhere = tmp_path / "big_disk"
    shutil.move(str(out / "checkpoints"), str(elsewhere))
    (out / "checkpoints").symlink_to(elsewhere)
    (elsewhere / ".tmp-mine").mkdir()
    (elsewhere / ".tmp-mine" / "data").write_text("x")
    before = _tree(elsewhere)
    assert cli("train", "--config", path, "--overwrite")[0] == 0
    assert _tree(elsewhere) == before  # the link was removed, its target untouched
    assert not (out / "checkpoints").is_symlink()


def test_export_and_eval_out_never_write_into_a_run(tiny_config, tmp_path, cli, config_file):
    cfg = tiny_config(**{**SHORT, "train.ckpt_every": 1})
    assert cli("train", "--config", config_file(cfg))[0] == 0
    out = Path(cfg["train"]["out_dir"])
    ckpt = ck.list_checkpoints(out / "checkpoints")[-1]
    before = _tree(out)
    for target in (ckpt, out / "checkpoints", out / "checkpoints" / "new", ckpt / "sub"):
        err = _one_line(*cli("export", out, target))
        assert "checkpoint" in err and "nothing was written" in err, err
    for target in (ckpt / "meta.json", out / "checkpoints" / "r.json", out / "config.yaml",
                   out / "metrics.jsonl"):
        err = _one_line(*cli("eval", out, "--out", target, "--max-tokens", "64"))
        assert "nothing was written" in err, err
    err = _one_line(*cli("geometry", "grad-sim", out, "--batches", "1", "--out", ckpt / "meta.json"))
    assert "inside the checkpoint" in err, err
    err = _one_line(*cli("eval", "--write-lm-eval-data", ckpt, "--tasks", "arith", "--limit", "2"))
    assert "inside the checkpoint" in err, err
    assert _tree(out) == before
    assert cli("geometry", "grad-sim", out, "--batches", "1")[0] == 0  # RUN/geometry.json: the run's
    assert "geometry.json" in read_run_manifest(out)["created"]
    # a non-empty directory that is not an export: refused, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("my own")
    (mine / "weights.bin").write_text("x")
    err = _one_line(*cli("export", out, mine))
    assert "not empty" in err and "weights.bin" in err, err
    assert (mine / "config.json").read_text() == "my own"
    # a new directory, then the same one again (a previous export is replaced whole)
    exp = tmp_path / "exp"
    assert cli("export", out, exp)[0] == 0
    (exp / "stray.json").write_text("{}")  # an export-like name: still an export dir
    assert cli("export", out, exp)[0] == 0
    assert not (exp / "stray.json").exists() and (exp / "nexus_export.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert cli("eval", out, "--out", tmp_path / "res.json", "--max-tokens", "64")[0] == 0


# --------------------------------------------------------------- the data a result reads
@pytest.fixture
def private_cache_run(tiny_config, tiny_data, tmp_path, cli, config_file):
    """A finished run whose data cache is its own copy (so that it can be damaged)."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_data["data_dir"], cache)
    cfg = tiny_config(**{**SHORT, "train.ckpt_every": 1})
    cfg["data"]["data_dir"] = str(cache)
    assert cli("train", "--config", config_file(cfg))[0] == 0
    return Path(cfg["train"]["out_dir"]), cfg


def test_eval_verifies_the_runs_own_data(private_cache_run, cli):
    out, _ = private_cache_run
    assert cli("eval", out, "--max-tokens", "64")[0] == 0
    rec = json.loads((out / "prepared.json").read_text())
    val = Path(rec["shards"]["prose"]["val"])
    data = bytearray(val.read_bytes())
    data[10:20] = data[30:40]  # other in-vocabulary tokens, same size
    val.write_bytes(bytes(data))
    err = _one_line(*cli("eval", out, "--max-tokens", "64"))
    assert str(val) in err and "sha256" in err.lower(), err
    assert str(val) in _one_line(*cli("export", out, out.parent / "exp"))
    assert not (out.parent / "exp").exists()


def test_recorded_paths_are_absolute_and_eval_works_from_any_directory(tiny_config, tiny_data,
                                                                       tmp_path, cli, config_file,
                                                                       monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(tiny_data["data_dir"], work / "data")
    monkeypatch.chdir(work)
    cfg = tiny_config(**{**SHORT, "train.ckpt_every": 1})
    cfg["data"]["data_dir"] = "data"  # relative, as in the demo
    cfg["train"]["out_dir"] = "run"
    assert cli("train", "--config", config_file(cfg))[0] == 0
    rec = json.loads((work / "run" / "prepared.json").read_text())
    paths = [rec["data_dir"], rec["tokenizer_path"],
             *(p for s in rec["shards"].values() for p in s.values())]
    assert all(os.path.isabs(p) and p.startswith(str(work)) for p in paths), paths
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_data["data_dir"], elsewhere / "data")  # another cache named data/
    first = next(p for p in (elsewhere / "data").rglob("*.bin"))
    first.write_bytes(first.read_bytes()[::-1])  # ... with other contents
    monkeypatch.chdir(elsewhere)
    assert cli("eval", work / "run", "--max-tokens", "64")[0] == 0  # reads work/data


def test_resume_refuses_data_that_differs_from_the_checkpoints(tiny_config, cli, config_file):
    cfg = tiny_config(**{**SHORT, "train.ckpt_every": 1})
    path = config_file(cfg)
    assert cli("train", "--config", path)[0] == 0
    out = Path(cfg["train"]["out_dir"])
    ckpt = ck.list_checkpoints(out / "checkpoints")[-1]
    rec = json.loads((ckpt / "prepared.json").read_text())
    rec["checksums"]["math"]["train"] = "0" * 64  # the checkpoint trained on other bytes
    rewrite(ckpt, "prepared.json", json.dumps(rec).encode())
    before = _tree(out)
    cfg["train"]["steps"] = 2
    err = _one_line(*cli("train", "--config", path, "--resume"))
    assert "math/train" in err and "differs" in err and str(ckpt) in err, err
    assert {k: v for k, v in _tree(out).items() if "lock" not in k} == \
        {k: v for k, v in before.items() if "lock" not in k}


# -------------------------------------------------------------------------------- stops
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tiny_config, tmp_path, cli,
                                                           config_file):
    cfg = tiny_config(**{**SHORT, "train.steps": 4, "train.ckpt_every": 2, "train.eval_every": 1})
    path = config_file(cfg)
    Trainer(from_dict(cfg)).run(until=2)  # stopped after its step-2 checkpoint
    out = Path(cfg["train"]["out_dir"])
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train/lo')  # what a full disk or a power loss leaves
    with pytest.warns(RuntimeWarning, match="torn last line") as w:
        records = read_metrics(out)
    assert str(out / "metrics.jsonl") in str(w[0].message) and records[-1]["step"] == 2
    other = yaml.safe_load(yaml.safe_dump(cfg))
    other["train"].update(out_dir=str(tmp_path / "other"), seed=1, steps=2)
    assert cli("train", "--config", config_file(other))[0] == 0
    with pytest.warns(RuntimeWarning, match="torn last line"):
        rc, err = cli("compare", out, tmp_path / "other", "--out", tmp_path / "cmp")
    assert rc == 0, err
    # never into a run's checkpoints (refused before reading anything)
    err = _one_line(*cli("compare", out, tmp_path / "other", "--out", out / "checkpoints"))
    assert "inside the checkpoints" in err and not (out / "checkpoints" / "report.md").exists()
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert cli("train", "--config", path, "--resume")[0] == 0
    steps = [r["step"] for r in read_metrics(out) if "train/loss" in r]
    assert steps == [1, 2, 3, 4] and (out / "metrics.jsonl").read_text().endswith("\n")
    # a damaged line that is not the last: one line naming file:line
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics record"):
        read_metrics(out)


_STOP_SCRIPT = """
import sys
from nexus_optim.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig, code", [  # ~10-15 s each (a child process): SIGINT's is slow
    pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_resume_finishes(tiny_config, cli, config_file, sig, code):
    steps = 30  # the signal comes after step 1: it stops within a step or two
    cfg = tiny_config(**{"train.steps": steps, "train.ckpt_every": 0, "train.eval_every": 0,
                         "train.threads": 1})
    path = config_file(cfg)
    out = Path(cfg["train"]["out_dir"])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _STOP_SCRIPT, "train", "--config", str(path)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait for the first logged step
            if proc.poll() is not None or ((out / "metrics.jsonl").is_file()
                                           and (out / "metrics.jsonl").stat().st_size):
                break
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [l for l in err.strip().splitlines() if l.startswith("nexus train")]
    assert proc.returncode == code, err
    assert len(lines) == 2 and "stopping after this outer step" in lines[0], err
    assert "--resume" in lines[1] and signal.Signals(sig).name in lines[1], err
    saved = ck.list_checkpoints(out / "checkpoints")
    assert len(saved) == 1 and saved[0].name in lines[1]
    stopped_at = int(saved[0].name.split("_")[1])
    assert 1 <= stopped_at < steps
    assert [r["step"] for r in read_metrics(out) if "train/loss" in r][-1] == stopped_at
    assert not read_run_manifest(out)["finished"]
    # resuming finishes the run (continued from the saved step)
    assert cli("train", "--config", path, "--resume")[0] == 0
    assert [r["step"] for r in read_metrics(out) if "train/loss" in r] == list(range(1, steps + 1))
    assert read_run_manifest(out)["finished"]


def _full_disk_after(n_bytes: int):
    """A torch.save that writes ``n_bytes`` and then fails as a full disk does."""
    def save(obj, f, *a, **k):
        f.write(b"\0" * n_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")
    return save


def test_a_full_disk_is_one_line_and_resume_works(tiny_config, cli, config_file, monkeypatch):
    cfg = tiny_config(**{"train.steps": 4, "train.ckpt_every": 2, "train.eval_every": 0})
    path = config_file(cfg)
    out = Path(cfg["train"]["out_dir"])
    real_save = torch.save
    calls = [0]

    def save(obj, f, *a, **k):  # the second checkpoint (step 4) hits a full disk
        calls[0] += 1
        if calls[0] > 2:
            return _full_disk_after(1000)(obj, f)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    err = _one_line(*cli("train", "--config", path), code=1)
    assert "disk is full" in err and "--resume" in err and "step_000002" in err, err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000002"]  # no .tmp left
    monkeypatch.setattr(torch, "save", real_save)
    assert cli("train", "--config", path, "--resume")[0] == 0
    assert ck.list_checkpoints(out / "checkpoints")[-1].name == "step_000004"


def test_a_full_disk_in_tensorboard_or_the_metrics_is_one_line(tiny_config, cli, config_file,
                                                              monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    cfg = tiny_config(**{"train.steps": 2, "train.ckpt_every": 0, "train.eval_every": 0})
    path = config_file(cfg)

    def add_scalar(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "events.out.tfevents")

    monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar)
    err = _one_line(*cli("train", "--config", path), code=1)
    assert "disk is full" in err and "events.out.tfevents" in err and "starts over" in err, err


def test_resume_refuses_to_resize_the_schedule(tiny_config, cli, config_file):
    cfg = tiny_config(**{"train.steps": 6, "train.ckpt_every": 3, "train.eval_every": 0,
                         "schedule.warmup_steps": 1})
    path = config_file(cfg)
    assert cli("train", "--config", path)[0] == 0
    out = Path(cfg["train"]["out_dir"])
    before = _tree(out)
    err = _one_line(*cli("train", "--config", path, "--resume", "--set", "train.steps=12"))
    assert "train.steps 6 -> 12" in err and "cosine" in err, err
    assert {k: v for k, v in _tree(out).items() if "lock" not in k} == \
        {k: v for k, v in before.items() if "lock" not in k}
    err = _one_line(*cli("train", "--config", path, "--resume", "--set", "train.steps=3"))
    assert "train.steps=3 is below the step of checkpoint" in err, err
    # a constant schedule may grow; so may a wsd one before its decay, but not in it
    for kind, stop, ok in (("constant", 6, True), ("wsd", 3, True), ("wsd", 6, False)):
        cfg2 = yaml.safe_load(yaml.safe_dump(cfg))
        cfg2["schedule"]["kind"] = kind
        cfg2["train"]["out_dir"] = str(out) + f"-{kind}-{stop}"
        Trainer(from_dict(cfg2)).run(until=stop)  # wsd 6 steps: decays in its last step
        rc, err = cli("train", "--config", config_file(cfg2), "--resume", "--set", "train.steps=9")
        assert (rc == 0) == ok, (kind, stop, err)
        assert ok or "train.steps 6 -> 9" in err


# ---------------------------------------------------------- readers racing a training run
def test_a_checkpoint_pruned_mid_read_is_read_again_from_the_newest(tiny_config, monkeypatch):
    cfg = from_dict(tiny_config(**{"train.steps": 3, "train.ckpt_every": 1, "train.eval_every": 0,
                                   "train.keep_checkpoints": 1}))
    trainer = Trainer(cfg)
    trainer.run(until=1)
    out = Path(cfg.train.out_dir)
    real = artifacts.checkpoint_config
    pruned = []

    def config_then_prune(ckpt, *a, **k):  # a training run checkpoints (keep=1) mid-read
        result = real(ckpt, *a, **k)
        if len(pruned) < 2:
            trainer.step += 1
            pruned.append(ckpt.name)
            trainer.save()
        return result

    monkeypatch.setattr(artifacts, "checkpoint_config", config_then_prune)
    model, _, _, state = artifacts.load_trained(out)
    assert pruned == ["step_000001", "step_000002"] and state["checkpoint"].name == "step_000003"
    want = load_file(str(out / "checkpoints" / "step_000003" / "model.safetensors"))
    assert all(torch.equal(p, want[n]) for n, p in model.state_dict().items() if n in want)
    trainer.release()


def test_a_checkpoint_pruned_while_being_verified_is_not_called_damaged(tiny_config, monkeypatch):
    cfg = from_dict(tiny_config(**{"train.steps": 3, "train.ckpt_every": 1, "train.eval_every": 0,
                                   "train.keep_checkpoints": 1}))
    trainer = Trainer(cfg)
    trainer.run(until=1)
    out = Path(cfg.train.out_dir)
    real = ck.file_digest
    pruned = []

    def digest_then_prune(path):  # the checkpoint is pruned between two of its files
        result = real(path)
        if not pruned and Path(path).parent.name == "step_000001":
            trainer.step += 1
            pruned.append(trainer.save())
        return result

    monkeypatch.setattr(ck, "file_digest", digest_then_prune)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "damaged" warning for a pruned checkpoint
        assert artifacts.resolve_checkpoint(out).name == "step_000002"
    assert pruned and not (out / "checkpoints" / "step_000001").exists()
    trainer.release()


def test_a_full_disk_outside_training_is_one_line_and_leaves_nothing_partial(tiny_config, tmp_path,
                                                                            cli, config_file,
                                                                            monkeypatch):
    from transformers import PreTrainedModel

    cfg = tiny_config(**{**SHORT, "train.ckpt_every": 1})
    assert cli("train", "--config", config_file(cfg))[0] == 0
    out = Path(cfg["train"]["out_dir"])
    exp = tmp_path / "exp"
    assert cli("export", out, exp)[0] == 0
    before = _tree(exp)

    def save_pretrained(self, where, *a, **k):  # half a file, then the disk is full
        Path(where, "model.safetensors").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)
    for target in (tmp_path / "new", exp):
        err = _one_line(*cli("export", out, target), code=1)
        assert "disk is full" in err, err
    assert not (tmp_path / "new").exists() and _tree(exp) == before  # the old export is intact
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    err = _one_line(*cli("eval", out, "--max-tokens", "64", "--out", tmp_path))
    assert "is a directory" in err, err


def test_stop_handlers_are_scoped_to_the_run_and_respect_ignored_signals(tiny_config):
    seen = []

    def during(trainer):
        seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))

    term_before = signal.getsignal(signal.SIGTERM)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a script
    try:
        Trainer(from_dict(tiny_config(**SHORT)), callbacks=(during,)).run()
        assert seen[0][0] == signal.SIG_IGN  # stays ignored (nohup, `cmd &` in a script)
        assert callable(seen[0][1]) and seen[0][1] not in (signal.SIG_DFL, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # restored after the run
        assert signal.getsignal(signal.SIGTERM) == term_before
    finally:
        signal.signal(signal.SIGINT, previous)
