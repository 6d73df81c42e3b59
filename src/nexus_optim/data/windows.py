"""Deterministic evaluation windows over a validation shard."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def num_eval_windows(n_tokens: int, seq_len: int, max_tokens: int | None = None) -> int:
    n = n_tokens if max_tokens is None else min(n_tokens, max_tokens)
    return n // seq_len


def iter_eval_windows(tokens: np.ndarray, seq_len: int, batch_size: int,
                      max_tokens: int | None = None) -> Iterator[torch.Tensor]:
    """Yield LongTensors ``[b, seq_len]`` (``b <= batch_size``; only the last batch is smaller)
    of consecutive, non-overlapping windows covering ``tokens[:max_tokens]`` in order.

    The trailing partial window (fewer than ``seq_len`` tokens) is dropped.
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError("iter_eval_windows: seq_len and batch_size must be >= 1")
    n_win = num_eval_windows(len(tokens), seq_len, max_tokens)
    for w0 in range(0, n_win, batch_size):
        w1 = min(w0 + batch_size, n_win)
        block = np.asarray(tokens[w0 * seq_len:w1 * seq_len], dtype=np.int64)
        yield torch.from_numpy(block.reshape(w1 - w0, seq_len))
