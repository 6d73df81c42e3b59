"""torch.optim conventions: schedulers, groups, no-grad steps, NaN skipping, errors (tests 4, 6)."""

import warnings

import pytest
import torch

from nexus_optim import Nexus


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _step(model, opt, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(5, 4, generator=g), torch.randn(5, 1, generator=g)
    (scale * torch.nn.functional.mse_loss(model(x), y)).backward()
    opt.step()
    opt.zero_grad()


def test_param_groups_are_the_outer_groups_also_after_load():
    opt = Nexus(_model().parameters(), lr=1e-3, inner_steps=2)
    assert opt.param_groups is opt.outer.param_groups
    opt.load_state_dict(opt.state_dict())
    assert opt.param_groups is opt.outer.param_groups
    assert all(a is b for a, b in zip(opt.param_groups, opt.outer.param_groups))
    assert isinstance(opt, torch.optim.Optimizer)


def test_scheduler_drives_outer_lr():
    K = 2
    a, b = _model(), _model()
    oa = Nexus(a.parameters(), lr=1e-2, inner_lr=0.0, inner_steps=K)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2)
    sa = torch.optim.lr_scheduler.LambdaLR(oa, lambda t: 1.0 / (1 + t))
    sb = torch.optim.lr_scheduler.LambdaLR(ob, lambda t: 1.0 / (1 + t))
    for i in range(6 * K):
        _step(a, oa, i)
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(5, 4, generator=g), torch.randn(5, 1, generator=g)
        (torch.nn.functional.mse_loss(b(x), y) / K).backward()
        if oa.last_step_was_outer:
            ob.step()
            ob.zero_grad()
            sa.step()
            sb.step()
    assert oa.outer.param_groups[0]["lr"] == pytest.approx(1e-2 / 7)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
@pytest.mark.parametrize("follows", [False, True])
def test_inner_lr_follows_lr(follows):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = Nexus([p], lr=1.0, inner_lr=0.1, inner_steps=4, inner_norm="none",
                outer=torch.optim.SGD, inner_lr_follows_lr=follows)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 ** t)
    sched.step()  # lr = 0.5 now
    p.grad = torch.tensor([1.0, -2.0])
    opt.step()
    gamma = 0.1 * (0.5 if follows else 1.0)
    torch.testing.assert_close(p.detach(), torch.tensor([-gamma, 2 * gamma]))


def test_step_without_gradients_changes_nothing():
    model = _model()
    opt = Nexus(model.parameters(), inner_steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):
        opt.step()
    assert opt.inner_step == 0 and opt.outer_steps == 0 and not opt.last_step_was_outer
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the outer AdamW state was created eagerly (for DCP templates) and is still fresh
    for s in opt.outer.state.values():
        assert s["step"] == 0 and not s["exp_avg"].any() and not s["exp_avg_sq"].any()


def test_zero_gradient_calls_cannot_cause_an_outer_step_of_their_own():
    """torch.distributed.checkpoint's _init_optim_state steps with zero grads when
    state is empty: Nexus state is eager, so that code path is never taken."""
    model = _model()
    opt = Nexus(model.parameters(), inner_steps=2)
    assert len(opt.state) == 4 and all("nexus_anchor" in s for s in opt.state.values())
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():  # what _init_optim_state would do: zero grads, one step()
        p.grad = torch.zeros_like(p)
    opt.step()
    assert opt.inner_step == 1 and opt.outer_steps == 0 and not opt.last_step_was_outer
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(s["step"] == 0 for s in opt.outer.state.values())  # the outer AdamW never ran
    # the call counts as the loop's first micro-batch: the next real one is the outer step
    _step(model, opt, 1)
    assert opt.outer_steps == 1 and opt.last_step_was_outer


def test_parameter_groups_with_own_inner_lr():
    a = torch.nn.Parameter(torch.zeros(1))
    b = torch.nn.Parameter(torch.zeros(1))
    opt = Nexus([{"params": [a], "inner_lr": 0.1}, {"params": [b], "weight_decay": 0.0}],
                lr=1e-3, inner_lr=0.3, inner_steps=3, inner_norm="none", outer=torch.optim.SGD)
    a.grad, b.grad = torch.ones(1), torch.ones(1)
    opt.step()
    assert a.item() == pytest.approx(-0.1) and b.item() == pytest.approx(-0.3)
    assert opt.param_groups[1]["weight_decay"] == 0.0


