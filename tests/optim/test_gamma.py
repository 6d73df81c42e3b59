"""The scale-free gamma (optim/gamma.py) and its wiring in the harness (train/optimizers.py):
S = sqrt(sum_g lr_g^2 n_g) against a float64 reference, S is the length of AdamW's first
step, a relative inner_lr gives inner moves of length r S through the real Nexus in every
mode that has a fixed length, and the builder records the absolute gamma."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nexus_optim.optim import Nexus
from nexus_optim.optim.gamma import inner_lr_from_relative, n_tensors, update_scale
from nexus_optim.train.config import OptimConfig
from nexus_optim.train.optimizers import build_optimizer, gamma_record


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(11, 6)
        self.mid = torch.nn.Linear(6, 5)
        self.norm = torch.nn.LayerNorm(5)
        self.head = torch.nn.Linear(5, 11, bias=False)
        self.frozen = torch.nn.Parameter(torch.ones(7), requires_grad=False)

    def forward(self, ids):
        return self.head(self.norm(torch.tanh(self.mid(self.emb(ids)))))


def _loss(model, seed):
    """Every token id occurs, so every embedding row gets a gradient."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(12, generator=g).remainder(11).reshape(4, 3)
    return torch.nn.functional.cross_entropy(model(ids).reshape(-1, 11), torch.randint(0, 11, (12,), generator=g))


def test_update_scale_matches_a_float64_reference_with_groups_tied_and_frozen_tensors():
    m = Tiny()
    m.head.weight = m.emb.weight  # tied: stepped once, counted once
    mats = [p for p in m.parameters() if p.dim() >= 2]
    vecs = [p for p in m.parameters() if p.dim() < 2]
    groups = [{"params": mats, "lr": 3e-3}, {"params": vecs + [m.emb.weight]}]  # tied again; frozen in vecs
    n_mat = 11 * 6 + 6 * 5  # emb (= head) + mid.weight
    n_vec = 5 + 5 + 5  # mid.bias, norm.weight, norm.bias (frozen left out)
    ref = np.sqrt(np.float64(3e-3) ** 2 * n_mat + np.float64(1e-2) ** 2 * n_vec)
    assert update_scale(groups, lr=1e-2) == pytest.approx(float(ref), rel=1e-15)
    assert update_scale(m.parameters(), lr=2e-3) == pytest.approx(2e-3 * math.sqrt(n_mat + n_vec), rel=1e-15)
    assert n_tensors(m.parameters()) == 5
    with pytest.raises(ValueError, match=r"params\[1\]: no 'lr' in the group"):
        update_scale(groups)
    with pytest.raises(ValueError, match="relative inner_lr: -1"):
        inner_lr_from_relative(-1, m.parameters(), 1e-3)
    with pytest.raises(ValueError, match="'none' has no fixed move length"):
        inner_lr_from_relative(0.1, m.parameters(), 1e-3, inner_norm="none")


def test_the_scale_is_the_length_of_adamws_first_step():
    """AdamW's first (bias-corrected) step moves every coordinate by lr g/(|g| + eps): its
    length is S = lr sqrt(#params) up to eps, so r = 1 is one such outer step."""
    m = Tiny()
    lr = 1e-3
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=0.0, eps=1e-12)
    before = [p.detach().double().clone() for p in m.parameters()]
    _loss(m, 0).backward()
    assert all(bool((p.grad != 0).all()) for p in m.parameters() if p.requires_grad)
    opt.step()
    step = math.sqrt(sum(float(((p.detach().double() - b) ** 2).sum()) for p, b in zip(m.parameters(), before)))
    assert step == pytest.approx(update_scale(m.parameters(), lr), rel=1e-5)


@pytest.mark.parametrize("inner_norm", ["global", "per_tensor", "random"])
def test_a_relative_inner_lr_gives_moves_of_length_r_times_the_scale(inner_norm):
    """Through the real Nexus: the first inner move (after one micro-batch) has length r S."""
    m = Tiny()
    params = [p for p in m.parameters() if p.requires_grad]
    r, lr = 0.25, 2e-3
    gamma = inner_lr_from_relative(r, params, lr, inner_norm)
    opt = Nexus(params, lr=lr, inner_lr=gamma, inner_steps=2, inner_norm=inner_norm, seed=0)
    before = [p.detach().double().clone() for p in params]
    _loss(m, 1).backward()
    opt.step()
    move = math.sqrt(sum(float(((p.detach().double() - b) ** 2).sum()) for p, b in zip(params, before)))
    assert move == pytest.approx(r * update_scale(params, lr), rel=1e-5)


def test_the_builder_reads_a_relative_inner_lr_and_records_the_absolute_one():
    m = Tiny()
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    cfg = OptimConfig(name="nexus", lr=3e-3, inner_lr=0.5, inner_lr_scale="lr_sqrt_params")
    opt = build_optimizer(cfg, m)
    want = 0.5 * 3e-3 * math.sqrt(n)
    assert all(g["inner_lr"] == pytest.approx(want, rel=1e-12) for g in opt.param_groups)
    assert gamma_record(cfg, opt) == {"inner_lr_absolute": pytest.approx(want, rel=1e-12),
                                      "inner_lr_scale": "lr_sqrt_params", "inner_lr_config": 0.5}
    absolute = OptimConfig(name="random-control", lr=3e-3, inner_lr=0.5)
    assert build_optimizer(absolute, m).param_groups[0]["inner_lr"] == 0.5
    assert gamma_record(OptimConfig(name="adamw"), build_optimizer(OptimConfig(name="adamw"), m)) == {}
    with pytest.raises(ValueError, match="optim.inner_lr_scale='lr_sqrt_params': inner_norm: 'none'"):
        build_optimizer(OptimConfig(name="fish", inner_lr_scale="lr_sqrt_params"), m)
    with pytest.raises(ValueError, match="optim.inner_lr_scale: 'params' is not one of 'absolute', 'lr_sqrt_params'"):
        build_optimizer(OptimConfig(name="nexus", inner_lr_scale="params"), m)
