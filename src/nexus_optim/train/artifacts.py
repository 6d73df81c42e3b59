"""Load what a run wrote: a checkpoint's model with its config and prepared data."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from nexus_optim.data.prepare import prepare_data
from nexus_optim.models.presets import build_model
from nexus_optim.train.checkpoint import latest_checkpoint, load_checkpoint
from nexus_optim.train.config import Config, from_dict


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, or a run dir (-> its latest checkpoint)."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    latest = latest_checkpoint(p / "checkpoints")
    if latest is None:
        raise ValueError(f"checkpoint: {str(p)!r} is neither a checkpoint nor a run directory with checkpoints")
    return latest


def load_trained(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, Config, PreparedData, checkpoint trainer state) from a
    checkpoint directory or a run directory (its latest checkpoint)."""
    ckpt = resolve_checkpoint(path)
    cfg: Config = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    prepared = prepare_data(cfg.data, progress=False)
    tokenizer = prepared.tokenizer()
    model = build_model(cfg.model.preset, vocab_size=len(tokenizer),
                        max_seq_len=cfg.model.seq_len, **cfg.model.overrides)
    _, trainer_state = load_checkpoint(ckpt, model)
    return model.to(device).eval(), cfg, prepared, trainer_state
