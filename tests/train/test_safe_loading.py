"""Opening a checkpoint runs no code, and evaluation never builds data from a checkpoint's
config (docs/reliability.md, "Safe loading")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from nexus_optim.train.checkpoint import CheckpointError, safe_torch_load
from nexus_optim.train.config import from_dict
from nexus_optim.train.loop import train
from reliability_helpers import craft_pickle, rewrite


@pytest.fixture
def run(tiny_config):
    """A finished 2-step run with one checkpoint (step_000002)."""
    cfg = tiny_config(**{"train.steps": 2, "train.ckpt_every": 0, "train.eval_every": 0})
    train(from_dict(cfg))
    return Path(cfg["train"]["out_dir"]), cfg


@pytest.mark.parametrize("name", ["trainer.pt", "optimizer.pt"])
def test_crafted_pickle_is_refused_on_resume_and_runs_nothing(run, tmp_path, name, cli, config_file):
    out, cfg = run
    marker = tmp_path / "pwned"
    ckpt = out / "checkpoints/step_000002"
    craft_pickle(ckpt, name, marker)  # checksums updated: only weights_only stands in the way
    cfg["train"]["steps"] = 4
    rc, err = cli("train", "--config", config_file(cfg), "--resume")
    assert rc == 2 and not marker.exists()
    assert "\n" not in err and "refusing to load" in err and str(ckpt / name) in err, err
    # nothing was overwritten, and the directory is free again
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 2
    with pytest.raises(CheckpointError, match=name):
        safe_torch_load(ckpt / name)
    assert not marker.exists()


def test_any_load_failure_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "optimizer.pt"
    torch.save({"a": torch.ones(3)}, bad)
    bad.write_bytes(bad.read_bytes()[:50])  # truncated zip
    with pytest.raises(CheckpointError) as e:
        safe_torch_load(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="is missing"):
        safe_torch_load(tmp_path / "nope.pt")


def test_eval_and_export_read_no_pickle(run, tmp_path, cli):
    out, _ = run
    marker = tmp_path / "pwned"
    ckpt = out / "checkpoints/step_000002"
    for name in ("trainer.pt", "optimizer.pt"):
        craft_pickle(ckpt, name, marker)
    assert cli("export", out, tmp_path / "hf")[0] == 0
    assert (tmp_path / "hf/model.safetensors").is_file()
    res = tmp_path / "res.json"
    assert cli("eval", out, "--max-tokens", "64", "--no-progress", "--out", res)[0] == 0
    assert json.loads(res.read_text())["step"] == 2
    assert not marker.exists()
    # they do not need optimizer.pt / trainer.pt at all
    for name in ("trainer.pt", "optimizer.pt"):
        rewrite(ckpt, name, None)
    assert cli("eval", ckpt, "--max-tokens", "64", "--no-progress", "--out", res)[0] == 0
    assert cli("export", ckpt, tmp_path / "hf2")[0] == 0


@pytest.mark.parametrize("data", ["files", "default-mixture"])
def test_eval_never_builds_data_from_the_checkpoint_config(run, tmp_path, cli, data):
    """A config.yaml whose data section names another data_dir and a `files` source (or
    the default mixture, which downloads packages): eval reads the run's prepared data
    and builds nothing anywhere."""
    out, _ = run
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n" * 50)
    elsewhere = tmp_path / "elsewhere"
    evil_data = {"data_dir": str(elsewhere)}
    if data == "files":
        evil_data["sources"] = [{"name": "leak", "kind": "files", "paths": [str(secret)]}]
    for cfg_path in (out / "config.yaml", out / "checkpoints/step_000002/config.yaml"):
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["data"] = evil_data
        text = yaml.safe_dump(cfg).encode()
        if cfg_path.parent.name == "step_000002":
            rewrite(cfg_path.parent, "config.yaml", text)
        else:
            cfg_path.write_bytes(text)
    res = tmp_path / "res.json"
    rc, err = cli("eval", out, "--max-tokens", "64", "--no-progress", "--out", res)
    assert rc == 0, err
    assert not elsewhere.exists()
    assert set(json.loads(res.read_text())["losses"]["sources"]) == {"prose", "math", "code"}


def test_eval_reads_a_moved_cache_only_with_data_dir(tiny_config, tmp_path, cli):
    cache = tmp_path / "cache"
    cfg = tiny_config(**{"train.steps": 1, "train.ckpt_every": 0, "train.eval_every": 0})
    cfg["data"]["data_dir"] = str(cache)
    train(from_dict(cfg))
    out = Path(cfg["train"]["out_dir"])
    moved = tmp_path / "moved"
    shutil.move(str(cache), str(moved))
    rc, err = cli("eval", out, "--max-tokens", "64", "--no-progress")
    assert rc == 2 and "\n" not in err and "prepared data is missing" in err and "--data-dir" in err, err
    assert not cache.exists()  # nothing was rebuilt
    res = tmp_path / "res.json"
    assert cli("eval", out, "--max-tokens", "64", "--no-progress", "--data-dir", moved,
               "--out", res)[0] == 0
    assert cli("export", out, tmp_path / "hf", "--data-dir", moved)[0] == 0
    # asked explicitly: build the data from the checkpoint's config, into a new cache
    rebuilt = tmp_path / "rebuilt"
    res2 = tmp_path / "res2.json"
    assert cli("eval", out, "--max-tokens", "64", "--no-progress", "--prepare-data",
               "--data-dir", rebuilt, "--out", res2)[0] == 0
    assert (rebuilt / "shards").is_dir()
    a, b = (json.loads(p.read_text())["losses"]["summary"] for p in (res, res2))
    assert a == b


def test_eval_falls_back_from_damaged_weights(tiny_config, tmp_path, cli):
    cfg = tiny_config(**{"train.steps": 4, "train.ckpt_every": 2, "train.eval_every": 0})
    train(from_dict(cfg))
    out = Path(cfg["train"]["out_dir"])
    bad = out / "checkpoints/step_000004/model.safetensors"
    data = bytearray(bad.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte: same size, bad checksum
    bad.write_bytes(bytes(data))
    res = tmp_path / "res.json"
    with pytest.warns(RuntimeWarning, match=r"step_000004.*model\.safetensors.*step_000002"):
        assert cli("eval", out, "--max-tokens", "64", "--no-progress", "--out", res)[0] == 0
    assert json.loads(res.read_text())["step"] == 2
    rc, err = cli("eval", bad.parent, "--no-progress")  # named explicitly: refused
    assert rc == 2 and "\n" not in err and str(bad) in err and "SHA-256" in err, err
