"""Load what a run wrote, for ``nexus eval`` / ``export`` / ``geometry``: a checkpoint's
weights and config, and the run's own prepared data.

What is read (docs/reliability.md, "Safe loading"):

* ``model.safetensors`` (safetensors: no code), ``config.yaml`` (safe YAML with limits),
  ``meta.json`` (step, tokens) and ``prepared.json`` (the prepared data the run trained
  on: tokenizer and shard paths). Never ``optimizer.pt`` or ``trainer.pt``.
* The data is the run's recorded prepared cache, or the same files under ``data_dir``
  (a copy of that cache). Nothing is built from the checkpoint's ``config.yaml`` (its
  sources can name any file, or package downloads) unless ``prepare=True``; the data
  section of that config is not even validated (its globs are not expanded).
* Files are verified against ``checksums.json``; for a run directory, a damaged newest
  checkpoint is named in a warning and the previous complete one is used.
* The run's data files are verified against the SHA-256 the run recorded (from any
  directory: new runs record absolute paths; a relative path recorded by an older run is
  read from the current directory only if its checksum matches).
* A training run may prune the checkpoint being read (``keep_checkpoints``): a reader of a
  run directory whose checkpoint disappears mid-read takes the newest one again (up to
  ``PRUNED_RETRIES`` times) instead of failing.
* ``export_checkpoint`` writes only into a new or empty directory or a previous export
  (`models.export.export_hf`), never inside a run's ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch

from nexus_optim.models.export import export_hf
from nexus_optim.runtime import one_line
from nexus_optim.train.checkpoint import (MANIFEST, WEIGHT_FILES, CheckpointError,
                                          find_checkpoint, load_weights, read_manifest, read_meta,
                                          verify_checkpoint)

#: files ``nexus eval`` reads from a checkpoint, hashed before use when listed
READ_FILES = (*WEIGHT_FILES, "meta.json", "prepared.json")
#: times a reader of a run directory takes the newest checkpoint again when the one it
#: chose was pruned by a training run while it read it
PRUNED_RETRIES = 5


def _verify_for_reading(ckpt: Path) -> None:
    manifest = read_manifest(ckpt)
    listed = READ_FILES if manifest is None else [f for f in READ_FILES if f in manifest["files"]]
    if not verify_checkpoint(ckpt, need=WEIGHT_FILES, digest=listed, legacy_ok=True,
                             only=listed):
        warnings.warn(f"checkpoint {str(ckpt)!r} has no {MANIFEST} (written by an older nexus): "
                      "its files are not verified", RuntimeWarning, stacklevel=3)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir (verified), or a run dir (-> its newest checkpoint whose weights
    and config verify; damaged newer ones are named in a warning)."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        _verify_for_reading(p)
        return p
    if not p.is_dir():
        raise ValueError(f"checkpoint: {str(p)!r} is neither a checkpoint nor a run directory")
    for _ in range(PRUNED_RETRIES + 1):
        ckpt, bad = find_checkpoint(p / "checkpoints", need=WEIGHT_FILES, digest=READ_FILES,
                                    legacy_ok=True, only=READ_FILES)
        # one that vanished while being verified was pruned by a training run, not damaged
        if all(b.exists() for b, _ in bad) and (ckpt is None or ckpt.exists()):
            break
    bad = [(b, reason) for b, reason in bad if b.exists()]
    if ckpt is None:
        if bad:
            why = "; ".join(f"{b.name}: {reason}" for b, reason in bad[:3])
            raise CheckpointError(f"checkpoint: no usable checkpoint in {str(p / 'checkpoints')!r} ({why})")
        raise ValueError(f"checkpoint: {str(p)!r} is neither a checkpoint nor a run directory with checkpoints")
    for b, reason in bad:
        warnings.warn(f"checkpoint {str(b)!r} is damaged ({reason}); using the previous complete "
                      f"checkpoint {ckpt.name!r}", RuntimeWarning, stacklevel=2)
    if read_manifest(ckpt) is None:
        warnings.warn(f"checkpoint {str(ckpt)!r} has no {MANIFEST} (written by an older nexus): "
                      "its files are not verified", RuntimeWarning, stacklevel=2)
    return ckpt


def run_dir_of(ckpt: Path) -> Path | None:
    ckpt = Path(ckpt).resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


# ------------------------------------------------------------------------------ config
def _unchecked_data_config(d):
    """The data section as a DataConfig for information only: not validated (no glob of
    its paths, no source built)."""
    from nexus_optim.data.config import DataConfig, SourceConfig

    dc = object.__new__(DataConfig)
    d = d if isinstance(d, dict) else {}
    for f in dataclasses.fields(DataConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        setattr(dc, f.name, d.get(f.name, default))
    try:
        dc.sources = [SourceConfig.from_dict(s, f"data.sources[{i}]")
                      for i, s in enumerate(d.get("sources") or [])]
    except (ValueError, TypeError):
        dc.sources = []
    return dc


def checkpoint_config(ckpt: str | Path, validate_data: bool = False, data_dir: str | None = None):
    """The Config of a checkpoint (``config.yaml``; safe YAML). Its data section is only
    validated (and ``data_dir`` substituted) with ``validate_data``."""
    from nexus_optim.train.config import from_dict, read_yaml

    f = Path(ckpt) / "config.yaml"
    try:
        raw = read_yaml(f, "checkpoint")  # limits: size, depth, aliases; duplicate keys refused
    except ValueError as e:
        raise CheckpointError(f"checkpoint: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint: {str(f)!r} does not hold a config mapping")
    try:
        if validate_data:
            raw = dict(raw)
            data = dict(raw.get("data") or {})
            if data_dir is not None:
                data["data_dir"] = str(data_dir)
            raw["data"] = data
            return from_dict(raw)
        cfg = from_dict({k: v for k, v in raw.items() if k != "data"})
    except ValueError as e:
        raise CheckpointError(f"checkpoint: {str(f)!r}: {e}") from None
    cfg.data = _unchecked_data_config(raw.get("data"))
    return cfg


# -------------------------------------------------------------------------------- data
def _rebase(path: str, old_root: Path, new_root: Path) -> str:
    try:
        return str(new_root / Path(path).relative_to(old_root))
    except ValueError:  # outside the recorded cache (e.g. a data.tokenizer file): as is
        return path


def recorded_data(ckpt: str | Path, data_dir: str | Path | None = None):
    """The run's own PreparedData (``prepared.json`` of the checkpoint, else of its run
    dir); with ``data_dir``, the same files under that copy of the cache. Reads only."""
    from nexus_optim.data.prepare import PreparedData

    ckpt = Path(ckpt)
    run = run_dir_of(ckpt)
    candidates = [ckpt / "prepared.json"] + ([run / "prepared.json"] if run else [])
    src = next((c for c in candidates if c.is_file()), None)
    if src is None:
        raise ValueError(
            f"checkpoint {str(ckpt)!r} does not record its prepared data (no prepared.json: a "
            "run from an older nexus); pass --prepare-data to build the data from its "
            "config.yaml (runs the sources it names: only for runs you trust)")
    names = {f.name for f in dataclasses.fields(PreparedData)}
    try:
        d = json.loads(src.read_text())
        prepared = PreparedData(**{k: v for k, v in d.items() if k in names})
        prepared.check_paths()  # dtype, counts, shard paths inside data_dir: before opening any
        if not isinstance(prepared.tokenizer_path, str) or not all(
                isinstance(p, str) for splits in prepared.shards.values() for p in splits.values()):
            raise TypeError("paths must be strings")
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint: {str(src)!r} is damaged ({type(e).__name__}: "
                              f"{one_line(e, 200)})") from None
    old_root = Path(prepared.data_dir) if prepared.data_dir else None
    if data_dir is not None:
        new_root = Path(data_dir).resolve()
        if not new_root.is_dir():
            raise ValueError(f"--data-dir: {str(data_dir)!r} is not a directory")
        if old_root is None:
            raise CheckpointError(f"checkpoint: {str(src)!r} records no data_dir to map onto --data-dir")
        prepared.tokenizer_path = _rebase(prepared.tokenizer_path, old_root, new_root)
        prepared.shards = {s: {split: _rebase(p, old_root, new_root) for split, p in splits.items()}
                           for s, splits in prepared.shards.items()}
        prepared.data_dir = str(new_root)
    files = [prepared.tokenizer_path, *(p for s in prepared.shards.values() for p in s.values())]
    for p in files:
        if not Path(p).is_file():
            where = f"--data-dir {str(data_dir)!r}" if data_dir is not None else f"the run's data cache {str(old_root)!r}"
            raise ValueError(
                f"the run's prepared data is missing: {p!r} ({where}, recorded in {str(src)!r}); "
                "pass --data-dir DIR (a copy of that cache), or --prepare-data to rebuild it "
                "from the checkpoint's config.yaml")
    # the run's own cache or a copy of it: the same bytes as the run's (recorded sha256)
    if not prepared.checksums or not prepared.tokenizer_sha256:
        warnings.warn(f"{str(src)!r} records no checksums (an older nexus): the run's data files "
                      "are not verified", RuntimeWarning, stacklevel=2)
    prepared.verify()
    return prepared


def load_trained(path: str | Path, device: str | torch.device = "cpu",
                 data_dir: str | Path | None = None, prepare: bool = False):
    """(model in eval mode, Config, PreparedData, {"step", "tokens"}) from a checkpoint
    directory or a run directory (its newest usable checkpoint).

    Data: the run's recorded prepared data (``data_dir``: a copy of that cache);
    ``prepare=True`` builds it from the checkpoint's config instead (into ``data_dir``
    if given): only for checkpoints you trust.
    """
    for attempt in range(PRUNED_RETRIES + 1):
        ckpt = resolve_checkpoint(path)
        try:
            return _load_trained(ckpt, device, data_dir, prepare)
        except (ValueError, OSError):
            # a run dir's checkpoint pruned mid-read by a training run: the newest again
            if ckpt.exists() or Path(path).resolve() == ckpt.resolve() or attempt == PRUNED_RETRIES:
                raise
    raise AssertionError("unreachable")


def _load_trained(ckpt: Path, device, data_dir, prepare):
    from nexus_optim.models.presets import build_model

    cfg = checkpoint_config(ckpt, validate_data=prepare,
                            data_dir=str(data_dir) if data_dir is not None else None)
    if prepare:
        from nexus_optim.data.prepare import prepare_data

        prepared = prepare_data(cfg.data, progress=False)
    else:
        prepared = recorded_data(ckpt, data_dir)
    tokenizer = prepared.tokenizer()
    if prepared.vocab_size and len(tokenizer) != prepared.vocab_size:
        raise ValueError(f"tokenizer {prepared.tokenizer_path!r} has {len(tokenizer)} tokens, the "
                         f"run's had {prepared.vocab_size}: not the run's tokenizer")
    model = build_model(cfg.model.preset, vocab_size=len(tokenizer),
                        max_seq_len=cfg.model.seq_len, **cfg.model.overrides)
    load_weights(ckpt, model)
    meta = read_meta(ckpt)
    state = {"step": meta.get("step"), "tokens": meta.get("tokens"), "checkpoint": ckpt}
    return model.to(device).eval(), cfg, prepared, state


def export_checkpoint(path: str | Path, out_dir: str | Path, data_dir: str | Path | None = None,
                      prepare: bool = False) -> Path:
    """`export_hf` of a checkpoint directory or a run directory's newest usable checkpoint
    (weights, config and the run's tokenizer only; ``data_dir`` / ``prepare`` as for
    `load_trained`)."""
    from nexus_optim.models.export import check_export_dir
    from nexus_optim.train.rundir import refuse_run_files

    refuse_run_files(out_dir, "export")  # before loading anything: refused targets cost nothing
    check_export_dir(out_dir)
    model, cfg, prepared, state = load_trained(path, data_dir=data_dir, prepare=prepare)
    ckpt = state["checkpoint"]
    meta = {"checkpoint": str(ckpt.resolve()), "step": state.get("step"),
            "tokens": state.get("tokens"), "preset": cfg.model.preset, "seq_len": cfg.model.seq_len}
    return export_hf(model.float(), prepared.tokenizer(), out_dir, max_length=cfg.model.seq_len, meta=meta)
