"""What `prepare_data` (``data/prepare.py``) returns and reads back: the `PreparedData`
record of a prepared mixture, the documents files, cache metadata and the small helpers
of the cache that hold no build logic."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from nexus_optim.data.config import SourceConfig
from nexus_optim.data.shards import (CacheError, CacheWarning, ShardSet, digest_files, digest_problem,
                                     file_digest, load_shard, shard_file)
from nexus_optim.data.text import stable_hash
from nexus_optim.runtime import write_json


#: the token dtypes `prepare_data` writes (``shards.token_dtype``)
TOKEN_DTYPES = ("uint16", "uint32")


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
    tokenizer_sha256: str = ""  # of tokenizer.json (a dir tokenizer: of its files)
    checksums: dict[str, dict[str, str]] = field(default_factory=dict)  # source -> split -> shard sha256
    sources: list[str] = field(default_factory=list)  # source names in config order
    # source -> split -> [[file name, tokens], ...] for a split written as several shards (the
    # files sit next to shards[source][split], its first one); checksums[source][split] is then
    # the sha256 of the whole token stream (all shards in order)
    shard_sets: dict[str, dict[str, list]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_values()
        # JSON written with sorted keys (prepared-*.json, a run's prepared.json) loses the
        # config's source order, which fixes eval and logging order: restore it from the list
        if self.sources and set(self.sources) == set(self.shards):
            for name in ("shards", "roles", "weights", "val_bytes", "val_tokens", "train_tokens", "checksums",
                         "shard_sets"):
                d = getattr(self, name)
                setattr(self, name, {s: d[s] for s in self.sources if s in d})

    def _check_values(self) -> None:
        """On construction: ``dtype`` one of TOKEN_DTYPES, counts non-negative integers
        (one-line ValueError naming the field)."""
        if self.dtype not in TOKEN_DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {', '.join(map(repr, TOKEN_DTYPES))}")
        for name in ("vocab_size", "eos_id"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {v!r}")
        if self.vocab_size and self.eos_id >= self.vocab_size:
            raise ValueError(f"eos_id: {self.eos_id} is not below vocab_size {self.vocab_size}")
        for name in ("roles", "weights", "val_bytes", "val_tokens", "train_tokens", "checksums", "shard_sets"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name}: expected a mapping, got {type(getattr(self, name)).__name__}")
        for source, w in self.weights.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
                raise ValueError(f"weights[{source!r}]: expected a finite number >= 0, got {w!r}")
        for source, role in self.roles.items():
            if role not in ("train", "ood"):
                raise ValueError(f"roles[{source!r}]: expected 'train' or 'ood', got {role!r}")
        for name in ("val_bytes", "val_tokens", "train_tokens"):
            for source, n in getattr(self, name).items():
                if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                    raise ValueError(f"{name}[{source!r}]: expected an integer >= 0, got {n!r}")
        if not isinstance(self.shards, dict) or not all(isinstance(v, dict) for v in self.shards.values()):
            raise ValueError("shards: expected {source: {split: path}}")

    def check_paths(self) -> None:
        """For a record read from a file (`from_json`, a run's ``prepared.json``), before any
        file it names is opened: every shard path must be a ``.bin`` file under the recorded
        ``data_dir`` (``prepare_data`` writes ``<data_dir>/shards/<key>/<source>-<key>/<split>.bin``),
        without ``..``, and not leaving ``data_dir`` through a symlink (a cache whose
        ``shards/`` links elsewhere is refused too). One-line ValueError naming the field."""
        if not isinstance(self.tokenizer_path, str) or not self.tokenizer_path:
            raise ValueError(f"tokenizer_path: expected a path, got {self.tokenizer_path!r}")
        if not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir: expected a path, got {self.data_dir!r}")
        root = os.path.normpath(self.data_dir) if self.data_dir else None
        real_root = os.path.realpath(root) if root else None
        for source, splits in self.shards.items():
            for split, path in splits.items():
                where = f"shards[{source!r}][{split!r}]"
                if split not in ("train", "val") or not isinstance(path, str):
                    raise ValueError(f"{where}: expected a 'train' or 'val' shard path, got {path!r}")
                if root is None:
                    raise ValueError(f"{where}: {path!r} with no data_dir recorded to hold it")
                parts = Path(path).parts
                rel = os.path.relpath(os.path.normpath(path), root) if os.path.isabs(path) == os.path.isabs(root) else ".."
                rel_parts = Path(rel).parts
                if ".." in parts or rel_parts[:1] == ("..",) or rel == "." or not path.endswith(".bin"):
                    raise ValueError(f"{where}: refused {path!r}: not a .bin file under data_dir {self.data_dir!r}")
                real = os.path.realpath(path)
                if not real.startswith(real_root.rstrip(os.sep) + os.sep):
                    raise ValueError(f"{where}: refused {path!r}: a symlink out of data_dir {self.data_dir!r} "
                                     f"(to {real!r})")

    def tokenizer(self):
        """The tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
        from nexus_optim.data.tokenizer import load_tokenizer

        return load_tokenizer(self.tokenizer_path)

    def _tokens(self, source: str, split: str) -> int | None:
        return (self.val_tokens if split == "val" else self.train_tokens).get(source)

    def shard_paths(self, source: str, split: str) -> list[tuple[str, int | None]]:
        """(path, tokens) of each shard of a split, in order (one for most splits)."""
        try:
            path = self.shards[source][split]
        except KeyError:
            raise KeyError(f"no {split!r} shard for source {source!r}; have {self.shards.get(source, {})}") from None
        entries = (self.shard_sets.get(source) or {}).get(split)
        if not entries:
            return [(path, self._tokens(source, split))]
        out, folder = [], os.path.dirname(path)
        for k, entry in enumerate(entries):
            if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[0] != shard_file(split, k)
                    or not isinstance(entry[1], int) or entry[1] < 0):
                raise CacheError(f"shard_sets[{source!r}][{split!r}][{k}]: {entry!r} is not "
                                 f"[{shard_file(split, k)!r}, tokens]")
            out.append((os.path.join(folder, entry[0]), entry[1]))
        if sum(n for _, n in out) != self._tokens(source, split):
            raise CacheError(f"shard_sets[{source!r}][{split!r}]: the shards hold {sum(n for _, n in out)} "
                             f"tokens, the split {self._tokens(source, split)}")
        return out

    def load(self, source: str, split: str) -> np.ndarray | ShardSet:
        """Token ids of one split (documents separated by EOS): a read-only memmap, or a
        `ShardSet` (the same, over several memmaps) for a split written as several shards.

        Each file's size is checked against the recorded token count (a shard cut after
        ``prepare_data`` is a `CacheError` naming it); ``verify()`` checks the checksums."""
        parts = self.shard_paths(source, split)
        if len(parts) > 1:
            for p, n in parts:
                self._check_size(p, n)
            return ShardSet([p for p, _ in parts], [n for _, n in parts], self.dtype)
        path, n = parts[0]
        self._check_size(path, n)
        return load_shard(path, np.dtype(self.dtype))

    def _check_size(self, path: str, n: int | None) -> None:
        dtype = np.dtype(self.dtype)
        if n is not None:
            try:
                size = os.path.getsize(path)
            except OSError as e:
                raise CacheError(f"{path}: cannot read the token shard ({e.strerror or e}); "
                                 f"run `nexus data prepare` again") from None
            if size != n * dtype.itemsize:
                raise CacheError(f"{path}: size {size} bytes, expected {n * dtype.itemsize} ({n} tokens): "
                                 f"the shard changed after prepare_data; run `nexus data prepare` again")

    def verify(self) -> None:
        """Check every shard (and the tokenizer) against the recorded sha256; `CacheError` naming
        the first file that does not match."""
        for source, splits in self.shards.items():
            for split, path in splits.items():
                want = self.checksums.get(source, {}).get(split)
                if want:
                    n = self._tokens(source, split) or 0
                    parts = self.shard_paths(source, split)
                    if len(parts) > 1:  # the checksum of the token stream: all shards in order
                        for p, k in parts:
                            self._check_size(p, k)
                        problem = None if digest_files([p for p, _ in parts])["sha256"] == want else \
                            "sha256 of the shard set does not match the recorded checksum"
                    else:
                        problem = digest_problem(path, {"size": n * np.dtype(self.dtype).itemsize, "sha256": want})
                    if problem:
                        raise CacheError(f"{path}: {problem}; run `nexus data prepare` again")
        if self.tokenizer_sha256 and _tokenizer_digest(self.tokenizer_path) != self.tokenizer_sha256:
            raise CacheError(f"{self.tokenizer_path}: the tokenizer changed after prepare_data "
                             f"(sha256 differs); run `nexus data prepare` again")

    def fingerprint(self) -> str:
        """A hash of the tokenizer and the shard contents: equal fingerprints = same data
        (mixture weights excluded); "" for data prepared without checksums."""
        if not self.tokenizer_sha256 or not self.checksums:
            return ""
        return stable_hash({"tokenizer": self.tokenizer_sha256, "shards": self.checksums,
                            "roles": self.roles})

    def check_seq_len(self, seq_len: int) -> None:
        """Before training: every val split needs at least one eval window of ``seq_len`` tokens,
        every train source with weight > 0 one training window; else a one-line ValueError
        naming the source (instead of an error at the first eval)."""
        for source in self.shards:
            n = self.val_tokens.get(source, 0)
            if n < seq_len:
                raise ValueError(f"data.sources[{source!r}]: its val split has {n} tokens, fewer than "
                                 f"model.seq_len={seq_len}; add text, raise data.val_fraction or lower model.seq_len")
            if self.roles.get(source) == "train" and self.weights.get(source, 0) > 0:
                n = self.train_tokens.get(source, 0)
                if n < seq_len:
                    raise ValueError(f"data.sources[{source!r}]: its train split has {n} tokens, fewer than "
                                     f"model.seq_len={seq_len}; add text or lower model.seq_len")

    def bytes_per_token(self, source: str) -> float:
        """UTF-8 bytes per val token, to turn nats/token into bits/byte."""
        return self.val_bytes[source] / max(self.val_tokens[source], 1)

    def sources_with_role(self, role: str) -> list[str]:
        return [s for s, r in self.roles.items() if r == role]

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "PreparedData":
        """Read a ``prepared.json`` / ``prepared-<key>.json`` (`check_paths` applied); any problem
        is a one-line ValueError naming the file and the field."""
        names = {f.name for f in fields(cls)}
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(d, dict):
                raise ValueError("expected a JSON object")
            data = cls(**{k: v for k, v in d.items() if k in names})
            data.check_paths()
            return data
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a usable prepared-data record ({' '.join(str(e).split())[:400]})") from None


