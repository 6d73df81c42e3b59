"""Streaming preparation at scale (issue 19, items 1-2): every `files` format streams the same
documents, the streamed pipeline gives the old in-memory pipeline's tokens, shard sets read
as one array, a killed preparation resumes keeping its finished shards, large vocabularies
get uint32 shards, and peak memory does not grow with the corpus."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nexus_optim.data.cache as cache_mod
import nexus_optim.data.tokenize_stage as tokenize_stage
from nexus_optim.data import DataConfig, prepare_data
from nexus_optim.data.prepared import _Log, read_docs
from nexus_optim.data.shards import CacheWarning, ShardSet
from nexus_optim.data.sources import BuildContext, build_part
from nexus_optim.data.sources.files import expand_paths, files, iter_documents
from nexus_optim.data.text import split_docs

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()


def _rows(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + f" {i} é ✓." for i in range(n)]


def _ctx(paths) -> BuildContext:
    return BuildContext(data_dir="unused", seed=0, paths=[str(p) for p in paths])


def _write_formats(root: Path, rows: list[str]) -> dict[str, Path]:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"text": r, "n": i}, ensure_ascii=False) + "\n" for i, r in enumerate(rows))
    out = {"jsonl": root / "a.jsonl", "gz": root / "a.jsonl.gz", "parquet": root / "a.parquet",
           "arrow": root / "a.arrow", "dataset": root / "ds"}
    out["jsonl"].write_text(lines, encoding="utf-8")
    out["gz"].write_bytes(gzip.compress(lines.encode("utf-8")))
    table = pa.table({"text": rows, "n": list(range(len(rows)))})
    pq.write_table(table, out["parquet"], row_group_size=37)
    with pa.ipc.new_file(str(out["arrow"]), table.schema) as w:
        w.write_table(table, max_chunksize=50)
    ds = out["dataset"]  # the layout of datasets' save_to_disk: IPC *stream* files + state.json
    ds.mkdir()
    half = len(rows) // 2
    names = ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    for name, part in zip(names, (table.slice(0, half), table.slice(half))):
        with pa.ipc.new_stream(str(ds / name), part.schema) as w:
            w.write_table(part, max_chunksize=64)
    (ds / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))
    (ds / "dataset_info.json").write_text("{}")
    return out


def test_every_format_streams_the_same_documents(tmp_path):
    rows = _rows(300)
    paths = _write_formats(tmp_path, rows)
    for kind, p in paths.items():
        assert list(iter_documents(_ctx([p]), {}, None)) == rows, kind
    # a glob over the folder: the dataset directory counts once, not its arrow files again
    assert expand_paths([str(tmp_path / "*")]) == sorted(str(p) for p in paths.values())
    # a budget keeps the same documents however they are stored
    kept = [list(iter_documents(_ctx([p]), {}, 2000)) for p in paths.values()]
    assert all(k == kept[0] for k in kept) and 2000 <= sum(map(len, kept[0])) < 2000 + 300


def test_zstd_needs_its_package_or_reads_the_same(tmp_path):
    rows = _rows(50)
    lines = "".join(json.dumps({"text": r}) + "\n" for r in rows).encode()
    f = tmp_path / "a.jsonl.zst"
    try:
        import zstandard
    except ImportError:
        f.write_bytes(b"\x28\xb5\x2f\xfd not really")
        with pytest.raises(ImportError) as e:
            list(iter_documents(_ctx([f]), {}, None))
        assert "zstandard" in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)
        return
    f.write_bytes(zstandard.ZstdCompressor().compress(lines))
    assert list(iter_documents(_ctx([f]), {}, None)) == rows


def _one_line(e, *parts):
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg


def test_bad_rows_in_compressed_and_columnar_files_name_file_and_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "ok"}\n\n{"body": 1}\n'))
    with pytest.raises(ValueError) as e:
        files(_ctx([gz]), {}, None)
    _one_line(e, f"{gz}:3:", "string field 'text'")
    gz.write_bytes(gzip.compress(b'{"text": "ok"}\n{"text": "caf\xe9"}\n'))
    with pytest.raises(ValueError) as e:
        files(_ctx([gz]), {}, None)
    _one_line(e, f"{gz}:2:", "invalid UTF-8")
    sur = tmp_path / "sur.jsonl"
    sur.write_text('{"text": "pair \\ud83d\\ude00 ok"}\n{"text": "lone \\ud800 bad"}\n')
    with pytest.raises(ValueError) as e:
        files(_ctx([sur]), {}, None)
    _one_line(e, f"{sur}:2:", "unpaired surrogate")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"text": "ok"}\n' * 5000)[:200])
    with pytest.raises(ValueError) as e:
        files(_ctx([cut]), {}, None)
    _one_line(e, str(cut), "unreadable compressed data")
    arrow = tmp_path / "x.arrow"
    with pa.ipc.new_stream(str(arrow), pa.schema([("body", pa.string())])) as w:
        w.write_table(pa.table({"body": ["a"]}))
    with pytest.raises(ValueError) as e:
        files(_ctx([arrow]), {}, None)
    _one_line(e, str(arrow), "no column 'text'", "columns: body")
    dd = tmp_path / "dd"
    dd.mkdir()
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(ValueError) as e:
        files(_ctx([dd]), {}, None)
    _one_line(e, str(dd), "DatasetDict", "train, test")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ValueError) as e:
        files(_ctx([plain]), {}, None)
    _one_line(e, str(plain), "not a datasets save_to_disk directory", "*.jsonl.gz")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    cfg = DataConfig(data_dir=str(tmp_path / "c"), vocab_size=280,
                     sources=[{"name": "e", "kind": "files", "paths": [str(empty)]}])
    with pytest.raises(ValueError, match="source 'e' produced no documents"):
        prepare_data(cfg, progress=False, workers=1)


# --- the streamed pipeline against the old in-memory one ---------------------------------

def _default_like(tmp_path: Path) -> DataConfig:
    root = tmp_path / "text"
    root.mkdir()
    (root / "notes.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in _rows(400, 1)))
    (root / "prose.txt").write_text("\n\n".join(_rows(300, 2)))
    return DataConfig(data_dir=str(tmp_path / "cache"), vocab_size=400, sources=[
        {"name": "code", "kind": "code", "max_chars": 120_000},  # a builtin kind (the stdlib)
        {"name": "notes", "kind": "files", "paths": [str(root / "notes.jsonl")], "weight": 2.0},
        {"name": "ood", "kind": "files", "role": "ood", "paths": [str(root / "prose.txt")],
         "options": {"chunk_chars": 300}},
    ])


def _in_memory_reference(cfg: DataConfig, tokenizer_dir: Path) -> tuple[dict, str]:
    """The pipeline before streaming, spelled out: all documents in a list, split by
    `split_docs`, BPE trained on the first 3M chars of each train split, every document
    encoded and followed by EOS."""
    from nexus_optim.data.tokenizer import load_tokenizer, train_bpe

    splits = {}
    for s in cfg.sources:
        ctx = BuildContext(data_dir=cfg.data_dir, seed=cfg.seed, name=s.name, paths=list(s.paths))
        docs = files(ctx, s.options, s.max_chars) if s.kind == "files" else build_part(s.kind, ctx, s.options,
                                                                                      s.max_chars)
        is_val = np.ones(len(docs), bool) if s.role == "ood" else split_docs(len(docs), cfg.val_fraction,
                                                                            cfg.seed, s.name)
        splits[s.name] = {"val": [d for d, v in zip(docs, is_val) if v]}
        if s.role == "train":
            splits[s.name]["train"] = [d for d, v in zip(docs, is_val) if not v]

    def texts():
        for s in cfg.sources:
            total = 0
            for d in splits[s.name].get("train", []):
                if total >= 3_000_000:
                    break
                total += len(d)
                yield d

    path = train_bpe(texts(), cfg.vocab_size, tokenizer_dir / "tokenizer.json")
    tok = load_tokenizer(path)
    eos = tok.eos_token_id
    tokens = {(n, sp): np.array([t for d in ds for t in tok(d, add_special_tokens=False)["input_ids"] + [eos]])
              for n, sp_ in splits.items() for sp, ds in sp_.items()}
    return tokens, Path(path).read_bytes()


def test_streaming_equals_the_in_memory_pipeline_token_for_token(tmp_path):
    cfg = _default_like(tmp_path)
    data = prepare_data(cfg, progress=False, workers=2)
    ref, ref_tok = _in_memory_reference(cfg, tmp_path)
    assert Path(data.tokenizer_path).read_bytes() == ref_tok
    got = {(n, sp): np.asarray(data.load(n, sp)) for n in data.shards for sp in data.shards[n]}
    assert set(got) == set(ref)
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k
    assert data.dtype == "uint16" and not data.shard_sets


# --- shard sets and resume ---------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    (root / "a.jsonl.gz").write_bytes(gzip.compress(
        "".join(json.dumps({"text": r}) + "\n" for r in _rows(3000, 3)).encode()))
    (root / "b.txt").write_text("\n\n".join(_rows(1500, 4)))
    return root


def _cfg(root: Path, data_dir: Path, **kw) -> DataConfig:
    return DataConfig(data_dir=str(data_dir), vocab_size=300, sources=[
        {"name": "a", "kind": "files", "paths": [str(root / "a.jsonl.gz")]},
        {"name": "b", "kind": "files", "role": "ood", "paths": [str(root / "b.txt")],
         "options": {"chunk_chars": 500}},
    ], **kw)


@pytest.fixture(scope="module")
def whole(corpus, tmp_path_factory):
    """The corpus prepared as one shard per split (the reference for the sharded runs)."""
    return prepare_data(_cfg(corpus, tmp_path_factory.mktemp("whole")), progress=False, workers=1)


def _arrays(data):
    return {(s, sp): np.asarray(data.load(s, sp)) for s in data.shards for sp in data.shards[s]}


def test_shard_sets_read_as_one_array(corpus, whole, tmp_path):
    data = prepare_data(_cfg(corpus, tmp_path / "c"), progress=False, workers=1, shard_tokens=5000)
    train = data.load("a", "train")
    assert isinstance(train, ShardSet) and len(data.shard_sets["a"]["train"]) >= 4
    ref = np.asarray(whole.load("a", "train"))
    assert len(train) == len(ref) and train.dtype == ref.dtype
    for lo, hi in [(0, 10), (4990, 5030), (0, len(ref)), (len(ref) - 7, len(ref)), (100, 100)]:
        assert np.array_equal(train[lo:hi], ref[lo:hi])
    assert train[-1] == ref[-1] and train[5001] == ref[5001]
    for k, v in _arrays(whole).items():
        assert np.array_equal(_arrays(data)[k], v)
    # the split's checksum is the token stream's: the same however it is sharded
    assert data.checksums == whole.checksums and data.fingerprint() == whole.fingerprint()
    data.verify()
    shard = Path(data.shards["a"]["train"]).with_name("train.2.bin")
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256 of the shard set"):
        data.verify()
    keep = {p: p.stat().st_mtime_ns for p in shard.parent.glob("train*.bin") if p.name in ("train.bin", "train.1.bin")}
    with pytest.warns(CacheWarning, match=r"train.2.bin.*re-tokenizing source 'a'"):
        again = prepare_data(_cfg(corpus, tmp_path / "c"), progress=False, workers=1, shard_tokens=5000)
    assert {p: p.stat().st_mtime_ns for p in keep} == keep  # the shards before the bad one were kept
    assert again.checksums == whole.checksums


def test_interrupted_tokenization_resumes_after_the_finished_shards(corpus, whole, tmp_path, monkeypatch):
    cfg = _cfg(corpus, tmp_path / "c")
    real = tokenize_stage.build_shard

    def stop_after_two(*a, on_shard=None, **k):
        def record(entries):
            on_shard(entries)
            if len(entries) == 2:
                raise KeyboardInterrupt
        return real(*a, on_shard=record, **k)

    monkeypatch.setattr(tokenize_stage, "build_shard", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, progress=False, workers=1, shard_tokens=4000)
    monkeypatch.undo()
    sdir = next((tmp_path / "c" / "shards").glob("*/a-*"))
    first = {p.name: p.stat().st_mtime_ns for p in sdir.glob("*.bin")}
    assert sorted(first) == ["train.1.bin", "train.bin"] and not (sdir / "meta.json").exists()
    assert not list(sdir.glob("*.tmp*"))
    data = prepare_data(cfg, progress=False, workers=1, shard_tokens=4000)
    assert {n: (sdir / n).stat().st_mtime_ns for n in first} == first
    assert data.checksums == whole.checksums
    assert not list(sdir.glob("*.progress.json"))


def test_killed_preparation_resumes(corpus, whole, tmp_path):
    """A real SIGKILL in the middle of tokenizing: the finished shards are verified and kept."""
    cfg = _cfg(corpus, tmp_path / "c", tokenizer=whole.tokenizer_path)
    # The child kills itself with a real SIGKILL right after it records the 2nd finished shard
    # of a/train: a fixed point mid-preparation, whatever the machine's speed (a parent that
    # polls and kills from outside raced a fast machine: the preparation could finish first).
    script = textwrap.dedent("""
        import json, os, signal, sys
        from nexus_optim.data import DataConfig, prepare_data, tokenize_stage
        write = tokenize_stage._write_json
        def write_then_die(path, obj, *args, **kwargs):
            write(path, obj, *args, **kwargs)
            if (path.name == "train.progress.json" and path.parent.name.startswith("a-")
                    and len(obj["shards"]) >= 2):
                os.kill(os.getpid(), signal.SIGKILL)
        tokenize_stage._write_json = write_then_die
        cfg = DataConfig.from_dict(json.loads(sys.argv[1]))
        prepare_data(cfg, progress=False, workers=1, shard_tokens=1500)
    """)
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cfg.to_dict())], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the preparation was not killed (rc {proc.returncode})"
    (progress,) = (tmp_path / "c").glob("shards/*/a-*/train.progress.json")
    assert len(json.loads(progress.read_text())["shards"]) == 2
    sdir = progress.parent
    done = json.loads(progress.read_text())["shards"]
    stamps = {e["file"]: (sdir / e["file"]).stat().st_mtime_ns for e in done}
    assert not (sdir / "meta.json").exists()
    data = prepare_data(cfg, progress=False, workers=1, shard_tokens=1500)
    assert {f: (sdir / f).stat().st_mtime_ns for f in stamps} == stamps
    assert data.checksums == whole.checksums and not list(sdir.glob("*.tmp*"))


# --- tokenizers ---------------------------------------------------------------------------

def _word_tokenizer(path: Path, size: int) -> list[str]:
    """A word-level tokenizer.json with ``size`` entries (EOS last); returns its words."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(size - 2)]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}, "<|endoftext|>": size - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return words


