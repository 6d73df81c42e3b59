"""Tests of the Nexus theory toy: closed forms, metrics on hand cases, and an end-to-end quick run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_optim.toy import quadratic as q
from nexus_optim.report.stats import welch
from nexus_optim.toy.metrics import (cosine_matrix, finetune, mean_pairwise_cosine, minima_spread, paired,
                                     source_grads, source_losses)
from nexus_optim.toy.overparam import TrainConfig, endpoint_metrics, train_to_thresholds
from nexus_optim.toy.tasks import ModelConfig, TaskConfig, flatten, forward, init_params, make_tasks, mse, param_shapes


# ---------------------------------------------------------------- part 1: quadratic basins

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), d=st.integers(1, 6))
def test_summed_minimiser_zeroes_summed_gradient(seed, n, d):
    rng = np.random.default_rng(seed)
    Hs = q.random_spd(rng, d, size=n)
    ms = rng.standard_normal((n, d))
    th = q.summed_minimiser(Hs, ms)
    grad = np.einsum("nij,nj->i", Hs, th - ms)          # d/dth sum_i L_i
    assert np.allclose(grad, 0.0, atol=1e-9 * (1 + np.abs(Hs).max() * np.abs(ms).max()))


def test_summed_minimiser_shared_hessian_is_mean_and_batched():
    rng = np.random.default_rng(0)
    H = q.random_spd(rng, 5)
    Hs = np.stack([H] * 4)
    ms = rng.standard_normal((7, 4, 5))                  # batch of 7 problems
    assert np.allclose(q.summed_minimiser(Hs, ms), ms.mean(1))


def test_predicted_slope_closed_form():
    for N in (1, 2, 6):
        Hs = np.stack([2.0 * np.eye(3)] * N)
        assert q.predicted_slope(Hs, 2.0 * np.eye(3)) == pytest.approx(2.0 * (1 + 1 / N) / 2)


def test_zero_variance_gives_zero_new_task_loss():
    rng = np.random.default_rng(1)
    Hs = q.random_spd(rng, 4, size=3)
    loss, emp, train = q.monte_carlo_new_loss(rng, Hs, 0.0, 100, new_hessian="random", Hbar=1.25 * np.eye(4))
    assert np.all(loss == 0.0) and np.all(emp == 0.0) and np.all(train == 0.0)
    assert q.expected_new_loss(Hs, np.zeros((4, 4)), np.eye(4)) == 0.0


@pytest.mark.parametrize("dist", ["gaussian", "uniform"])
def test_expected_new_loss_matches_monte_carlo(dist):
    rng = np.random.default_rng(2)
    d, N, v, R = 4, 5, 1.7, 40_000
    Hs = q.random_spd(rng, d, size=N)
    Hbar = 1.25 * np.eye(d)                             # mean of random_spd(lo=0.5, hi=2)
    loss, _, train = q.monte_carlo_new_loss(rng, Hs, v, R, dist=dist, new_hessian="random", Hbar=Hbar)
    pred = q.expected_new_loss(Hs, v / d * np.eye(d), Hbar)
    assert abs(loss.mean() - pred) < 4 * loss.std(ddof=1) / np.sqrt(R)
    pred_train = q.expected_train_loss(Hs, v / d * np.eye(d))
    assert abs(train.mean() - pred_train) < 4 * train.std(ddof=1) / np.sqrt(R)
    assert pred_train < pred
    assert pred == pytest.approx(v * q.predicted_slope(Hs, Hbar))     # linear in v


def test_train_loss_and_gap_shared_isotropic():
    N, d, h, v = 5, 3, 2.0, 1.5
    Hs = np.stack([h * np.eye(d)] * N)
    Sigma = v / d * np.eye(d)
    assert q.expected_train_loss(Hs, Sigma) == pytest.approx(h * (1 - 1 / N) * v / 2)
    assert q.expected_new_loss(Hs, Sigma, h * np.eye(d)) - q.expected_train_loss(Hs, Sigma) == pytest.approx(h * v / N)


def test_bias_variance_identity_at_fixed_point():
    rng = np.random.default_rng(3)
    d, v, R = 3, 2.0, 40_000
    H = q.random_spd(rng, d)
    theta = rng.standard_normal(d)
    m_new = q.sample_minima(rng, (R, d), v)
    mc = q.quad_loss(theta, m_new, H)
    pred = q.expected_new_loss_at(theta, np.zeros(d), v / d * np.eye(d), H)
    assert abs(mc.mean() - pred) < 4 * mc.std(ddof=1) / np.sqrt(R)


def test_variance_sweep_recovers_slope():
    out = q.variance_sweep(seed=0, d=4, n_sources=3, v_grid=[0.0, 1.0, 2.0, 3.0], n_draws=2000)
    for s in out["settings"].values():
        assert s["r2_fit"] > 0.99 and s["r2_pred"] > 0.98
        assert abs(s["slope_fit"] - s["slope_pred"]) < 5 * s["slope_fit_se"] + 0.05 * s["slope_pred"]


# ---------------------------------------------------------------- part 2: metrics

def test_cosine_hand_case():
    G = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    C = cosine_matrix(G)
    assert C[0, 1].item() == pytest.approx(2 ** -0.5)
    assert C[0, 2].item() == pytest.approx(-1.0)
    assert C[1, 2].item() == pytest.approx(-(2 ** -0.5))
    assert mean_pairwise_cosine(G) == pytest.approx(-1.0 / 3.0)


def _small():
    tcfg, mcfg = TaskConfig(d=5, r=3, n_sources=3, n_per_source=4, n_test=64, n_new=2), ModelConfig(hidden=8)
    data = make_tasks(tcfg, 0)
    shapes = param_shapes(tcfg.d, mcfg)
    flat = flatten(init_params(tcfg.d, mcfg, 0))
    return tcfg, mcfg, data, shapes, flat


def test_source_grads_match_per_source_autograd():
    _, _, data, shapes, flat = _small()
    G = source_grads(flat, shapes, "tanh", data["x_train"], data["y_train"])
    params = [p.clone().requires_grad_(True) for p in init_params(5, ModelConfig(hidden=8), 0)]
    for k in range(G.shape[0]):
        g = torch.autograd.grad(mse(forward(params, data["x_train"][k]), data["y_train"][k]), params)
        assert torch.allclose(G[k], flatten(g), atol=1e-6)
    assert mean_pairwise_cosine(G) == pytest.approx(
        np.mean([torch.nn.functional.cosine_similarity(G[i], G[j], dim=0).item()
                 for i in range(3) for j in range(i + 1, 3)]), abs=1e-6)


def test_minima_spread_zero_for_identical_sources():
    _, _, data, shapes, flat = _small()
    X = data["x_train"][:1].expand(3, -1, -1).contiguous()
    Y = data["y_train"][:1].expand(3, -1).contiguous()
    ths = finetune(flat, shapes, "tanh", X, Y, lr=0.05, steps=50)
    s = minima_spread(ths, flat)
    assert s["minima_var"] < 1e-12 and s["minima_pair_dist"] < 1e-6
    assert s["minima_dist_from_start"] > 1e-3        # it did move


def test_minima_spread_formula_and_finetune_converges():
    thetas = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    s = minima_spread(thetas, torch.tensor([1.0, 0.0]))
    assert s["minima_var"] == pytest.approx(1.0) and s["minima_pair_dist"] == pytest.approx(2.0)
    assert s["minima_dist_from_start"] == pytest.approx(1.0) and s["centroid_dist_from_start"] == pytest.approx(0.0)
    _, _, data, shapes, flat = _small()
    ths = finetune(flat, shapes, "tanh", data["x_train"], data["y_train"], lr=0.1, steps=300)
    own = torch.stack([source_losses(ths[i], shapes, "tanh", data["x_train"][i:i + 1], data["y_train"][i:i + 1])[0]
                       for i in range(3)])
    assert own.max() < 1e-3 * source_losses(flat, shapes, "tanh", data["x_train"], data["y_train"]).min()


def test_welch_and_paired():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.5]
    from scipy import stats
    assert welch(a, b)["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert paired(a, b)["frac_lower"] == 1.0


def test_train_to_thresholds_matches_training_loss_exactly():
    tcfg, mcfg, data, shapes, _ = _small()
    init = init_params(tcfg.d, mcfg, 0)
    cfg = TrainConfig(lr=3e-2, thresholds=(0.5, 0.05), max_outer=2000, task=tcfg, model=mcfg, ft_steps=20)
    tr = train_to_thresholds(data, init, shapes, "tanh", None, cfg, seed=0)
    for c in cfg.thresholds:
        L = source_losses(tr["points"][c], shapes, "tanh", data["x_train"], data["y_train"]).sum()
        assert L.item() == pytest.approx(c, rel=1e-4)
    m = endpoint_metrics(tr["points"][0.05], data, shapes, "tanh", cfg)
    assert m["train_loss"] == pytest.approx(0.05, rel=1e-4) and -1 <= m["grad_cos"] <= 1


def test_nexus_inner_lr_zero_equals_adamw_accumulation():
    tcfg, mcfg, data, shapes, _ = _small()
    init = init_params(tcfg.d, mcfg, 0)
    cfg = TrainConfig(lr=1e-2, thresholds=(0.5, 0.1), max_outer=500, task=tcfg, model=mcfg)
    a = train_to_thresholds(data, init, shapes, "tanh", None, cfg, seed=0)
    b = train_to_thresholds(data, init, shapes, "tanh", dict(inner_lr=0.0, inner_norm="global",
                                                            outer_grad="trajectory"), cfg, seed=0)
    assert a["steps"] == b["steps"]
    assert np.allclose(a["curve"], b["curve"], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- end to end

def test_run_toy_quick_writes_outputs(tmp_path):
    from nexus_optim.toy import run_toy

    res = run_toy(tmp_path / "toy", seed=0, quick=True)
    for f in ["toy.json", "toy.md", "toy_quadratic.png", "toy_overparam_metrics.png", "toy_premise.png"]:
        assert (tmp_path / "toy" / f).stat().st_size > 0, f
    js = json.loads((tmp_path / "toy" / "toy.json").read_text())
    assert set(js) >= {"quadratic", "overparam", "config", "seconds"}
    summ = res["overparam"]["summary"]
    for c in summ["thresholds"]:
        for m in summ["methods"]:
            row = summ["table"][c][m]
            assert row["train_loss"]["mean"] == pytest.approx(float(c), rel=1e-3)   # matched loss
            assert -1.0 <= row["grad_cos"]["mean"] <= 1.0 and row["minima_var"]["mean"] > 0
    assert "nexus g=0.1" in summ["methods"]


def test_nexus_gives_closer_minima_at_matched_loss():
    """Robust in our runs (every seed 0-14 and every config tried): at matched summed loss 0.02, Nexus
    (gamma=0.1) has much higher source-gradient cosine and a much smaller spread of per-source minima.
    The held-out-loss direction was not robust across configurations, so it is not asserted."""
    from nexus_optim.toy.overparam import METHODS, run_seed

    cfg = TrainConfig(thresholds=(0.02,))
    cfg.task.n_new = 2
    r = run_seed(0, cfg, {"adamw": None, "nexus g=0.1": METHODS["nexus g=0.1"]})
    a, n = r["methods"]["adamw"]["at"]["0.02"], r["methods"]["nexus g=0.1"]["at"]["0.02"]
    assert n["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert a["grad_cos"] < 0.0 < 0.3 < n["grad_cos"]
    assert n["minima_var"] < 0.5 * a["minima_var"]
