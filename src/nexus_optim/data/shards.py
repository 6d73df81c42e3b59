"""Token shards: documents -> one flat token file per (source, split), EOS after every document.

A shard is a raw little-endian array (``.bin``, uint16 when the vocabulary fits, else uint32)
read back with ``np.memmap``. Files are written to a temp name and renamed, so a shard that
exists is complete. ``file_digest`` gives the (size, sha256) recorded in the cache's
``meta.json`` files and checked on every load (``prepare_data``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class CacheError(ValueError):
    """A cache entry is corrupt or cannot be (re)built: one line naming the file."""


class CacheWarning(UserWarning):
    """A cache entry was corrupt (and is rebuilt) or could not be verified."""


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> dict:
    """``{"size": bytes, "sha256": hex}`` of a file (about 1.4 GB/s with SHA extensions)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            size += len(b)
    return {"size": size, "sha256": h.hexdigest()}


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


def build_shard(docs: Sequence[str], tokenizer, eos_id: int, out_path: str | os.PathLike,
                dtype: np.dtype, batch_docs: int = 512) -> int:
    """Tokenize ``docs`` (a ``tokenizers.Tokenizer`` or a transformers fast tokenizer) into ``out_path``.

    Returns the number of tokens written.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}")
    n = 0
    limit = np.iinfo(dtype).max
    try:
        with open(tmp, "wb") as f:
            for i in range(0, len(docs), batch_docs):
                encs = backend.encode_batch(list(docs[i:i + batch_docs]), add_special_tokens=False)
                ids = []
                for e in encs:
                    ids.extend(e.ids)
                    ids.append(eos_id)
                arr = np.asarray(ids, dtype=np.int64)
                if arr.size and arr.max() > limit:
                    raise ValueError(f"token id {int(arr.max())} does not fit {dtype}")
                arr.astype(dtype).tofile(f)
                n += arr.size
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def load_shard(path: str | os.PathLike, dtype: np.dtype) -> np.ndarray:
    """Read-only memmap of a shard (an empty array for an empty file)."""
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
