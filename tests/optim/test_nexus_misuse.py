"""Misuse of the optimizer API fails early, in one line naming what is wrong, and
changes nothing (issue 21, "Optimizer API")."""

from __future__ import annotations

import copy

import pytest
import torch

from nexus_optim import Nexus

K = 3


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _micro(model, opt, i):
    g = torch.Generator().manual_seed(i)
    x, y = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def _trained(outer, **kw):
    model = _model()
    opt = Nexus(model.parameters(), lr=1e-2, inner_lr=0.1, inner_steps=K, outer=outer, **kw)
    for i in range(K + 1):
        _micro(model, opt, i)
    return model, opt


def _same_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"])
    for i in a["state"]:
        assert sorted(a["state"][i]) == sorted(b["state"][i])
        for key, value in a["state"][i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][i][key])), (i, key)


# ------------------------------------------------------------------ load_state_dict
@pytest.mark.parametrize("saved_outer, kw, outer", [
    (torch.optim.SGD, dict(momentum=0.9), torch.optim.AdamW),
    (torch.optim.AdamW, {}, torch.optim.SGD),
])
def test_another_outer_optimizers_state_is_refused_and_nothing_changes(saved_outer, kw, outer):
    """SGD-momentum state into an AdamW Nexus (torch: KeyError 'step', SGD's groups left
    installed, next step KeyError 'betas') and the reverse: one ValueError, the optimizer
    as it was, and it keeps stepping exactly like an untouched twin."""
    _, other = _trained(saved_outer, **kw)
    model, opt = _trained(outer, **(dict(momentum=0.5) if outer is torch.optim.SGD else {}))
    twin_model, twin = _trained(outer, **(dict(momentum=0.5) if outer is torch.optim.SGD else {}))
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=rf"state_dict: {outer.__name__} cannot load the saved "
                                         r"outer state .*Nothing was loaded"):
        opt.load_state_dict(copy.deepcopy(other.state_dict()))
    _same_state(opt.state_dict(), before)
    assert opt.param_groups is opt.outer.param_groups
    for i in range(K + 1, 3 * K):
        _micro(model, opt, i)
        _micro(twin_model, twin, i)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin_model.parameters()))


@pytest.mark.parametrize("where, value, match", [
    (("state", 0, "exp_avg"), "garbage", r"state\[0\]\['exp_avg'\] is a str"),
    (("state", 1, "nexus_counters"), [2, 3], r"state\[1\]\['nexus_counters'\] is a list"),
    (("state", 0), "garbage", r"state\[0\] is a str, not a dict"),
    (("state",), [1, 2], r"'state' is a list, not a dict"),
    (("param_groups", 0), "garbage", r"param_groups\[0\] is not a dict"),
    (("state", 2, "nexus_anchor"), torch.zeros(2, 4, dtype=torch.int64),
     r"state\[2\]\['nexus_anchor'\] has dtype torch.int64, not a floating-point one"),
])
def test_state_of_the_wrong_type_is_refused(where, value, match):
    _, opt = _trained(torch.optim.AdamW)
    sd = copy.deepcopy(opt.state_dict())
    before = copy.deepcopy(sd)
    node = sd
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    _same_state(opt.state_dict(), before)


def test_a_generator_state_of_the_wrong_size_is_refused():
    _, opt = _trained(torch.optim.AdamW, inner_norm="random")
    sd = copy.deepcopy(opt.state_dict())
    before = copy.deepcopy(sd)
    sd["state"][0]["nexus_rng"] = sd["state"][0]["nexus_rng"][:-8]
    with pytest.raises(ValueError, match=r"state\[0\]\['nexus_rng'\] has \d+ elements, this "
                                         r"generator's state has \d+"):
        opt.load_state_dict(sd)
    _same_state(opt.state_dict(), before)


@pytest.mark.parametrize("value", [None, 3, "optimizer.pt", [1]])
def test_load_state_dict_of_a_non_dict_is_refused(value):
    _, opt = _trained(torch.optim.AdamW)
    with pytest.raises(ValueError, match="state_dict: must be a dict"):
        opt.load_state_dict(value)


# ------------------------------------------------------------------ inner_steps
def test_inner_steps_changes_only_between_outer_steps():
    """Setting 2 while inner_step is 3 of 4 used to mean no outer step ever again."""
    model = _model()
    opt = Nexus(model.parameters(), lr=1e-2, inner_lr=0.1, inner_steps=4)
    for i in range(3):
        _micro(model, opt, i)
    with pytest.raises(RuntimeError, match="inner_steps: can change only at an outer step "
                                           r"boundary \(inner_step is 3 of 4, not 0\)"):
        opt.inner_steps = 2
    opt.inner_steps = 4  # unchanged: fine
    _micro(model, opt, 3)
    assert opt.last_step_was_outer and opt.inner_step == 0
    opt.inner_steps = 2  # at an anchor: fine, and the next outer step comes after 2
    _micro(model, opt, 4)
    _micro(model, opt, 5)
    assert opt.last_step_was_outer and opt.outer_steps == 2
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="inner_steps: must be an integer >= 1"):
            opt.inner_steps = bad