def read_docs(path: str | os.PathLike) -> list[str]:
    """The documents of a ``train.jsonl`` / ``val.jsonl``; a bad line is a ValueError naming
    the file and line."""
    return list(iter_docs(path))


def iter_docs(path: str | os.PathLike, start: int = 0, keep=None):
    """`read_docs`, streamed: the documents from the ``start``-th on (earlier lines are
    skipped unparsed), and only those whose index ``keep(i)`` accepts."""
    with open(path, "rb") as f:
        n = 0
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            n += 1
            if n <= start or (keep is not None and not keep(n - 1)):
                continue
            try:
                doc = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}:{i}: corrupt document line ({e})") from None
            if not isinstance(doc, str):
                raise ValueError(f"{path}:{i}: corrupt document line (expected a JSON string)")
            yield doc


def _read_meta(path: Path) -> dict | None:
    """A cache ``meta.json``, or None when missing; a corrupt one is warned about and None."""
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(meta, dict):
            return meta
    except (OSError, ValueError):
        pass
    _warn(f"{path}: corrupt cache metadata; rebuilding this entry")
    return None


def _write_json(path: Path, obj) -> None:
    """A cache ``meta.json`` (or manifest), atomically, keys sorted."""
    write_json(path, obj, sort_keys=True)


def _writable(root: Path) -> bool:
    return os.access(root, os.W_OK | os.X_OK)


