"""The math in docs/algorithm.md, checked numerically.

Two random quadratic sources with NON-commuting Hessians, n_i = g_i/||g_i||,
s_i = ||g_i||, J_i = d n_i / d theta, c = n_1 . n_2. Order-averaged over the two
micro-batches, to first order in gamma, in the sum convention (K * G):

    displacement:  K E[G] - (n_1 + n_2) = -(gamma/2) (J_2 n_1 + J_1 n_2)
    trajectory:    K E[G] - (g_1 + g_2) = -(gamma/2) (H_2 n_1 + H_1 n_2)
    identity:      H_2 n_1 + H_1 n_2 = s_2 J_2^T n_1 + s_1 J_1^T n_2 + c grad(s_1 + s_2)
    and neither equals -(gamma/2) grad CosSim = -(gamma/2)(J_1^T n_2 + J_2^T n_1) here.

Every derivative on the right is a central finite difference of the loss functions
themselves (no closed-form Jacobian), and Nexus' G is read off one outer SGD step.
Then the fixed-gamma floor: one quadratic, K = 2, trajectory reading: the outer
fixed point sits gamma/2 from the minimum along the sharpest eigenvector, loss
lambda_max gamma^2 / 8; with ``inner_lr_follows_lr`` the floor shrinks as (lr_t/lr_0)^2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nexus_optim import Nexus

D = 4
RNG = np.random.default_rng(7)
_A, _B = RNG.normal(size=(D, D)), RNG.normal(size=(D, D))
H = [_A @ _A.T + 0.5 * np.eye(D), _B @ _B.T + 0.5 * np.eye(D)]
M = [RNG.normal(size=D), RNG.normal(size=D)]
THETA0 = RNG.normal(size=D)
FD = 1e-5


def grad(i, th):
    return H[i] @ (th - M[i])


def norm_of_grad(i, th):
    return float(np.linalg.norm(grad(i, th)))


def unit(i, th):
    g = grad(i, th)
    return g / np.linalg.norm(g)


def fd_grad(f, th):
    """Central-difference gradient of a scalar function."""
    return np.array([(f(th + FD * e) - f(th - FD * e)) / (2 * FD) for e in np.eye(D)])


def fd_jacobian(f, th):
    """Central-difference Jacobian (rows: outputs) of a vector function."""
    return np.stack([(f(th + FD * e) - f(th - FD * e)) / (2 * FD) for e in np.eye(D)], axis=1)


def fd_hessian_vector(i, th, v):
    """H_i v by differencing the gradient."""
    return (grad(i, th + FD * v) - grad(i, th - FD * v)) / (2 * FD)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _nexus_G(gamma, order, outer_grad):
    """G from one Nexus outer step with outer SGD(lr=1): G = theta_0 - theta_1."""
    theta = torch.nn.Parameter(torch.tensor(THETA0))
    opt = Nexus([theta], lr=1.0, inner_lr=gamma, inner_steps=2, outer=torch.optim.SGD,
                inner_norm="global", outer_grad=outer_grad)
    for i in order:
        h, m = torch.tensor(H[i]), torch.tensor(M[i])
        (0.5 * (theta - m) @ h @ (theta - m)).backward()
        opt.step()
        opt.zero_grad()
    return THETA0 - theta.detach().numpy()


def _regularizer(gamma, outer_grad):
    """K * (order-averaged G) minus the conventional sum: the part beyond it."""
    mean_G = (_nexus_G(gamma, (0, 1), outer_grad) + _nexus_G(gamma, (1, 0), outer_grad)) / 2
    conv = (unit(0, THETA0) + unit(1, THETA0) if outer_grad == "displacement"
            else grad(0, THETA0) + grad(1, THETA0))
    return 2 * mean_G - conv


def _fd_terms():
    n1, n2 = unit(0, THETA0), unit(1, THETA0)
    J1, J2 = fd_jacobian(lambda t: unit(0, t), THETA0), fd_jacobian(lambda t: unit(1, t), THETA0)
    return n1, n2, J1, J2


def test_hessians_do_not_commute_with_the_projectors():
    """Guard for the test data: otherwise the two readings would coincide."""
    n1 = unit(0, THETA0)
    P = np.eye(D) - np.outer(n1, n1)
    assert np.linalg.norm(H[0] @ P - P @ H[0]) > 0.1 and np.linalg.norm(H[0] @ H[1] - H[1] @ H[0]) > 0.1


def test_displacement_regularizer_is_jacobian_term():
    n1, n2, J1, J2 = _fd_terms()
    predicted = -(1e-4 / 2) * (J2 @ n1 + J1 @ n2)
    assert _rel(_regularizer(1e-4, "displacement"), predicted) < 1e-3


def test_trajectory_regularizer_is_hessian_term():
    n1, n2 = unit(0, THETA0), unit(1, THETA0)
    gamma = 1e-4
    predicted = -(gamma / 2) * (fd_hessian_vector(1, THETA0, n1) + fd_hessian_vector(0, THETA0, n2))
    assert _rel(_regularizer(gamma, "trajectory"), predicted) < 1e-3


def test_trajectory_term_identity_similarity_plus_norm_lookahead():
    n1, n2, J1, J2 = _fd_terms()
    s1, s2 = norm_of_grad(0, THETA0), norm_of_grad(1, THETA0)
    c = float(n1 @ n2)
    grad_s = fd_grad(lambda t: norm_of_grad(0, t) + norm_of_grad(1, t), THETA0)
    lhs = fd_hessian_vector(1, THETA0, n1) + fd_hessian_vector(0, THETA0, n2)
    rhs = s2 * J2.T @ n1 + s1 * J1.T @ n2 + c * grad_s
    assert _rel(rhs, lhs) < 1e-3


def test_neither_reading_is_the_papers_grad_cossim_for_general_hessians():
    grad_cos = fd_grad(lambda t: float(unit(0, t) @ unit(1, t)), THETA0)
    gamma = 1e-4
    paper = -(gamma / 2) * grad_cos
    for outer_grad in ("displacement", "trajectory"):
        assert _rel(_regularizer(gamma, outer_grad), paper) > 0.05, outer_grad
    # but the displacement term still ascends CosSim (it descends -CosSim)
    assert float(_regularizer(gamma, "displacement") @ grad_cos) < 0


LAMBDAS = (1.0, 4.0, 9.0)


def _floor_run(follows, steps=1200, gamma=0.1, decay=0.995, floor_ratio=0.05):
    h = torch.diag(torch.tensor(LAMBDAS, dtype=torch.float64))
    m = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    th = torch.nn.Parameter(torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64))
    opt = Nexus([th], lr=0.05, inner_lr=gamma, inner_steps=2, outer=torch.optim.SGD,
                inner_lr_follows_lr=follows)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(decay**t, floor_ratio))
    for _ in range(2 * steps):
        (0.5 * (th - m) @ h @ (th - m)).backward()
        opt.step()
        opt.zero_grad()
        if opt.last_step_was_outer:
            sched.step()
    d = (th.detach() - m).numpy()
    return d, float(0.5 * d @ np.diag(LAMBDAS) @ d)


def test_fixed_gamma_floor_is_lambda_max_gamma_squared_over_8():
    """K=2, trajectory: G = (g(theta) + g(theta - gamma n))/2 = 0 at theta - m = (gamma/2) n,
    an eigenvector at distance gamma/2; the sharpest one is where the iteration settles."""
    d, loss = _floor_run(follows=False)
    assert np.linalg.norm(d) == pytest.approx(0.05, rel=1e-6)
    assert abs(d[2]) == pytest.approx(0.05, rel=1e-6)  # along lambda_max = 9
    assert loss == pytest.approx(max(LAMBDAS) * 0.1**2 / 8, rel=1e-6)


def test_inner_lr_follows_lr_shrinks_the_floor_with_the_schedule():
    """gamma_t = gamma lr_t/lr_0: at lr_t/lr_0 = 0.05 the floor is 0.05^2 of the fixed one."""
    d, loss = _floor_run(follows=True)
    fixed_floor = max(LAMBDAS) * 0.1**2 / 8
    assert np.linalg.norm(d) == pytest.approx(0.05 * 0.05, rel=0.1)
    assert loss == pytest.approx(fixed_floor * 0.05**2, rel=0.2)
    assert loss < fixed_floor / 100
