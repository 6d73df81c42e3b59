"""What every layer of the harness needs from the machine: the device, autocast, atomic
file writes and JSON-safe values. One copy of each (torch and the standard library only).

    pick_device(name)       "auto" | "cpu" | "cuda" | "cuda:N" | ... -> torch.device
    autocast_for(dev, bf16) bf16 autocast on CUDA, a no-op elsewhere
    atomic_path(path)       a tmp path beside ``path``, renamed onto it on success
    write_text / write_json / write_jsonl   atomic writes (tmp file + os.replace)
    json_safe(obj)          NaN / inf -> None, tuples -> lists (for strict JSON)
    one_line(e)             an error message on one line (capped), for one-line errors
    is_disk_full(e)         ENOSPC / EDQUOT anywhere in an exception's chain
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch


def pick_device(name: str = "auto") -> torch.device:
    """The device ``name`` (``train.device`` / ``--device``); "auto": CUDA if available.
    A CUDA device without CUDA is a ValueError naming the setting."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but no CUDA device is available")
    return torch.device(name)


def autocast_for(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when ``bf16``; a null context otherwise."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a tmp path beside ``path``; on success it replaces ``path`` (one rename, so a
    reader never sees a half-written file); on error the tmp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text write; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_safe(obj):
    """``obj`` with non-finite floats as None (strict JSON has no NaN) and tuples as lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj, indent: int | None = 1, sort_keys: bool = False,
               default=None, newline: bool = False) -> Path:
    """Atomic JSON write of ``json_safe(obj)``; returns the path."""
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, default=default)
    return write_text(path, text + ("\n" if newline else ""))


def write_jsonl(path: str | os.PathLike, rows: Iterable) -> Path:
    """Atomic JSONL write: one JSON value per line (UTF-8, not ASCII-escaped)."""
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def one_line(e: BaseException | str, limit: int = 300) -> str:
    """An exception's message (or a text) on one line, at most ``limit`` characters (then
    ``...``): what every one-line error that quotes another error uses."""
    text = " ".join(str(e).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it was raised from or during) is the file system
    running out of space or quota (ENOSPC / EDQUOT)."""
    import errno

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False
