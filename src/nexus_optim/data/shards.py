"""Token shards: documents -> a *shard set* per (source, split), EOS after every document.

A shard is a raw little-endian array (``.bin``, uint16 when the vocabulary fits, else uint32)
read back with ``np.memmap``. A split is written as a set of shards, ``{split}.bin``,
``{split}.1.bin``, ``{split}.2.bin``, ... (a new one starts at the first document boundary
after ``shard_tokens`` tokens), so a split that fits one shard keeps the single-file layout.
The set reads as one token array (`ShardSet`, memmaps, never read whole). Every shard is
written to a temp name and renamed, so a shard that exists is complete; ``build_shard``
reports each finished shard (tokens, documents, size, sha256) so that a killed preparation
can keep them and redo only the rest. ``file_digest`` gives the (size, sha256) recorded in
the cache's ``meta.json`` files and checked on every load (``prepare_data``); the checksum of
a whole split is the sha256 of its token stream (all shards in order), whatever the sharding.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np


class CacheError(ValueError):
    """A cache entry is corrupt or cannot be (re)built: one line naming the file."""


class CacheWarning(UserWarning):
    """A cache entry was corrupt (and is rebuilt) or could not be verified."""


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> dict:
    """``{"size": bytes, "sha256": hex}`` of a file (about 1.4 GB/s with SHA extensions)."""
    return digest_files([path], chunk)


def digest_problem(path: str | os.PathLike, expected: dict | None) -> str | None:
    """None if ``path`` matches ``expected`` (size first, then sha256), else what is wrong."""
    if not expected or "sha256" not in expected:
        return "no recorded checksum"
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size != expected["size"]:
        return f"size {size} bytes, expected {expected['size']}"
    if file_digest(path)["sha256"] != expected["sha256"]:
        return "sha256 does not match the recorded checksum"
    return None


def shard_problem(path: str | os.PathLike, tokens: int, dtype: np.dtype, vocab_size: int,
                  eos_id: int) -> str | None:
    """Cheap structural checks for a shard without a checksum (older caches): size, last token
    EOS, every id < vocab_size. None if it passes, else what is wrong."""
    dtype = np.dtype(dtype)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size != tokens * dtype.itemsize:
        return f"size {size} bytes, expected {tokens * dtype.itemsize} ({tokens} {dtype.name} tokens)"
    if tokens:
        arr = np.memmap(path, dtype=dtype, mode="r")
        top = int(arr.max())
        if top >= vocab_size:
            return f"holds token id {top} >= vocab size {vocab_size}"
        if int(arr[-1]) != eos_id:
            return "does not end with EOS"
    return None


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


SHARD_TOKENS = 1 << 27  # tokens per shard file before the next one starts (256 MiB of uint16)


def shard_file(split: str, k: int) -> str:
    """File name of shard ``k`` of a split: ``train.bin``, ``train.1.bin``, ..."""
    return f"{split}.bin" if k == 0 else f"{split}.{k}.bin"


_SHARD_RE = re.compile(r"^(?P<split>[a-z]+)(\.(?P<k>[1-9][0-9]*))?\.bin(?P<tmp>\.tmp[0-9]+)?$")


def stale_shards(directory: str | os.PathLike, split: str, keep: int) -> list[Path]:
    """Shard files of ``split`` in ``directory`` with index >= ``keep`` (left by an earlier,
    longer build) and temp files of a killed build: what a finished build removes."""
    out = []
    for p in Path(directory).glob(f"{split}*.bin*"):
        m = _SHARD_RE.match(p.name)
        if m and m["split"] == split and (m["tmp"] or int(m["k"] or 0) >= keep):
            out.append(p)
    return sorted(out)


def batch_encode(backend, docs: list[str]) -> list:
    """The tokenizers batch API on ``docs`` (multithreaded in Rust, the GIL released), without
    special tokens: ``encode_batch_fast`` (the same ids, no character offsets: ~20% faster)
    where this tokenizers has it, else ``encode_batch``."""
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    return encode(docs, add_special_tokens=False)


def encode_docs(backend, docs: list[str], eos_id: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``docs`` (the tokenizers batch API, multithreaded in Rust), EOS after each,
    as ``dtype``; and each document's end offset (EOS included) in that array."""
    ids = [e.ids for e in batch_encode(backend, docs)]
    ends = np.cumsum([len(x) + 1 for x in ids], dtype=np.int64)
    arr = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
    pos = 0
    for x, end in zip(ids, ends):
        arr[pos:end - 1] = x
        arr[end - 1] = eos_id
        pos = end
    limit = np.iinfo(dtype).max
    if arr.size and int(arr.max()) > limit:
        raise ValueError(f"token id {int(arr.max())} does not fit {np.dtype(dtype).name}")
    return arr.astype(dtype), ends


