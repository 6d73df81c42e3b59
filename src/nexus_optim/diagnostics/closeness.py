"""Closeness of the per-source minima around a checkpoint (the paper's Theorem 2.2 quantity).

From the start weights theta_0, a copy is fine-tuned on each train source s alone for
``steps`` outer steps of ``train/step.py``, a fresh optimizer state and a fixed ``seed``.
Every source uses the same seed, so identical sources give identical batches and identical
minima. Two fine-tuning protocols (``protocol``):

    "run"    the run's optimizer (``build_optimizer``: same name, K, inner step, betas,
             weight decay, clipping) at a constant lr (``lr``, default ``optim.lr``)
    "fixed"  the same for every run whatever trained it (the "common minimum"): AdamW,
             K = 1, the run's betas, eps, weight decay, clipping and micro-batch size; lr
             ``lr`` (required) times a cosine without warmup (``train/schedules``' cosine
             over steps - 1): m(t) = r + (1 - r) (1 + cos(pi t / (steps - 1))) / 2 at outer
             step t = 0 .. steps - 1, r = ``min_lr_ratio``, so the first step uses lr and the
             last r * lr (one step: lr)

The end points theta_s stand in for the source minima. Reported (L2 over all parameters):

    distance_from_start[s]   ||theta_s - theta_0||
    pairwise_distance[a][b]  ||theta_a - theta_b||
    variance                 (1/S) sum_s ||theta_s - c||^2,   c = (1/S) sum_s theta_s
                             (= (1/(2 S^2)) sum_{a,b} ||theta_a - theta_b||^2)
    displacement_cos[a][b]   cos(theta_a - theta_0, theta_b - theta_0)
    path_length[s]           sum_t ||theta_{t+1} - theta_t|| over the outer steps of the fine-tune
    distance_over_path[s]    distance_from_start[s] / path_length[s]  (1 for a straight path);
                             mean_distance_over_path is its mean over sources
    fine_tune_loss[s]        mean micro-batch loss of each outer step; fine_tune_lr: the lr of
                             each outer step (the same for every source)
    cross_loss[i][j]         val loss of eval source j at theta_i (rows: train sources;
                             columns: ``eval_sources``, train then ood), start_loss at theta_0
    cross_loss_gap           mean over train i != j of cross_loss[i][j] - cross_loss[j][j]
    interpolation            val losses at theta_0 + alpha (theta_s - theta_0) for ``points``
                             alphas in [0, 1]; ``barrier[s]`` = max over alpha of the own-source
                             loss minus the straight line between its end values
    pair_barrier             for each pair a|b of train sources, the in-distribution loss
                             (``val/id``: the train sources' val losses weighted by ``weights``)
                             at theta_a + alpha (theta_b - theta_a), the same alphas;
                             ``barrier`` = max over alpha of it minus the chord between its end
                             values; ``excess`` the same over the interior alphas, signed
                             (negative: the line dips below the chord); ``mean_barrier`` and
                             ``mean_excess`` over pairs (None with one source)

plus the settings: protocol, optimizer, inner_steps, lr, min_lr_ratio (None for "run"),
schedule, steps, seed, micro_batch_size, seq_len, eval_tokens, n_params, start_norm.

Cost: S fine-tunes of ``steps * K`` micro-batches, plus (S + 1 + S * (points - 2)) * E
evaluations of ``eval_tokens`` tokens (E eval sources) and S (S - 1) / 2 * (points - 2) * I
for the pair barrier (I weighted train sources with a val split). Memory: S + 3 copies of
the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from nexus_optim.data.sampler import MixtureSampler
from nexus_optim.diagnostics.barrier import flat_params, interpolation, load_flat, pair_barrier
from nexus_optim.eval.gradsim import train_sources_data
from nexus_optim.eval.losses import source_loss
from nexus_optim.runtime import autocast_for, pick_device
from nexus_optim.train.artifacts import load_trained, resolve_checkpoint
from nexus_optim.train.config import OptimConfig
from nexus_optim.train.optimizers import build_optimizer, step_protocol
from nexus_optim.train.schedules import build_scheduler
from nexus_optim.train.step import outer_step

__all__ = ["PROTOCOLS", "FineTune", "closeness", "closeness_from_checkpoint", "fine_tune",
           "fine_tune_optim", "flat_params", "load_flat"]

PROTOCOLS = ("run", "fixed")
FIXED_OPTIMIZER = "adamw"


class FineTune(NamedTuple):
    model: torch.nn.Module  # the fine-tuned copy, in eval mode
    losses: list[float]  # mean micro-batch loss of each outer step
    path_length: float  # sum over outer steps of ||theta_{t+1} - theta_t||
    lrs: list[float]  # lr of each outer step


def fine_tune_optim(optim, protocol: str = "run", lr: float | None = None,
                    min_lr_ratio: float = 0.1):
    """The ``OptimConfig`` a fine-tune uses under ``protocol`` (module docstring), given the
    run's ``optim``; raises a one-line ValueError for a bad ``protocol``, ``lr`` or
    ``min_lr_ratio``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"closeness: protocol must be one of {', '.join(map(repr, PROTOCOLS))}, "
                         f"got {protocol!r}")
    if protocol == "run":
        return dataclasses.replace(optim, lr=float(lr)) if lr is not None else optim
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"closeness: lr must be a positive number for protocol='fixed', got {lr!r}")
    if isinstance(min_lr_ratio, bool) or not isinstance(min_lr_ratio, (int, float)) \
            or not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"closeness: min_lr_ratio must be a number in [0, 1], got {min_lr_ratio!r}")
    return dataclasses.replace(optim, name=FIXED_OPTIMIZER, inner_steps=1, lr=float(lr))


