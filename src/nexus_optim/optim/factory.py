"""Build Nexus from a model in one call: parameter groups without weight decay on
norms and biases, AdamW or Muon+AdamW outside (torch only).

    opt = create_optimizer(model, lr=3e-4, inner_lr=0.05, inner_steps=4, weight_decay=0.1)
    opt = create_optimizer(model, lr=3e-4, outer="muon", adjust_lr_fn="match_rms_adamw")
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nexus_optim.optim.mixed import MuonAdamW, muon_param_groups
from nexus_optim.optim.nexus import Nexus

OUTERS = ("adamw", "muon")


def param_groups(model: nn.Module, weight_decay: float,
                 no_decay_norms_and_biases: bool = True) -> list[dict[str, Any]]:
    """Two groups: matrices (dim >= 2) with weight decay; norms, biases and other 1-d
    parameters without. Tied parameters appear once; frozen ones not at all."""
    seen, decay, no_decay = set(), [], []
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if no_decay_norms_and_biases and p.dim() < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def create_optimizer(model: nn.Module, lr: float = 3e-4, *, inner_lr: float = 0.05,
                     inner_steps: int = 4, weight_decay: float = 0.1,
                     no_decay_norms_and_biases: bool = True, outer: str = "adamw",
                     **kwargs: Any) -> Nexus:
    """``Nexus`` over the model's parameters with the usual groups.

    ``outer="adamw"``: ``torch.optim.AdamW`` on ``param_groups(model, weight_decay)``;
    ``outer="muon"``: ``MuonAdamW`` on ``muon_param_groups`` (Muon on the hidden 2-D
    matrices, AdamW on embeddings, head, norms and biases). ``kwargs`` go to ``Nexus``
    (inner_norm, outer_grad, max_grad_norm, ...) and on to the outer optimizer
    (betas, eps, adjust_lr_fn, ...).
    """
    if outer == "adamw":
        groups, cls = param_groups(model, weight_decay, no_decay_norms_and_biases), torch.optim.AdamW
    elif outer == "muon":
        groups, cls = muon_param_groups(model, weight_decay, no_decay_norms_and_biases), MuonAdamW
    else:
        raise ValueError(f"outer: {outer!r} is not one of " + ", ".join(repr(o) for o in OUTERS))
    return Nexus(groups, lr=lr, inner_lr=inner_lr, inner_steps=inner_steps, outer=cls, **kwargs)