def test_trajectory_state_only_when_needed():
    p = torch.nn.Parameter(torch.zeros(3))
    outer = {"step", "exp_avg", "exp_avg_sq", "nexus_counters"}
    assert set(Nexus([p], outer_grad="displacement").state[p]) == outer | {"nexus_anchor"}
    assert set(Nexus([p], outer_grad="trajectory").state[p]) == outer | {
        "nexus_anchor", "nexus_trajectory"}


def test_bf16_parameters_keep_fp32_state():
    model = _model().to(torch.bfloat16)
    opt = Nexus(model.parameters(), inner_steps=2)
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(5, 4, generator=g).to(torch.bfloat16)
        model(x).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    for p in model.parameters():
        assert opt.state[p]["nexus_anchor"].dtype == torch.float32
        assert opt.state[p]["nexus_trajectory"].dtype == torch.float32
        assert p.dtype == torch.bfloat16
    opt2 = Nexus(model.parameters(), inner_steps=2)
    opt2.load_state_dict(opt.state_dict())
    assert all(s["nexus_anchor"].dtype == torch.float32 for s in opt2.state.values())


def test_nan_micro_batch_is_skipped_counted_and_warned_once():
    model = _model()
    ref = _model()
    opt = Nexus(model.parameters(), lr=1e-2, inner_lr=0.0, inner_steps=3)
    ref_opt = Nexus(ref.parameters(), lr=1e-2, inner_lr=0.0, inner_steps=2)
    with pytest.warns(RuntimeWarning, match="1 of 3 micro-batches had a non-finite gradient in outer step 0") as rec:
        _step(model, opt, 0)
        _step(model, opt, 1, scale=float("nan"))
        _step(model, opt, 2)
        _step(model, opt, 3, scale=float("inf"))
        _step(model, opt, 4)
        _step(model, opt, 5)
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert opt.skipped_micro_batches == 2 and opt.outer_steps == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the NaN micro-batches are simply absent from the mean: same as a run without them
    for i in (0, 2, 4, 5):
        _step(ref, ref_opt, i)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_all_nan_loop_makes_no_outer_step():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = Nexus(model.parameters(), inner_steps=2, inner_lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _step(model, opt, 0, scale=float("nan"))
        _step(model, opt, 1, scale=float("nan"))
    assert opt.outer_steps == 0 and opt.skipped_micro_batches == 2 and opt.inner_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(inner_steps=0), "inner_steps: must be an integer >= 1"),
        (dict(inner_steps=2.5), "inner_steps"),
        (dict(lr=-1.0), "lr: must be a finite number >= 0"),
        (dict(inner_lr=-0.1), "inner_lr: must be a finite number >= 0"),
        (dict(inner_norm="l1"), "inner_norm: 'l1' is not one of 'global', 'per_tensor', 'none', 'random'"),
        (dict(outer_grad="sum"), "outer_grad: 'sum' is not one of 'trajectory', 'displacement'"),
        (dict(max_grad_norm=0.0), "max_grad_norm: must be None or a finite number > 0"),
        (dict(inner_lr=0.0, outer_grad="displacement"), "inner_lr: must be > 0"),
        (dict(outer=3), "outer: must be a torch.optim.Optimizer class"),
        (dict(outer=lambda params, lr: None), "outer: must build a torch.optim.Optimizer"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Nexus(_model().parameters(), **kwargs)


def test_load_rejects_mismatched_configuration():
    sd = Nexus(_model().parameters(), inner_steps=2).state_dict()
    with pytest.raises(ValueError, match="inner_steps: checkpoint has 2"):
        Nexus(_model().parameters(), inner_steps=3).load_state_dict(sd)
    with pytest.raises(ValueError, match="not a Nexus state dict"):
        Nexus(_model().parameters()).load_state_dict(torch.optim.AdamW(_model().parameters()).state_dict())


def test_the_host_check_walks_frames_once_per_outer_step():
    """guards.check_host (a walk over caller frames) runs at the first micro-batch of
    each outer step, not at every step() (issue 22)."""
    import sys

    from nexus_optim.optim import guards

    p = torch.nn.Parameter(torch.ones(3))
    opt = Nexus([p], lr=0.1, inner_lr=0.1, inner_steps=3)
    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is guards.check_host.__code__:
            calls.append(opt.inner_step)

    sys.setprofile(profile)
    try:
        for _ in range(6):
            (p * p).sum().backward()
            opt.step()
            opt.zero_grad()
    finally:
        sys.setprofile(None)
    assert calls == [0, 0] and opt.outer_steps == 2
