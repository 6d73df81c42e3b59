"""Validation losses per source: mean next-token NLL (nats/token) and bits/byte.

    loss_s   = (1/N_s) sum_t -log p(x_t | x_<t)      over the first ``max_tokens`` of
                                                     source s's val split, in windows
    bits/byte = loss_s * N_s / (ln 2 * B_s)          B_s = UTF-8 bytes of those tokens
    in-distribution loss = sum_s w_s loss_s / sum_s w_s   over train sources (weights w_s)
"""

from __future__ import annotations

import contextlib
import math

import torch

from nexus_optim.data.windows import iter_eval_windows


def autocast_for(device: torch.device, bf16: bool):
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def token_nll(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token NLL in nats, number of predicted tokens) for a batch."""
    logits = model(input_ids=input_ids).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
    return float(nll), targets.numel()


@torch.no_grad()
def source_loss(model, tokens, seq_len: int, batch_size: int, max_tokens: int | None,
                device: torch.device, bf16: bool = True) -> tuple[float, int]:
    """Mean NLL (nats/token) over deterministic windows of a token array; (loss, n_tokens)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in iter_eval_windows(tokens, seq_len, batch_size, max_tokens):
            with autocast_for(device, bf16):
                s, n = token_nll(model, batch.to(device))
            total, count = total + s, count + n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"eval: a val split has fewer than {seq_len} tokens")
    return total / count, count


def evaluate_sources(model, prepared, seq_len: int, batch_size: int, max_tokens: int | None,
                     device: torch.device, bf16: bool = True) -> dict[str, float]:
    """``{"val/<source>": loss}`` for every source, plus ``val/id`` (weighted train
    sources) and ``val/ood`` (mean over ood sources)."""
    out: dict[str, float] = {}
    for name, splits in prepared.shards.items():
        if "val" in splits:
            out[f"val/{name}"], _ = source_loss(model, prepared.load(name, "val"), seq_len,
                                                batch_size, max_tokens, device, bf16)
    out.update(pooled_losses(out, prepared.roles, prepared.weights))
    return out


def pooled_losses(losses: dict[str, float], roles: dict[str, str],
                  weights: dict[str, float]) -> dict[str, float]:
    train = [(weights[s], losses[f"val/{s}"]) for s, r in roles.items()
             if r == "train" and f"val/{s}" in losses and weights[s] > 0]
    ood = [losses[f"val/{s}"] for s, r in roles.items() if r == "ood" and f"val/{s}" in losses]
    out = {}
    if train:
        out["val/id"] = sum(w * l for w, l in train) / sum(w for w, _ in train)
    if ood:
        out["val/ood"] = sum(ood) / len(ood)
    return out


def bits_per_byte(loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    return loss_nats * n_tokens / (math.log(2) * n_bytes)
