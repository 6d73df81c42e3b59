"""train/step.py: the outer-step protocols, the data-parallel mode mapping, and that
every optimizer of the registry is driven the way its type says."""

from __future__ import annotations

import pytest
import torch

from nexus_optim.train.config import from_dict
from nexus_optim.train.optimizers import OPTIMIZERS, build_optimizer, step_protocol
from nexus_optim.train.step import (ACCUMULATE, PER_MICRO_BATCH, data_parallel_modes, outer_step,
                                    protocol_of)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_registry_protocol_matches_the_optimizer(name):
    cfg = from_dict({"optim": {"name": name, "inner_steps": 2}}).optim
    opt = build_optimizer(cfg, _model())
    assert step_protocol(name) is protocol_of(opt)


@pytest.mark.parametrize("protocol, world, inner_sync, want", [
    (ACCUMULATE, 1, "sync", ("none", "auto")),
    (PER_MICRO_BATCH, 1, "local", ("none", "auto")),
    (ACCUMULATE, 2, "sync", ("accumulate", "sync")),
    (ACCUMULATE, 2, "local", ("accumulate", "local")),
    (PER_MICRO_BATCH, 2, "sync", ("sync", "sync")),
    (PER_MICRO_BATCH, 4, "local", ("local", "local")),
])
def test_data_parallel_modes(protocol, world, inner_sync, want):
    assert data_parallel_modes(protocol, world, inner_sync) == want


def test_data_parallel_modes_refuses_other_names():
    with pytest.raises(ValueError, match="train.inner_sync: 'none'"):
        data_parallel_modes(PER_MICRO_BATCH, 2, "none")


def _data(k):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 4, generator=g), torch.randn(5, 1, generator=g)) for _ in range(k)]


def test_accumulate_equals_one_step_on_the_mean_loss():
    k, data = 3, _data(3)
    a, b = _model(), _model()
    oa, ob = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    losses = outer_step(oa, ACCUMULATE, k, lambda i: torch.nn.functional.mse_loss(a(data[i][0]), data[i][1]))
    assert len(losses) == k and all(not l.requires_grad for l in losses)
    sum(torch.nn.functional.mse_loss(b(x), y) for x, y in data).div(k).backward()
    ob.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
    assert all(p.grad is None for p in a.parameters())


def test_per_micro_batch_steps_every_micro_batch_and_checks_the_outer_step():
    from nexus_optim import Nexus

    model = _model()
    opt = Nexus(model.parameters(), inner_steps=2, inner_lr=0.1)
    calls = []

    def update(o):
        calls.append(o.inner_step)
        o.step()
        o.zero_grad(set_to_none=True)

    data = _data(2)
    outer_step(opt, PER_MICRO_BATCH, 2, lambda i: torch.nn.functional.mse_loss(model(data[i][0]), data[i][1]),
               update=update)
    assert calls == [0, 1] and opt.outer_steps == 1
    m = _model()
    wrong = Nexus(m.parameters(), inner_steps=3)  # K = 3, but the loop gives 2 micro-batches
    with pytest.raises(RuntimeError, match="was not an outer step"):
        outer_step(wrong, PER_MICRO_BATCH, 2, lambda i: m(data[i][0]).sum())
