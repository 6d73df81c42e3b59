"""Learning-rate schedules as multipliers of the peak lr, over outer steps t in [0, T).

    warmup:   m(t) = (t + 1) / W                                   for t < W
    cosine:   m(t) = r + (1 - r) * (1 + cos(pi * p)) / 2,  p = (t - W) / (T - W)
    wsd:      m(t) = 1 until the last D = decay_fraction * T steps, then linear to r
    constant: m(t) = 1
with r = min_lr_ratio.
"""

from __future__ import annotations

import math

import torch


def lr_multiplier(t: int, total: int, kind: str, warmup: int, min_ratio: float,
                  decay_fraction: float = 0.2) -> float:
    if t < warmup:
        return (t + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        p = min(1.0, (t - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    if kind == "wsd":
        decay = max(1, round(decay_fraction * total))
        start = total - decay
        if t < start:
            return 1.0
        return 1.0 - (1 - min_ratio) * min(1.0, (t - start + 1) / decay)
    raise ValueError(f"schedule.kind: {kind!r} is not one of 'cosine', 'wsd', 'constant'")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, kind: str,
                    warmup_steps: int, min_lr_ratio: float, decay_fraction: float):
    """A ``LambdaLR`` stepped once per outer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda t: lr_multiplier(t, total_steps, kind, warmup_steps, min_lr_ratio, decay_fraction),
    )
