"""Named configurations of ``Nexus``: the baselines and controls of the study.

- ``adamw_accumulation``: inner_lr = 0, "trajectory" -> exactly AdamW with K-step
  gradient accumulation (G = mean of the K micro-batch gradients at theta_t).
- ``fish``: raw inner SGD steps (inner_norm="none"), "displacement", outer SGD:
  theta <- theta + meta_lr * (theta_K - theta), i.e. SGD with lr = meta_lr*inner_lr*K
  on G = (theta - theta_K)/(inner_lr*K) (Fish, Shi et al. 2022; Reptile).
- ``random_control``: inner moves of the same length as "global" (inner_lr) but in
  seeded random directions; no gradient-similarity objective. If Nexus' gains come
  from similarity maximisation, this control should not reproduce them.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from nexus_optim.optim.nexus import Nexus


def adamw_accumulation(params: Iterable, lr: float, inner_steps: int, **kwargs: Any) -> Nexus:
    """AdamW with K-step gradient accumulation, as a ``Nexus`` with inner_lr=0."""
    return Nexus(params, lr=lr, inner_lr=0.0, inner_steps=inner_steps,
                 outer=torch.optim.AdamW, inner_norm="global", outer_grad="trajectory", **kwargs)


def fish(params: Iterable, inner_lr: float, inner_steps: int, meta_lr: float = 0.5,
         **kwargs: Any) -> Nexus:
    """Fish / Reptile: K raw SGD steps, then theta <- theta + meta_lr*(theta_K - theta)."""
    return Nexus(params, lr=meta_lr * inner_lr * inner_steps, inner_lr=inner_lr,
                 inner_steps=inner_steps, outer=torch.optim.SGD, inner_norm="none",
                 outer_grad="displacement", **kwargs)


def random_control(params: Iterable, lr: float, inner_lr: float, inner_steps: int,
                   seed: int = 0, **kwargs: Any) -> Nexus:
    """Matched-magnitude random-direction control (trajectory reading, AdamW outer)."""
    return Nexus(params, lr=lr, inner_lr=inner_lr, inner_steps=inner_steps,
                 outer=torch.optim.AdamW, inner_norm="random", outer_grad="trajectory",
                 seed=seed, **kwargs)