def test_vocabulary_above_65535_gets_uint32_shards(tmp_path):
    words = _word_tokenizer(tmp_path / "tokenizer.json", 70_000)
    rng = random.Random(0)
    rows = [" ".join(rng.choice(words[-5000:] + words[:50]) for _ in range(30)) for _ in range(200)]
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    cfg = DataConfig(data_dir=str(tmp_path / "c"), tokenizer=str(tmp_path / "tokenizer.json"),
                     sources=[{"name": "a", "kind": "files", "paths": [str(f)]}])
    data = prepare_data(cfg, progress=False, workers=1)
    assert data.dtype == "uint32" and data.vocab_size == 70_000 and data.eos_id == 69_999
    toks = np.asarray(data.load("a", "train"))
    assert toks.dtype == np.uint32 and int(toks.max()) == 69_999 and (toks > 65_535).sum() > 1000
    docs = read_docs(next((tmp_path / "c" / "docs").glob("a-*/train.jsonl")))
    want = [int(w[1:]) + 1 for d in docs for w in d.split()]
    assert [t for t in toks.tolist() if t != 69_999] == want
    assert data.tokenizer_sha256 and data.tokenizer_path == str((tmp_path / "tokenizer.json").resolve())


def test_bpe_sample_of_a_large_source_is_bounded_seeded_and_spread(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "TOKENIZER_CHARS_PER_SOURCE", 20_000)
    rows = _rows(4000, 5)  # ~400 K chars: 20x the budget
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    cfg = DataConfig(data_dir=str(tmp_path / "c"), vocab_size=300,
                     sources=[{"name": "a", "kind": "files", "paths": [str(f)]}])
    prepare_data(cfg, progress=False, workers=1)
    cache = cache_mod.Cache(cfg, Path(cfg.data_dir), 1, _Log(False))
    sample = list(cache.tokenizer_texts())
    assert sample == list(cache.tokenizer_texts())  # seeded
    assert 20_000 <= sum(map(len, sample)) < 20_000 + max(map(len, rows))
    train = read_docs(cache.doc_dirs["a"] / "train.jsonl")
    where = [train.index(d) for d in sample]
    assert where == sorted(where) and where[-1] > len(train) // 2  # spread over the source, in order