# ----------------------------------------------------------- early, clear errors
def test_sparse_gradients_are_refused_at_the_first_step():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    opt = Nexus(emb.parameters(), inner_steps=2)
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(ValueError, match="sparse gradient; Nexus needs dense gradients"):
        opt.step()
    assert torch.equal(emb.weight, before) and opt.inner_step == 0


def test_complex_parameters_are_refused():
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"params: a parameter of shape \(3,\) is complex"):
        Nexus([p])


@pytest.mark.parametrize("outer, match", [
    (torch.nn.Linear, "outer: must be a torch.optim.Optimizer class .* the class "
                      "torch.nn.modules.linear.Linear"),
    (Nexus, "outer: Nexus cannot be the outer optimizer of Nexus"),
    (lambda params, **kw: Nexus(params, **kw), "outer: built a Nexus"),
    (torch.optim.LBFGS, r"outer: LBFGS.step\(\) needs a closure"),
])
def test_outer_that_cannot_work_is_refused(outer, match):
    with pytest.raises(ValueError, match=match):
        Nexus(_model().parameters(), outer=outer)


def test_non_finite_weights_stop_training_with_a_clear_error():
    """A NaN anchor makes every micro-batch non-finite: skipped forever, training stalls
    silently. Now the first all-skipped outer step says why and stops."""
    model = _model()
    opt = Nexus(model.parameters(), lr=1e-2, inner_lr=0.1, inner_steps=K)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite gradient"):
        with pytest.raises(RuntimeError, match="the weights are not finite .* at outer step 0"):
            for i in range(K):
                _micro(model, opt, i)
    assert opt.inner_step == 0 and opt.outer_steps == 0


def test_a_nan_micro_batch_with_finite_weights_is_still_only_skipped():
    model = _model()
    opt = Nexus(model.parameters(), lr=1e-2, inner_lr=0.1, inner_steps=1)
    x = torch.full((5, 3), float("nan"))
    with pytest.warns(RuntimeWarning, match="non-finite gradient"):
        model(x).sum().backward()
        opt.step()
    assert opt.skipped_micro_batches == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1, "0.1"])
def test_a_bad_group_inner_lr_set_later_is_named(value):
    """Set after construction (e.g. by a scheduler): refused at the next step, naming the
    group, not reported as a non-finite gradient one outer step later."""
    model = _model()
    opt = Nexus([{"params": list(model[0].parameters())},
                 {"params": list(model[2].parameters())}], inner_steps=K)
    opt.param_groups[1]["inner_lr"] = value
    model(torch.ones(1, 3)).sum().backward()
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['inner_lr'\]: must be a finite "
                                         "number >= 0"):
        opt.step()


@pytest.mark.parametrize("group, match", [
    ({"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]}, "is complex"),
    ({"params": [torch.nn.Parameter(torch.zeros(2))], "inner_lr": float("nan")},
     "inner_lr: must be a finite number >= 0"),
])
def test_a_bad_added_group_is_refused_before_the_outer_optimizer_has_it(group, match):
    model, opt = _trained(torch.optim.AdamW)
    for i in range(K + 1, 2 * K):  # to an outer step boundary
        _micro(model, opt, i)
    with pytest.raises(ValueError, match=match):
        opt.add_param_group(group)
    assert len(opt.outer.param_groups) == len(opt.param_groups) == 1
    extra = torch.nn.Parameter(torch.ones(2))
    opt.add_param_group({"params": (p for p in [extra])})  # any iterable, as in torch
    assert "nexus_anchor" in opt.state[extra] and len(opt.param_groups) == 2


def test_state_reads_through_after_the_outer_optimizer_loads_by_itself():
    """``opt.outer.load_state_dict`` replaces the outer ``state`` dict; ``opt.state`` sees
    the new one (it reads through the outer optimizer, not a saved reference)."""
    _, other = _trained(torch.optim.AdamW)
    model, opt = _trained(torch.optim.AdamW)
    opt.outer.load_state_dict(copy.deepcopy(other.outer.state_dict()))
    p = next(model.parameters())
    assert opt.state[p]["exp_avg"] is opt.outer.state[p]["exp_avg"]
