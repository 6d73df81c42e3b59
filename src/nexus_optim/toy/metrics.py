"""End-point metrics for the multi-source toy: gradient similarity, minima closeness, statistics.

- Gradient cosine similarity: cos_ij = <g_i, g_j> / (||g_i|| ||g_j||) for full-batch source gradients g_i;
  we report the mean over pairs i < j.
- Minima closeness: from the end point th, run T steps of full-batch GD on each source alone,
  th_i = GD_T(L_i, th).  Spread = (1/N) sum_i ||th_i - mean_j th_j||^2 (variance of the minima),
  plus the mean pairwise distance ||th_i - th_j|| and the mean distance from the start ||th_i - th||.
  Identical sources give identical th_i, hence spread 0.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .tasks import forward, mse, unflatten

__all__ = ["cosine_matrix", "mean_pairwise_cosine", "source_losses", "source_grads", "finetune",
           "minima_spread", "paired"]


def cosine_matrix(G: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Pairwise cosine similarities of the rows of G (N, P)."""
    n = G.norm(dim=1).clamp_min(eps)
    return (G @ G.T) / (n[:, None] * n[None, :])


def mean_pairwise_cosine(G: torch.Tensor) -> float:
    C = cosine_matrix(G)
    i, j = torch.triu_indices(C.shape[0], C.shape[0], offset=1)
    return float(C[i, j].mean())


def _batched_losses(th: torch.Tensor, shapes, act, X, Y) -> torch.Tensor:
    """Row b of th (B, P) evaluated on source b: X (B, n, d), Y (B, n) -> (B,) MSEs."""
    return mse(forward(unflatten(th, shapes), X, act), Y)


def source_losses(flat, shapes, act, X, Y) -> torch.Tensor:
    """Per-source MSE at one flat parameter vector; X (N, n, d), Y (N, n) -> (N,)."""
    with torch.no_grad():
        return mse(forward(unflatten(flat, shapes), X, act), Y)


def _batched_grads(th, shapes, act, X, Y) -> torch.Tensor:
    """grad of L_b at row b of th, for all b at once (rows are independent, so grad of the sum)."""
    with torch.enable_grad():
        th = th.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_batched_losses(th, shapes, act, X, Y).sum(), th)
    return g


def source_grads(flat, shapes, act, X, Y) -> torch.Tensor:
    """Full-batch gradient of each source's MSE at flat; returns (N, P)."""
    return _batched_grads(flat.detach().expand(X.shape[0], -1), shapes, act, X, Y)


def finetune(flat, shapes, act, X, Y, lr: float, steps: int) -> torch.Tensor:
    """T steps of GD, th <- th - lr grad L_i(th), on each source i separately from flat; returns (N, P)."""
    th = flat.detach().expand(X.shape[0], -1).clone()
    for _ in range(steps):
        th = th - lr * _batched_grads(th, shapes, act, X, Y)
    return th


def minima_spread(thetas: torch.Tensor, start: torch.Tensor) -> dict:
    """Closeness of per-source minima thetas (N, P) found from start (P,)."""
    c = thetas.mean(0)
    i, j = torch.triu_indices(thetas.shape[0], thetas.shape[0], offset=1)
    pair = (thetas[i] - thetas[j]).norm(dim=1)
    return {
        "minima_var": float((thetas - c).pow(2).sum(1).mean()),
        "minima_pair_dist": float(pair.mean()),
        "minima_dist_from_start": float((thetas - start).norm(dim=1).mean()),
        "centroid_dist_from_start": float((c - start).norm()),
    }


def paired(a, b) -> dict:
    """Paired t-test over seeds (same task/init per seed) and the share of seeds with a < b."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    frac = float(np.mean(a < b)) if len(a) else math.nan
    if len(a) < 2 or np.all(a - b == 0):
        return {"t": float("nan"), "p": float("nan"), "frac_lower": frac}
    r = stats.ttest_rel(a, b)
    return {"t": float(r.statistic), "p": float(r.pvalue), "frac_lower": frac}
