"""Functional core of Nexus: inner moves and outer gradients over tensor lists.

Every function takes plain lists of tensors and uses ``torch._foreach_*`` so that
the hot path has no per-parameter Python loop. Notation (one outer step):

    anchor = theta_0
    theta_k = theta_{k-1} - gamma * d(g_k),        k = 1..K
    G_traj  = (1/K) * sum_k g_k                     (raw gradients along the path)
    G_disp  = (anchor - theta_K) / (gamma * K)      (= mean of the moves' directions)

with the direction d(g) chosen by ``inner_norm``:

    global      d = g / (||g||_2 + eps), norm over all parameters
    per_tensor  d_i = g_i / (||g_i||_2 + eps), each tensor by its own norm
    none        d = g                               (Fish / Reptile raw step)
    random      d = u / ||u||_2, u ~ N(0, I)        (same length as "global")
"""

from __future__ import annotations

import torch
from torch import Tensor

INNER_NORMS = ("global", "per_tensor", "none", "random")
OUTER_GRADS = ("trajectory", "displacement")


def tensor_norms(tensors: list[Tensor]) -> list[Tensor]:
    """Per-tensor L2 norms, computed in fp32 (fp64 if any tensor is fp64)."""
    if not tensors:
        return []
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return torch._foreach_norm(tensors, 2.0, dtype=dtype)


def global_norm(tensors: list[Tensor], norms: list[Tensor] | None = None) -> Tensor:
    """||concat(tensors)||_2 as an fp32 scalar tensor (0 for an empty list)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    norms = tensor_norms(tensors) if norms is None else norms
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2.0)


def random_directions(
    like: list[Tensor], generator: torch.Generator, eps: float
) -> list[Tensor]:
    """Gaussian directions shaped like ``like`` (fp32), scaled to unit global norm.

    One flat ``randn`` per call (no per-parameter RNG calls), split into views.
    """
    total = sum(t.numel() for t in like)
    flat = torch.randn(total, generator=generator, device=like[0].device, dtype=torch.float32)
    flat.div_(torch.linalg.vector_norm(flat) + eps)
    return [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in like]), like)]


def inner_move_(
    params: list[Tensor],
    directions: list[Tensor],
    step_size: float,
) -> None:
    """theta <- theta - step_size * d, in place."""
    if params and step_size != 0.0:
        torch._foreach_add_(params, directions, alpha=-step_size)


def normalized_directions(
    grads: list[Tensor],
    mode: str,
    total_norm: float,
    norms: list[Tensor],
    eps: float,
) -> tuple[list[Tensor], float]:
    """Directions d(g) and a scalar factor: the move is ``factor * d``.

    For ``global`` and ``none`` the gradients themselves are returned (no copy) with
    factor 1/(||g||+eps) or 1; for ``per_tensor`` new tensors g_i/(||g_i||+eps).
    """
    if mode == "global":
        return grads, 1.0 / (total_norm + eps)
    if mode == "none":
        return grads, 1.0
    if mode == "per_tensor":
        denom = torch._foreach_add(norms, eps)
        denom = [d.to(g.dtype) for d, g in zip(denom, grads)]
        return torch._foreach_div(grads, denom), 1.0
    raise ValueError(f"inner_norm: {mode!r} has no gradient-based direction")


def accumulate_(accumulators: list[Tensor], grads: list[Tensor]) -> None:
    """acc <- acc + g (>= fp32 accumulators, any grad dtype)."""
    if accumulators:
        torch._foreach_add_(accumulators, grads)


def trajectory_gradient_(
    grads: list[Tensor], accumulators: list[Tensor], count: int
) -> None:
    """grad <- (1/count) * sum_k g_k from the accumulators, then zero the accumulators."""
    if not grads:
        return
    torch._foreach_mul_(accumulators, 1.0 / count)
    torch._foreach_copy_(grads, accumulators)
    torch._foreach_zero_(accumulators)


def displacement_gradient_(
    grads: list[Tensor], anchors: list[Tensor], params: list[Tensor], scale: float
) -> None:
    """grad <- scale * (anchor - theta_K), computed in the anchors' precision (>= fp32)."""
    if not grads:
        return
    if all(g.dtype == a.dtype for g, a in zip(grads, anchors)):
        torch._foreach_copy_(grads, anchors)
        torch._foreach_sub_(grads, params)
        torch._foreach_mul_(grads, scale)
    else:
        diff = torch._foreach_sub(anchors, [p.to(a.dtype) for p, a in zip(params, anchors)])
        torch._foreach_mul_(diff, scale)
        torch._foreach_copy_(grads, diff)


def restore_(params: list[Tensor], anchors: list[Tensor]) -> None:
    """theta <- anchor (exact: the anchor is a >= fp32 copy of theta_0)."""
    if params:
        torch._foreach_copy_(params, anchors)


def snapshot_(anchors: list[Tensor], params: list[Tensor]) -> None:
    """anchor <- theta (>= fp32 copy)."""
    if params:
        torch._foreach_copy_(anchors, params)
