"""User sources: text, JSONL (a ``text`` field) and Parquet (needs pyarrow) files or globs."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from nexus_optim.data.text import chunk_text, take_budget


def expand_paths(paths: list[str]) -> list[str]:
    """All files matched by the given paths/globs, sorted and de-duplicated."""
    out: set[str] = set()
    for p in paths:
        out.update(f for f in glob.glob(p, recursive=True) if Path(f).is_file())
    return sorted(out)


def _jsonl(path: str, field: str) -> list[str]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise ValueError(f"{path}:{i}: expected a JSON object with a string field {field!r}")
            docs.append(row[field])
    return docs


def _parquet(path: str, field: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    table = pq.read_table(path, columns=[field])
    return [t for t in table.column(field).to_pylist() if isinstance(t, str)]


def files(ctx, options: dict, budget: int | None) -> list[str]:
    """Documents: one per JSONL line / Parquet row; plain text files are cut into ~chunk_chars pieces
    (or kept whole with ``doc_per_file: true``)."""
    field = options.get("field", "text")
    chunk = int(options.get("chunk_chars", 4000))
    docs: list[str] = []
    for path in expand_paths(ctx.paths):
        suffix = Path(path).suffix.lower()
        if suffix == ".jsonl":
            docs.extend(_jsonl(path, field))
        elif suffix == ".parquet":
            docs.extend(_parquet(path, field))
        else:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
            docs.extend([text] if options.get("doc_per_file") else chunk_text(text, chunk))
    return take_budget([d for d in docs if d.strip()], budget, ctx.seed, "files")
