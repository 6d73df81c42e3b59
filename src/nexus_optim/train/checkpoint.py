"""Verified, atomic checkpoints: a directory written under a temporary name, then renamed.

    out_dir/checkpoints/step_000100/
        model.safetensors   weights (tied weights stored once)
        optimizer.pt        optimizer + scheduler state (tensors and plain Python values)
        trainer.pt          sampler position, RNG states, step, tokens (idem)
        config.yaml, meta.json, prepared.json (the run's prepared data, for ``nexus eval``)
        checksums.json      size and SHA-256 of every file above, written last

Guarantees (docs/reliability.md, "Checkpoints" and "Safe loading"):

* A crash mid-write leaves only a ``.tmp-*`` directory, never a ``step_*`` one: files
  are fsynced before the rename. Replacing and pruning rename the old directory to a
  ``.tmp-*`` name first, then delete it. ``clean_stale_tmp`` removes leftovers; the
  trainer calls it on start, holding the run-directory lock.
* ``find_checkpoint`` returns the newest checkpoint whose files match their checksums
  and names every newer damaged one (the caller warns and falls back).
* ``.pt`` files are read with ``torch.load(weights_only=True)``: no object is ever
  constructed from a pickle, and any load failure is one ``CheckpointError`` line naming
  the file. ``load_weights`` reads only the model (``nexus eval`` / ``export``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from nexus_optim.runtime import one_line

_STEP_DIR = re.compile(r"^step_(\d+)$")
MANIFEST = "checksums.json"
MANIFEST_VERSION = 1
#: what resuming needs; ``nexus eval`` / ``export`` need only WEIGHT_FILES
RESUME_FILES = ("model.safetensors", "optimizer.pt", "trainer.pt", "config.yaml")
WEIGHT_FILES = ("model.safetensors", "config.yaml")
_CHUNK = 1 << 22


class CheckpointError(ValueError):
    """A checkpoint (or one of its files) is missing, damaged or refused; one line."""


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain Python values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ------------------------------------------------------------------------- file helpers
def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_atomically(path: Path, tag: str) -> None:
    """Rename ``path`` to a ``.tmp-*`` sibling (one atomic step: it stops being a
    checkpoint), then delete it. A crash in between leaves a stale ``.tmp-*`` dir."""
    trash = path.with_name(f".tmp-{tag}-{path.name}-{os.getpid()}")
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    _fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def clean_stale_tmp(ckpt_root: str | Path) -> list[Path]:
    """Delete the ``.tmp-*`` entries of ``ckpt_root`` (left by a crash mid-write or
    mid-prune). Only call while holding the run directory's lock."""
    root = Path(ckpt_root)
    removed = []
    if root.is_dir() and not root.is_symlink():  # never delete through a link
        for p in sorted(root.iterdir()):
            if p.name.startswith(".tmp-"):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# ------------------------------------------------------------------------------ saving
