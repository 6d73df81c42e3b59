"""Weight vectors and the loss along straight lines between them (``closeness.py``'s
interpolation and pair barrier; the keys are documented there).

    barrier of a curve L(alpha), alpha in [0, 1]:   max_alpha L(alpha) - ((1 - alpha) L(0) + alpha L(1))
    excess: the same over the interior alphas only, signed (``eval/lines.py``)

``interpolation``: every eval source's val loss along theta_0 -> theta_s (start to each
source's end point); ``pair_barrier``: the in-distribution loss (``val/id`` of
``eval/losses.pooled_losses``) along theta_a -> theta_b for each pair of train sources.
The end values are passed in (already evaluated); only interior alphas are evaluated.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch

from nexus_optim.eval.gradsim import unique_params
from nexus_optim.eval.lines import line_barrier, line_excess
from nexus_optim.eval.losses import pooled_losses

LossesAt = Callable[..., dict]  # losses_at(model, sources=None) -> {source: val loss}


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """All (unique) parameters of ``model`` as one float32 vector."""
    return torch.cat([p.detach().reshape(-1).float() for p in unique_params(model)])


@torch.no_grad()
def load_flat(model: torch.nn.Module, vec: torch.Tensor) -> None:
    """Copy a ``flat_params`` vector into ``model``'s parameters."""
    i = 0
    for p in unique_params(model):
        n = p.numel()
        p.copy_(vec[i:i + n].view_as(p).to(p.dtype))
        i += n
    if i != vec.numel():
        raise ValueError(f"closeness: vector has {vec.numel()} entries, model has {i}")


def alphas_of(points: int) -> list[float]:
    return [float(a) for a in np.linspace(0.0, 1.0, points)]


def _along(probe, start: torch.Tensor, end: torch.Tensor, alphas, at0: dict, at1: dict,
           losses_at: LossesAt, sources: list[str] | None) -> list[dict]:
    """Losses at start + alpha (end - start); ``at0`` / ``at1`` are the known end values."""
    out = []
    for a in alphas:
        if a == 0.0:
            out.append(at0)
        elif a == 1.0:
            out.append(at1)
        else:
            load_flat(probe, start + a * (end - start))
            out.append(losses_at(probe, sources))
    return out


def interpolation(model, names, evals, theta0, thetas, start_loss, cross, losses_at: LossesAt,
                  points: int) -> dict:
    """Val losses along theta_0 + alpha (theta_s - theta_0); the end points are known."""
    alphas = alphas_of(points)
    probe = copy.deepcopy(model).eval()
    interp: dict[str, dict[str, list[float]]] = {}
    barrier: dict[str, float | None] = {}
    for s in names:
        vals = _along(probe, theta0, thetas[s], alphas, start_loss, cross[s], losses_at, None)
        curves = {e: [v[e] for v in vals] for e in evals}
        interp[s] = curves
        barrier[s] = line_barrier(curves[s], alphas) if s in curves else None
    return {"alphas": alphas, "loss": interp, "barrier": barrier}


def pair_barrier(model, names, thetas, cross, losses_at: LossesAt, weights: dict[str, float],
                 points: int) -> dict:
    """``val/id`` along theta_a + alpha (theta_b - theta_a) for each pair a < b of ``names``
    (in order); ``weights``: the train sources that enter ``val/id`` (a val split, weight >
    0) -> weight. Pairs are keyed "a|b"; ``mean_barrier`` is None without a pair or without
    weighted sources."""
    alphas = alphas_of(points)
    id_sources = list(weights)
    roles = {s: "train" for s in id_sources}

    def id_loss(vals: dict) -> float:
        return pooled_losses({f"val/{s}": vals[s] for s in id_sources}, roles, weights)["val/id"]

    pairs: dict[str, dict] = {}
    if id_sources:
        probe = copy.deepcopy(model).eval()
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                vals = _along(probe, thetas[a], thetas[b], alphas, cross[a], cross[b], losses_at,
                              id_sources)
                curve = [id_loss(v) for v in vals]
                pairs[f"{a}|{b}"] = {"loss": curve, "barrier": line_barrier(curve, alphas),
                                     "excess": line_excess(curve, alphas)}
    barriers = [p["barrier"] for p in pairs.values()]
    excess = [p["excess"] for p in pairs.values() if p["excess"] is not None]
    return {"alphas": alphas, "id_weights": dict(weights), "pairs": pairs,
            "mean_barrier": float(np.mean(barriers)) if barriers else None,
            "mean_excess": float(np.mean(excess)) if excess else None}
