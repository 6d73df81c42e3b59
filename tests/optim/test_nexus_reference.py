"""Each mode on two quadratic sources equals an independent float64 reference (test 2),
and the outer gradient carries the gradient-similarity regularizer (test 3)."""


import numpy as np
import pytest
import torch

from nexus_optim import Nexus

H1 = np.diag([1.0, 4.0, 0.5])
H2 = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 3.0]])
M1 = np.array([1.0, -2.0, 0.5])
M2 = np.array([-1.0, 0.5, 2.0])
THETA0 = np.array([0.3, 0.2, -0.4])
SOURCES = [(H1, M1), (H2, M2)]


def grad(i, theta):
    H, m = SOURCES[i]
    return H @ (theta - m)


def reference(mode, outer_grad, gamma, lr, outer_steps, order=(0, 1), seed=0):
    """Independent numpy implementation, outer SGD(lr)."""
    theta = THETA0.copy()
    gen = torch.Generator().manual_seed(seed)
    K = len(order)
    for _ in range(outer_steps):
        anchor, point, raw = theta.copy(), theta.copy(), []
        for k, i in enumerate(order):
            g = grad(i, point)
            raw.append(g)
            if mode == "global":
                d = g / np.linalg.norm(g)
            elif mode == "per_tensor":  # run_nexus splits theta into tensors [:2] and [2:]
                d = np.concatenate([g[:2] / np.linalg.norm(g[:2]), g[2:] / np.linalg.norm(g[2:])])
            elif mode == "none":
                d = g
            else:
                d = None
            moves = outer_grad == "displacement" or k < K - 1  # trajectory drops the K-th move
            if mode == "random" and moves:  # a direction is drawn only for a move
                u = torch.randn(3, generator=gen, dtype=torch.float32).numpy().astype(np.float64)
                d = u / np.linalg.norm(u)
            if moves:
                point = point - gamma * d
        G = np.mean(raw, axis=0) if outer_grad == "trajectory" else (anchor - point) / (gamma * K)
        theta = anchor - lr * G
    return theta


def run_nexus(mode, outer_grad, gamma, lr, outer_steps, order=(0, 1), seed=0):
    # per_tensor: two tensors (a single one would make it the same as global)
    parts = [THETA0[:2], THETA0[2:]] if mode == "per_tensor" else [THETA0]
    params = [torch.nn.Parameter(torch.tensor(p, dtype=torch.float64)) for p in parts]
    opt = Nexus(params, lr=lr, inner_lr=gamma, inner_steps=len(order), outer=torch.optim.SGD,
                inner_norm=mode, outer_grad=outer_grad, seed=seed)
    for _ in range(outer_steps):
        for i in order:
            H, m = (torch.tensor(a) for a in SOURCES[i])
            theta = torch.cat(params)
            loss = 0.5 * (theta - m) @ H @ (theta - m)
            loss.backward()
            opt.step()
            opt.zero_grad()
    return torch.cat([p.detach() for p in params]).numpy()


@pytest.mark.parametrize("outer_steps", [1, 2])
@pytest.mark.parametrize("outer_grad", ["trajectory", "displacement"])
@pytest.mark.parametrize("mode", ["global", "per_tensor", "none", "random"])
def test_modes_match_reference(mode, outer_grad, outer_steps):
    got = run_nexus(mode, outer_grad, gamma=0.1, lr=0.2, outer_steps=outer_steps)
    want = reference(mode, outer_grad, gamma=0.1, lr=0.2, outer_steps=outer_steps)
    tol = 1e-6 if mode == "random" else 1e-12  # random directions are drawn in fp32
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)


def test_per_tensor_differs_from_global_with_two_tensors():
    a = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = Nexus([a, b], lr=0.0, inner_lr=0.5, inner_steps=2, inner_norm="per_tensor",
                outer=torch.optim.SGD)
    (0.5 * (a @ a) + 0.5 * b @ b).backward()  # grads (3,4) and (1,)
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), [3 - 0.5 * 0.6, 4 - 0.5 * 0.8])
    np.testing.assert_allclose(b.detach().numpy(), [0.5])


