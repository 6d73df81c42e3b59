"""Atomic checkpoints: a directory written under a temporary name, then renamed.

    out_dir/checkpoints/step_000100/
        model.safetensors   weights (tied weights stored once)
        optimizer.pt        optimizer + scheduler state
        trainer.pt          sampler position, RNG states, step, tokens
        config.yaml, meta.json
A crash mid-write leaves only a ``.tmp-*`` directory, which is ignored and cleaned.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

_STEP_DIR = re.compile(r"^step_(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_root: str | Path, step: int, model: torch.nn.Module,
                    optimizer_state: dict, trainer_state: dict, config_yaml: str,
                    meta: dict, keep: int = 2) -> Path:
    """Write ``ckpt_root/step_{step:06d}`` atomically; keep the newest ``keep``."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    for f in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are skipped)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    ckpts = list_checkpoints(ckpt_root)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> tuple[dict, dict]:
    """Load weights into ``model``; return (optimizer_state, trainer_state)."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise ValueError(f"checkpoint: {str(path)!r} is not a checkpoint directory (no model.safetensors)")
    load_model(model, str(path / "model.safetensors"))
    opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    return opt, trainer
