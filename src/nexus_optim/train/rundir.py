"""A run directory (``train.out_dir``): one run at a time, never silently replaced.

``open_run_dir`` is what ``Trainer`` calls first (rank 0 alone under torchrun):

* it takes an exclusive lock, ``OUT/.nexus-train.lock`` (``fcntl.flock`` on an open file,
  so the kernel drops it when the process dies, however it dies; the file records the
  holder's pid and host for the error message). A second trainer on the same directory
  fails with one line naming the directory and the holder;
* it reads the run's manifest, ``OUT/.nexus-run.json``: the top-level entries the run
  created (recorded before each is created, `record_created`), the last checkpoint step
  written and whether the run finished. Only entries listed there (and existing) are the
  run's: a command deletes nothing else. A directory written before manifests existed is
  recognised as a run by its ``meta.yaml`` or a checksummed checkpoint and adopted;
* an entry a run would write (RUN_WRITES: ``config.yaml``, ``hf/``, ...) that exists but is
  not the run's is the user's: every mode refuses, naming it, before changing anything;
* it deletes stale ``checkpoints/.tmp-*`` directories (crashes mid-write or mid-prune) of
  a ``checkpoints/`` that is the run's and not a symlink;
* it decides how the run starts (``mode``):

  ``new``              the directory must not hold a run; otherwise one line suggesting
                       --resume/--overwrite
  ``overwrite``        the previous run's own entries are deleted first (`remove_run_files`:
                       symlinks are unlinked, never followed; ``step_*.corrupt`` directories
                       are kept); other files are kept
  ``resume``           the newest verified checkpoint; none is an error (a typo in out_dir
                       must not start a new run); its config must match (`check_resume`)
  ``resume-or-start``  as ``resume`` if there is a checkpoint, else a new run (said on
                       stderr), deleting the run's entries only if it never wrote a
                       checkpoint (an attempt that died before its first one); a run whose
                       checkpoints are gone is refused (its metrics are results)

  A damaged newer checkpoint is named in a warning, moved aside to ``step_N.corrupt``
  and the previous complete one is used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
import warnings
from pathlib import Path

import yaml

from nexus_optim.runtime import one_line, write_json
from nexus_optim.train.checkpoint import (_STEP_DIR, RESUME_FILES, CheckpointError, clean_stale_tmp,
                                          find_checkpoint, list_checkpoints)

LOCK_NAME = ".nexus-train.lock"
RUN_MANIFEST = ".nexus-run.json"  # the run's own entries (see the module docstring)
#: what ``nexus train`` writes at the top of its run directory
RUN_WRITES = ("checkpoints", "config.yaml", "meta.yaml", "metrics.jsonl", "tb", "hf",
              "prepared.json")
GEOMETRY_FILE = "geometry.json"  # written by `nexus geometry` (diagnostics/), read by `nexus compare`
#: names that belong to a run (RUN_WRITES, an old temporary name, `nexus geometry`'s file)
RUN_ARTIFACTS = (*RUN_WRITES, "metrics.tmp", GEOMETRY_FILE)
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


# ----------------------------------------------------------------------------- manifest
def _exists(p: Path) -> bool:
    return p.exists() or p.is_symlink()


def read_run_manifest(out: str | Path) -> dict | None:
    """``OUT/.nexus-run.json`` (None if absent); a damaged one is a one-line ValueError."""
    f = Path(out) / RUN_MANIFEST
    if not _exists(f):
        return None
    try:
        if f.is_symlink() or not f.is_file():
            raise ValueError("not a regular file")
        data = json.loads(f.read_text())
        if not (isinstance(data, dict) and isinstance(data.get("created"), list)
                and all(isinstance(n, str) for n in data["created"])):
            raise ValueError("no 'created' list")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"train.out_dir: the run manifest {str(f)!r} is damaged ({one_line(e, 120)}); "
                         "nothing was changed: delete it to treat the directory's files as not "
                         "the run's, or choose another train.out_dir") from None
    return data


def _write_manifest(out: Path, data: dict) -> None:
    write_json(out / RUN_MANIFEST, data, sort_keys=True, newline=True)


def record_created(out: str | Path, *names: str) -> None:
    """Record top-level entries of the run directory as the run's own (before creating
    them, so that a crash in between still leaves them recorded)."""
    out = Path(out)
    data = read_run_manifest(out) or {"version": 1, "created": [], "last_checkpoint": None,
                                       "finished": False}
    new = [n for n in names if n not in data["created"]]
    if new:
        data["created"] = data["created"] + new
        _write_manifest(out, data)


def record_progress(out: str | Path, **fields) -> None:
    """Update the manifest's ``last_checkpoint`` / ``finished``."""
    out = Path(out)
    data = read_run_manifest(out) or {"version": 1, "created": [], "last_checkpoint": None,
                                       "finished": False}
    if any(data.get(k) != v for k, v in fields.items()):
        data.update(fields)
        _write_manifest(out, data)