def _outer_gradient(gamma, order, mode="global", outer_grad="displacement"):
    """G read off one outer SGD step with lr=1: G = theta0 - theta1."""
    return THETA0 - run_nexus(mode, outer_grad, gamma=gamma, lr=1.0, outer_steps=1, order=order)


def _unit(v):
    return v / np.linalg.norm(v)


def _cos(theta):
    return float(_unit(grad(0, theta)) @ _unit(grad(1, theta)))


def _jacobian_of_unit_grad(i, theta):
    """d/dtheta (g_i/||g_i||) = (I - n n^T) H_i / ||g_i||."""
    g = grad(i, theta)
    n = _unit(g)
    return (np.eye(3) - np.outer(n, n)) @ SOURCES[i][0] / np.linalg.norm(g)


@pytest.mark.parametrize("gamma", [1e-3, 1e-4])
def test_regularizer_is_order_averaged_jacobian_term(gamma):
    """K * (E_order[G] - G_conv) = -(gamma/2) (J_2 n_1 + J_1 n_2) + O(gamma^2) (any Hessians)."""
    n1, n2 = _unit(grad(0, THETA0)), _unit(grad(1, THETA0))
    conv = (n1 + n2) / 2
    mean_G = (_outer_gradient(gamma, (0, 1)) + _outer_gradient(gamma, (1, 0))) / 2
    predicted = -(gamma / 2) * (_jacobian_of_unit_grad(1, THETA0) @ n1
                                + _jacobian_of_unit_grad(0, THETA0) @ n2)
    err = np.linalg.norm(2 * (mean_G - conv) - predicted)
    assert err <= 5 * gamma**2 * (1 + np.linalg.norm(predicted) / gamma)


def test_regularizer_is_minus_half_gamma_grad_cossim_for_isotropic_hessians():
    """With H_i = c_i I (different curvatures), the order-averaged regularizer equals
    -(gamma/2) grad CosSim(g1, g2) (finite differences), to first order in gamma."""
    global SOURCES
    saved = SOURCES
    SOURCES = [(1.0 * np.eye(3), M1), (3.0 * np.eye(3), M2)]
    try:
        h = 1e-6
        grad_cos = np.array([(_cos(THETA0 + h * e) - _cos(THETA0 - h * e)) / (2 * h)
                             for e in np.eye(3)])
        conv = (_unit(grad(0, THETA0)) + _unit(grad(1, THETA0))) / 2
        errors = []
        for gamma in (1e-2, 1e-3):
            mean_G = (_outer_gradient(gamma, (0, 1)) + _outer_gradient(gamma, (1, 0))) / 2
            reg = 2 * (mean_G - conv)  # K * difference: the sum-form regularizer
            errors.append(np.linalg.norm(reg - (-(gamma / 2) * grad_cos)))
            assert np.dot(reg, grad_cos) < 0  # the outer step ascends CosSim
        # first order: the residual shrinks like gamma^2 (10x smaller gamma -> ~100x)
        assert errors[1] < errors[0] / 30
        assert errors[1] < 1e-3 * (1e-3 / 2) * np.linalg.norm(grad_cos) * 10
    finally:
        SOURCES = saved


def test_outer_step_raises_cosine_similarity_vs_conventional():
    """Sign check (cf. torchft#233): one small Nexus outer step increases CosSim more
    than the conventional normalized-gradient step of the same length."""
    gamma, lr = 0.05, 0.05
    conv_theta = THETA0 - lr * (_unit(grad(0, THETA0)) + _unit(grad(1, THETA0))) / 2
    nexus = [run_nexus("global", "displacement", gamma, lr, 1, order=o) for o in ((0, 1), (1, 0))]
    assert np.mean([_cos(t) for t in nexus]) > _cos(conv_theta)

    # ... by the regularizer, which is first order in gamma: half the inner step, half the gain
    def gain(g):
        pts = [run_nexus("global", "displacement", g, lr, 1, order=o) for o in ((0, 1), (1, 0))]
        return np.mean([_cos(t) for t in pts]) - _cos(conv_theta)

    assert 1.8 < gain(gamma) / gain(gamma / 2) < 2.2
