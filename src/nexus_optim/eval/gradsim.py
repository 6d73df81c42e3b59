"""Gradient cosine similarity between training sources.

For each train source s, ``n_batches`` batches of ``batch_size`` random windows are drawn
(deterministically from ``seed``: the same window positions for every source of equal
length, so two identical sources get identical batches) and the full-parameter gradient
g_{s,i} of the mean next-token loss is taken at the current weights. Reported:

    cos_mean_grad[a][b]   cos(mean_i g_{a,i}, mean_j g_{b,j})     (1 on the diagonal)
    cos_batch_mean[a][b]  mean over batch pairs of cos(g_{a,i}, g_{b,j})
    cos_batch_std[a][b]   their std (ddof=1); pairs are all (i, j) for a != b and
                          i < j for a == b (n_pairs says how many)
    grad_sim              mean off-diagonal cos_mean_grad (the logged ``geom/grad_sim``)
    grad_sim_batch        mean off-diagonal cos_batch_mean

Gradients are taken with ``torch.autograd.grad`` (``.grad`` of the model is untouched) and
no global RNG is consumed, so calling this during training changes nothing. Memory:
all S * n_batches flat fp32 gradients are held at once on ``store_device`` (default: the
model's device), i.e. 4 * S * n_batches * n_params bytes.

``grad_sim_metrics`` is what the training loop logs at eval time when
``train.grad_sim_batches > 0``: ``geom/cos/<a>/<b>`` (a before b in source order, from
``cos_mean_grad``), ``geom/grad_sim`` and ``geom/grad_sim_batch``.
"""

from __future__ import annotations

import numpy as np
import torch

from nexus_optim.runtime import autocast_for


