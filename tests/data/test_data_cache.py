"""The data cache verifies what it loads (issue 13, item 9 and 14): sizes and sha256 in the
metas, a bad entry rebuilt with a warning naming it, or a one-line error naming the file
when it cannot be rebuilt; a fully prepared cache is usable read-only (nothing written)."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

import nexus_optim.data.cache as cache_mod
import nexus_optim.data.documents as documents
import nexus_optim.data.prepare as prep
import nexus_optim.data.prepared as prepared_mod
import nexus_optim.data.tokenize_stage as tokenize_stage
from nexus_optim.data import DataConfig, prepare_data
from nexus_optim.data.shards import CacheError, CacheWarning


def _corpus(root: Path) -> dict[str, str]:
    rng = random.Random(1)
    words = "red green blue cyan magenta yellow black white grey pink".split()
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(20)) for _ in range(60)))
    (root / "b.txt").write_text("\n\n".join(f"{i} * 3 = {3 * i}" for i in range(200)))
    return {"a": str(root / "a.txt"), "b": str(root / "b.txt")}


def _cfg(data_dir, paths, **kw) -> DataConfig:
    return DataConfig(data_dir=str(data_dir), vocab_size=280, sources=[
        {"name": "a", "kind": "files", "paths": [paths["a"]], "options": {"chunk_chars": 150}},
        {"name": "b", "kind": "files", "paths": [paths["b"]], "role": "ood", "options": {"chunk_chars": 100}},
    ], **kw)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_src")
    paths = _corpus(root / "text")
    data = prepare_data(_cfg(root / "cache", paths), progress=False, workers=1)
    return root / "cache", paths, data


@pytest.fixture
def cache(pristine, tmp_path):
    """A private copy of the prepared cache: (config, original PreparedData rebased on the copy)."""
    src, paths, data = pristine
    dst = tmp_path / "cache"
    shutil.copytree(src, dst)
    cfg = _cfg(dst, paths)
    return cfg, prepare_data(cfg, progress=False, workers=1), data


def _tokens(data):
    return {(s, sp): np.asarray(data.load(s, sp)).copy() for s in data.shards for sp in data.shards[s]}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_metas_record_sizes_and_checksums(cache):
    cfg, data, _ = cache
    shard = Path(data.shards["a"]["train"])
    meta = json.loads((shard.parent / "meta.json").read_text())
    assert meta["files"]["train"]["size"] == shard.stat().st_size
    assert len(meta["files"]["train"]["sha256"]) == 64 and meta["tokenizer_sha256"] == data.tokenizer_sha256
    assert json.loads((Path(data.tokenizer_path).parent / "meta.json").read_text())["sha256"] == data.tokenizer_sha256
    doc_meta = next(Path(cfg.data_dir, "docs").glob("a-*/meta.json"))
    assert set(json.loads(doc_meta.read_text())["files"]) == {"train", "val"}
    assert data.checksums["a"]["train"] == meta["files"]["train"]["sha256"] and data.fingerprint()
    data.verify()


@pytest.mark.parametrize("damage", ["cut_even", "in_vocab_garbage", "random_bytes"])
def test_damaged_shard_is_detected_and_rebuilt(cache, damage):
    cfg, data, _ = cache
    before = _tokens(data)
    shard = Path(data.shards["a"]["train"])
    raw = shard.read_bytes()
    if damage == "cut_even":  # a whole number of uint16 tokens: only the recorded size catches it
        shard.write_bytes(raw[: len(raw) // 2 // 2 * 2])
    elif damage == "in_vocab_garbage":  # same size, valid ids, EOS at the end: only the checksum catches it
        arr = np.random.default_rng(0).integers(0, data.vocab_size, len(raw) // 2).astype(np.uint16)
        arr[-1] = data.eos_id
        shard.write_bytes(arr.tobytes())
    else:
        shard.write_bytes(os.urandom(len(raw)))
    with pytest.raises(CacheError, match="train.bin"):  # a loaded PreparedData notices too
        data.verify()
    with pytest.warns(CacheWarning, match=rf"{shard.name}.*re-tokenizing source 'a'"):
        again = prepare_data(cfg, progress=False, workers=1)
    assert {k: v.tolist() for k, v in _tokens(again).items()} == {k: v.tolist() for k, v in before.items()}


def test_shard_cut_after_prepare_fails_on_load_naming_the_file(cache):
    _, data, _ = cache
    shard = Path(data.shards["b"]["val"])
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(CacheError) as e:
        data.load("b", "val")
    assert str(shard) in str(e.value) and "\n" not in str(e.value)


def test_truncated_trained_tokenizer_is_retrained(cache):
    cfg, data, _ = cache
    before = _tokens(data)
    tok = Path(data.tokenizer_path)
    tok.write_text(tok.read_text()[:500])
    with pytest.warns(CacheWarning, match="tokenizer.json.*retraining"):
        again = prepare_data(cfg, progress=False, workers=1)
    assert again.tokenizer_sha256 == data.tokenizer_sha256  # BPE training is deterministic
    assert {k: v.tolist() for k, v in _tokens(again).items()} == {k: v.tolist() for k, v in before.items()}


def test_truncated_user_tokenizer_is_one_line_naming_the_file(cache, tmp_path):
    cfg, data, _ = cache
    bad = tmp_path / "tokenizer.json"
    bad.write_text(Path(data.tokenizer_path).read_text()[:300])
    cfg.tokenizer = str(bad)
    with pytest.raises(ValueError) as e:
        prepare_data(cfg, progress=False, workers=1)
    msg = str(e.value)
    assert str(bad) in msg and "not a valid tokenizer.json" in msg and "\n" not in msg


def test_corrupt_documents_are_rebuilt_when_read(cache):
    cfg, data, _ = cache
    before = _tokens(data)
    doc = next(Path(cfg.data_dir, "docs").glob("a-*/train.jsonl"))
    doc.write_text('"garbage that still parses"\n')
    (Path(data.shards["a"]["train"]).parent / "meta.json").unlink()  # forces the documents to be read again
    with pytest.warns(CacheWarning, match="train.jsonl.*rebuilding the documents of source 'a'"):
        again = prepare_data(cfg, progress=False, workers=1)
    assert np.array_equal(np.asarray(again.load("a", "train")), before[("a", "train")])


def _read_only(monkeypatch, root: Path):
    """Make ``root`` read-only: chmod (effective for non-root users) and every cache write
    function patched to fail (root ignores file modes)."""
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))

    def refuse(*a, **k):
        raise AssertionError("wrote to a read-only cache")

    _not_writable(monkeypatch)
    for mod, name in ((prep, "_write_json"), (prep, "write_jsonl"), (cache_mod, "_write_json"),
                      (cache_mod, "build_documents"), (documents, "_write_json"),
                      (tokenize_stage, "_write_json"), (tokenize_stage, "build_shard")):
        monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setattr("nexus_optim.data.tokenizer.train_bpe", refuse)


def _not_writable(monkeypatch):
    """Every cache write check answers "not writable" (root ignores file modes)."""
    for mod in (prep, cache_mod, prepared_mod):
        monkeypatch.setattr(mod, "_writable", lambda path: False)


def _writable_again(root: Path):
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_prepared_cache_is_usable_read_only(cache, monkeypatch):
    cfg, data, _ = cache
    root = Path(cfg.data_dir)
    cfg.sources[0].weight = 3.0  # a new manifest would differ: still nothing may be written
    before = _tree(root)
    _read_only(monkeypatch, root)
    try:
        again = prepare_data(cfg, progress=False, workers=1)
        assert again.shards == data.shards and again.weights["a"] == 3.0
        assert _tree(root) == before
    finally:
        _writable_again(root)


def test_read_only_cache_with_a_bad_shard_names_it(cache, monkeypatch):
    cfg, data, _ = cache
    shard = Path(data.shards["a"]["val"])
    shard.write_bytes(os.urandom(shard.stat().st_size))
    _read_only(monkeypatch, Path(cfg.data_dir))
    try:
        with pytest.raises(CacheError) as e:
            prepare_data(cfg, progress=False, workers=1)
        assert str(shard) in str(e.value) and "read-only" in str(e.value) and "\n" not in str(e.value)
    finally:
        _writable_again(Path(cfg.data_dir))


def test_read_only_data_dir_that_needs_building_is_one_line(pristine, tmp_path, monkeypatch):
    _, paths, _ = pristine
    empty = tmp_path / "empty"
    empty.mkdir()
    _not_writable(monkeypatch)
    with pytest.raises(CacheError) as e:
        prepare_data(_cfg(empty, paths), progress=False, workers=1)
    assert "data.data_dir" in str(e.value) and "not writable" in str(e.value) and "\n" not in str(e.value)


def test_data_dir_that_is_a_file_is_one_line(pristine, tmp_path):
    _, paths, _ = pristine
    f = tmp_path / "notadir"
    f.write_text("x")
    with pytest.raises(CacheError, match=r"data.data_dir: .*notadir' exists and is not a directory"):
        prepare_data(_cfg(f, paths), progress=False, workers=1)
    with pytest.raises(CacheError, match=r"data.data_dir: cannot create"):
        prepare_data(_cfg(f / "sub", paths), progress=False, workers=1)


def _make_old(root: Path, data) -> None:
    """Strip the checksums, as a cache written before they existed."""
    for meta in root.rglob("meta.json"):
        m = json.loads(meta.read_text())
        if "sha256" in m:  # tokenizer meta: did not exist
            meta.unlink()
            continue
        m.pop("files", None)
        m.pop("tokenizer_sha256", None)
        meta.write_text(json.dumps(m))


def test_old_cache_without_checksums_is_upgraded(cache):
    cfg, data, _ = cache
    before = _tokens(data)
    _make_old(Path(cfg.data_dir), data)
    again = prepare_data(cfg, progress=False, workers=1)  # re-tokenizes, records checksums
    assert again.fingerprint() == data.fingerprint()
    assert {k: v.tolist() for k, v in _tokens(again).items()} == {k: v.tolist() for k, v in before.items()}
    meta = json.loads((Path(data.shards["a"]["train"]).parent / "meta.json").read_text())
    assert "files" in meta and (Path(data.tokenizer_path).parent / "meta.json").exists()


def test_old_read_only_cache_is_checked_structurally_and_used_with_a_warning(cache, monkeypatch):
    cfg, data, _ = cache
    root = Path(cfg.data_dir)
    _make_old(root, data)
    _read_only(monkeypatch, root)
    try:
        with pytest.warns(CacheWarning, match="without checksums"):
            again = prepare_data(cfg, progress=False, workers=1)
        assert again.shards == data.shards and again.fingerprint() == ""
        _writable_again(root)
        shard = Path(data.shards["a"]["train"])
        shard.write_bytes(os.urandom(shard.stat().st_size))  # random ids: out of vocabulary
        _read_only(monkeypatch, root)
        with pytest.raises(CacheError, match=r"train.bin: holds token id \d+ >= vocab size"):
            prepare_data(cfg, progress=False, workers=1)
    finally:
        _writable_again(root)


def test_single_document_source_gets_a_val_split(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("\n".join(f"line {i} of the only document" for i in range(40)))
    cfg = DataConfig(data_dir=str(tmp_path / "c"), vocab_size=280, sources=[
        {"name": "one", "kind": "files", "paths": [str(f)], "options": {"doc_per_file": True}}])
    data = prepare_data(cfg, progress=False, workers=1)
    assert data.val_tokens["one"] > 1 and data.train_tokens["one"] > data.val_tokens["one"]
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("x")
    cfg = DataConfig(data_dir=str(tmp_path / "c2"), vocab_size=280,
                     sources=[{"name": "tiny", "kind": "files", "paths": [str(tiny)]}])
    with pytest.raises(ValueError, match="source 'tiny' has a single document of 1 chars, too short"):
        prepare_data(cfg, progress=False, workers=1)


def test_short_val_split_is_caught_before_training(cache):
    _, data, _ = cache
    data.check_seq_len(8)
    n = data.val_tokens["a"]
    with pytest.raises(ValueError, match=rf"data.sources\['a'\]: its val split has {n} tokens, fewer than "
                                         rf"model.seq_len={n + 1}"):
        data.check_seq_len(n + 1)


def test_source_order_survives_sorted_json(cache, tmp_path):
    from dataclasses import asdict

    from nexus_optim.data import PreparedData

    _, data, _ = cache
    data = PreparedData(**{**asdict(data), "sources": ["b", "a"]})  # a config order that is not sorted
    p = tmp_path / "prepared.json"
    p.write_text(json.dumps(asdict(data), sort_keys=True))
    back = PreparedData.from_json(p)
    assert list(back.shards) == list(back.roles) == list(back.val_tokens) == ["b", "a"]
