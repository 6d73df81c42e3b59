"""Over-parameterised multi-source toy: AdamW vs Nexus at the SAME summed training loss.

One network is trained on N sources (see tasks.py).  Each outer step visits every source once, in a
random order, with one full-source micro-batch each (K = N):
  * AdamW: gradient accumulation, G = (1/K) sum_k grad L_{s_k}(th), one AdamW step.
  * Nexus: one opt.step() per micro-batch (normalised inner moves of length gamma, outer AdamW).
After each outer step the summed loss L(th) = sum_i L_i(th) is evaluated; when it first drops below
a threshold c we bisect on the segment between the last two outer iterates for the point with
L = c exactly, so all methods are compared at identical training loss.  At that point we measure
gradient cosine similarity, minima spread (metrics.py), in-source test loss and held-out-source loss
(zero-shot and after T GD steps on the new source's n samples).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from nexus_optim.optim import Nexus
from nexus_optim.train.step import outer_step, protocol_of

from .metrics import finetune, mean_pairwise_cosine, minima_spread, source_grads, source_losses
from .tasks import ModelConfig, TaskConfig, flatten, forward, init_params, make_tasks, mse, param_shapes, unflatten

__all__ = ["TrainConfig", "METHODS", "train_to_thresholds", "endpoint_metrics", "run_seed"]


@dataclass
class TrainConfig:
    lr: float = 3e-3
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    thresholds: tuple = (0.4, 0.1, 0.02)   # summed (over sources) train MSE levels to compare at
    max_outer: int = 400                    # a run that has not reached a threshold by then is reported as such
    ft_lr: float = 0.1                      # GD step for per-source fine-tuning (0.2 is unstable)
    ft_steps: int = 50
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


# name -> Nexus options (None = plain AdamW with K-step gradient accumulation)
METHODS = {
    "adamw": None,
    "nexus g=0.03": dict(inner_lr=0.03, inner_norm="global", outer_grad="trajectory"),
    "nexus g=0.1": dict(inner_lr=0.1, inner_norm="global", outer_grad="trajectory"),
    "nexus g=0.2": dict(inner_lr=0.2, inner_norm="global", outer_grad="trajectory"),
    "nexus-disp g=0.1": dict(inner_lr=0.1, inner_norm="global", outer_grad="displacement"),
    "random g=0.1": dict(inner_lr=0.1, inner_norm="random", outer_grad="trajectory"),
}


def _summed_loss(flat, shapes, act, X, Y) -> float:
    return float(source_losses(flat, shapes, act, X, Y).sum())


def _bisect(prev, cur, target, f, iters: int = 30):
    """Point on [prev, cur] with f = target, assuming f(prev) > target >= f(cur)."""
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(prev + mid * (cur - prev)) > target:
            lo = mid
        else:
            hi = mid
    return prev + hi * (cur - prev)


def train_to_thresholds(data, init, shapes, act, method_opts, cfg: TrainConfig, seed: int) -> dict:
    """Train from init; return {threshold: flat end point}, loss curve and outer steps per threshold."""
    X, Y = data["x_train"], data["y_train"]
    K = X.shape[0]
    params = [p.detach().clone().requires_grad_(True) for p in init]
    okw = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if method_opts is None:
        opt = torch.optim.AdamW(params, **okw)
    else:
        opt = Nexus(params, inner_steps=K, outer=torch.optim.AdamW, seed=seed, **method_opts, **okw)
    gen = torch.Generator().manual_seed(10_000 + seed)
    loss_of = lambda th: _summed_loss(th, shapes, act, X, Y)  # noqa: E731
    prev = flatten(params).detach().clone()
    curve = [loss_of(prev)]
    todo = sorted(cfg.thresholds, reverse=True)
    points, steps = {}, {}
    for t in range(1, cfg.max_outer + 1):
        order = torch.randperm(K, generator=gen).tolist()
        outer_step(opt, protocol_of(opt), K, lambda i: mse(forward(params, X[order[i]], act), Y[order[i]]))
        cur = flatten(params).detach().clone()
        curve.append(loss_of(cur))
        if not torch.isfinite(torch.tensor(curve[-1])):
            break
        while todo and curve[-1] <= todo[0]:
            c = todo.pop(0)
            points[c] = _bisect(prev, cur, c, loss_of) if curve[-2] > c else cur
            steps[c] = t
        if not todo:
            break
        prev = cur
    return {"points": points, "steps": steps, "curve": curve}


def endpoint_metrics(flat, data, shapes, act, cfg: TrainConfig) -> dict:
    """All closeness / generalisation metrics at one end point (see module docstring)."""
    X, Y = data["x_train"], data["y_train"]
    G = source_grads(flat, shapes, act, X, Y)
    ths = finetune(flat, shapes, act, X, Y, cfg.ft_lr, cfg.ft_steps)
    ft_loss = torch.stack([source_losses(ths[i], shapes, act, X[i:i + 1], Y[i:i + 1])[0]
                           for i in range(len(ths))])
    with torch.no_grad():
        pred_test = forward(unflatten(flat, shapes), data["x_test"], act)
        new_ths = finetune(flat, shapes, act, data["x_new_train"], data["y_new_train"], cfg.ft_lr, cfg.ft_steps)
        pred_new_ft = forward(unflatten(new_ths, shapes), data["x_test"].expand(len(new_ths), -1, -1), act)
    return {
        "train_loss": float(source_losses(flat, shapes, act, X, Y).sum()),
        "grad_cos": mean_pairwise_cosine(G),
        **minima_spread(ths, flat),
        "ft_source_loss": float(ft_loss.mean()),
        "test_in_source": float(mse(pred_test[None], data["y_test"]).mean()),
        "heldout": float(mse(pred_test[None], data["y_new_test"]).mean()),
        "heldout_ft": float(mse(pred_new_ft, data["y_new_test"]).mean()),
        "dist_to_mean_teacher": float(mse(pred_test, data["y_mean_test"])),
        "param_norm": float(flat.norm()),
    }


def run_seed(seed: int, cfg: TrainConfig, methods: dict | None = None) -> dict:
    """One seed: same tasks and init for every method; metrics per method and threshold."""
    methods = METHODS if methods is None else methods
    torch.manual_seed(seed)
    data = make_tasks(cfg.task, seed)
    shapes = param_shapes(cfg.task.d, cfg.model)
    init = init_params(cfg.task.d, cfg.model, 1_000 + seed)
    act = cfg.model.act
    out = {"seed": seed, "oracle_heldout": float(mse(data["y_mean_test"][None], data["y_new_test"]).mean()),
           "methods": {}}
    for name, opts in methods.items():
        t0 = time.perf_counter()
        tr = train_to_thresholds(data, init, shapes, act, opts, cfg, seed)
        res = {"curve": tr["curve"], "steps": {str(c): s for c, s in tr["steps"].items()}, "at": {}}
        for c, flat in tr["points"].items():
            res["at"][str(c)] = endpoint_metrics(flat, data, shapes, act, cfg)
        res["seconds"] = time.perf_counter() - t0
        out["methods"][name] = res
    return out


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
