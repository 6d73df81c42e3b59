"""A run directory (``train.out_dir``): one run at a time, never silently replaced.

``open_run_dir`` is what ``Trainer`` calls first (rank 0 alone under torchrun):

* it takes an exclusive lock, ``OUT/.nexus-train.lock`` (``fcntl.flock`` on an open file,
  so the kernel drops it when the process dies, however it dies; the file records the
  holder's pid and host for the error message). A second trainer on the same directory
  fails with one line naming the directory and the holder;
* it deletes stale ``checkpoints/.tmp-*`` directories (crashes mid-write or mid-prune);
* it decides how the run starts (``mode``):

  ``new``              the directory must not hold a run (config.yaml, metrics.jsonl,
                       checkpoints/, ...); otherwise one line suggesting --resume/--overwrite
  ``overwrite``        the previous run's files are deleted first (only a run's files:
                       see RUN_ARTIFACTS; other files in the directory are kept)
  ``resume``           the newest verified checkpoint; none is an error (a typo in out_dir
                       must not start a new run); its config must match (`check_resume`)
  ``resume-or-start``  as ``resume`` if there is a checkpoint, else a new run (said on stderr)

  A damaged newer checkpoint is named in a warning, moved aside to ``step_N.corrupt``
  and the previous complete one is used.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import sys
import warnings
from pathlib import Path

import yaml

from nexus_optim.train.checkpoint import (RESUME_FILES, CheckpointError, clean_stale_tmp,
                                          find_checkpoint)

LOCK_NAME = ".nexus-train.lock"
#: what a run writes into its directory (``--overwrite`` deletes exactly these)
RUN_ARTIFACTS = ("checkpoints", "config.yaml", "meta.yaml", "metrics.jsonl", "metrics.tmp",
                 "tb", "hf", "prepared.json", "geometry.json")
GEOMETRY_FILE = "geometry.json"  # written by `nexus geometry` (diagnostics/), read by `nexus compare`
MODES = ("new", "overwrite", "resume", "resume-or-start")

#: config keys that may differ on --resume: run length, cadence, where/how it runs.
#: Everything else (optimizer, schedule, model, data, seed, tokens per step) is refused.
RESUME_MAY_CHANGE = (
    "train.steps", "train.eval_every", "train.eval_tokens", "train.eval_batch_size",
    "train.grad_sim_batches", "train.ckpt_every", "train.keep_checkpoints", "train.log_every",
    "train.device", "train.progress", "train.export_hf", "train.threads", "train.out_dir",
    "model.compile", "data.data_dir",
)


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run dir or of a checkpoint inside ``RUN/checkpoints/``."""
    p = Path(path).resolve()
    if p.parent.name == "checkpoints" and (p / "model.safetensors").is_file():
        return p.parent.parent
    return p


# ---------------------------------------------------------------------------------- lock
class RunLock:
    """An exclusive lock on a run directory, held until ``release()`` or process exit."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None
        self.owner: int | None = None  # the pid that took it (a forked child only closes its copy)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> "RunLock":
        import fcntl

        if self.fd is not None:
            return self
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise ValueError(f"train.out_dir: cannot create the run lock {str(self.path)!r} "
                             f"({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ValueError(
                f"train.out_dir {str(self.out)!r} is in use by another nexus train "
                f"({holder}); wait for it to finish or choose another train.out_dir") from None
        except OSError:  # no flock on this file system: fall back to the recorded pid
            holder = _read_holder(fd)
            pid, host = _parse_holder(holder)
            if pid and host == socket.gethostname() and pid != os.getpid() and _alive(pid):
                os.close(fd)
                raise ValueError(
                    f"train.out_dir {str(self.out)!r} is in use by another nexus train "
                    f"({holder}); wait for it to finish or choose another train.out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd, self.owner = fd, os.getpid()
        return self

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            if self.owner == os.getpid():
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
            os.close(fd)  # drops the flock (in a forked child: only the child's copy)

    def __del__(self):  # a Trainer that is never closed: the lock goes with it
        try:
            self.release()
        except Exception:
            pass


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


def _parse_holder(text: str) -> tuple[int | None, str | None]:
    parts = text.split()
    try:
        return int(parts[1]), parts[3]
    except (IndexError, ValueError):
        return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------- resume checks
def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def _normalized(d: dict) -> dict:
    """A config dict with every schema default filled in (old checkpoints may lack keys
    added since) and YAML-normalized values, without validating anything."""
    from nexus_optim.data.config import DataConfig, SourceConfig
    from nexus_optim.train.config import _SECTIONS

    d = yaml.safe_load(yaml.safe_dump(d, sort_keys=False)) or {}
    out: dict = {}
    for name, cls in _SECTIONS.items():
        sec = d.get(name)
        out[name] = {**_defaults(cls), **(sec if isinstance(sec, dict) else {})}
    data = d.get("data") if isinstance(d.get("data"), dict) else {}
    out["data"] = {**{k: v for k, v in _defaults(DataConfig).items() if k != "sources"}, **data}
    sources = data.get("sources")
    if isinstance(sources, list):
        src_defaults = _defaults(SourceConfig)
        out["data"]["sources"] = [{**src_defaults, **s} if isinstance(s, dict) else s for s in sources]
    else:
        out["data"]["sources"] = yaml.safe_load(yaml.safe_dump(
            [dataclasses.asdict(s) for s in DataConfig().sources]))
    return yaml.safe_load(yaml.safe_dump(out, sort_keys=False))


def config_differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every leaf that differs."""
    out: list[tuple[str, object, object]] = []

    def walk(a, b, key):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                sub = f"{key}.{k}" if key else str(k)
                if k not in a or k not in b:
                    out.append((sub, a.get(k, "<absent>"), b.get(k, "<absent>")))
                else:
                    walk(a[k], b[k], sub)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{key}[{i}]")
        elif a != b:
            out.append((key, a, b))

    walk(old, new, "")
    return out