# --- memory ---------------------------------------------------------------------------

_RSS = """
import json, resource, sys
from nexus_optim.data import DataConfig, prepare_data
prepare_data(DataConfig.from_dict(json.loads(sys.argv[1])), progress=False, workers=1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    """Peak RSS of a whole preparation for a 2.5 MB and a 7.5 MB corpus (gzipped JSONL; both
    past the few read-ahead batches that set the plateau): the in-memory pipeline needed
    ~5.7x the corpus in extra memory (~28 MB more here); a few MB is allocator noise."""
    _word_tokenizer(tmp_path / "tokenizer.json", 2000)
    rng = random.Random(0)
    line = [json.dumps({"text": " ".join(f"w{rng.randrange(1998)}" for _ in range(150))}) + "\n"
            for _ in range(64)]
    peaks = {}
    for mb in (2.5, 7.5):
        f = tmp_path / f"c{mb}.jsonl.gz"
        with gzip.open(f, "wt") as out:
            size = 0
            while size < mb * 1_000_000:
                out.write(line[size % 64])
                size += len(line[size % 64])
        cfg = DataConfig(data_dir=str(tmp_path / f"d{mb}"), tokenizer=str(tmp_path / "tokenizer.json"),
                         sources=[{"name": "a", "kind": "files", "paths": [str(f)]}])
        out = subprocess.run([sys.executable, "-c", _RSS, json.dumps(cfg.to_dict())], capture_output=True,
                             text=True, check=True)
        peaks[mb] = int(out.stdout.split()[-1]) / 1024  # MiB
    assert peaks[7.5] - peaks[2.5] < 10, peaks


def test_the_130m_corpus_recipe_loads_and_holds_2_6b_tokens(tmp_path, monkeypatch):
    from nexus_optim.train.config import load_config

    repo = Path(__file__).resolve().parents[2]
    for p in ["corpus/web/a.jsonl.gz", "corpus/math/a.parquet", "corpus/heldout/a.jsonl"]:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text("x")
    (tmp_path / "corpus/code").mkdir()
    (tmp_path / "corpus/code/state.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(repo / "configs/130m-corpus.yaml")
    ranks = 8
    tokens = cfg.train.steps * cfg.optim.inner_steps * cfg.train.micro_batch_size * cfg.model.seq_len * ranks
    assert 2.55e9 < tokens < 2.65e9 and cfg.model.preset == "130m"
    assert [s.role for s in cfg.data.sources].count("ood") == 1
