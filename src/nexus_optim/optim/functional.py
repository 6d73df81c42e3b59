"""Functional core of Nexus: inner moves and outer gradients over tensor lists.

Every function takes plain lists of tensors and uses ``torch._foreach_*`` so that
the hot path has no per-parameter Python loop, and none reads a tensor on the host:
scale factors and the "is this micro-batch finite" decision stay device tensors.
Notation (one outer step, K micro-batches, inner step size gamma):

    anchor = theta_0
    theta_k = theta_{k-1} - gamma * d(g_k),        k = 1..K
    G_traj  = (1/n) * sum_k g_k                     (raw gradients along the path)
    G_disp  = (anchor - theta_K) / (gamma * n)      (= mean of the moves' directions)

where n is the number of finite micro-batches (K when none was skipped), and the
direction d(g) is chosen by ``inner_norm``; the length of one move is:

    global      d = g / (||g||_2 + eps), norm over all parameters     length gamma
    per_tensor  d_i = g_i / (||g_i||_2 + eps), each tensor on its own  gamma * sqrt(T)
    none        d = g                               (Fish / Reptile)  gamma * ||g||
    random      d = u / ||u||_2, u ~ N(0, I) over all parameters      length gamma

(T = number of tensors with a gradient). With several parameter groups the direction
is still ONE unit vector over all parameters ("global", "random"); each group's slice
of it is scaled by that group's inner_lr, so with equal inner_lr the move has length
exactly gamma in both modes, and with different inner_lr both modes have the same
per-group scaling of a unit direction ("matched length").

A non-finite micro-batch is skipped without a host read: ``mask_nonfinite_`` zeroes
its gradients on the device (``torch.where``), the move scale is 0 and the finite
counter does not advance, so theta, the trajectory sum and the count are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

INNER_NORMS = ("global", "per_tensor", "none", "random")
OUTER_GRADS = ("trajectory", "displacement")


def norm_dtype(tensors: list[Tensor]) -> torch.dtype:
    """fp64 if any tensor is fp64, else fp32: the precision norms are taken in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def tensor_norms(tensors: list[Tensor]) -> list[Tensor]:
    """Per-tensor L2 norms, computed in fp32 (fp64 if any tensor is fp64)."""
    if not tensors:
        return []
    return torch._foreach_norm(tensors, 2.0, dtype=norm_dtype(tensors))


def global_norm(tensors: list[Tensor], norms: list[Tensor] | None = None) -> Tensor:
    """||concat(tensors)||_2 as a 0-dim tensor (0 for an empty list)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    norms = tensor_norms(tensors) if norms is None else norms
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2.0)


def mask_nonfinite_(grads: list[Tensor], finite: Tensor) -> None:
    """g <- g if ``finite`` else 0, on the device (no host read; ``finite`` 0-dim bool)."""
    for g in grads:
        torch.where(finite, g, torch.zeros((), dtype=g.dtype, device=g.device), out=g)


def gaussian_like(like: list[Tensor], generator: torch.Generator) -> list[Tensor]:
    """Gaussian vectors shaped like ``like`` (fp32): ONE flat ``randn`` over all of
    them (one RNG call however many tensors or groups), split into views. Not yet
    normalized: the move scales by 1/||u|| over the whole vector."""
    total = sum(t.numel() for t in like)
    flat = torch.randn(total, generator=generator, device=like[0].device, dtype=torch.float32)
    return [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in like]), like)]


def inverse_norm(total: Tensor, finite: Tensor | bool, eps: float) -> Tensor:
    """1/(||g|| + eps) where the micro-batch is finite, else 0 (a 0-dim tensor)."""
    inv = (total + eps).reciprocal()
    if isinstance(finite, Tensor):
        inv = torch.where(finite, inv, torch.zeros_like(inv))
    return inv


def inner_update_(
    params: list[Tensor],
    grads: list[Tensor],
    norms: list[Tensor],
    total: Tensor,
    finite: Tensor | bool,
    *,
    slices: list[tuple[int, int, float]],
    mode: str,
    eps: float,
    move: bool,
    accumulators: list[Tensor] | None = None,
    accumulate: str = "add",
    random: tuple[list[Tensor], Tensor] | None = None,
) -> None:
    """One micro-batch of Nexus on plain tensors (local shards), in place.

    ``norms``/``total``: the gradients' per-tensor and global norms; ``finite``
    whether ``total`` is finite, as a 0-dim bool tensor (decided on the device: the
    gradients are masked to 0 and the move scale is 0 when it is False; nothing is
    read on the host, so this compiles with ``torch.compile(fullgraph=True)``) or as
    a Python bool the caller already has (CPU: a False zeroes the gradients, keeps
    the sums exact and skips the move, with no per-element masking).
    ``slices``: (start, stop, step) per parameter group, step = -inner_lr to descend
    (+inner_lr for a maximizing group). ``accumulators``: the trajectory sums, with
    ``accumulate`` "copy" (first micro-batch: acc <- g), "add" (acc <- acc + g) or
    "fold" (K-th micro-batch: g <- g + acc, the sum lands in the gradients in one
    pass). ``move`` False for the K-th micro-batch in trajectory mode (its move is
    discarded by the restore). ``random``: (u, ||u||) for ``mode="random"``.
    The move of one group is ``step * d`` with d = g/(||g||+eps) over ALL tensors
    ("global"), g_i/(||g_i||+eps) ("per_tensor"), g ("none"), or u/||u|| ("random").
    """
    if isinstance(finite, Tensor):
        mask_nonfinite_(grads, finite)
    elif not finite:
        torch._foreach_zero_(grads)  # the host already knows: zero, keep the sums, no move
    if accumulators is not None:
        if accumulate == "copy":
            torch._foreach_copy_(accumulators, grads)
        elif accumulate == "add":
            torch._foreach_add_(accumulators, grads)
        elif accumulate == "fold":
            torch._foreach_add_(grads, accumulators)
        else:
            raise ValueError(f"accumulate: {accumulate!r} is not one of 'copy', 'add', 'fold'")
    if not move or finite is False:
        return
    if mode == "none":
        for start, stop, step in slices:
            if step != 0.0:
                torch._foreach_add_(params[start:stop], grads[start:stop], alpha=step)
        return
    if mode == "random":
        dirs, unorm = random
        scales = [inverse_norm(unorm, finite, eps)] * len(dirs)
    elif mode == "global":
        dirs = grads
        scales = [inverse_norm(total, finite, eps)] * len(dirs)
    elif mode == "per_tensor":
        dirs = grads
        scales = [inverse_norm(n.to(g.device), finite, eps) for n, g in zip(norms, grads)]
    else:
        raise ValueError(f"inner_norm: {mode!r} is not one of " + ", ".join(INNER_NORMS))
    for start, stop, step in slices:
        if step != 0.0 and stop > start:
            torch._foreach_addcmul_(params[start:stop], dirs[start:stop], scales[start:stop],
                                    value=step)


def trajectory_gradient_(grads: list[Tensor], count: int) -> None:
    """grad <- grad / count: the gradients hold sum_k g_k (folded in by the K-th
    ``inner_update_``); count = number of finite micro-batches."""
    if grads:
        torch._foreach_mul_(grads, 1.0 / count)


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
