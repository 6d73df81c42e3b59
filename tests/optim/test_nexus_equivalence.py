"""Nexus reduces to known optimizers: AdamW accumulation, Fish, SGD (tests 1 and recipes)."""

import pytest
import torch

from nexus_optim import Nexus
from nexus_optim.optim import recipes


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3)
    )


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)) for _ in range(n)]


def _loss(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_inner_lr_zero_equals_adamw_with_accumulation(max_grad_norm):
    K, outer_steps = 4, 25
    data = _batches(K * outer_steps)
    ref, nex = _mlp(), _mlp()
    decay = [p for n, p in ref.named_parameters() if n.endswith("weight") and p.dim() > 1]
    no_decay = [p for n, p in ref.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    adamw = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                               {"params": no_decay, "weight_decay": 0.0}], lr=1e-2)
    ndecay = [p for n, p in nex.named_parameters() if n.endswith("weight") and p.dim() > 1]
    nno = [p for n, p in nex.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    opt = Nexus([{"params": ndecay, "weight_decay": 0.1}, {"params": nno, "weight_decay": 0.0}],
                lr=1e-2, inner_lr=0.0, inner_steps=K, max_grad_norm=max_grad_norm)
    for i, batch in enumerate(data):
        (_loss(ref, batch) / K).backward()
        if (i + 1) % K == 0:
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(ref.parameters(), max_grad_norm)
            adamw.step()
            adamw.zero_grad()
        _loss(nex, batch).backward()
        opt.step()
        opt.zero_grad()
        assert opt.last_step_was_outer == ((i + 1) % K == 0)
    assert opt.outer_steps == outer_steps
    diff = max((a - b).abs().max().item() for a, b in zip(ref.parameters(), nex.parameters()))
    assert diff <= 1e-6


def test_recipe_adamw_accumulation_matches_nexus_inner_lr_zero():
    data = _batches(8)
    a, b = _mlp(), _mlp()
    oa = recipes.adamw_accumulation(a.parameters(), lr=1e-2, inner_steps=2)
    ob = Nexus(b.parameters(), lr=1e-2, inner_lr=0.0, inner_steps=2)
    for batch in data:
        for m, o in ((a, oa), (b, ob)):
            _loss(m, batch).backward()
            o.step()
            o.zero_grad()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fish_recipe_is_reptile_interpolation():
    """theta_new = theta + meta_lr * (theta_K - theta) with raw inner SGD steps."""
    K, gamma, meta = 3, 0.05, 0.5
    model, probe = _mlp(), _mlp()
    opt = recipes.fish(model.parameters(), inner_lr=gamma, inner_steps=K, meta_lr=meta)
    data = _batches(K)
    theta0 = [p.detach().clone() for p in probe.parameters()]
    for batch in data:  # independent reference: plain SGD inner loop on the probe
        probe.zero_grad()
        _loss(probe, batch).backward()
        with torch.no_grad():
            for p in probe.parameters():
                p -= gamma * p.grad
    expected = [t0 + meta * (pk.detach() - t0) for t0, pk in zip(theta0, probe.parameters())]
    for batch in data:
        _loss(model, batch).backward()
        opt.step()
        opt.zero_grad()
    assert opt.last_step_was_outer
    for e, p in zip(expected, model.parameters()):
        torch.testing.assert_close(p, e, atol=1e-6, rtol=1e-5)


def test_random_control_moves_are_inner_lr_long_and_seeded():
    model = _mlp()
    opt = recipes.random_control(model.parameters(), lr=1e-3, inner_lr=0.1, inner_steps=4, seed=3)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    _loss(model, _batches(1)[0]).backward()
    opt.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.1, rel=1e-4)
    # same seed -> same direction, whatever the gradient
    other = _mlp()
    opt2 = recipes.random_control(other.parameters(), lr=1e-3, inner_lr=0.1, inner_steps=4, seed=3)
    _loss(other, _batches(1, seed=9)[0]).backward()
    opt2.step()
    after2 = torch.cat([p.detach().flatten() for p in other.parameters()])
    torch.testing.assert_close(after2 - before, after - before)