def _legacy_run(out: Path) -> bool:
    """A run directory written before manifests: a nexus ``meta.yaml`` or a checkpoint
    with ``checksums.json``."""
    meta = out / "meta.yaml"
    if meta.is_file() and not meta.is_symlink():
        try:  # the keys run_meta writes (not parsed: read as text)
            with open(meta, encoding="utf-8", errors="replace") as f:
                text = f.read(100_000)
            if "\ntokens_per_step:" in text and "\ngit_commit:" in text:
                return True
        except OSError:
            pass
    ck = out / "checkpoints"
    return ck.is_dir() and not ck.is_symlink() and any(
        (p / "checksums.json").is_file() for p in list_checkpoints(ck))


def run_entries(out: str | Path) -> tuple[list[str], list[str]]:
    """(the run's own top-level entries that exist, entries a run would write that exist
    but are not the run's), from the manifest (or a legacy run's names)."""
    out = Path(out)
    manifest = read_run_manifest(out)
    if manifest is not None:
        ours = [n for n in manifest["created"] if n in RUN_ARTIFACTS and _exists(out / n)]
    elif _legacy_run(out):
        ours = [n for n in RUN_ARTIFACTS if _exists(out / n)]
    else:
        ours = []
    foreign = [n for n in RUN_WRITES if n not in ours and _exists(out / n)]
    return ours, foreign


def run_artifacts(out: Path) -> list[str]:
    """The run's own top-level entries of ``out`` that exist."""
    return run_entries(out)[0]


def remove_run_files(out: str | Path) -> list[Path]:
    """Delete the run's own entries (`run_entries`); return what was kept inside them.

    Symlinks are unlinked, never followed. Of ``checkpoints/`` only ``step_*`` and
    ``.tmp-*`` entries are deleted: ``step_*.corrupt`` (set aside for inspection) and
    anything else stay, and so does the directory then."""
    out = Path(out)
    kept: list[Path] = []
    for name in run_entries(out)[0]:
        p = out / name
        if p.is_symlink() or not p.is_dir():
            p.unlink()
        elif name == "checkpoints":
            for q in sorted(p.iterdir()):
                if _STEP_DIR.match(q.name) or q.name.startswith(".tmp-"):
                    if q.is_dir() and not q.is_symlink():
                        shutil.rmtree(q)
                    else:
                        q.unlink()
                else:
                    kept.append(q)
            if not kept:
                p.rmdir()
        else:
            shutil.rmtree(p)
    return kept


def _check_schedule_length(ckpt: Path, old: dict, cfg) -> None:
    """``train.steps`` may change on resume only where the lr schedule the run has followed
    so far (and its next step) stays the same: a constant schedule, a wsd one before its
    decay. A cosine run re-sized would jump its lr: refused."""
    from nexus_optim.train.schedules import lr_multiplier

    before, now = old["train"].get("steps"), cfg.train.steps
    m = _STEP_DIR.match(ckpt.name)
    if before == now or not isinstance(before, int) or m is None:
        return
    if now < int(m.group(1)):
        raise ValueError(f"--resume: train.steps={now} is below the step of checkpoint "
                         f"{str(ckpt)!r} ({int(m.group(1))}): nothing would be trained; "
                         f"resume with train.steps >= {int(m.group(1))}")
    s = cfg.schedule
    for t in range(int(m.group(1)) + 1):  # the multipliers of the steps taken and the next
        a = lr_multiplier(t, before, s.kind, s.warmup_steps, s.min_lr_ratio, s.decay_fraction)
        b = lr_multiplier(t, now, s.kind, s.warmup_steps, s.min_lr_ratio, s.decay_fraction)
        if abs(a - b) > 1e-12 * max(1.0, abs(a)):
            raise ValueError(
                f"--resume: train.steps {before} -> {now} re-sizes the {s.kind} lr schedule that "
                f"checkpoint {str(ckpt)!r} has followed (its lr multiplier at step {t + 1} would "
                f"be {b:.6g}, not {a:.6g}); resume with train.steps={before}, or start a new run "
                "(train.steps may grow on resume only for a constant schedule, or a wsd one "
                "before its decay)")


def is_run_dir(d: Path) -> bool:
    """Whether ``d`` holds a nexus run (a manifest, a lock file, or a run from before manifests)."""
    return (d / RUN_MANIFEST).is_file() or (d / LOCK_NAME).is_file() or _legacy_run(d)


