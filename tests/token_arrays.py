"""Test helper (importable as ``token_arrays``: tests/ is on sys.path, prepend mode):
a ``PreparedData`` over token arrays, for tests that need prepared data without a
tokenizer or a corpus. Not a conftest: tests/train has a conftest of its own, so
``from conftest import ...`` would depend on which one was imported last."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nexus_optim.data.prepare import PreparedData

def prepared_from_arrays(root, arrays: dict, roles: dict, weights: dict, vocab_size: int,
                         **fields):
    """A ``PreparedData`` over token arrays: ``arrays[(source, split)]`` written to
    ``root/<source>-<split>.bin`` (uint16); token counts filled in; ``fields`` are the
    other ``PreparedData`` fields (tokenizer_path defaults to "")."""
    shards, val_tokens, train_tokens = {}, {}, {}
    for (source, split), arr in arrays.items():
        path = Path(root) / f"{source}-{split}.bin"
        np.asarray(arr, np.uint16).tofile(path)
        shards.setdefault(source, {})[split] = str(path)
        (val_tokens if split == "val" else train_tokens)[source] = len(arr)
    fields.setdefault("tokenizer_path", "")
    return PreparedData(shards=shards, roles=roles, weights=weights, vocab_size=vocab_size,
                        dtype="uint16", val_tokens=val_tokens, train_tokens=train_tokens,
                        **fields)
