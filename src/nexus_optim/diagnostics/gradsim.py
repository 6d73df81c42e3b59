"""``nexus geometry grad-sim``: gradient cosines between train sources at a checkpoint
(the measurement is ``eval/gradsim.py``; the trainer logs it during training too)."""

from __future__ import annotations

from pathlib import Path

from nexus_optim.eval.gradsim import grad_similarity, train_sources_data
from nexus_optim.runtime import pick_device
from nexus_optim.train.artifacts import load_trained, resolve_checkpoint


def grad_sim_from_checkpoint(path: str | Path, batches: int = 8, batch_size: int | None = None,
                             seed: int = 0, device: str = "auto") -> dict:
    """``grad_similarity`` at a checkpoint (or a run dir's latest checkpoint), on the run's
    train sources; adds ``checkpoint``, ``step``, ``tokens``."""
    dev = pick_device(device)
    model, cfg, prepared, state = load_trained(path, device=dev)
    r = grad_similarity(model, train_sources_data(prepared), cfg.model.seq_len,
                        batch_size or cfg.train.micro_batch_size, batches, seed=seed,
                        bf16=cfg.train.bf16)
    return {"checkpoint": str(resolve_checkpoint(path)), "step": state.get("step"),
            "tokens": state.get("tokens"), **r}