def refuse_run_files(path: str | Path, what: str) -> None:
    """One-line ValueError if ``path`` (an output another command is about to write) is
    inside a run's ``checkpoints/`` or a checkpoint directory, or is one of a run's own
    top-level entries (``config.yaml``, ``metrics.jsonl``, ...) or its lock / manifest.
    Both the path as given and with symlinks resolved are checked."""
    given = Path(os.path.abspath(path))
    for p in dict.fromkeys([given, given.resolve()]):
        for a in [p, *p.parents]:
            if a.name == "checkpoints" and (is_run_dir(a.parent) or bool(list_checkpoints(a))):
                raise ValueError(f"{what}: {str(path)!r} is inside the checkpoints of the run "
                                 f"{str(a.parent)!r}; nothing was written: write elsewhere")
            if (a / "checksums.json").is_file() and (a / "model.safetensors").is_file():
                raise ValueError(f"{what}: {str(path)!r} is inside the checkpoint {str(a)!r}; "
                                 "nothing was written: write elsewhere")
        if p.name in (*RUN_ARTIFACTS, RUN_MANIFEST, LOCK_NAME) and is_run_dir(p.parent):
            raise ValueError(f"{what}: {str(path)!r} is the run's own {p.name!r} in "
                             f"{str(p.parent)!r}; nothing was written: write elsewhere")


# ------------------------------------------------------------------------------ opening
def _start_fresh(out: Path) -> None:
    """Delete the run's own entries (naming what is kept) and reset the manifest to the
    entries that remain (a ``checkpoints/`` kept for its ``.corrupt`` dirs stays the run's)."""
    kept = remove_run_files(out)
    if kept:
        print(f"nexus train: kept {', '.join(str(k) for k in kept[:5])}"
              f"{' and more' if len(kept) > 5 else ''} (not deleted: set aside or not written "
              "by nexus)", file=sys.stderr)
    manifest = read_run_manifest(out)
    remaining = [n for n in (manifest or {}).get("created", []) if _exists(out / n)]
    if manifest is not None or remaining:
        _write_manifest(out, {"version": 1, "created": remaining, "last_checkpoint": None,
                              "finished": False})


def _has_results(out: Path) -> bool:
    """A run directory without a manifest whose metrics.jsonl holds an eval record."""
    f = out / "metrics.jsonl"
    try:
        return f.is_file() and '"val/' in f.read_text(errors="replace")
    except OSError:
        return True


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
    found, foreign = run_entries(out)
    if foreign:
        raise ValueError(
            f"train.out_dir {str(out)!r} holds {', '.join(foreign)}, which a run would write "
            "over and which no nexus run created here (the run manifest "
            f"{RUN_MANIFEST} does not list them); nothing was changed: move them away or "
            "choose another train.out_dir")
    if mode == "new":
        if found:
            raise ValueError(
                f"train.out_dir {str(out)!r} already holds a run ({', '.join(found)}); pass "
                "--resume to continue it, --overwrite to delete it and start again, or choose "
                "another train.out_dir")
        return None
    if "checkpoints" in found and not ckpts.is_symlink():
        clean_stale_tmp(ckpts)  # only the run's own, real checkpoints/ (never through a link)
    if mode == "overwrite":
        _start_fresh(out)
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
        manifest = read_run_manifest(out)
        wrote = (manifest or {}).get("last_checkpoint")
        if found and (wrote is not None or (manifest is None and _has_results(out))):
            what = f"wrote checkpoint step {wrote}" if wrote is not None else "has results"
            raise ValueError(
                f"--resume-or-start: the run in {str(out)!r} {what} but no checkpoint is left in "
                f"{str(ckpts)!r}; its files ({', '.join(found)}) are kept: pass --overwrite to "
                "delete them and start again, or choose another train.out_dir")
        print(f"nexus train: no checkpoint in {str(ckpts)!r}: starting a new run", file=sys.stderr)
        _start_fresh(out)  # an attempt that died before its first checkpoint
        return None
    if read_run_manifest(out) is None:  # a run from before manifests: adopt its files
        record_created(out, *found)
    check_resume(ckpt, cfg)
    if bad:
        moved = _set_aside(bad)
        for (p, reason), target in zip(bad, moved):
            warnings.warn(f"checkpoint {str(p)!r} is damaged ({reason}); moved it to "
                          f"{target.name!r} and resuming from the previous complete checkpoint "
                          f"{ckpt.name!r}", RuntimeWarning, stacklevel=3)
    return ckpt

