"""prepare_data on tiny user-file sources: determinism, splits, caching, shards."""

import json
import os
import random
import sys

import numpy as np
import pytest

from nexus_optim.data import DataConfig, PreparedData, prepare_data
from nexus_optim.data.prepare import read_docs


def _corpus(root):
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    root.mkdir(parents=True, exist_ok=True)
    (root / "prose.txt").write_text("\n\n".join(
        " ".join(rng.choice(words) for _ in range(30)) + f" {i}." for i in range(120)))
    (root / "math.jsonl").write_text("".join(
        json.dumps({"text": f"{a} + {b} = {a + b}", "id": a}) + "\n" for a in range(60) for b in range(3)))
    (root / "ood.txt").write_text("\n\n".join(f"fn f{i}() -> u32 {{ {i} * 2 }}" for i in range(80)))
    return root


def _config(tmp_path, data_dir="cache", seed=0, **kw):
    src = _corpus(tmp_path / "text")
    return DataConfig(data_dir=str(tmp_path / data_dir), vocab_size=300, seed=seed, sources=[
        {"name": "prose", "kind": "files", "paths": [str(src / "prose.txt")], "options": {"chunk_chars": 200}},
        {"name": "math", "kind": "files", "paths": [str(src / "*.jsonl")], "weight": 2.0},
        {"name": "ood", "kind": "files", "role": "ood", "paths": [str(src / "ood.txt")],
         "options": {"chunk_chars": 100}},
    ], **kw)


def _doc_dir_name(data: PreparedData, source: str) -> str:
    return os.path.basename(os.path.dirname(data.shards[source]["val"]))


def _split_docs(data, source, split):
    return read_docs(os.path.join(data.data_dir, "docs", _doc_dir_name(data, source), f"{split}.jsonl"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    cfg = _config(tmp)
    return cfg, prepare_data(cfg, progress=False, workers=1)


def test_outputs_and_roles(prepared):
    cfg, data = prepared
    assert set(data.shards) == {"prose", "math", "ood"}
    assert set(data.shards["prose"]) == {"train", "val"} and set(data.shards["ood"]) == {"val"}
    assert data.roles == {"prose": "train", "math": "train", "ood": "ood"}
    assert data.weights == {"prose": 1.0, "math": 2.0, "ood": 1.0}
    assert data.dtype == "uint16" and data.vocab_size == 300
    for s, splits in data.shards.items():
        for split in splits:
            toks = data.load(s, split)
            assert toks.dtype == np.uint16 and len(toks) > 0 and toks[-1] == data.eos_id
    assert data.bytes_per_token("prose") > 1.0
    assert PreparedData.from_json(_manifest(data)) == data


def _manifest(data):
    return next(os.path.join(data.data_dir, p) for p in os.listdir(data.data_dir) if p.startswith("prepared-"))


def test_val_train_disjoint_and_complete(prepared):
    cfg, data = prepared
    for s in ("prose", "math"):
        tr, va = _split_docs(data, s, "train"), _split_docs(data, s, "val")
        assert tr and va and not set(tr) & set(va)
    math_train = _split_docs(data, "math", "train") + _split_docs(data, "math", "val")
    assert sorted(math_train) == sorted(f"{a} + {b} = {a + b}" for a in range(60) for b in range(3))
    # val shard decodes back to the val documents, EOS-separated
    tok = data.tokenizer()
    text = tok.decode(data.load("math", "val").tolist())
    assert text.split(tok.eos_token)[:-1] == _split_docs(data, "math", "val")
    assert data.val_bytes["math"] == sum(len(d.encode()) for d in _split_docs(data, "math", "val"))
    assert data.val_tokens["math"] == len(data.load("math", "val"))


def test_second_prepare_reuses_everything(prepared):
    cfg, data = prepared
    files = [p for splits in data.shards.values() for p in splits.values()] + [data.tokenizer_path]
    before = {p: os.stat(p).st_mtime_ns for p in files}
    again = prepare_data(cfg, progress=False, workers=1)
    assert again == data
    assert {p: os.stat(p).st_mtime_ns for p in files} == before
    # changing only the weights rebuilds nothing either
    cfg.sources[0].weight = 5.0
    again = prepare_data(cfg, progress=False, workers=1)
    assert again.weights["prose"] == 5.0 and again.shards == data.shards
    assert {p: os.stat(p).st_mtime_ns for p in files} == before
    cfg.sources[0].weight = 1.0


def test_same_seed_same_split_other_seed_other_split(tmp_path, prepared):
    _, data = prepared
    other = prepare_data(_config(tmp_path, "cache2"), progress=False, workers=2)  # also exercises the pool
    for s in data.shards:
        for split in data.shards[s]:
            assert np.array_equal(np.asarray(other.load(s, split)), np.asarray(data.load(s, split)))
    seeded = prepare_data(_config(tmp_path, "cache3", seed=1), progress=False, workers=1)
    assert _split_docs(seeded, "prose", "val") != _split_docs(data, "prose", "val")


def test_val_fraction_is_respected(tmp_path):
    data = prepare_data(_config(tmp_path, val_fraction=0.3), progress=False, workers=1)
    n_val, n_tr = len(_split_docs(data, "math", "val")), len(_split_docs(data, "math", "train"))
    assert 0.2 < n_val / (n_val + n_tr) < 0.4


def test_interrupted_build_leaves_no_complete_looking_files(tmp_path, monkeypatch):
    import nexus_optim.data.tokenize_stage as tokenize_stage

    cfg = _config(tmp_path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenize_stage, "build_shard", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, progress=False, workers=1)
    assert not list((tmp_path / "cache").rglob("*.bin")) and not list((tmp_path / "cache").rglob("*.tmp*"))
    monkeypatch.undo()
    data = prepare_data(cfg, progress=False, workers=1)
    assert all(os.path.exists(p) for s in data.shards.values() for p in s.values())


def test_user_tokenizer_is_used(tmp_path, prepared):
    _, data = prepared
    cfg = _config(tmp_path, "cache4", tokenizer=data.tokenizer_path)
    other = prepare_data(cfg, progress=False, workers=1)
    assert other.tokenizer_path == os.path.abspath(data.tokenizer_path)
    assert not (tmp_path / "cache4" / "tokenizer").exists()
    assert np.array_equal(np.asarray(other.load("ood", "val")), np.asarray(data.load("ood", "val")))


def test_parquet_source(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": [f"row {i} says hello" for i in range(50)]}), f)
    cfg = DataConfig(data_dir=str(tmp_path / "d"), vocab_size=300,
                     sources=[{"name": "p", "kind": "files", "paths": [str(f)]}])
    data = prepare_data(cfg, progress=False, workers=1)
    docs = _split_docs(data, "p", "train") + _split_docs(data, "p", "val")
    assert sorted(docs) == sorted(f"row {i} says hello" for i in range(50))


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    f = tmp_path / "x.parquet"
    f.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    cfg = DataConfig(data_dir=str(tmp_path / "d"), vocab_size=300,
                     sources=[{"name": "p", "kind": "files", "paths": [str(f)]}])
    with pytest.raises(ImportError, match="needs pyarrow"):
        prepare_data(cfg, progress=False, workers=1)
