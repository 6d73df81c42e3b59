"""`Cache`: one ``data_dir`` read with verification, for `prepare_data`: the documents of
each source (`documents.py` builds them), the tokenizer (trained on a seeded sample of the
train documents unless the config names one) and each source's token shards
(`tokenize_stage.py` writes them). A bad entry is rebuilt with a `CacheWarning` when the
cache is writable, else a one-line `CacheError` names it (see prepare.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nexus_optim.data.config import DataConfig, SourceConfig
from nexus_optim.data.documents import build_documents, doc_key
from nexus_optim.data.prepared import (_need_write, _read_meta, _tokenizer_digest, _warn, _writable,
                                       _write_json, iter_docs)
from nexus_optim.data.shards import SHARD_TOKENS, CacheError, digest_problem, file_digest, shard_problem
from nexus_optim.data.text import stable_hash, unit_hash
from nexus_optim.data.tokenize_stage import shard_entries, tokenize_split

TOKENIZER_VERSION = 1
TOKENIZER_CHARS_PER_SOURCE = 3_000_000
TOKENIZER_SPREAD = 1.5  # a larger source is sampled so that the budget fills over ~1/1.5 of it


class Cache:
    """Reads one data_dir with verification; rebuilds bad entries when it may write."""

    def __init__(self, cfg: DataConfig, root: Path, workers: int, log, shard_tokens: int = SHARD_TOKENS):
        self.cfg, self.root, self.workers, self.log = cfg, root, workers, log
        self.shard_tokens = int(shard_tokens)
        self.keys = {s.name: doc_key(s, cfg) for s in cfg.sources}
        self.doc_dirs = {s.name: root / "docs" / f"{s.name}-{self.keys[s.name]}" for s in cfg.sources}
        self.metas = {n: _read_meta(d / "meta.json") for n, d in self.doc_dirs.items()}
        self.writable = _writable(root)
        self.loaded = None  # the user tokenizer, once loaded

    def build_docs(self, sources: list[SourceConfig], why: str = "") -> None:
        _need_write(self.root, f"documents of {', '.join(s.name for s in sources)}")
        self.log(f"building documents for {', '.join(s.name for s in sources)}{why}")
        build_documents(self.cfg, [(s, self.doc_dirs[s.name]) for s in sources], self.workers, self.log,
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
        """`tokenize_split` of one split, its documents verified (rebuilt if bad) first."""
        docs_path = self.docs(s, split)
        docs_sha = self.metas[s.name]["files"][split]["sha256"]
        return tokenize_split(s.name, split, docs_path, docs_sha, tok, eos, dtype, sdir, tok_sha,
                              self.shard_tokens, candidates, self.log)