def fine_tune(model: torch.nn.Module, cfg, tokens: np.ndarray, steps: int, seed: int = 0,
              lr: float | None = None, name: str = "source", protocol: str = "run",
              min_lr_ratio: float = 0.1) -> FineTune:
    """A copy of ``model`` trained ``steps`` outer steps on ``tokens`` alone with the outer
    step of the training loop (``train/step.py``) under ``protocol`` (module docstring).
    Returns ``FineTune(copy, losses, path_length, lrs)``."""
    device = next(model.parameters()).device
    optim_cfg = fine_tune_optim(cfg.optim, protocol, lr, min_lr_ratio)
    K = optim_cfg.inner_steps
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        ft = copy.deepcopy(model).train()
        opt = build_optimizer(optim_cfg, ft, seed=seed)
        sched = (build_scheduler(opt, steps - 1, "cosine", 0, float(min_lr_ratio), 0.2)
                 if protocol == "fixed" else None)
        sampler = MixtureSampler({name: tokens}, {name: 1.0}, cfg.model.seq_len,
                                 cfg.train.micro_batch_size, mode="homogeneous", group_size=K,
                                 shuffle_sources=False, seed=seed)

        def micro_batch_loss(_i: int) -> torch.Tensor:
            ids = sampler.next().input_ids.to(device)
            with autocast_for(device, cfg.train.bf16):
                return ft(input_ids=ids, labels=ids).loss

        losses, lrs, path, prev = [], [], 0.0, flat_params(ft)
        for _ in range(steps):
            lrs.append(float(opt.param_groups[0]["lr"]) if sched else float(optim_cfg.lr))
            step = outer_step(opt, step_protocol(optim_cfg.name), K, micro_batch_loss,
                              clip_params=ft.parameters(), max_grad_norm=optim_cfg.max_grad_norm)
            losses.append(float(np.mean([float(x) for x in step])))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"closeness: fine-tuning on {name!r} diverged (loss {losses[-1]})")
            cur = flat_params(ft)
            path, prev = path + _norm(cur - prev), cur
            if sched is not None:
                sched.step()
    return FineTune(ft.eval(), losses, path, lrs)


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


def _id_weights(names: list[str], val_data: dict, weights: dict[str, float] | None) -> dict:
    """The train sources that enter ``val/id`` (a val split, weight > 0) -> weight."""
    w = {s: 1.0 for s in names} if weights is None else weights
    for s in names:
        if s not in w:
            raise ValueError(f"closeness: weights has no entry for train source {s!r}")
        if isinstance(w[s], bool) or not isinstance(w[s], (int, float)) \
                or not (math.isfinite(w[s]) and w[s] >= 0):
            raise ValueError(f"closeness: weights[{s!r}] must be a finite number >= 0, got {w[s]!r}")
    return {s: float(w[s]) for s in names if s in val_data and w[s] > 0}


def _check(steps: int, points: int, names: list[str]) -> None:
    if steps < 1:
        raise ValueError(f"closeness: steps must be >= 1, got {steps}")
    if points < 2:
        raise ValueError(f"closeness: points must be >= 2 (start and end), got {points}")
    if not names:
        raise ValueError("closeness: no train sources")


def _path_ratios(dist: dict[str, float], path: dict[str, float]) -> dict:
    ratio = {s: (dist[s] / path[s] if path[s] > 0 else float("nan")) for s in dist}
    return {"path_length": path, "distance_over_path": ratio,
            "mean_distance_over_path": float(np.mean(list(ratio.values())))}


