"""Small text utilities shared by the source builders: chunking, budgets, stable hashes, splits."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence

import numpy as np

_BLANK = re.compile(r"\n[ \t]*\n")


def stable_hash(obj, n: int = 16) -> str:
    """Hex digest of a JSON-able object (sorted keys): used for cache keys."""
    s = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.blake2b(s.encode("utf-8"), digest_size=16).hexdigest()[:n]


def unit_hash(*parts) -> float:
    """A deterministic number in [0, 1) from the given parts."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def chunk_text(text: str, target: int = 4000) -> list[str]:
    """Split ``text`` at blank lines into pieces of roughly ``target`` chars (never mid-paragraph,
    except a single paragraph longer than 4*target, which is cut at line ends)."""
    text = text.strip("\n")
    if len(text) <= target:
        return [text] if text.strip() else []
    paras = [p for p in _BLANK.split(text) if p.strip()]
    return _pack((piece for p in paras for piece in _cut_long(p, 4 * target)), target, "\n\n")


def _pack(pieces, limit: int, sep: str) -> list[str]:
    """Greedily join consecutive pieces with ``sep`` into chunks of about ``limit`` chars."""
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for piece in pieces:
        if cur and size + len(piece) > limit:
            out.append(sep.join(cur))
            cur, size = [], 0
        cur.append(piece)
        size += len(piece) + len(sep)
    if cur:
        out.append(sep.join(cur))
    return out


def _cut_long(p: str, limit: int) -> list[str]:
    return [p] if len(p) <= limit else _pack(p.split("\n"), limit, "\n")


def take_budget(docs: Sequence[str], budget: int | None, seed: int, salt: str = "") -> list[str]:
    """A deterministic random subset of ``docs`` with at most ~``budget`` chars, in original order."""
    keep = budget_mask([len(d) for d in docs], budget, seed, salt)
    return list(docs) if keep is None else [d for d, k in zip(docs, keep) if k]


def budget_mask(lengths: Sequence[int], budget: int | None, seed: int, salt: str = "") -> np.ndarray | None:
    """Which documents `take_budget` keeps, from their lengths alone (a streamed source reads
    its lengths first): documents in a seeded random order until ``budget`` chars are
    reached; None when everything fits."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if budget is None or int(lengths.sum()) <= budget:
        return None
    rng = np.random.default_rng([seed, int(stable_hash(salt, 8), 16)])
    order = rng.permutation(len(lengths))
    before = np.cumsum(lengths[order]) - lengths[order]  # chars taken before each pick
    keep = np.zeros(len(lengths), dtype=bool)
    keep[order[before < budget]] = True
    return keep


def take_files(files: Sequence[str], read, budget: int | None, seed: int, salt: str = "") -> list[str]:
    """Read files in a seeded random order until ``budget`` chars are collected; returns texts."""
    order = range(len(files)) if budget is None else np.random.default_rng(
        [seed, int(stable_hash(salt, 8), 16)]).permutation(len(files))
    picked, total = {}, 0
    for i in order:
        if budget is not None and total >= budget:
            break
        t = read(files[i])
        if t and t.strip():
            picked[int(i)] = t
            total += len(t)
    return [picked[i] for i in sorted(picked)]


def split_docs(n_docs: int, val_fraction: float, seed: int, salt: str = "") -> np.ndarray:
    """Boolean mask (True = val) from a hash of (seed, salt, doc index).

    Guarantees at least one val and one train document when there are >= 2 documents.
    """
    u = np.array([unit_hash(seed, salt, i) for i in range(n_docs)])
    is_val = u < val_fraction
    if n_docs >= 2:
        if not is_val.any():
            is_val[int(np.argmin(u))] = True
        if is_val.all():
            is_val[int(np.argmax(u))] = False
    return is_val


def clean_lines(lines: Iterable[str]) -> str:
    """Join lines, stripping trailing spaces."""
    return "\n".join(line.rstrip() for line in lines)
