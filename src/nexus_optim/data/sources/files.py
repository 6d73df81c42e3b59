"""User sources: text, JSONL (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``; a ``text`` field),
Parquet and Arrow files (needs pyarrow) and Hugging Face ``datasets`` directories
(``save_to_disk``: arrow files read with pyarrow's IPC reader, no ``datasets`` needed), given
as files, directories or globs.

Streamed: `iter_documents` reads each file in bounded pieces (lines, Parquet record batches,
Arrow record batches) and yields one document at a time, so a source is never held in memory
(a plain text file is read whole, one file at a time, and cut at blank lines). With a
``max_chars`` budget the source is read twice: first the document lengths (8 bytes per
document), then the documents that `text.budget_mask` keeps.

Bad input is a one-line ValueError naming the file (and line or row): invalid JSON, invalid
UTF-8 in a JSONL line, a row without the string field, unreadable compressed data, a missing
or non-string Parquet/Arrow column, a binary file given as text. Plain text with a few invalid
UTF-8 bytes is read with U+FFFD replacements and a warning giving the count of replaced bytes.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import warnings
import zlib
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

from nexus_optim.data.text import budget_mask, chunk_text

BINARY_SNIFF = 8192  # a NUL byte in the first 8 KiB marks a binary file (like git)
MAX_INVALID_FRACTION = 0.1  # more invalid UTF-8 than this: not text
READ_ROWS = 1024  # Parquet / Arrow rows per record batch
STREAM_VERSION = 2  # part of the documents' cache key: 2 = streamed reading


def _is_dataset_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def expand_paths(paths: list[str]) -> list[str]:
    """All files (and Hugging Face dataset directories) matched by the given paths/globs,
    sorted and de-duplicated; files inside a matched dataset directory are left to it."""
    out: set[str] = set()
    for p in paths:
        if not glob.has_magic(p) and Path(p).is_dir() and not _is_dataset_dir(Path(p)):
            raise ValueError(f"{p}: a directory that is not a datasets save_to_disk directory (no state.json); "
                             f"give its files as a glob, e.g. {str(Path(p) / '*.jsonl.gz')!r}")
        for f in glob.glob(p, recursive=True):
            if Path(f).is_file() or _is_dataset_dir(Path(f)):
                out.add(str(Path(f)))
    dirs = [d for d in out if Path(d).is_dir()]
    return sorted(f for f in out if not any(Path(d) in Path(f).parents for d in dirs))


def _dataset_files(path: str) -> list[Path]:
    """The arrow files of a ``save_to_disk`` directory, in order (from its ``state.json``)."""
    p = Path(path)
    if (p / "dataset_dict.json").is_file() and not (p / "state.json").is_file():
        try:
            splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
        except (OSError, ValueError):
            splits = []
        raise ValueError(f"{path}: a DatasetDict directory; give one split's directory instead "
                         f"(splits: {', '.join(map(str, splits)) or 'unknown'})")
    try:
        state = json.loads((p / "state.json").read_text())
        names = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}/state.json: not a datasets save_to_disk state ({e})") from None
    files = []
    for n in names:
        f = p / n
        if Path(n).is_absolute() or ".." in Path(n).parts or not f.is_file():
            raise ValueError(f"{path}/state.json: data file {n!r} is missing or outside the directory")
        files.append(f)
    return files


def source_files(paths: list[str]) -> list[str]:
    """The files whose sizes and mtimes key a source's cached documents."""
    out = []
    for f in expand_paths(paths):
        if Path(f).is_dir():
            out.extend([str(Path(f) / "state.json"), *map(str, _dataset_files(f))])
        else:
            out.append(f)
    return out


def _suffix(path: str) -> str:
    name = Path(path).name.lower()
    for s in (".jsonl.gz", ".jsonl.zst", ".jsonl", ".parquet", ".arrow"):
        if name.endswith(s):
            return s
    return "dir" if Path(path).is_dir() else "text"


def _open_binary(path: str, raw) -> io.BufferedIOBase:
    if path.lower().endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if path.lower().endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise ImportError(f"reading {path} needs the zstandard package: pip install zstandard "
                              f"(or give the file as .jsonl / .jsonl.gz)") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return raw


def _jsonl(path: str, field: str, on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """Documents of a (compressed) JSONL file, one per non-blank line."""
    with open(path, "rb") as raw:
        f = _open_binary(path, raw)
        done, i = 0, 0
        try:
            while True:
                try:
                    raw_line = f.readline()
                except (OSError, EOFError, zlib.error) as e:
                    raise ValueError(f"{path}:{i + 1}: unreadable compressed data ({_first_line(e)})") from None
                except Exception as e:  # zstandard.ZstdError
                    raise ValueError(f"{path}:{i + 1}: unreadable compressed data ({_first_line(e)})") from None
                if not raw_line:
                    break
                i += 1
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}:{i}: invalid UTF-8 (byte {e.start + 1} of the line); "
                                     f"JSONL files must be UTF-8") from None
                if on_bytes is not None and i % 4096 == 0:
                    pos = raw.tell()
                    on_bytes(pos - done)
                    done = pos
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict) or not isinstance(row.get(field), str):
                    raise ValueError(f"{path}:{i}: expected a JSON object with a string field {field!r}")
                if "\\ud" in line or "\\uD" in line:  # an escaped UTF-16 surrogate: valid JSON, not valid text alone
                    try:
                        row[field].encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValueError(f"{path}:{i}: field {field!r} holds an unpaired surrogate escape "
                                         f"(\\ud800-\\udfff): not valid Unicode text") from None
                yield row[field]
        finally:
            if f is not raw:
                f.close()
        if on_bytes is not None:
            on_bytes(raw.tell() - done)


