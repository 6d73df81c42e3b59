"""Multi-source regression tasks with shared structure, and a small functional MLP / deep linear net.

Teacher for source k:  y_k(x) = c * (v0 + tau * delta_k)^T tanh(U x / sqrt(d)),  x ~ N(0, I_d),
with shared features U (r x d), shared head v0 ~ N(0, I_r / r), task offsets delta_k ~ N(0, I_r / r);
c normalises E[y^2] to 1.  A new (held-out) source draws a fresh delta.  The best single predictor for
an unseen source is the mean teacher (delta = 0), whose expected MSE on a new source is the
"oracle" floor  E[(tau c delta^T tanh(Ux/sqrt d))^2].
Each training source has only n samples, so one network (no task input) can interpolate all N*n
points while the summed loss has a large set of minimisers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TaskConfig", "ModelConfig", "make_tasks", "param_shapes", "init_params", "forward",
           "unflatten", "flatten", "mse"]


@dataclass
class TaskConfig:
    d: int = 16               # input dimension
    r: int = 8                # teacher features
    n_sources: int = 4        # training sources = micro-batches per outer step (K)
    n_per_source: int = 24    # samples per training source
    tau: float = 0.5          # task-specific head spread relative to the shared head
    n_test: int = 512         # fresh inputs for test losses
    n_new: int = 16           # held-out sources averaged over


@dataclass
class ModelConfig:
    hidden: int = 64
    depth: int = 1            # hidden layers
    act: str = "tanh"         # "tanh" (MLP) or "linear" (deep linear net)


def make_tasks(cfg: TaskConfig, seed: int) -> dict:
    """Draw teacher, training sources (x, y) and held-out sources; all float32 tensors."""
    g = torch.Generator().manual_seed(seed)
    d, r, N, n = cfg.d, cfg.r, cfg.n_sources, cfg.n_per_source
    U = torch.randn(r, d, generator=g)
    v0 = torch.randn(r, generator=g) / r ** 0.5
    heads = v0 + cfg.tau * torch.randn(N, r, generator=g) / r ** 0.5
    new_heads = v0 + cfg.tau * torch.randn(cfg.n_new, r, generator=g) / r ** 0.5
    feat = lambda x: torch.tanh(x @ U.T / d ** 0.5)  # noqa: E731
    x_train = torch.randn(N, n, d, generator=g)
    x_test = torch.randn(cfg.n_test, d, generator=g)
    x_new_train = torch.randn(cfg.n_new, n, d, generator=g)   # few-shot data for held-out sources
    c = 1.0 / (feat(x_test) @ torch.cat([heads, new_heads]).T).pow(2).mean().sqrt()
    return {
        "x_train": x_train,
        "y_train": c * torch.einsum("knr,kr->kn", feat(x_train), heads),
        "x_test": x_test,
        "y_test": c * heads @ feat(x_test).T,                       # (N, n_test) fresh in-source data
        "y_new_test": c * new_heads @ feat(x_test).T,               # (n_new, n_test)
        "y_mean_test": c * feat(x_test) @ v0,                       # mean teacher on x_test
        "x_new_train": x_new_train,
        "y_new_train": c * torch.einsum("knr,kr->kn", feat(x_new_train), new_heads),
    }


def param_shapes(d: int, mcfg: ModelConfig) -> list[tuple[int, ...]]:
    shapes, fan_in = [], d
    for _ in range(mcfg.depth):
        shapes += [(mcfg.hidden, fan_in), (mcfg.hidden,)]
        fan_in = mcfg.hidden
    return shapes + [(1, fan_in), (1,)]


def init_params(d: int, mcfg: ModelConfig, seed: int) -> list[torch.Tensor]:
    """Weights ~ N(0, 1/fan_in), biases 0."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) / s[1] ** 0.5 if len(s) == 2 else torch.zeros(s)
            for s in param_shapes(d, mcfg)]


def forward(params, x: torch.Tensor, act: str = "tanh") -> torch.Tensor:
    """f(x) = w_out^T phi(... phi(W_1 x + b_1) ...) + b_out, phi = tanh or identity; returns (...,)."""
    h = x
    for W, b in zip(params[0:-2:2], params[1:-2:2]):
        h = h @ W.mT + b.unsqueeze(-2)
        if act == "tanh":
            h = torch.tanh(h)
    return (h @ params[-2].mT + params[-1].unsqueeze(-2))[..., 0]


def flatten(params) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params])


def unflatten(flat: torch.Tensor, shapes) -> list[torch.Tensor]:
    """Inverse of flatten; a leading batch dim (B, P) gives batched tensors (B, *shape)."""
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    lead = tuple(flat.shape[:-1])
    return [t.reshape(lead + tuple(s)) for t, s in zip(torch.split(flat, sizes, dim=-1), shapes)]


def mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (pred - y).pow(2).mean(-1)