def save_checkpoint(ckpt_root: str | Path, step: int, model: torch.nn.Module,
                    optimizer_state: dict, trainer_state: dict, config_yaml: str,
                    meta: dict, keep: int = 2, extra_files: dict[str, str] | None = None) -> Path:
    """Write ``ckpt_root/step_{step:06d}`` atomically with its checksums; keep the
    newest ``keep``. ``extra_files``: more text files (name -> content)."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_files(tmp, step, model, optimizer_state, trainer_state, config_yaml, meta,
                     extra_files)
    except BaseException:  # e.g. disk full: free what was written, keep the older checkpoints
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        _remove_atomically(final, "replaced")
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep]:
        _remove_atomically(old, "pruned")
    return final


def _write_files(tmp: Path, step: int, model, optimizer_state, trainer_state, config_yaml, meta,
                 extra_files) -> None:
    save_model(model, str(tmp / "model.safetensors"))
    for name, obj in (("optimizer.pt", optimizer_state), ("trainer.pt", trainer_state)):
        with open(tmp / name, "wb") as f:  # through a file object, a full disk is OSError ENOSPC
            torch.save(obj, f)
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    files = {}
    for f in sorted(tmp.iterdir()):  # data on disk before the rename makes it visible
        _fsync_file(f)
        files[f.name] = {"size": f.stat().st_size, "sha256": file_digest(f)}
    manifest = tmp / MANIFEST
    manifest.write_text(json.dumps({"version": MANIFEST_VERSION, "step": step, "files": files},
                                   indent=1))
    _fsync_file(manifest)
    _fsync_dir(tmp)


# ----------------------------------------------------------------------------- finding
def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """``step_*`` directories, oldest first (temporary directories are skipped)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The newest ``step_*`` directory, verified or not (see `find_checkpoint`)."""
    ckpts = list_checkpoints(ckpt_root)
    return ckpts[-1] if ckpts else None


def read_manifest(path: str | Path) -> dict | None:
    """``checksums.json`` of a checkpoint: None if absent; CheckpointError if unreadable."""
    m = Path(path) / MANIFEST
    if not m.is_file():
        return None
    try:
        data = json.loads(m.read_text())
        files = data["files"]
        if not isinstance(files, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
                for v in files.values()):
            raise TypeError("bad entries")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint: {str(m)!r} is damaged ({type(e).__name__}: "
                              f"{one_line(e)})") from None
    return data


def verify_checkpoint(path: str | Path, need: Iterable[str] = RESUME_FILES,
                      digest: Iterable[str] | None = None, legacy_ok: bool = False,
                      only: Iterable[str] | None = None) -> bool:
    """Check a checkpoint directory; raise CheckpointError naming the first bad file.

    ``need``: files that must be present (and listed in checksums.json); ``digest``: the
    files whose SHA-256 is checked (default: all listed ones); the size of every listed
    file is checked, or only of ``need`` and ``only`` when ``only`` is given (a reader of
    the weights does not need optimizer.pt). Returns False for a checkpoint without
    checksums.json that ``legacy_ok`` accepts (written before checksums; only the
    presence of ``need`` is checked).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint: {str(path)!r} is not a directory")
    manifest = read_manifest(path)
    need = list(need)
    if manifest is None:
        if not legacy_ok:
            raise CheckpointError(f"checkpoint: {str(path / MANIFEST)!r} is missing (an incomplete "
                                  "checkpoint, or one written by an older nexus)")
        for name in need:
            if not (path / name).is_file():
                raise CheckpointError(f"checkpoint: {str(path / name)!r} is missing")
        return False
    files = manifest["files"]
    for name in need:
        if name not in files:
            raise CheckpointError(f"checkpoint: {str(path / name)!r} is not listed in {MANIFEST}")
    checked = files if only is None else {n: files[n] for n in (*need, *only) if n in files}
    try:  # a file can vanish between the checks (a pruned checkpoint): one line, never OSError
        for name, entry in checked.items():
            f = path / name
            if not f.is_file():
                raise CheckpointError(f"checkpoint: {str(f)!r} is missing")
            size = f.stat().st_size
            if size != entry["size"]:
                raise CheckpointError(f"checkpoint: {str(f)!r} has {size} bytes, {entry['size']} "
                                      "were written (truncated or damaged)")
        for name in (checked if digest is None else digest):
            if name in checked and file_digest(path / name) != files[name]["sha256"]:
                raise CheckpointError(f"checkpoint: {str(path / name)!r} does not match its "
                                      f"SHA-256 in {MANIFEST} (damaged)")
    except OSError as e:
        raise CheckpointError(f"checkpoint: cannot read {str(e.filename or path)!r} "
                              f"({e.strerror or type(e).__name__})") from None
    return True


def find_checkpoint(ckpt_root: str | Path, need: Iterable[str] = RESUME_FILES,
                    digest: Iterable[str] | None = None, legacy_ok: bool = False,
                    only: Iterable[str] | None = None
                    ) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(newest checkpoint that verifies, [(newer damaged checkpoint, why), ...]);
    arguments as for `verify_checkpoint`."""
    need = list(need)
    digest = None if digest is None else list(digest)
    only = None if only is None else list(only)
    bad: list[tuple[Path, str]] = []
    for p in reversed(list_checkpoints(ckpt_root)):
        try:
            verify_checkpoint(p, need=need, digest=digest, legacy_ok=legacy_ok, only=only)
        except CheckpointError as e:
            bad.append((p, str(e).removeprefix("checkpoint: ")))
            continue
        return p, bad
    return None, bad


# ----------------------------------------------------------------------------- loading
def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` on CPU; any failure is one CheckpointError line."""
    import pickle

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"checkpoint: refusing to load {str(path)!r}: it holds objects other than tensors "
            "and plain Python values (loaded with weights_only=True; a crafted or foreign "
            "file, or one written by an older nexus)") from None
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint: {str(path)!r} is missing") from None
    except Exception as e:  # truncated zip, bad header, ...
        raise CheckpointError(f"checkpoint: cannot load {str(path)!r} ({type(e).__name__}: "
                              f"{one_line(e)})") from None


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load ``model.safetensors`` of a checkpoint into ``model`` (strict)."""
    f = Path(path) / "model.safetensors"
    if not f.is_file():
        raise CheckpointError(f"checkpoint: {str(Path(path))!r} is not a checkpoint directory "
                              "(no model.safetensors)")
    try:
        load_model(model, str(f))
    except Exception as e:
        raise CheckpointError(f"checkpoint: cannot load {str(f)!r} into the model "
                              f"({type(e).__name__}: {one_line(e)})") from None


def load_checkpoint(path: str | Path, model: torch.nn.Module, verify: bool = True
                    ) -> tuple[dict, dict]:
    """Verify, load weights into ``model``; return (optimizer_state, trainer_state)."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"checkpoint: {str(path)!r} is not a checkpoint directory "
                              "(no model.safetensors)")
    if verify:
        verify_checkpoint(path, need=RESUME_FILES)
    load_weights(path, model)
    opt = safe_torch_load(path / "optimizer.pt")
    trainer = safe_torch_load(path / "trainer.pt")
    for name, obj in (("optimizer.pt", opt), ("trainer.pt", trainer)):
        if not isinstance(obj, dict):
            raise CheckpointError(f"checkpoint: {str(path / name)!r} holds a "
                                  f"{type(obj).__name__}, not a dict")
    return opt, trainer


def read_meta(path: str | Path) -> dict:
    """``meta.json`` of a checkpoint ({} if absent or unreadable)."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}