def _pyarrow(path: str):
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    return pa


def _check_column(pa, path: str, schema, field: str) -> None:
    if field not in schema.names:
        raise ValueError(f"{path}: no column {field!r} (columns: {', '.join(schema.names) or 'none'}); "
                         f"set the source's options.field")
    t = schema.field(field).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise ValueError(f"{path}: column {field!r} has type {t}, expected strings")


def _parquet(path: str, field: str, on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """Documents of a Parquet file, one per non-null row, read in record batches."""
    pa = _pyarrow(path)
    try:
        pf = pa.parquet.ParquetFile(path, pre_buffer=False)  # one row group at a time
    except Exception as e:  # ArrowInvalid etc.: not a parquet file
        raise ValueError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    _check_column(pa, path, pf.schema_arrow, field)
    rows, size, done = max(pf.metadata.num_rows, 1), Path(path).stat().st_size, 0
    seen = 0
    it = pf.iter_batches(batch_size=READ_ROWS, columns=[field], use_threads=False)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            break
        except Exception as e:
            raise ValueError(f"{path}: unreadable Parquet data after row {seen} ({_first_line(e)})") from None
        seen += batch.num_rows
        for t in batch.column(0).to_pylist():
            if isinstance(t, str):
                yield t
        if on_bytes is not None:
            pos = size * seen // rows
            on_bytes(pos - done)
            done = pos


def _arrow(path: str, field: str, on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """Documents of an Arrow IPC file (stream format, as ``datasets`` writes it, or file format)."""
    pa = _pyarrow(path)
    source = pa.OSFile(str(path))  # plain reads: a memory map would count the whole file in RSS
    try:
        try:
            reader = pa.ipc.open_stream(source)
            batches = iter(reader)
        except Exception:
            try:
                fr = pa.ipc.open_file(source)
            except Exception as e:
                raise ValueError(f"{path}: not a readable Arrow file ({_first_line(e)})") from None
            reader, batches = fr, (fr.get_batch(i) for i in range(fr.num_record_batches))
        _check_column(pa, str(path), reader.schema, field)
        k = reader.schema.get_field_index(field)
        seen = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as e:
                raise ValueError(f"{path}: unreadable Arrow data after row {seen} ({_first_line(e)})") from None
            for lo in range(0, batch.num_rows, READ_ROWS):
                for t in batch.column(k).slice(lo, READ_ROWS).to_pylist():
                    if isinstance(t, str):
                        yield t
            seen += batch.num_rows
    finally:
        source.close()
    if on_bytes is not None:
        on_bytes(Path(path).stat().st_size)


def read_text_file(path: str) -> str:
    """A plain text file as str: binary files are refused; invalid UTF-8 bytes become U+FFFD
    with a warning that counts them."""
    raw = Path(path).read_bytes()
    if b"\0" in raw[:BINARY_SNIFF]:
        raise ValueError(f"{path}: looks like a binary file (NUL bytes; UTF-16 text must be converted to "
                         f"UTF-8); kind 'files' reads UTF-8 text, .jsonl(.gz/.zst), .parquet, .arrow "
                         f"and datasets directories")
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


def _path_docs(path: str, options: dict, on_bytes=None) -> Iterator[str]:
    field = options.get("field", "text")
    kind = _suffix(path)
    if kind.startswith(".jsonl"):
        yield from _jsonl(path, field, on_bytes)
    elif kind == ".parquet":
        yield from _parquet(path, field, on_bytes)
    elif kind == ".arrow":
        yield from _arrow(path, field, on_bytes)
    elif kind == "dir":
        for f in _dataset_files(path):
            yield from _arrow(str(f), field, on_bytes)
    else:
        text = read_text_file(path)
        yield from ([text] if options.get("doc_per_file") else chunk_text(text, int(options.get("chunk_chars", 4000))))
        if on_bytes is not None:
            on_bytes(Path(path).stat().st_size)


def _all_docs(paths: list[str], options: dict, on_bytes=None) -> Iterator[str]:
    for path in expand_paths(paths):
        for d in _path_docs(path, options, on_bytes):
            if d.strip():
                yield d


def total_bytes(paths: list[str]) -> int:
    """On-disk bytes of a source's files (what progress is measured against)."""
    return sum(Path(f).stat().st_size for f in source_files(paths))


def iter_documents(ctx, options: dict, budget: int | None,
                   on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """Documents, streamed: one per JSONL line / Parquet or Arrow row; plain text files are cut
    into ~chunk_chars pieces (or kept whole with ``doc_per_file: true``). Blank documents are
    dropped. With a ``budget`` (chars), the documents `text.budget_mask` keeps (two passes).
    ``on_bytes(n)`` is called with the on-disk bytes consumed (of the last pass)."""
    if budget is None:
        yield from _all_docs(ctx.paths, options, on_bytes)
        return
    lengths = array("q")
    for d in _all_docs(ctx.paths, options):
        lengths.append(len(d))
    keep = budget_mask(lengths, budget, ctx.seed, "files")
    del lengths
    for i, d in enumerate(_all_docs(ctx.paths, options, on_bytes)):
        if keep is None or keep[i]:
            yield d


def files(ctx, options: dict, budget: int | None) -> list[str]:
    """All documents of the source as a list (`iter_documents`, for small sources and tests)."""
    return list(iter_documents(ctx, options, budget))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
