"""Closeness of the per-source minima around a checkpoint (the paper's Theorem 2.2 quantity).

From the start weights theta_0, a copy is fine-tuned on each train source s alone for
``steps`` outer steps of ``train/step.py`` with the run's optimizer (``build_optimizer``: same
name, K, inner step, betas, weight decay, clipping), a fresh optimizer state, a constant
learning rate (``lr``, default ``optim.lr``, the run's peak) and a fixed seed. Every source
uses the same seed, so identical sources give identical batches and identical minima.
The end points theta_s stand in for the source minima. Reported (L2 over all parameters):

    distance_from_start[s]   ||theta_s - theta_0||
    pairwise_distance[a][b]  ||theta_a - theta_b||
    variance                 (1/S) sum_s ||theta_s - c||^2,   c = (1/S) sum_s theta_s
                             (= (1/(2 S^2)) sum_{a,b} ||theta_a - theta_b||^2)
    displacement_cos[a][b]   cos(theta_a - theta_0, theta_b - theta_0)
    cross_loss[i][j]         val loss of eval source j at theta_i (rows: train sources;
                             columns: ``eval_sources``, train then ood), start_loss at theta_0
    cross_loss_gap           mean over train i != j of cross_loss[i][j] - cross_loss[j][j]
    interpolation            val losses at theta_0 + alpha (theta_s - theta_0) for ``points``
                             alphas in [0, 1]; ``barrier[s]`` = max over alpha of the own-source
                             loss minus the straight line between its end values

Cost: S fine-tunes of ``steps * K`` micro-batches, plus (S + 1 + S * (points - 2)) * E
evaluations of ``eval_tokens`` tokens. Memory: S + 2 copies of the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from nexus_optim.data.sampler import MixtureSampler
from nexus_optim.eval.gradsim import train_sources_data, unique_params
from nexus_optim.eval.losses import source_loss
from nexus_optim.runtime import autocast_for, pick_device
from nexus_optim.train.artifacts import load_trained, resolve_checkpoint
from nexus_optim.train.optimizers import build_optimizer, step_protocol
from nexus_optim.train.step import outer_step


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in unique_params(model)])


@torch.no_grad()
def load_flat(model: torch.nn.Module, vec: torch.Tensor) -> None:
    i = 0
    for p in unique_params(model):
        n = p.numel()
        p.copy_(vec[i:i + n].view_as(p).to(p.dtype))
        i += n
    if i != vec.numel():
        raise ValueError(f"closeness: vector has {vec.numel()} entries, model has {i}")


def fine_tune(model: torch.nn.Module, cfg, tokens: np.ndarray, steps: int, seed: int = 0,
              lr: float | None = None, name: str = "source") -> tuple[torch.nn.Module, list[float]]:
    """A copy of ``model`` trained ``steps`` outer steps on ``tokens`` alone with the outer
    step of the training loop (``train/step.py``). Returns (copy, mean loss of each outer step)."""
    device = next(model.parameters()).device
    K = cfg.optim.inner_steps
    optim_cfg = dataclasses.replace(cfg.optim, lr=float(lr)) if lr is not None else cfg.optim
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        ft = copy.deepcopy(model).train()
        opt = build_optimizer(optim_cfg, ft, seed=seed)
        sampler = MixtureSampler({name: tokens}, {name: 1.0}, cfg.model.seq_len,
                                 cfg.train.micro_batch_size, mode="homogeneous", group_size=K,
                                 shuffle_sources=False, seed=seed)

        def micro_batch_loss(_i: int) -> torch.Tensor:
            ids = sampler.next().input_ids.to(device)
            with autocast_for(device, cfg.train.bf16):
                return ft(input_ids=ids, labels=ids).loss

        losses = []
        for _ in range(steps):
            step = outer_step(opt, step_protocol(optim_cfg.name), K, micro_batch_loss,
                              clip_params=ft.parameters(), max_grad_norm=optim_cfg.max_grad_norm)
            losses.append(float(np.mean([float(x) for x in step])))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"closeness: fine-tuning on {name!r} diverged (loss {losses[-1]})")
    return ft.eval(), losses


def _norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x, dtype=torch.float64))


def _distances(names: list[str], theta0: torch.Tensor, thetas: dict) -> dict:
    """Distances, variance and displacement cosines of the end points (module docstring)."""
    S = len(names)
    centroid = torch.stack([thetas[s] for s in names]).mean(0)
    dist0 = [_norm(thetas[s] - theta0) for s in names]
    pair = [[0.0 if a == b else _norm(thetas[names[a]] - thetas[names[b]]) for b in range(S)]
            for a in range(S)]
    cen = [_norm(thetas[s] - centroid) for s in names]
    disp = {s: (thetas[s] - theta0).double() for s in names}
    dcos = [[float("nan")] * S for _ in range(S)]
    for a in range(S):
        for b in range(S):
            if dist0[a] > 0 and dist0[b] > 0:
                dot = float(torch.dot(disp[names[a]], disp[names[b]]))
                dcos[a][b] = 1.0 if a == b else dot / (dist0[a] * dist0[b])
    off = [pair[a][b] for a in range(S) for b in range(S) if a != b]
    return {
        "distance_from_start": {s: float(d) for s, d in zip(names, dist0)},
        "mean_distance_from_start": float(np.mean(dist0)),
        "pairwise_distance": pair,
        "mean_pairwise_distance": float(np.mean(off)) if S > 1 else 0.0,
        "centroid_distance": {s: float(d) for s, d in zip(names, cen)},
        "variance": float(np.mean(np.square(cen))),
        "displacement_cos": dcos,
    }


def _interpolation(model, names, evals, theta0, thetas, start_loss, cross, losses_at,
                   points: int) -> dict:
    """Val losses along theta_0 + alpha (theta_s - theta_0); the end points are known."""
    alphas = [float(a) for a in np.linspace(0.0, 1.0, points)]
    probe = copy.deepcopy(model).eval()
    interp: dict[str, dict[str, list[float]]] = {}
    barrier: dict[str, float | None] = {}
    for s in names:
        curves = {e: [] for e in evals}
        for a in alphas:
            if a == 0.0:
                vals = start_loss
            elif a == 1.0:
                vals = cross[s]
            else:
                load_flat(probe, theta0 + a * (thetas[s] - theta0))
                vals = losses_at(probe)
            for e in evals:
                curves[e].append(vals[e])
        interp[s] = curves
        if s in curves:
            own = np.array(curves[s])
            line = own[0] + np.array(alphas) * (own[-1] - own[0])
            barrier[s] = float(np.max(own - line))
        else:
            barrier[s] = None
    return {"alphas": alphas, "loss": interp, "barrier": barrier}


def closeness(model: torch.nn.Module, cfg, train_data: dict[str, np.ndarray],
              val_data: dict[str, np.ndarray], steps: int = 20, seed: int = 0,
              lr: float | None = None, points: int = 5, eval_tokens: int | None = None,
              eval_batch_size: int | None = None) -> dict:
    """Closeness diagnostics of ``model`` (the start, left unchanged); see module docstring.

    ``train_data``: source -> train tokens (one fine-tune each); ``val_data``: eval source ->
    val tokens (cross-loss columns). ``eval_tokens`` defaults to ``train.eval_tokens``.
    Returns a JSON-able dict.
    """
    if steps < 1:
        raise ValueError(f"closeness: steps must be >= 1, got {steps}")
    if points < 2:
        raise ValueError(f"closeness: points must be >= 2 (start and end), got {points}")
    names, evals = list(train_data), list(val_data)
    if not names:
        raise ValueError("closeness: no train sources")
    device = next(model.parameters()).device
    t = cfg.train
    max_tok = eval_tokens if eval_tokens is not None else t.eval_tokens
    bsz = eval_batch_size or t.eval_batch_size

    def losses_at(m) -> dict[str, float]:
        return {e: source_loss(m, val_data[e], cfg.model.seq_len, bsz, max_tok, device, t.bf16)[0]
                for e in evals}

    was_training = model.training
    model.eval()
    theta0 = flat_params(model)
    start_loss = losses_at(model)
    thetas, cross, ft_losses = {}, {}, {}
    for s in names:
        ft, ft_losses[s] = fine_tune(model, cfg, train_data[s], steps, seed=seed, lr=lr, name=s)
        thetas[s] = flat_params(ft)
        cross[s] = losses_at(ft)
        del ft
    model.train(was_training)
    gaps = [cross[names[i]][names[j]] - cross[names[j]][names[j]]
            for i in range(len(names)) for j in range(len(names)) if i != j and names[j] in val_data]
    return {
        "sources": names, "eval_sources": evals,
        "optimizer": cfg.optim.name, "steps": int(steps), "inner_steps": cfg.optim.inner_steps,
        "lr": float(lr if lr is not None else cfg.optim.lr), "seed": int(seed),
        "micro_batch_size": t.micro_batch_size, "seq_len": cfg.model.seq_len,
        "eval_tokens": max_tok,
        "n_params": int(theta0.numel()), "start_norm": float(theta0.double().norm()),
        **_distances(names, theta0, thetas),
        "start_loss": start_loss,
        "cross_loss": [[cross[s][e] for e in evals] for s in names],
        "cross_loss_gap": float(np.mean(gaps)) if gaps else None,
        "fine_tune_loss": ft_losses,
        "interpolation": _interpolation(model, names, evals, theta0, thetas, start_loss, cross,
                                        losses_at, points),
    }


def closeness_from_checkpoint(path: str | Path, steps: int = 20, seed: int = 0,
                              lr: float | None = None, points: int = 5,
                              eval_tokens: int | None = None, device: str = "auto") -> dict:
    """``closeness`` at a checkpoint (or a run dir's latest checkpoint) on the run's train
    sources, cross-losses on all sources with a val split; adds ``checkpoint``, ``step``,
    ``tokens``."""
    dev = pick_device(device)
    model, cfg, prepared, state = load_trained(path, device=dev)
    train = train_sources_data(prepared)
    val = {s: prepared.load(s, "val") for s in [*train, *[s for s in prepared.shards if s not in train]]
           if "val" in prepared.shards.get(s, {})}
    r = closeness(model, cfg, train, val, steps=steps, seed=seed, lr=lr, points=points,
                  eval_tokens=eval_tokens)
    return {"checkpoint": str(resolve_checkpoint(path)), "step": state.get("step"),
            "tokens": state.get("tokens"), **r}
