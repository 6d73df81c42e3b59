"""User sources: text, JSONL (a ``text`` field) and Parquet (needs pyarrow) files or globs.

Bad input is a one-line ValueError naming the file (and line, for JSONL): invalid JSON,
invalid UTF-8 in a JSONL line, a row without the string field, a missing or non-string
Parquet column, a binary file given as text. Plain text with a few invalid UTF-8 bytes is
read with U+FFFD replacements and a warning giving the count of replaced bytes.
"""

from __future__ import annotations

import glob
import json
import warnings
from pathlib import Path

from nexus_optim.data.text import chunk_text, take_budget

BINARY_SNIFF = 8192  # a NUL byte in the first 8 KiB marks a binary file (like git)
MAX_INVALID_FRACTION = 0.1  # more invalid UTF-8 than this: not text


def expand_paths(paths: list[str]) -> list[str]:
    """All files matched by the given paths/globs, sorted and de-duplicated."""
    out: set[str] = set()
    for p in paths:
        out.update(f for f in glob.glob(p, recursive=True) if Path(f).is_file())
    return sorted(out)


def _jsonl(path: str, field: str) -> list[str]:
    docs = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid UTF-8 (byte {e.start + 1} of the line); "
                                 f"JSONL files must be UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise ValueError(f"{path}:{i}: expected a JSON object with a string field {field!r}")
            docs.append(row[field])
    return docs


def _parquet(path: str, field: str) -> list[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # ArrowInvalid etc.: not a parquet file
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: not a readable Parquet file ({msg})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise ValueError(f"{path}: no column {field!r} (columns: {', '.join(names) or 'none'}); "
                         f"set the source's options.field")
    col = pf.read(columns=[field]).column(field)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ValueError(f"{path}: column {field!r} has type {col.type}, expected strings")
    return [t for t in col.to_pylist() if isinstance(t, str)]


def read_text_file(path: str) -> str:
    """A plain text file as str: binary files are refused; invalid UTF-8 bytes become U+FFFD
    with a warning that counts them."""
    raw = Path(path).read_bytes()
    if b"\0" in raw[:BINARY_SNIFF]:
        raise ValueError(f"{path}: looks like a binary file (NUL bytes; UTF-16 text must be converted to "
                         f"UTF-8); kind 'files' reads UTF-8 text, .jsonl and .parquet")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    escaped = raw.decode("utf-8", errors="surrogateescape")
    bad = sum(1 for c in escaped if "\udc80" <= c <= "\udcff")
    if bad > MAX_INVALID_FRACTION * len(raw):
        raise ValueError(f"{path}: not UTF-8 text ({bad} of {len(raw)} bytes invalid); "
                         f"convert it to UTF-8 (e.g. iconv) or remove it from the source")
    warnings.warn(f"{path}: {bad} invalid UTF-8 byte(s) replaced by U+FFFD", UserWarning, stacklevel=2)
    return raw.decode("utf-8", errors="replace")


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
            text = read_text_file(path)
            docs.extend([text] if options.get("doc_per_file") else chunk_text(text, chunk))
    return take_budget([d for d in docs if d.strip()], budget, ctx.seed, "files")
