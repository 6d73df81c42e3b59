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

``optim.inner_lr_scale``: "absolute" (default) passes ``optim.inner_lr`` as gamma;
"lr_sqrt_params" reads it as a fraction r of the outer step's length and passes
gamma = r * lr * sqrt(#trainable params) (``optim/gamma.inner_lr_from_relative``, with the
per_tensor correction; docs/algorithm.md, "A scale-free gamma"). The absolute value is in
the optimizer's param groups (``inner_lr``) and so in the checkpoint and ``meta.yaml``.
"""

from __future__ import annotations

import torch

from nexus_optim.optim import Nexus, recipes
from nexus_optim.optim.factory import param_groups
from nexus_optim.optim.gamma import SCALES, inner_lr_from_relative
from nexus_optim.optim.mixed import MuonAdamW, muon_param_groups
from nexus_optim.train.config import OptimConfig
from nexus_optim.train.step import ACCUMULATE, PER_MICRO_BATCH, StepProtocol


def _adam(cfg: OptimConfig) -> dict:
    return dict(betas=tuple(cfg.betas), eps=cfg.eps)


def _nexus_common(cfg: OptimConfig, seed: int, inner_sync: str | None) -> dict:
    return dict(inner_steps=cfg.inner_steps, max_grad_norm=cfg.max_grad_norm,
                inner_lr_follows_lr=cfg.inner_lr_follows_lr, seed=seed, inner_sync=inner_sync)


def _groups(cfg: OptimConfig, model: torch.nn.Module) -> list[dict]:
    return param_groups(model, cfg.weight_decay, cfg.no_decay_norms_and_biases)


def _muon_groups(cfg: OptimConfig, model: torch.nn.Module) -> list[dict]:
    return muon_param_groups(model, cfg.weight_decay, cfg.no_decay_norms_and_biases)


def inner_lr(cfg: OptimConfig, groups: list[dict], inner_norm: str) -> float:
    """The absolute gamma of ``cfg`` over ``groups`` (``optim.inner_lr_scale``, module docstring)."""
    scale = cfg.inner_lr_scale
    if scale not in SCALES:
        raise ValueError(f"optim.inner_lr_scale: {scale!r} is not one of " + ", ".join(repr(s) for s in SCALES))
    if scale == "absolute":
        return cfg.inner_lr
    try:
        return inner_lr_from_relative(cfg.inner_lr, groups, cfg.lr, inner_norm)
    except ValueError as e:
        raise ValueError(f"optim.inner_lr_scale={scale!r}: {e}") from None


def _build_adamw(cfg, model, seed, inner_sync):
    return torch.optim.AdamW(_groups(cfg, model), lr=cfg.lr, **_adam(cfg))


def _build_nexus(cfg, model, seed, inner_sync):
    groups = _groups(cfg, model)
    return Nexus(groups, lr=cfg.lr, inner_lr=inner_lr(cfg, groups, cfg.inner_norm), inner_norm=cfg.inner_norm,
                 outer_grad=cfg.outer_grad, **_nexus_common(cfg, seed, inner_sync), **_adam(cfg))


def _build_random_control(cfg, model, seed, inner_sync):
    groups = _groups(cfg, model)
    return recipes.random_control(groups, lr=cfg.lr, inner_lr=inner_lr(cfg, groups, "random"),
                                  **_nexus_common(cfg, seed, inner_sync), **_adam(cfg))


def _build_fish(cfg, model, seed, inner_sync):
    groups = _groups(cfg, model)
    for g in groups:  # outer SGD: decoupled weight decay does not apply
        g.pop("weight_decay")
    return recipes.fish(groups, inner_lr=inner_lr(cfg, groups, "none"), meta_lr=cfg.lr,
                        **_nexus_common(cfg, seed, inner_sync))


def _build_muon(cfg, model, seed, inner_sync):
    return MuonAdamW(_muon_groups(cfg, model), lr=cfg.lr, adjust_lr_fn="match_rms_adamw", **_adam(cfg))


def _build_nexus_muon(cfg, model, seed, inner_sync):
    groups = _muon_groups(cfg, model)
    return Nexus(groups, lr=cfg.lr, inner_lr=inner_lr(cfg, groups, cfg.inner_norm),
                 inner_norm=cfg.inner_norm, outer_grad=cfg.outer_grad, outer=MuonAdamW,
                 **_nexus_common(cfg, seed, inner_sync), adjust_lr_fn="match_rms_adamw",
                 **_adam(cfg))


# optim.name -> (builder(cfg, model, seed, inner_sync), how the outer step drives it)
OPTIMIZERS: dict[str, tuple] = {
    "adamw": (_build_adamw, ACCUMULATE),
    "nexus": (_build_nexus, PER_MICRO_BATCH),
    "fish": (_build_fish, PER_MICRO_BATCH),
    "random-control": (_build_random_control, PER_MICRO_BATCH),
    "muon": (_build_muon, ACCUMULATE),
    "nexus-muon": (_build_nexus_muon, PER_MICRO_BATCH),
}


def _entry(name: str) -> tuple:
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name: {name!r} is not one of "
                         + ", ".join(repr(n) for n in OPTIMIZERS))
    return OPTIMIZERS[name]


def step_protocol(name: str) -> StepProtocol:
    """How ``train/step.py`` drives the optimizer ``optim.name`` = ``name``."""
    return _entry(name)[1]


def build_optimizer(cfg: OptimConfig, model: torch.nn.Module, seed: int = 0,
                    inner_sync: str | None = "auto") -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` over ``model``'s parameter groups. ``inner_sync`` goes to
    the Nexus-based optimizers (docs/distributed.md); the accumulating ones ignore it (the
    outer step accumulates with DDP ``no_sync`` on the first K-1 backwards)."""
    return _entry(cfg.name)[0](cfg, model, seed, inner_sync)


def gamma_record(cfg: OptimConfig, opt: torch.optim.Optimizer) -> dict:
    """What a run records of its gamma (``meta.yaml``): the absolute ``inner_lr`` the optimizer
    steps with (per group, as built) and how the config's ``inner_lr`` was read; {} for an
    optimizer without inner steps."""
    vals = [g["inner_lr"] for g in opt.param_groups if "inner_lr" in g]
    if not vals:
        return {}
    return {"inner_lr_absolute": vals[0] if len(set(vals)) == 1 else vals,
            "inner_lr_scale": cfg.inner_lr_scale, "inner_lr_config": cfg.inner_lr}
