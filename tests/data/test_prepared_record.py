"""A crafted or damaged prepared.json (a checkpoint's or a cache's) is refused in one line naming
the file and the field, before any file it names is opened (issue 21: crafted dtype, shard
paths to /etc/shadow, ``..`` and symlinks out of the data dir)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from nexus_optim.data.prepared import PreparedData
from nexus_optim.train.artifacts import recorded_data
from nexus_optim.train.checkpoint import CheckpointError


def _record(tmp_path) -> tuple[dict, str]:
    data = tmp_path / "data"
    sdir = data / "shards" / "k" / "s-1"
    sdir.mkdir(parents=True)
    np.arange(100, dtype=np.uint16).tofile(sdir / "val.bin")
    (data / "tokenizer.json").write_text("{}")
    rec = dataclasses.asdict(PreparedData(
        tokenizer_path=str(data / "tokenizer.json"), shards={"s": {"val": str(sdir / "val.bin")}},
        roles={"s": "ood"}, weights={"s": 0.0}, vocab_size=300, eos_id=0, val_tokens={"s": 100},
        val_bytes={"s": 300}, data_dir=str(data), sources=["s"]))
    return rec, str(sdir / "val.bin")


def _refused(tmp_path, rec: dict, field: str) -> str:
    f = tmp_path / "ckpt" / "prepared.json"
    f.parent.mkdir(exist_ok=True)
    f.write_text(json.dumps(rec))
    with pytest.raises(ValueError) as e:
        PreparedData.from_json(f)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{f}: not a usable prepared-data record") and field in msg, msg
    with pytest.raises(CheckpointError) as e:  # what nexus eval / export read
        recorded_data(f.parent)
    short = str(e.value)
    assert "\n" not in short and str(f) in short and field in short, short
    assert "bytes, expected" not in short  # refused before the file was opened (no size comparison)
    return msg


def test_a_valid_record_loads(tmp_path):
    rec, shard = _record(tmp_path)
    f = tmp_path / "prepared.json"
    f.write_text(json.dumps(rec))
    data = PreparedData.from_json(f)
    assert data.load("s", "val").tolist() == list(range(100))


@pytest.mark.parametrize("dtype", ["object", "float64", "<U8", "int8", "V2", "uint8", 7, None])
def test_crafted_dtype_is_refused(tmp_path, dtype):
    rec, _ = _record(tmp_path)
    assert f"dtype: {dtype!r} is not one of 'uint16', 'uint32'" in _refused(tmp_path, {**rec, "dtype": dtype}, "dtype")


@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/passwd.bin", "{data}/../outside.bin",
                                  "{data}/shards/k/../../../outside.bin", "{data}", "{data}/shards/k/s-1/val.txt",
                                  "relative/val.bin"])
def test_shard_paths_outside_the_data_dir_are_refused(tmp_path, path):
    rec, _ = _record(tmp_path)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 200)
    path = path.format(data=rec["data_dir"])
    msg = _refused(tmp_path, {**rec, "shards": {"s": {"val": path}}}, "shards['s']['val']")
    assert f"refused {path!r}: not a .bin file under data_dir" in msg


def test_a_symlink_out_of_the_data_dir_is_refused(tmp_path):
    rec, shard = _record(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 200)
    os.unlink(shard)
    os.symlink(secret, shard)
    msg = _refused(tmp_path, rec, "shards['s']['val']")
    assert "a symlink out of data_dir" in msg and str(secret) in msg
    # a data dir that is itself a symlink (the cache on another disk) is fine
    os.unlink(shard)
    np.arange(100, dtype=np.uint16).tofile(shard)
    link = tmp_path / "data-link"
    os.symlink(rec["data_dir"], link)
    moved = json.loads(json.dumps(rec).replace(rec["data_dir"], str(link)))
    f = tmp_path / "prepared.json"
    f.write_text(json.dumps(moved))
    assert PreparedData.from_json(f).load("s", "val").tolist() == list(range(100))


@pytest.mark.parametrize("change, field", [
    ({"val_tokens": {"s": -1}}, "val_tokens['s']"),
    ({"val_tokens": {"s": "100"}}, "val_tokens['s']"),
    ({"eos_id": 300}, "eos_id: 300 is not below vocab_size 300"),
    ({"vocab_size": -5}, "vocab_size"),
    ({"weights": {"s": float("nan")}}, "weights['s']: expected a finite number >= 0, got nan"),
    ({"roles": {"s": 5}}, "roles['s']: expected 'train' or 'ood', got 5"),
    ({"shards": {"s": {"test": "x.bin"}}}, "shards['s']['test']"),
    ({"shards": {"s": {"val": 5}}}, "shards['s']['val']"),
    ({"shards": ["x"]}, "shards"),
    ({"tokenizer_path": ""}, "tokenizer_path"),
    ({"data_dir": ""}, "no data_dir recorded"),
])
def test_other_crafted_fields_are_refused(tmp_path, change, field):
    rec, _ = _record(tmp_path)
    _refused(tmp_path, {**rec, **change}, field)


def test_not_a_json_object(tmp_path):
    f = tmp_path / "prepared.json"
    for text in ("[1, 2]", "{", "null"):
        f.write_text(text)
        with pytest.raises(ValueError, match=f"^{f}: not a usable prepared-data record"):
            PreparedData.from_json(f)
