"""Build the optimizer named in the config; all share the same outer hyperparameters.

- ``adamw``: ``torch.optim.AdamW``; the loop accumulates K micro-batch gradients (loss/K).
- ``nexus``: ``Nexus`` with every option from the config.
- ``fish``: ``recipes.fish`` (raw inner SGD steps, displacement, outer SGD with
  lr = optim.lr * inner_lr * K, i.e. theta += lr (theta_K - theta)).
- ``random-control``: ``Nexus`` with ``inner_norm="random"`` (matched-magnitude control).
- ``muon``: ``MuonAdamW`` (``optim/mixed.py``): Muon on the hidden 2-D matrices, AdamW on
  embeddings, head, norms and biases, one lr (Moonshot's ``adjust_lr_fn="match_rms_adamw"``,
  so AdamW's lr and weight decay fit both); the loop accumulates like ``adamw``.
- ``nexus-muon``: ``Nexus`` with ``outer=MuonAdamW`` on the same groups (the paper's other
  outer optimizer); every Nexus option from the config.
"""

from __future__ import annotations

import torch

from nexus_optim.optim import Nexus, recipes
from nexus_optim.optim.factory import param_groups
from nexus_optim.optim.mixed import MuonAdamW, muon_param_groups
from nexus_optim.train.config import OptimConfig


def build_optimizer(cfg: OptimConfig, model: torch.nn.Module, seed: int = 0,
                    inner_sync: str | None = "auto") -> torch.optim.Optimizer:
    """``inner_sync`` goes to the Nexus-based optimizers (docs/distributed.md); AdamW
    ignores it (the loop accumulates with DDP ``no_sync`` on the first K-1 backwards)."""
    adam = dict(betas=tuple(cfg.betas), eps=cfg.eps)
    common = dict(inner_steps=cfg.inner_steps, max_grad_norm=cfg.max_grad_norm,
                  inner_lr_follows_lr=cfg.inner_lr_follows_lr, seed=seed,
                  inner_sync=inner_sync)
    if cfg.name in ("muon", "nexus-muon"):
        groups = muon_param_groups(model, cfg.weight_decay, cfg.no_decay_norms_and_biases)
        muon = dict(adam, adjust_lr_fn="match_rms_adamw")
        if cfg.name == "muon":
            return MuonAdamW(groups, lr=cfg.lr, **muon)
        return Nexus(groups, lr=cfg.lr, inner_lr=cfg.inner_lr, inner_norm=cfg.inner_norm,
                     outer_grad=cfg.outer_grad, outer=MuonAdamW, **common, **muon)
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_norms_and_biases)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, **adam)
    if cfg.name == "nexus":
        return Nexus(groups, lr=cfg.lr, inner_lr=cfg.inner_lr, inner_norm=cfg.inner_norm,
                     outer_grad=cfg.outer_grad, **common, **adam)
    if cfg.name == "random-control":
        return recipes.random_control(groups, lr=cfg.lr, inner_lr=cfg.inner_lr, **common, **adam)
    if cfg.name == "fish":
        for g in groups:  # outer SGD: decoupled weight decay does not apply
            g.pop("weight_decay")
        return recipes.fish(groups, inner_lr=cfg.inner_lr, meta_lr=cfg.lr, **common)
    raise ValueError(f"optim.name: {cfg.name!r} is not one of 'adamw', 'nexus', 'fish', 'random-control', "
                     "'muon', 'nexus-muon'")
