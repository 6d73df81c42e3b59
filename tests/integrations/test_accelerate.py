"""Nexus under accelerate: Accelerator(cpu=True).prepare(model, opt) == the plain loop;
settings that would skip inner steps are refused (integrations/accelerate.py)."""

import pytest
import torch

from nexus_optim import Nexus
from nexus_optim.models import build_model

accelerate = pytest.importorskip("accelerate")
from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

from nexus_optim.integrations import check_accelerator  # noqa: E402
from nexus_optim.optim.guards import HostError, check_host  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            intermediate_size=64)
K = 3


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _setup():
    model = build_model("nano", vocab_size=64, max_seq_len=16, seed=0, **TINY)
    opt = Nexus(model.parameters(), lr=3e-3, inner_lr=0.05, inner_steps=K, max_grad_norm=0.5,
                weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    return model, opt, sched


def _data():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 64, (4, 16), generator=g) for _ in range(4 * K)]


def test_prepared_training_equals_the_plain_loop():
    model, opt, sched = _setup()
    for ids in _data():
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if opt.last_step_was_outer:
            sched.step()

    m2, nexus, sched2 = _setup()
    accelerator = Accelerator(cpu=True)
    check_accelerator(accelerator)
    m2, opt2 = accelerator.prepare(m2, nexus)
    assert opt2.optimizer is nexus and opt2.param_groups is nexus.param_groups
    calls = 0
    for ids in _data():
        loss = m2(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        before = nexus.inner_step
        opt2.step()  # reaches Nexus every micro-batch
        calls += nexus.inner_step != before or nexus.last_step_was_outer
        assert not opt2.step_was_skipped
        opt2.zero_grad()
        if nexus.last_step_was_outer:
            sched2.step()
    assert calls == 4 * K and nexus.outer_steps == 4
    for a, b in zip(model.parameters(), accelerator.unwrap_model(m2).parameters()):
        assert torch.equal(a, b)
    # the state dict goes through the wrapper
    assert opt2.state_dict().keys() == nexus.state_dict().keys()


def test_gradient_accumulation_is_refused():
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=K)
    with pytest.raises(HostError, match="gradient_accumulation_steps=1"):
        check_accelerator(accelerator)


class _GuardedNexus(Nexus):
    def step(self, closure=None):
        check_host(self)
        return super().step(closure)


def test_guard_catches_accumulate_under_accelerate():
    model = build_model("nano", vocab_size=64, max_seq_len=16, seed=0, **TINY)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=K)
    model, opt = accelerator.prepare(model, _GuardedNexus(model.parameters(), inner_steps=K))
    with pytest.raises(HostError, match="accelerator.accumulate"):
        for ids in _data():
            with accelerator.accumulate(model):
                accelerator.backward(model(input_ids=ids, labels=ids).loss)
                opt.step()  # skipped by accelerate except every K-th micro-batch
                opt.zero_grad()


def test_a_prepared_scheduler_of_nexus_is_refused():
    """A scheduler passed through prepare() is stepped by AcceleratedScheduler on every
    opt.step() that syncs: every micro-batch with Nexus, K steps per outer step (issue 21).
    check_accelerator after prepare() refuses it; a scheduler kept out of prepare() passes."""
    model, nexus, sched = _setup()
    accelerator = Accelerator(cpu=True)
    model, opt, psched = accelerator.prepare(model, nexus, sched)
    for ids in _data()[:K]:  # one outer step, the scheduler stepped per micro-batch
        accelerator.backward(model(input_ids=ids, labels=ids).loss)
        opt.step()
        opt.zero_grad()
        psched.step()
    assert nexus.outer_steps == 1 and sched.last_epoch == K  # K times too fast: what is refused
    with pytest.raises(HostError, match=f"LambdaLR of Nexus\\(inner_steps={K}\\) went through "
                                        "accelerator.prepare\\(\\).*run 3x too fast"):
        check_accelerator(accelerator)

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    model, nexus, sched = _setup()
    accelerator = Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, nexus)
    check_accelerator(accelerator)  # the README's recipe: the scheduler stays outside
