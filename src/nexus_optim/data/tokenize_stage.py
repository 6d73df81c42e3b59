"""The tokenize stage of `prepare_data`: one split's documents -> its shard set under
``shards/<tok>/<name>-<key>/`` (`shards.build_shard`), read in batches one ahead in a thread,
and resumed after a killed run from ``{split}.progress.json`` (the finished shards, each
verified by its sha256, are kept; the rest is redone)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from nexus_optim.data.prepared import _read_meta, _write_json
from nexus_optim.data.progress import Bar
from nexus_optim.data.shards import build_shard, digest_problem, stale_shards

BATCH_CHARS = 1 << 20  # characters per encode_batch call


def read_batches(path: Path, start: int, bar: Bar):
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


def tokenize_split(name: str, split: str, docs_path: Path, docs_sha: str, tok, eos: int, dtype: np.dtype,
                   sdir: Path, tok_sha: str, shard_tokens: int, candidates: list[dict] | None,
                   log) -> tuple[list[dict], dict]:
    """Tokenize one split (``docs_path``, whose sha256 is ``docs_sha``) of source ``name`` into
    its shard set in ``sdir``, resuming after the shards that a killed run
    (``{split}.progress.json``) or a damaged set (``candidates``) left intact: each is
    verified by its sha256 and kept, the rest is redone. Returns (shard entries, the
    split's digest: size and sha256 of the whole token stream)."""
    progress_path = sdir / f"{split}.progress.json"
    header = {"tokenizer_sha256": tok_sha, "docs_sha256": docs_sha, "dtype": dtype.name, "eos_id": eos,
              "shard_tokens": shard_tokens}
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
        log(f"{name}/{split}: kept {len(kept)} finished shard(s) ({start} docs); resuming")

    def record(entries):
        _write_json(progress_path, {**header, "shards": entries})

    total = docs_path.stat().st_size
    with Bar(log.on, f"{name}/{split}: tokenizing", total) as bar:
        entries, stream = build_shard(read_batches(docs_path, start, bar), tok, eos, sdir, split, dtype,
                                      shard_tokens, kept, stream, on_shard=record, on_batch=bar.batch)
    for p in stale_shards(sdir, split, len(entries)):
        p.unlink()
    return entries, {"size": sum(e["size"] for e in entries), "sha256": stream.hexdigest()}


def shard_entries(meta: dict, split: str) -> list[dict]:
    """The shard set of a split from a shard ``meta.json`` (one ``{split}.bin`` in caches
    written before shard sets)."""
    if "shards" in meta:
        return list(meta["shards"][split])
    return [{"file": f"{split}.bin", "tokens": meta["tokens"][split], "docs": None, **meta["files"][split]}]
