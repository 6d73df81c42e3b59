"""A scale-free gamma: the inner step size as a fraction of the outer step's length.

In ``inner_norm="global"`` (and ``"random"``) one inner move has length gamma in parameter
space, so the same gamma is a different fraction of an outer step at every model size and
learning rate. The outer AdamW step moves coordinate i by lr_i * m_i / (sqrt(v_i) + eps),
at most lr_i in size (exactly lr_i at the first step, and whenever a coordinate's gradient
keeps its sign), so its length is at most

    S = sqrt( sum_groups lr_g^2 * n_g )          (n_g = trainable elements of group g)

which is lr * sqrt(#params) with one lr. Expressing gamma = r * S makes r the inner move's
length relative to that outer step; docs/algorithm.md ("A scale-free gamma") derives why r,
not gamma, is what should transfer across sizes, and what it leaves out (the realized
AdamW step is rho * S with rho <= 1 the RMS of m / sqrt(v), which S does not include).

    update_scale(params, lr)                         S
    inner_lr_from_relative(r, params, lr, inner_norm)   the absolute ``inner_lr`` for Nexus

``params`` is what an optimizer takes: tensors or parameter-group dicts (a group's own
``lr`` wins over ``lr``). Tensors without ``requires_grad`` and repeated (tied) tensors are
counted once / not at all, as an optimizer would step them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

SCALES = ("absolute", "lr_sqrt_params")  # how a configured inner_lr is read


def _groups(params, lr: float | None) -> list[tuple[float, list[torch.Tensor]]]:
    items = list(params) if not isinstance(params, torch.Tensor) else [params]
    if not items:
        raise ValueError("params: empty (no parameters to measure)")
    groups = items if isinstance(items[0], dict) else [{"params": items}]
    out, seen = [], set()
    for i, g in enumerate(groups):
        if not isinstance(g, dict):
            raise TypeError("params: mix of tensors and parameter-group dicts")
        g_lr = g.get("lr", lr)
        if g_lr is None:
            raise ValueError(f"params[{i}]: no 'lr' in the group and no lr given")
        if not (isinstance(g_lr, (int, float)) and math.isfinite(g_lr) and g_lr >= 0):
            raise ValueError(f"params[{i}] lr: {g_lr!r} is not a finite number >= 0")
        ps = g["params"]
        ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        mine = []
        for p in ps:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                mine.append(p)
        out.append((float(g_lr), mine))
    return out


def update_scale(params: Iterable, lr: float | None = None) -> float:
    """S = sqrt(sum over groups of lr_g^2 * trainable elements): the length of an outer step
    that moves every trainable coordinate by its group's lr (module docstring)."""
    return math.sqrt(sum(g_lr * g_lr * sum(p.numel() for p in ps) for g_lr, ps in _groups(params, lr)))


def n_tensors(params: Iterable) -> int:
    """Trainable tensors, each counted once (``inner_norm="per_tensor"``'s T)."""
    return sum(len(ps) for _, ps in _groups(params, 0.0))


def inner_lr_from_relative(relative: float, params: Iterable, lr: float | None = None,
                           inner_norm: str = "global") -> float:
    """The absolute ``inner_lr`` whose inner move has length ``relative * update_scale``.

    "global" and "random": gamma = r S (one move has length gamma). "per_tensor": a move has
    length gamma sqrt(T) (T trainable tensors; docs/algorithm.md), so gamma = r S / sqrt(T).
    "none" (Fish) moves by gamma ||g||, a length no constant gamma fixes: refused."""
    if not (isinstance(relative, (int, float)) and math.isfinite(relative) and relative >= 0):
        raise ValueError(f"relative inner_lr: {relative!r} is not a finite number >= 0")
    if inner_norm in ("global", "random"):
        return float(relative) * update_scale(params, lr)
    if inner_norm == "per_tensor":
        return float(relative) * update_scale(params, lr) / math.sqrt(n_tensors(params))
    raise ValueError(f"inner_norm: {inner_norm!r} has no fixed move length; a relative inner_lr needs "
                     f"'global', 'per_tensor' or 'random'")
