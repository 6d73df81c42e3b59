"""MuonAdamW (optim/mixed.py): one optimizer, Muon on hidden matrices + AdamW on the rest,
as a Nexus outer; harness names ``muon`` / ``nexus-muon``."""

import copy

import pytest
import torch

from nexus_optim import Nexus
from nexus_optim.models import build_model
from nexus_optim.optim.mixed import MuonAdamW, muon_param_groups


K = 3
TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "intermediate_size": 64}
KW = dict(betas=(0.9, 0.95), weight_decay=0.1, adjust_lr_fn="match_rms_adamw")


def _model(tie=True):
    return build_model("nano", vocab_size=64, max_seq_len=16, seed=0,
                       tie_word_embeddings=tie, **TINY_MODEL)


def _data(n=12):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 64, (4, 16), generator=g) for _ in range(n)]


def _loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def test_groups_follow_the_muon_recipe():
    model = _model(tie=False)
    groups = muon_param_groups(model, weight_decay=0.1, adamw_lr=3e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden, embed_head, other = ([names[id(p)] for p in g["params"]] for g in groups)
    assert [g["use_muon"] for g in groups] == [True, False, False]
    assert all(n.endswith(("proj.weight",)) for n in hidden) and len(hidden) == 14
    assert sorted(embed_head) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert all("norm" in n for n in other)
    assert groups[1]["weight_decay"] == 0.1 and groups[2]["weight_decay"] == 0.0
    assert groups[1]["lr"] == groups[2]["lr"] == 3e-4 and "lr" not in groups[0]
    # tied embeddings: one tensor, counted once
    assert len(muon_param_groups(_model(tie=True))[1]["params"]) == 1


def test_one_optimizer_shared_groups_and_state():
    model = _model()
    opt = MuonAdamW(muon_param_groups(model), lr=1e-2, adamw_lr=1e-3, **KW)
    assert opt.muon.param_groups[0] is opt.param_groups[0]
    assert all(a is b for a, b in zip(opt.adamw.param_groups, opt.param_groups[1:]))
    assert opt.muon.state is opt.state is opt.adamw.state
    assert opt.param_groups[0]["lr"] == 1e-2 and opt.param_groups[1]["lr"] == 1e-3
    _loss(model, _data(1)[0]).backward()
    opt.step()
    assert len(opt.state) == sum(len(g["params"]) for g in opt.param_groups)
    sd = opt.state_dict()
    assert "momentum_buffer" in sd["state"][0] and "exp_avg" in sd["state"][len(sd["state"]) - 1]


def test_errors_name_the_fix():
    model = _model()
    with pytest.raises(ValueError, match="muon_param_groups"):
        MuonAdamW(model.parameters())
    with pytest.raises(ValueError, match="use_muon"):
        MuonAdamW([{"params": list(model.parameters())}])
    norm = model.model.norm.weight
    with pytest.raises(ValueError, match="only 2-D"):
        MuonAdamW([{"params": [norm], "use_muon": True}])
    with pytest.raises(ValueError, match="muon_param_groups"):  # via Nexus, plain params
        Nexus(model.parameters(), outer=MuonAdamW)


def test_add_param_group_routes_to_the_right_sub_optimizer():
    model = _model()
    hidden, embed, other = muon_param_groups(model)
    opt = MuonAdamW([other], lr=1e-3)
    assert opt.muon is None
    opt.add_param_group(hidden)
    opt.add_param_group(embed)
    assert opt.muon.param_groups == [opt.param_groups[1]]
    assert opt.adamw.param_groups[1] is opt.param_groups[2]
    with pytest.raises(ValueError, match="more than one"):
        opt.add_param_group({"params": embed["params"], "use_muon": False})


def test_nexus_inner_lr0_equals_muon_adamw_with_accumulation():
    """Nexus(outer=MuonAdamW, inner_lr=0) == MuonAdamW with K-step accumulation.

    The reference accumulates the summed micro-batch gradients and scales by 1/K, as
    Nexus' trajectory does: Muon's Newton-Schulz runs in bf16, where the last-bit fp32
    difference of backward(loss/K) vs (sum g)/K flips roundings (~1e-4 after 4 steps)."""
    m1, m2 = _model(), _model()
    nexus = Nexus(muon_param_groups(m1), lr=1e-2, inner_lr=0.0, inner_steps=K,
                  outer=MuonAdamW, max_grad_norm=0.5, **KW)
    ref = MuonAdamW(muon_param_groups(m2), lr=1e-2, **KW)
    s1 = torch.optim.lr_scheduler.LambdaLR(nexus, lambda t: 1.0 / (1 + t))
    s2 = torch.optim.lr_scheduler.LambdaLR(ref, lambda t: 1.0 / (1 + t))
    for i, ids in enumerate(_data()):
        _loss(m1, ids).backward()
        nexus.step()
        nexus.zero_grad()
        _loss(m2, ids).backward()
        if (i + 1) % K == 0:
            for p in m2.parameters():
                p.grad.mul_(1.0 / K)
            torch.nn.utils.clip_grad_norm_(m2.parameters(), 0.5, foreach=True)
            ref.step()
            ref.zero_grad()
            s1.step()
            s2.step()
    assert nexus.outer_steps == 4
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of .lr_scheduler.step")
def test_scheduler_drives_both_sub_optimizers():
    model = _model()
    nexus = Nexus(muon_param_groups(model, adamw_lr=1e-3), lr=1e-2, inner_lr=0.05,
                  inner_steps=2, outer=MuonAdamW, **KW)
    sched = torch.optim.lr_scheduler.LambdaLR(nexus, lambda t: 0.5 ** t)
    sched.step()
    sched.step()
    inner = nexus.outer
    assert inner.muon.param_groups[0]["lr"] == pytest.approx(1e-2 / 4)
    assert [g["lr"] for g in inner.adamw.param_groups] == pytest.approx([1e-3 / 4] * 2)


def _run(model, opt, data):
    for ids in data:
        _loss(model, ids).backward()
        opt.step()
        opt.zero_grad()


def test_state_dict_round_trip_resumes_bitwise(tmp_path):
    data = _data(11)

    def make():
        m = _model()
        return m, Nexus(muon_param_groups(m), lr=1e-2, inner_lr=0.05, inner_steps=K,
                        outer=MuonAdamW, max_grad_norm=1.0, **KW)

    m_ref, o_ref = make()
    _run(m_ref, o_ref, data)

    m1, o1 = make()
    _run(m1, o1, data[:7])  # mid inner loop (7 = 2*3 + 1)
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    m2, o2 = make()
    m2.load_state_dict(ck["model"])
    o2.load_state_dict(ck["opt"])
    assert o2.outer.muon.state is o2.outer.state and o2.param_groups is o2.outer.param_groups
    assert o2.outer.muon.param_groups[0] is o2.param_groups[0]
    _run(m2, o2, data[7:])
    for a, b in zip(m_ref.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_load_refuses_other_group_kinds():
    model = _model()
    groups = muon_param_groups(model)
    opt = MuonAdamW(groups, lr=1e-3)
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["use_muon"] = False
    with pytest.raises(ValueError, match="use_muon"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize("name", ["nexus-muon", "muon"])
def test_harness_runs_with_muon(tiny_config, name, monkeypatch):
    from nexus_optim.train import config as config_mod
    from nexus_optim.train.config import from_dict
    from nexus_optim.train.loop import train

    if name not in config_mod.OPTIMIZERS:  # until train/config.py lists the names
        monkeypatch.setattr(config_mod, "OPTIMIZERS", (*config_mod.OPTIMIZERS, name))
    cfg = from_dict(tiny_config(**{"optim.name": name, "train.steps": 6,
                                          "train.eval_every": 3, "train.ckpt_every": 3}))
    out = train(cfg)
    assert out["step"] == 6
    assert all(torch.isfinite(torch.tensor(v)) for k, v in out.items() if k.startswith("loss"))