def _need_write(root: Path, what: str) -> None:
    if not _writable(root):
        raise CacheError(f"data.data_dir: {str(root)!r} is not writable and {what} needs building; "
                         f"make it writable or point data.data_dir at a prepared cache")


def _warn(msg: str) -> None:
    warnings.warn(msg, CacheWarning, stacklevel=3)


def _tokenizer_digest(tok_path: str) -> str:
    """sha256 of a tokenizer.json, or of the digests of an HF tokenizer directory's files."""
    p = Path(tok_path)
    if p.is_file():
        return file_digest(p)["sha256"]
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
    return stable_hash([(str(f.relative_to(p)), file_digest(f)["sha256"]) for f in files], 64)


def _check_data_dir(root: Path) -> None:
    """data_dir must be a directory; created when missing (one-line error when it cannot be)."""
    if root.exists() and not root.is_dir():
        raise CacheError(f"data.data_dir: {str(root)!r} exists and is not a directory")
    if not root.exists():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"data.data_dir: cannot create {str(root)!r} ({e.strerror or e})") from None


def _docs_complete(meta: dict | None, s: SourceConfig) -> bool:
    """A docs dir is usable when its meta.json exists; a train source needs both splits
    (caches written before one-document sources were split could lack one)."""
    if meta is None:
        return False
    if s.role == "train":
        docs = meta.get("docs", {})
        return docs.get("train", 0) > 0 and docs.get("val", 0) > 0
    return True


def split_single_doc(doc: str, val_fraction: float, name: str = "") -> list[str]:
    """A train source with a single document: cut it into [train part, val part] at the line
    break (else space) nearest to ``(1 - val_fraction)`` of its length, so the source still
    gets a val split; a ValueError naming the source when it is too short to cut."""
    text = doc.strip()
    cut = int(round(len(text) * (1.0 - val_fraction)))
    for sep in ("\n", " "):
        cands = [i for i in range(1, len(text)) if text[i] == sep]
        if cands:
            cut = min(cands, key=lambda i: abs(i - cut))
            break
    cut = min(max(cut, 1), len(text) - 1)
    parts = [text[:cut].strip(), text[cut:].strip()]
    if len(text) < 2 or not all(parts):
        raise ValueError(f"source {name!r} has a single document of {len(text)} chars, too short to split "
                         f"into train and val; add more text (or more documents)")
    return parts


class _Log:
    def __init__(self, on: bool):
        self.on, self.t0 = on, time.time()

    def __call__(self, msg: str) -> None:
        if self.on:
            print(f"[data {time.time() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)