def unique_params(model: torch.nn.Module) -> list[torch.Tensor]:
    """Trainable parameters, tied ones once, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def sample_batches(tokens: np.ndarray, seq_len: int, batch_size: int, n_batches: int,
                   seed: int) -> list[torch.Tensor]:
    """``n_batches`` LongTensors ``[batch_size, seq_len]`` of random windows (seeded)."""
    if len(tokens) < seq_len:
        raise ValueError(f"grad-sim: a source has {len(tokens)} tokens, fewer than seq_len={seq_len}")
    rng = np.random.default_rng([int(seed), 7])
    out = []
    for _ in range(n_batches):
        starts = rng.integers(0, len(tokens) - seq_len + 1, size=batch_size)
        out.append(torch.from_numpy(np.stack([np.asarray(tokens[s:s + seq_len], dtype=np.int64)
                                              for s in starts])))
    return out


def flat_grad(model: torch.nn.Module, params: list[torch.Tensor], input_ids: torch.Tensor,
              bf16: bool = True) -> torch.Tensor:
    """Flat fp32 gradient of the mean next-token loss on one batch."""
    device = params[0].device
    ids = input_ids.to(device)
    with torch.enable_grad(), autocast_for(device, bf16):
        loss = model(input_ids=ids, labels=ids).loss
    grads = torch.autograd.grad(loss.float(), params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    nx, ny = float(x.norm()), float(y.norm())
    if nx == 0.0 or ny == 0.0:
        return float("nan")
    return float(torch.dot(x, y)) / (nx * ny)


def grad_similarity(model: torch.nn.Module, data: dict[str, np.ndarray], seq_len: int,
                    batch_size: int, n_batches: int = 8, seed: int = 0, bf16: bool = True,
                    store_device: str | torch.device | None = None) -> dict:
    """Source gradient cosines at the model's current weights (see module docstring).

    ``data``: source name -> train token array. Returns a JSON-able dict with ``sources``,
    ``cos_mean_grad``, ``cos_batch_mean``, ``cos_batch_std``, ``n_pairs`` (S x S lists, in
    ``sources`` order), ``grad_norm`` (norm of each source's mean gradient),
    ``grad_sim``, ``grad_sim_batch`` and the settings.
    """
    if n_batches < 1:
        raise ValueError(f"grad-sim: batches must be >= 1, got {n_batches}")
    names = list(data)
    if not names:
        raise ValueError("grad-sim: no train sources")
    params = unique_params(model)
    store = torch.device(store_device) if store_device is not None else params[0].device
    was_training = model.training
    model.eval()  # no dropout; LLaMA has none by default, this only makes it explicit
    try:
        grads = {s: torch.stack([flat_grad(model, params, b, bf16).to(store)
                                 for b in sample_batches(data[s], seq_len, batch_size, n_batches, seed)])
                 for s in names}
    finally:
        model.train(was_training)
    # unit vectors of every batch gradient, and per-source mean gradients
    units = {s: g / g.norm(dim=1, keepdim=True).clamp_min(1e-30) for s, g in grads.items()}
    means = {s: g.mean(0) for s, g in grads.items()}
    S = len(names)
    cos_mean = [[1.0 if a == b else _cos(means[names[a]], means[names[b]]) for b in range(S)]
                for a in range(S)]
    cos_bm = [[float("nan")] * S for _ in range(S)]
    cos_bs = [[float("nan")] * S for _ in range(S)]
    n_pairs = [[0] * S for _ in range(S)]
    for a in range(S):
        for b in range(a, S):
            c = units[names[a]] @ units[names[b]].T  # [n, n]
            if a == b:
                iu = torch.triu_indices(n_batches, n_batches, offset=1)
                vals = c[iu[0], iu[1]]
            else:
                vals = c.reshape(-1)
            vals = vals.double().cpu().numpy()
            n_pairs[a][b] = n_pairs[b][a] = int(vals.size)
            if vals.size:
                cos_bm[a][b] = cos_bm[b][a] = float(vals.mean())
            if vals.size >= 2:
                cos_bs[a][b] = cos_bs[b][a] = float(vals.std(ddof=1))
    off = [(a, b) for a in range(S) for b in range(S) if a != b]
    return {
        "sources": names,
        "batches": int(n_batches), "batch_size": int(batch_size), "seq_len": int(seq_len),
        "seed": int(seed),
        "cos_mean_grad": cos_mean,
        "cos_batch_mean": cos_bm,
        "cos_batch_std": cos_bs,
        "n_pairs": n_pairs,
        "grad_norm": {s: float(means[s].norm()) for s in names},
        "grad_sim": float(np.mean([cos_mean[a][b] for a, b in off])) if off else None,
        "grad_sim_batch": float(np.mean([cos_bm[a][b] for a, b in off])) if off else None,
    }


def train_sources_data(prepared) -> dict[str, np.ndarray]:
    """Train split of every train source with positive weight, in prepared order."""
    return {s: prepared.load(s, "train") for s, r in prepared.roles.items()
            if r == "train" and prepared.weights.get(s, 0) > 0}


def grad_sim_metrics(model: torch.nn.Module, prepared, cfg, n_batches: int | None = None,
                     seed: int = 0) -> dict[str, float]:
    """Flat ``geom/...`` metrics for the training loop's eval record (module docstring).
    Uses ``train.micro_batch_size``, ``model.seq_len``, ``train.bf16`` and, by default,
    ``train.grad_sim_batches`` batches per source; the same batches at every eval."""
    n = n_batches if n_batches is not None else cfg.train.grad_sim_batches
    r = grad_similarity(model, train_sources_data(prepared), cfg.model.seq_len,
                        cfg.train.micro_batch_size, n, seed=seed, bf16=cfg.train.bf16)
    names = r["sources"]
    out = {}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            out[f"geom/cos/{names[a]}/{names[b]}"] = r["cos_mean_grad"][a][b]
    if r["grad_sim"] is not None:
        out["geom/grad_sim"] = r["grad_sim"]
        out["geom/grad_sim_batch"] = r["grad_sim_batch"]
    return out