class _ShardWriter:
    """The shard being written: a temp file, renamed into place by ``close``, which appends
    its entry to ``entries`` and reports them to ``on_shard``."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, entries: list[dict], on_shard):
        self.out_dir, self.split, self.dtype, self.entries, self.on_shard = out_dir, split, dtype, entries, on_shard
        self.f = self.tmp = self.h = None
        self.tokens = self.docs = 0

    def start(self) -> None:
        k = len(self.entries)
        self.tmp = self.out_dir / (shard_file(self.split, k) + f".tmp{os.getpid()}")
        self.f = open(self.tmp, "wb")
        self.h, self.tokens, self.docs = hashlib.sha256(), 0, 0

    def write(self, b: bytes, tokens: int, docs: int) -> None:
        self.f.write(b)
        self.h.update(b)
        self.tokens += tokens
        self.docs += docs

    def close(self) -> None:
        self.f.close()
        name = shard_file(self.split, len(self.entries))
        os.replace(self.tmp, self.out_dir / name)
        self.f = self.tmp = None
        self.entries.append({"file": name, "tokens": self.tokens, "docs": self.docs,
                             "size": self.tokens * self.dtype.itemsize, "sha256": self.h.hexdigest()})
        if self.on_shard is not None:
            self.on_shard(self.entries)

    def abort(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.tmp is not None and self.tmp.exists():
            self.tmp.unlink()


def build_shard(batches: Iterable[list[str]], tokenizer, eos_id: int, out_dir: str | os.PathLike,
                split: str, dtype: np.dtype, shard_tokens: int = SHARD_TOKENS, kept: Sequence[dict] = (),
                stream_hash=None, on_shard: Callable[[list[dict]], None] | None = None,
                on_batch: Callable[[int, int], None] | None = None) -> tuple[list[dict], object]:
    """Tokenize document batches (a ``tokenizers.Tokenizer`` or a transformers fast tokenizer)
    into the shard set of ``split`` in ``out_dir``, after the already finished shards ``kept``.

    Each finished shard is renamed into place and appended to the list passed to ``on_shard``
    as ``{"file", "tokens", "docs", "size", "sha256"}``; ``stream_hash`` (a sha256 object that
    has seen the kept shards) is updated with every byte. Returns (all shard entries, the
    stream hash). ``on_batch(docs, tokens)`` reports progress.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    dtype = np.dtype(dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [dict(e) for e in kept]
    stream = stream_hash if stream_hash is not None else hashlib.sha256()
    shard = _ShardWriter(out_dir, split, dtype, entries, on_shard)
    try:
        for docs in batches:
            if not docs:
                continue
            arr, ends = encode_docs(backend, docs, eos_id, dtype)
            pos, d = 0, 0
            while d < len(docs):
                if shard.f is None:
                    shard.start()
                room = shard_tokens - shard.tokens  # > 0: a full shard is closed at once
                # documents d..j-1: up to the first one that fills the shard (at least one)
                j = min(int(np.searchsorted(ends, pos + room, side="left")) + 1, len(docs))
                chunk = arr[pos:ends[j - 1]]
                b = chunk.tobytes()
                shard.write(b, chunk.size, j - d)
                stream.update(b)
                pos, d = int(ends[j - 1]), j
                if shard.tokens >= shard_tokens:
                    shard.close()
            if on_batch is not None:
                on_batch(len(docs), arr.size)
        if shard.f is not None or not entries:
            if shard.f is None:
                shard.start()
            shard.close()
    finally:
        shard.abort()
    return entries, stream


class ShardSet:
    """Several shard files read as one token array: ``len``, ``dtype``, slicing (only the
    slice is read, through memmaps opened on first use) and ``np.asarray`` (reads it whole)."""

    def __init__(self, paths: Sequence[str], tokens: Sequence[int], dtype):
        self.paths, self.dtype = [str(p) for p in paths], np.dtype(dtype)
        self.counts = np.asarray(tokens, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self._maps: dict[int, np.ndarray] = {}
        self.shape = (int(self.offsets[-1]),)
        self.ndim = 1

    def __len__(self) -> int:
        return self.shape[0]

    def _map(self, k: int) -> np.ndarray:
        if k not in self._maps:
            self._maps[k] = load_shard(self.paths[k], self.dtype)
        return self._maps[k]

    def __getitem__(self, idx):
        n = len(self)
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + (n if idx < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {idx} out of range for {n} tokens")
            k = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self._map(k)[i - self.offsets[k]]
        if not isinstance(idx, slice):
            raise TypeError(f"ShardSet indices are ints or slices, not {type(idx).__name__}")
        start, stop, step = idx.indices(n)
        if step != 1:
            return np.asarray(self[start:stop])[::step] if stop > start else np.zeros(0, self.dtype)
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        k0 = int(np.searchsorted(self.offsets, start, side="right")) - 1
        k1 = int(np.searchsorted(self.offsets, stop - 1, side="right")) - 1
        if k0 == k1:
            o = self.offsets[k0]
            return self._map(k0)[start - o:stop - o]
        parts = [self._map(k)[max(start - self.offsets[k], 0):min(stop, self.offsets[k + 1]) - self.offsets[k]]
                 for k in range(k0, k1 + 1)]
        return np.concatenate(parts)

    def __array__(self, dtype=None, copy=None):
        arr = self[0:len(self)]
        return np.asarray(arr, dtype=dtype) if dtype is not None else np.asarray(arr)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()


def digest_files(paths: Sequence[str | os.PathLike], chunk: int = 1 << 22) -> dict:
    """``{"size", "sha256"}`` of the concatenation of ``paths`` (a split's token stream)."""
    h = hashlib.sha256()
    size = 0
    for path in paths:
        with open(path, "rb") as f:
            while True:
                b = f.read(chunk)
                if not b:
                    break
                h.update(b)
                size += len(b)
    return {"size": size, "sha256": h.hexdigest()}


def load_shard(path: str | os.PathLike, dtype: np.dtype) -> np.ndarray:
    """Read-only memmap of a shard (an empty array for an empty file)."""
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