def _may_change(key: str) -> bool:
    return key in RESUME_MAY_CHANGE


def check_resume(ckpt: Path, cfg) -> None:
    """Refuse to resume ``ckpt`` with a config that changes what the run is."""
    from nexus_optim.train.config import read_yaml

    try:
        old = read_yaml(ckpt / "config.yaml", "checkpoint")  # limits; duplicate keys refused
    except ValueError as e:
        raise CheckpointError(f"checkpoint: {e}") from None
    if not isinstance(old, dict):
        raise CheckpointError(f"checkpoint: {str(ckpt / 'config.yaml')!r} does not hold a config mapping")
    diffs = [d for d in config_differences(_normalized(old), _normalized(cfg.to_dict()))
             if not _may_change(d[0])]
    if not diffs:
        _check_schedule_length(ckpt, _normalized(old), cfg)
    if diffs:
        shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs[:4])
        more = f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
        raise ValueError(
            f"--resume: the config differs from checkpoint {str(ckpt)!r} in {shown}{more}; "
            f"resuming may change only {', '.join(RESUME_MAY_CHANGE)}; to change anything else "
            "start a new run (another train.out_dir, or --overwrite)")


# ------------------------------------------------------------------------------ opening
def run_artifacts(out: Path) -> list[str]:
    return [n for n in RUN_ARTIFACTS if (out / n).exists() or (out / n).is_symlink()]


def _remove_artifacts(out: Path) -> None:
    for name in run_artifacts(out):
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _set_aside(bad: list[tuple[Path, str]]) -> list[Path]:
    moved = []
    for p, _ in bad:
        target = p.with_name(p.name + ".corrupt")
        n = 1
        while target.exists():
            n += 1
            target = p.with_name(f"{p.name}.corrupt{n}")
        os.replace(p, target)
        moved.append(target)
    return moved


def open_run_dir(out_dir: str | Path, cfg, mode: str = "new") -> tuple[RunLock, Path | None]:
    """Lock ``out_dir`` and prepare it for ``mode`` (see the module docstring); return
    (the held lock, the checkpoint to resume from or None). Errors are one-line
    ValueErrors; the lock is released when one is raised."""
    if mode not in MODES:
        raise ValueError(f"run mode {mode!r} is not one of {', '.join(MODES)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"train.out_dir: {str(out)!r} exists and is not a directory")
    if mode == "resume" and not out.is_dir():  # a typo in out_dir: create nothing
        raise ValueError(f"--resume: train.out_dir {str(out)!r} does not exist (nothing to "
                         "resume; check the path); pass --resume-or-start to start a new run "
                         "when there is none")
    lock = RunLock(out).acquire()
    try:
        return lock, _open_locked(out, cfg, mode)
    except BaseException:
        lock.release()
        raise


def _open_locked(out: Path, cfg, mode: str) -> Path | None:
    ckpts = out / "checkpoints"
    clean_stale_tmp(ckpts)
    found = run_artifacts(out)
    if mode == "new":
        if found:
            raise ValueError(
                f"train.out_dir {str(out)!r} already holds a run ({', '.join(found)}); pass "
                "--resume to continue it, --overwrite to delete it and start again, or choose "
                "another train.out_dir")
        return None
    if mode == "overwrite":
        _remove_artifacts(out)
        return None
    ckpt, bad = find_checkpoint(ckpts, need=RESUME_FILES)
    if ckpt is None:
        if bad:
            why = "; ".join(f"{p.name}: {reason}" for p, reason in bad[:3])
            raise ValueError(f"--resume: no complete checkpoint in {str(ckpts)!r} ({why}); "
                             "nothing was changed")
        if mode == "resume":
            raise ValueError(
                f"--resume: no checkpoint in {str(ckpts)!r} to resume from (check "
                "train.out_dir); pass --resume-or-start to start a new run when there is none")
        print(f"nexus train: no checkpoint in {str(ckpts)!r}: starting a new run", file=sys.stderr)
        _remove_artifacts(out)  # an attempt that died before its first checkpoint
        return None
    check_resume(ckpt, cfg)
    if bad:
        moved = _set_aside(bad)
        for (p, reason), target in zip(bad, moved):
            warnings.warn(f"checkpoint {str(p)!r} is damaged ({reason}); moved it to "
                          f"{target.name!r} and resuming from the previous complete checkpoint "
                          f"{ckpt.name!r}", RuntimeWarning, stacklevel=3)
    return ckpt

