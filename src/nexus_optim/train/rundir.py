"""A run directory (``train.out_dir``): one run at a time, never silently replaced.

``open_run_dir`` is what ``Trainer`` calls first (rank 0 alone under torchrun):

* it takes an exclusive lock, ``OUT/.nexus-train.lock`` (``train/runlock.py``:
  ``fcntl.flock`` on an open file, so the kernel drops it when the process dies, however
  it dies; the file records the holder's pid and host for the error message). A second
  trainer on the same directory fails with one line naming the directory and the holder;
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
                       must not start a new run); its config must match (`check_resume`,
                       ``train/resume_checks.py``)
  ``resume-or-start``  as ``resume`` if there is a checkpoint, else a new run (said on
                       stderr), deleting the run's entries only if it never wrote a
                       checkpoint (an attempt that died before its first one); a run whose
                       checkpoints are gone is refused (its metrics are results)

  A damaged newer checkpoint is named in a warning, moved aside to ``step_N.corrupt``
  and the previous complete one is used.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

from nexus_optim.runtime import one_line, write_json
from nexus_optim.train.checkpoint import (_STEP_DIR, RESUME_FILES, clean_stale_tmp, find_checkpoint,
                                          list_checkpoints)
from nexus_optim.train.resume_checks import check_resume
from nexus_optim.train.runlock import LOCK_NAME, RunLock

RUN_MANIFEST = ".nexus-run.json"  # the run's own entries (see the module docstring)
#: what ``nexus train`` writes at the top of its run directory
RUN_WRITES = ("checkpoints", "config.yaml", "meta.yaml", "metrics.jsonl", "tb", "hf",
              "prepared.json")
GEOMETRY_FILE = "geometry.json"  # written by `nexus geometry` (diagnostics/), read by `nexus compare`
#: names that belong to a run (RUN_WRITES, an old temporary name, `nexus geometry`'s file)
RUN_ARTIFACTS = (*RUN_WRITES, "metrics.tmp", GEOMETRY_FILE)
MODES = ("new", "overwrite", "resume", "resume-or-start")


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run dir or of a checkpoint inside ``RUN/checkpoints/``."""
    p = Path(path).resolve()
    if p.parent.name == "checkpoints" and (p / "model.safetensors").is_file():
        return p.parent.parent
    return p


def start_mode(resume: bool | str = False, overwrite: bool = False) -> str:
    """``Trainer``'s (resume, overwrite) as an `open_run_dir` mode."""
    if overwrite:
        if resume:
            raise ValueError("--overwrite and --resume exclude each other")
        return "overwrite"
    if resume in ("or-start", "resume-or-start", "auto"):
        return "resume-or-start"
    if isinstance(resume, bool):
        return "resume" if resume else "new"
    raise ValueError(f"resume: {resume!r} is not one of False, True, 'or-start'")


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

