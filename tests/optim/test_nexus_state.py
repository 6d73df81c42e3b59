"""Nexus state: outer-weight evaluation, torch.optim hooks, atomic validated loading,
the 0.1 format, and torch.distributed.checkpoint (single process; the 2-rank FSDP2
round trip is in test_distributed.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from nexus_optim import Nexus

K = 3


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                               torch.nn.Linear(4, 2)).to(dtype)


def _opt(model, **kw):
    kw = dict(dict(lr=1e-2, inner_lr=0.1, inner_steps=K, weight_decay=0.1, max_grad_norm=1.0),
              **kw)
    return Nexus(model.parameters(), **kw)


def _micro(model, opt, i):
    g = torch.Generator().manual_seed(i)
    x, y = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    torch.nn.functional.mse_loss(model(x.to(next(model.parameters()).dtype)).float(),
                                 y).backward()
    opt.step()
    opt.zero_grad()


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------ eval / train
def test_eval_swaps_in_the_outer_weights_and_train_restores_the_probe():
    model = _model()
    opt = _opt(model)
    for i in range(K + 1):  # one outer step, then one inner move: at a probe point
        _micro(model, opt, i)
    anchor = [opt.state[p]["nexus_anchor"].clone() for p in model.parameters()]
    probe = _weights(model)
    assert any(not torch.equal(a, b) for a, b in zip(anchor, probe))
    opt.eval()
    opt.eval()  # idempotent
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), anchor))
    with pytest.raises(RuntimeError, match=r"in eval mode; call opt.train\(\)"):
        opt.step()
    opt.train()
    opt.train()  # idempotent
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), probe))


def test_eval_train_do_not_change_the_run():
    ref, model = _model(), _model()
    ref_opt, opt = _opt(ref), _opt(model)
    for i in range(3 * K):
        _micro(ref, ref_opt, i)
        _micro(model, opt, i)
        with opt.outer_weights():
            model(torch.zeros(1, 3))
        opt.train()  # what HF Trainer calls every step: a no-op here
    assert all(torch.equal(a, b) for a, b in zip(_weights(ref), _weights(model)))


def test_eval_at_an_anchor_is_free_and_exact():
    model = _model()
    opt = _opt(model)
    for i in range(K):
        _micro(model, opt, i)
    before = _weights(model)
    with opt.outer_weights():
        assert opt.loop.probe is None  # nothing copied at an anchor
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not opt.loop.eval_mode


def test_state_dict_taken_in_eval_mode_resumes_exactly():
    """Save model + optimizer while evaluating mid loop (the model holds the anchor):
    a fresh process-like copy continues exactly like the uninterrupted run."""
    ref = _model()
    ref_opt = _opt(ref)
    for i in range(4 * K):
        _micro(ref, ref_opt, i)
    model = _model()
    opt = _opt(model)
    for i in range(K + 1):
        _micro(model, opt, i)
    opt.eval()
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    model2 = _model(seed=5)
    opt2 = _opt(model2)
    model2.load_state_dict(saved["model"])  # the outer weights (eval mode)
    opt2.load_state_dict(saved["opt"])  # puts the probe point back into the model
    for i in range(K + 1, 4 * K):
        _micro(model2, opt2, i)
    assert all(torch.equal(a, b) for a, b in zip(_weights(ref), _weights(model2)))


# ------------------------------------------------------------- torch.optim hooks
def test_state_dict_and_load_hooks_fire():
    model = _model()
    opt = _opt(model)
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: sd | {"extra": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load_post"))
    sd = opt.state_dict()
    assert sd["extra"] == 1 and seen == ["pre"]
    opt.load_state_dict(sd)
    assert seen == ["pre", "load_pre", "load_post"]


def test_step_hooks_fire_per_micro_batch():
    model = _model()
    opt = _opt(model)
    calls = []
    opt.register_step_pre_hook(lambda o, a, kw: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, kw: calls.append("post"))
    _micro(model, opt, 0)
    assert calls == ["pre", "post"]


def test_zero_grad_and_add_param_group_behave_as_in_torch():
    model = _model()
    opt = _opt(model, weight_decay=0.0)
    _micro(model, opt, 0)  # mid loop
    extra = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(RuntimeError, match="outer step boundary"):
        opt.add_param_group({"params": [extra]})
    for i in range(1, K):
        _micro(model, opt, i)
    opt.add_param_group({"params": [extra], "inner_lr": 0.3})
    assert opt.param_groups[-1]["inner_lr"] == 0.3 and opt.param_groups is opt.outer.param_groups
    assert "nexus_anchor" in opt.state[extra]
    extra.grad = torch.ones(2)
    opt.zero_grad()
    assert extra.grad is None  # set_to_none, torch's default
    extra.grad = torch.ones(2)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(extra.grad, torch.zeros(2))


# ---------------------------------------------------------------- atomic loading
def test_mismatched_shape_is_refused_before_anything_changes():
    model = _model()
    opt = _opt(model)
    for i in range(K + 1):
        _micro(model, opt, i)
    good = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(good)
    bad["state"][2]["exp_avg"] = torch.zeros(4, 3)  # layer 2 weight is (2, 4)
    with pytest.raises(ValueError, match=r"state\[2\]\['exp_avg'\] has shape \(4, 3\)"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for i in good["state"]:
        for key, value in good["state"][i].items():
            assert torch.equal(value, after["state"][i][key]), (i, key)


def test_smaller_broadcastable_state_is_refused():
    small = _opt(torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Tanh(), torch.nn.Linear(1, 2)))
    with pytest.raises(ValueError, match="has shape"):
        _opt(_model()).load_state_dict(small.state_dict())


def test_mismatched_settings_and_foreign_state_are_refused():
    sd = _opt(_model()).state_dict()
    with pytest.raises(ValueError, match="inner_steps: checkpoint has 3, optimizer has 2"):
        _opt(_model(), inner_steps=2).load_state_dict(sd)
    with pytest.raises(ValueError, match="inner_norm: checkpoint has 'global'"):
        _opt(_model(), inner_norm="per_tensor").load_state_dict(sd)
    with pytest.raises(ValueError, match="outer_grad"):
        _opt(_model(), outer_grad="displacement").load_state_dict(sd)
    with pytest.raises(ValueError, match="no Nexus state"):
        _opt(_model()).load_state_dict(torch.optim.AdamW(_model().parameters()).state_dict())


def test_bf16_parameters_keep_fp32_anchor_and_trajectory_through_load():
    model = _model(dtype=torch.bfloat16)
    opt = _opt(model)
    for i in range(K + 1):
        _micro(model, opt, i)
    model2 = _model(dtype=torch.bfloat16)
    opt2 = _opt(model2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p in model2.parameters():
        assert opt2.state[p]["nexus_anchor"].dtype == torch.float32
        assert opt2.state[p]["nexus_trajectory"].dtype == torch.float32
        assert opt2.state[p]["exp_avg"].dtype == torch.bfloat16  # torch's own cast


@pytest.mark.stored
def test_loads_the_0_1_format_and_continues():
    """tests/optim/data/nexus_v0_1_state.pt was written by nexus-optim 0.1 (commit
    3183c1e): a mid-loop state dict plus the weights that run reached 6 micro-batches
    later. Not bitwise: 0.1 scaled the move as one fused alpha, 0.2 as addcmul."""
    old = torch.load(Path(__file__).parent / "data" / "nexus_v0_1_state.pt", weights_only=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt = Nexus(model.parameters(), lr=1e-2, inner_lr=0.1, inner_steps=3, weight_decay=0.1)
    model.load_state_dict(old["model"])
    opt.load_state_dict(old["opt"])
    assert opt.inner_step == 1 and opt.outer_steps == 1
    for i in range(4, 10):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    for p, q in zip(model.parameters(), old["final"]):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=1e-6)


V0_2 = torch.load(Path(__file__).parent / "data" / "nexus_v0_2_state.pt", weights_only=True)
V0_2_NAN_AT = 2  # as in data/make_nexus_v0_2_state.py


def _v0_2_model_and_opt(kwargs):
    kwargs = dict(kwargs)
    if "outer" in kwargs:
        kwargs["outer"] = getattr(torch.optim, kwargs["outer"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    return model, Nexus(model.parameters(), **kwargs)


def _v0_2_micro(model, opt, i):
    g = torch.Generator().manual_seed(i)
    x, y = torch.randn(5, 3, generator=g), torch.randn(5, 2, generator=g)
    if i == V0_2_NAN_AT:
        y[0, 0] = float("nan")
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


@pytest.mark.stored
@pytest.mark.filterwarnings("ignore:Nexus. 1 of")
@pytest.mark.parametrize("case", sorted(k for k in V0_2 if k != "about"))
def test_loads_the_0_2_format_and_continues(case):
    """tests/optim/data/nexus_v0_2_state.pt was written by main at 05c8e4e (0.2, before
    the loop-state redesign): mid-loop state dicts (one with a skipped NaN micro-batch,
    one in random mode, one saved in eval mode with SGD momentum) and the weights those
    runs reached. Loaded here, the state dict comes back out unchanged (a copy of the
    stored tensors: exact), and the run continues to the stored weights (stored numbers,
    written by another process: at 1e-6; the same code on the same platform gives 0)
    and to the same counters, exactly like an uninterrupted run of this code."""
    old = V0_2[case]
    model, opt = _v0_2_model_and_opt(old["kwargs"])
    model.load_state_dict(old["model"])
    opt.load_state_dict(copy.deepcopy(old["opt"]))
    again = opt.state_dict()
    assert sorted(again["state"]) == sorted(old["opt"]["state"])
    for i, (p, entry) in enumerate(zip(model.parameters(), old["opt"]["state"].values())):
        entry = dict(entry)
        if "nexus_probe" in entry:  # saved in eval mode: loading puts the probe back
            assert torch.equal(p.detach(), entry.pop("nexus_probe")), (case, i)
        assert sorted(again["state"][i]) == sorted(entry), (case, i)
        for key, value in entry.items():
            have = again["state"][i][key]
            if key == "nexus_counters":  # slot 8 counted step() calls in 0.2; never read
                value, have = torch.cat([value[:8], value[9:]]), torch.cat([have[:8], have[9:]])
            assert torch.equal(torch.as_tensor(have), torch.as_tensor(value)), (case, i, key)
    assert again["param_groups"] == old["opt"]["param_groups"]
    for i in range(old["at"], old["total"]):
        _v0_2_micro(model, opt, i)
    for p, q in zip(model.parameters(), old["final"]):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=1e-6)
    assert [opt.outer_steps, opt.inner_step, opt.skipped_micro_batches] == old["final_counters"]
    ref, ref_opt = _v0_2_model_and_opt(old["kwargs"])  # uninterrupted, this code
    for i in range(old["total"]):
        _v0_2_micro(ref, ref_opt, i)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------- DCP
@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("mode", ["global", "random"])
def test_dcp_round_trip_mid_inner_loop_continues_bitwise(tmp_path, flatten, mode):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
        set_model_state_dict, set_optimizer_state_dict)

    options = StateDictOptions(flatten_optimizer_state_dict=flatten)
    ref = _model()
    ref_opt = _opt(ref, inner_norm=mode, seed=3)
    for i in range(4 * K):
        _micro(ref, ref_opt, i)
    model = _model()
    opt = _opt(model, inner_norm=mode, seed=3)
    for i in range(K + 2):
        _micro(model, opt, i)
    dcp.save({"model": get_model_state_dict(model),
              "optim": get_optimizer_state_dict(model, opt, options=options)},
             checkpoint_id=str(tmp_path / "ckpt"))

    model2 = _model(seed=9)
    opt2 = _opt(model2, inner_norm=mode, seed=3)
    template = {"model": get_model_state_dict(model2),
                "optim": get_optimizer_state_dict(model2, opt2, options=options)}
    dcp.load(template, checkpoint_id=str(tmp_path / "ckpt"))
    set_model_state_dict(model2, template["model"])
    set_optimizer_state_dict(model2, opt2, template["optim"], options=options)
    assert opt2.inner_step == 2 and opt2.outer_steps == 1
    for i in range(K + 2, 4 * K):
        _micro(model2, opt2, i)
    assert all(torch.equal(a, b) for a, b in zip(_weights(ref), _weights(model2)))


def test_rng_state_loads_from_any_device_mapping():
    """A checkpoint mapped to another device or dtype still restores the generator."""
    model = _model()
    opt = _opt(model, inner_norm="random", seed=3)
    for i in range(K + 1):
        _micro(model, opt, i)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["nexus_rng"] = sd["state"][0]["nexus_rng"].to(torch.int64)  # as if cast
    opt2 = _opt(_model(), inner_norm="random", seed=99)
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.loop.generator.get_state(), opt.loop.generator.get_state())


# --------------------------------------------------------------------- factory
def test_create_optimizer_builds_no_decay_groups_in_one_call():
    from nexus_optim import create_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    opt = create_optimizer(model, lr=1e-3, inner_lr=0.1, inner_steps=2, weight_decay=0.1,
                           max_grad_norm=1.0)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {p.dim() for p in decay["params"]} == {2} and {p.dim() for p in no_decay["params"]} == {1}
    assert isinstance(opt.outer, torch.optim.AdamW) and opt.max_grad_norm == 1.0
    muon = create_optimizer(model, outer="muon")
    assert [g["use_muon"] for g in muon.param_groups] == [True, False]
    with pytest.raises(ValueError, match="outer: 'sgd' is not one of 'adamw', 'muon'"):
        create_optimizer(model, outer="sgd")


# ------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kwargs, match", [
    (dict(inner_lr=float("inf")), "inner_lr: must be a finite number >= 0, got inf"),
    (dict(lr=float("nan")), "lr: must be a finite number >= 0, got nan"),
    (dict(max_grad_norm=float("nan")), "max_grad_norm: must be None or a finite number > 0"),
    (dict(max_grad_norm=float("inf")), "max_grad_norm: must be None or a finite number > 0"),
    (dict(inner_eps=float("inf")), "inner_eps: must be a finite number >= 0"),
])
def test_non_finite_arguments_are_refused_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _opt(_model(), **kwargs)


def test_non_finite_group_inner_lr_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="inner_lr: must be a finite number"):
        Nexus([{"params": model.parameters(), "inner_lr": float("nan")}])


def test_huge_inner_lr_warns_and_a_normal_one_does_not():
    with pytest.warns(RuntimeWarning, match="inner_lr=1000000.0 moves 1e\\+06 per inner step"):
        _opt(_model(), inner_lr=1e6)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _opt(_model(), inner_lr=0.1)


# ------------------------------------------------------------------- loop state
def test_loop_state_round_trips_through_the_per_parameter_counters():
    """LoopState -> one int64 vector per parameter (DCP's shape) -> LoopState."""
    from nexus_optim.optim.loop_state import RESERVED, LoopState, Settings

    settings = Settings(inner_steps=4, inner_norm="random", outer_grad="displacement")
    gen = torch.Generator().manual_seed(5)
    loop = LoopState(outer_steps=7, inner_step=2, last_step_was_outer=False, skipped_before=3,
                     finite=torch.tensor(1), touched={(True, False, True)}, generator=gen)
    counters = loop.to_counters(settings, 3)
    assert [int(c[-1]) for c in counters] == [1, 0, 1] and int(counters[0][RESERVED]) == 0
    LoopState.check_counters(counters[0], settings)
    back = LoopState(generator=torch.Generator().manual_seed(9))
    back.load_counters(counters, torch.device("cpu"), gen.get_state())
    assert (back.outer_steps, back.inner_step, back.skipped_before, int(back.finite)) == (7, 2, 3, 1)
    assert back.touched == {(True, False, True)} and back.skipped() == 4
    assert torch.equal(back.generator.get_state(), gen.get_state())
    for other, match in ((Settings(3, "random", "displacement"), "inner_steps: checkpoint has 4"),
                         (Settings(4, "global", "displacement"), "inner_norm: checkpoint has 'random'"),
                         (Settings(4, "random", "trajectory"), "outer_grad: checkpoint has")):
        with pytest.raises(ValueError, match=match):
            LoopState.check_counters(counters[0], other)
    bad = counters[0].clone()
    bad[2] = 99  # no such inner_norm
    with pytest.raises(ValueError, match="inner_norm: checkpoint has 99"):
        LoopState.check_counters(bad, settings)
    with pytest.raises(ValueError, match="Nexus state version"):
        LoopState.check_counters(counters[0][:5], settings)
