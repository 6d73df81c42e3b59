"""The run's data: the training mixture (`build_sampler`), the prepared data as the run
records it (``prepared.json``, `recorded_prepared`) and the check that a resumed run
trains on the data its checkpoint recorded (`check_resume_data`)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from nexus_optim.data.prefetch import Prefetcher
from nexus_optim.data.sampler import MixtureSampler
from nexus_optim.train.checkpoint import CheckpointError
from nexus_optim.train.config import Config


def build_sampler(cfg: Config, prepared, rank: int = 0, world: int = 1,
                  pin: bool = False) -> MixtureSampler | Prefetcher:
    """The training mixture: every rank follows the same source schedule (seed) and draws
    its own windows (rank); ``world`` is unused (kept for callers). With ``train.prefetch``
    > 0, wrapped in a `Prefetcher` (a thread drawing that many micro-batches ahead; ``pin``:
    into pinned memory, for CUDA)."""
    train = {s: prepared.load(s, "train") for s, r in prepared.roles.items()
             if r == "train" and prepared.weights[s] > 0}
    sampler = MixtureSampler(train, {s: prepared.weights[s] for s in train}, cfg.model.seq_len,
                             cfg.train.micro_batch_size, mode=cfg.train.sampling,
                             group_size=cfg.optim.inner_steps,
                             shuffle_sources=cfg.train.shuffle_sources, seed=cfg.train.seed,
                             rank=rank)
    return Prefetcher(sampler, cfg.train.prefetch, pin=pin) if cfg.train.prefetch else sampler


def recorded_prepared(prepared) -> str:
    """The JSON of the run's prepared data as recorded (``prepared.json``): every path
    absolute, so that ``nexus eval`` reads the same files from any directory."""
    d = dataclasses.asdict(prepared)
    d["tokenizer_path"] = os.path.abspath(d["tokenizer_path"])
    d["shards"] = {s: {split: os.path.abspath(f) for split, f in splits.items()}
                   for s, splits in d["shards"].items()}
    if d.get("data_dir"):
        d["data_dir"] = os.path.abspath(d["data_dir"])
    return json.dumps(d, indent=1, sort_keys=True)


def check_resume_data(ckpt: Path, prepared) -> None:
    """Refuse to resume ``ckpt`` on data whose checksums differ from those it recorded
    (a shard or tokenizer changed or rebuilt since): one line naming the first one."""
    f = ckpt / "prepared.json"
    if not f.is_file():
        return  # a checkpoint from before prepared.json: nothing recorded to compare
    try:
        old = json.loads(f.read_text())
        old_sums = old.get("checksums") or {}
        old_tok = old.get("tokenizer_sha256") or ""
        if not isinstance(old_sums, dict) or not isinstance(old_tok, str):
            raise TypeError("checksums")
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"--resume: cannot read {str(f)!r} ({type(e).__name__})") from None
    diffs = []
    if old_tok and prepared.tokenizer_sha256 and old_tok != prepared.tokenizer_sha256:
        diffs.append(f"the tokenizer {prepared.tokenizer_path!r}")
    for source, splits in (prepared.checksums or {}).items():
        for split, sha in splits.items():
            was = (old_sums.get(source) or {}).get(split) if isinstance(old_sums.get(source), dict) else None
            if was and sha and was != sha:
                diffs.append(f"{source}/{split} ({prepared.shards[source][split]!r})")
    if set(old_sums) and set(prepared.checksums or {}) and set(old_sums) != set(prepared.checksums):
        diffs.append(f"the sources ({', '.join(sorted(old_sums))} in the checkpoint)")
    if diffs:
        raise ValueError(
            f"--resume: the prepared data differs from what checkpoint {str(ckpt)!r} trained on: "
            f"{', '.join(diffs[:3])}{' and more' if len(diffs) > 3 else ''} "
            "(SHA-256 differs from the checkpoint's prepared.json: the cache was changed or "
            "rebuilt); resume with the run's original data (data.data_dir), or start a new run")
