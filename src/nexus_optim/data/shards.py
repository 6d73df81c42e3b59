"""Token shards: documents -> one flat token file per (source, split), EOS after every document.

A shard is a raw little-endian array (``.bin``, uint16 when the vocabulary fits, else uint32)
read back with ``np.memmap``. Files are written to a temp name and renamed, so a shard that
exists is complete.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


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