def closeness(model: torch.nn.Module, cfg, train_data: dict[str, np.ndarray],
              val_data: dict[str, np.ndarray], steps: int = 20, seed: int = 0,
              lr: float | None = None, points: int = 5, eval_tokens: int | None = None,
              eval_batch_size: int | None = None, *, protocol: str = "run",
              min_lr_ratio: float = 0.1, weights: dict[str, float] | None = None) -> dict:
    """Closeness diagnostics of ``model`` (the start, left unchanged); see module docstring.

    ``train_data``: source -> train tokens (one fine-tune each); ``val_data``: eval source ->
    val tokens (cross-loss columns). ``eval_tokens`` defaults to ``train.eval_tokens``.
    ``protocol``: "run" or "fixed" (``lr`` required); ``weights``: train source -> mixture
    weight of ``val/id`` (default equal). Returns a JSON-able dict.
    """
    names, evals = list(train_data), list(val_data)
    _check(steps, points, names)
    optim_cfg = fine_tune_optim(cfg.optim, protocol, lr, min_lr_ratio)
    id_weights = _id_weights(names, val_data, weights)
    device = next(model.parameters()).device
    t = cfg.train
    max_tok = eval_tokens if eval_tokens is not None else t.eval_tokens
    bsz = eval_batch_size or t.eval_batch_size

    def losses_at(m, sources: list[str] | None = None) -> dict[str, float]:
        return {e: source_loss(m, val_data[e], cfg.model.seq_len, bsz, max_tok, device, t.bf16)[0]
                for e in (evals if sources is None else sources)}

    was_training = model.training
    model.eval()
    theta0 = flat_params(model)
    start_loss = losses_at(model)
    thetas, cross, ft_losses, path, ft_lr = {}, {}, {}, {}, []
    for s in names:
        ft, ft_losses[s], path[s], ft_lr = fine_tune(model, cfg, train_data[s], steps, seed=seed,
                                                     lr=lr, name=s, protocol=protocol,
                                                     min_lr_ratio=min_lr_ratio)
        thetas[s] = flat_params(ft)
        cross[s] = losses_at(ft)
        del ft
    model.train(was_training)
    gaps = [cross[names[i]][names[j]] - cross[names[j]][names[j]]
            for i in range(len(names)) for j in range(len(names)) if i != j and names[j] in val_data]
    dist = _distances(names, theta0, thetas)
    return {
        "sources": names, "eval_sources": evals, "protocol": protocol,
        "optimizer": optim_cfg.name, "steps": int(steps), "inner_steps": optim_cfg.inner_steps,
        "lr": float(optim_cfg.lr), "min_lr_ratio": float(min_lr_ratio) if protocol == "fixed" else None,
        "schedule": "cosine" if protocol == "fixed" else "constant", "seed": int(seed),
        "micro_batch_size": t.micro_batch_size, "seq_len": cfg.model.seq_len,
        "eval_tokens": max_tok,
        "n_params": int(theta0.numel()), "start_norm": float(theta0.double().norm()),
        **dist, **_path_ratios(dist["distance_from_start"], path),
        "start_loss": start_loss,
        "cross_loss": [[cross[s][e] for e in evals] for s in names],
        "cross_loss_gap": float(np.mean(gaps)) if gaps else None,
        "fine_tune_loss": ft_losses, "fine_tune_lr": ft_lr,
        "interpolation": interpolation(model, names, evals, theta0, thetas, start_loss, cross,
                                       losses_at, points),
        "pair_barrier": pair_barrier(model, names, thetas, cross, losses_at, id_weights, points),
    }


def closeness_from_checkpoint(path: str | Path, steps: int = 20, seed: int = 0,
                              lr: float | None = None, points: int = 5,
                              eval_tokens: int | None = None, device: str = "auto", *,
                              protocol: str = "run", min_lr_ratio: float = 0.1) -> dict:
    """``closeness`` at a checkpoint (or a run dir's latest checkpoint) on the run's train
    sources (``val/id`` weights: the run's mixture weights), cross-losses on all sources with
    a val split; adds ``checkpoint``, ``step``, ``tokens``."""
    fine_tune_optim(OptimConfig(), protocol, lr, min_lr_ratio)  # bad arguments fail before loading
    dev = pick_device(device)
    model, cfg, prepared, state = load_trained(path, device=dev)
    train = train_sources_data(prepared)
    val = {s: prepared.load(s, "val") for s in [*train, *[s for s in prepared.shards if s not in train]]
           if "val" in prepared.shards.get(s, {})}
    r = closeness(model, cfg, train, val, steps=steps, seed=seed, lr=lr, points=points,
                  eval_tokens=eval_tokens, protocol=protocol, min_lr_ratio=min_lr_ratio,
                  weights=prepared.weights)
    return {"checkpoint": str(resolve_checkpoint(path)), "step": state.get("step"),
            "tokens": state.get("tokens"), **r}
