"""Quadratic-basin theory toy (the setting of Theorem 2.2 in Chen et al. 2026).

Sources  L_i(th) = 1/2 (th - m_i)^T H_i (th - m_i),  i = 1..N,  minima m_i ~ D(mu, Sigma) i.i.d.
Summed-loss minimiser  th* = A^{-1} sum_i H_i m_i,  A = sum_i H_i   (the mean of the m_i if H_i = H).
A new task has m_new ~ D(mu, Sigma) and a Hessian H_new with mean Hbar, independent of the sources.

Bias-variance identity at any fixed th:
    E_new[L_new(th)] = 1/2 (th - mu)^T Hbar (th - mu) + 1/2 tr(Hbar Sigma).
At th*:  th* - mu = A^{-1} sum_i H_i (m_i - mu)  has covariance  C = A^{-1} (sum_i H_i Sigma H_i) A^{-1},
    E[L_new(th*)] = 1/2 tr(Hbar (C + Sigma)),
which is linear in Sigma.  With Sigma = (v/d) I, v = E||m - mu||^2 the variance of the minima:
    E[L_new(th*)] = slope * v,   slope = tr(Hbar (A^{-1} (sum_i H_i^2) A^{-1} + I)) / (2d),
and for shared H_i = h I:  slope = h (1 + 1/N) / 2.  Zero variance -> zero new-task loss.
Only the covariance of D enters, so the same line holds for non-Gaussian minima.
The sources' own mean loss at th* is lower:  E[(1/N) sum_i L_i(th*)] = (1/N) [1/2 tr(A (C + Sigma))
- sum_i tr(H_i A^{-1} H_i Sigma)]  (shared H = hI: h (1 - 1/N) v / 2), so the generalisation gap
E[L_new] - E[mean_i L_i] (shared H = hI: h v / N) also grows linearly with the variance of the minima.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "summed_minimiser", "quad_loss", "expected_new_loss_at", "expected_new_loss",
    "expected_train_loss", "predicted_slope", "random_spd", "sample_minima", "monte_carlo_new_loss", "variance_sweep",
]


def summed_minimiser(hessians: np.ndarray, minima: np.ndarray) -> np.ndarray:
    """th* = (sum_i H_i)^{-1} sum_i H_i m_i.  hessians (N,d,d), minima (..., N, d) -> (..., d)."""
    A = hessians.sum(0)
    b = np.einsum("nij,...nj->...i", hessians, minima)
    return np.linalg.solve(A, b[..., None])[..., 0]


def quad_loss(theta: np.ndarray, m: np.ndarray, H: np.ndarray) -> np.ndarray:
    """1/2 (th - m)^T H (th - m), broadcast over leading dims (H may be (d,d) or (...,d,d))."""
    r = theta - m
    return 0.5 * np.einsum("...i,...ij,...j->...", r, H, r)


def expected_new_loss_at(theta, mu, Sigma, Hbar) -> float:
    """E_new[L_new(th)] = 1/2 (th-mu)^T Hbar (th-mu) + 1/2 tr(Hbar Sigma)."""
    return float(quad_loss(np.asarray(theta), np.asarray(mu), Hbar) + 0.5 * np.trace(Hbar @ Sigma))


def expected_new_loss(hessians: np.ndarray, Sigma: np.ndarray, Hbar: np.ndarray) -> float:
    """E[L_new(th*)] = 1/2 tr(Hbar (A^{-1} (sum_i H_i Sigma H_i) A^{-1} + Sigma)), over sources and new task."""
    Ainv = np.linalg.inv(hessians.sum(0))
    C = Ainv @ np.einsum("nij,jk,nkl->il", hessians, Sigma, hessians) @ Ainv
    return float(0.5 * np.trace(Hbar @ (C + Sigma)))


def expected_train_loss(hessians: np.ndarray, Sigma: np.ndarray) -> float:
    """E[(1/N) sum_i L_i(th*)] (sources' own mean loss at the summed minimiser)."""
    N = hessians.shape[0]
    Ainv = np.linalg.inv(hessians.sum(0))
    C = Ainv @ np.einsum("nij,jk,nkl->il", hessians, Sigma, hessians) @ Ainv
    cross = np.einsum("nij,jk,nkl,li->", hessians, Ainv, hessians, Sigma)
    return float((0.5 * np.trace(hessians.sum(0) @ (C + Sigma)) - cross) / N)


def predicted_slope(hessians: np.ndarray, Hbar: np.ndarray) -> float:
    """d E[L_new(th*)] / d v for Sigma = (v/d) I."""
    d = hessians.shape[-1]
    return expected_new_loss(hessians, np.eye(d) / d, Hbar)


def random_spd(rng: np.random.Generator, d: int, size=(), lo: float = 0.5, hi: float = 2.0) -> np.ndarray:
    """Q diag(lam) Q^T with Haar-random Q and lam ~ U[lo, hi]; rotation invariance gives E[H] = (lo+hi)/2 I."""
    shape = tuple(np.atleast_1d(size).astype(int)) if size != () else ()
    Z = rng.standard_normal(shape + (d, d))
    Q, R = np.linalg.qr(Z)
    Q = Q * np.sign(np.diagonal(R, axis1=-2, axis2=-1))[..., None, :]
    lam = rng.uniform(lo, hi, size=shape + (d,))
    return np.einsum("...ij,...j,...kj->...ik", Q, lam, Q)


def sample_minima(rng: np.random.Generator, shape, v: float, dist: str = "gaussian") -> np.ndarray:
    """Zero-mean minima with covariance (v/d) I, d = shape[-1]; dist in {gaussian, uniform}."""
    d = shape[-1]
    s = np.sqrt(v / d)
    if dist == "gaussian":
        return s * rng.standard_normal(shape)
    if dist == "uniform":
        return s * np.sqrt(3.0) * rng.uniform(-1.0, 1.0, size=shape)
    raise ValueError(f"unknown dist {dist!r}")


def monte_carlo_new_loss(rng, hessians, v, n_draws, dist="gaussian", new_hessian="fixed",
                         Hbar=None, spd_range=(0.5, 2.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw sources + new task n_draws times; return (L_new(th*), empirical minima variance, mean_i L_i(th*)).

    new_hessian: "fixed" uses Hbar for the new task, "random" draws H_new = random_spd (mean Hbar).
    Empirical variance = 1/(N-1) sum_i ||m_i - mean(m)||^2 (unbiased estimate of v).
    """
    N, d, _ = hessians.shape
    m = sample_minima(rng, (n_draws, N, d), v, dist)
    m_new = sample_minima(rng, (n_draws, d), v, dist)
    theta = summed_minimiser(hessians, m)
    if new_hessian == "random":
        H_new = random_spd(rng, d, size=n_draws, lo=spd_range[0], hi=spd_range[1])
    else:
        H_new = np.eye(d) if Hbar is None else Hbar
    loss = quad_loss(theta, m_new, H_new)
    emp_var = ((m - m.mean(1, keepdims=True)) ** 2).sum((1, 2)) / max(N - 1, 1)
    train = quad_loss(theta[:, None, :], m, hessians).mean(1)
    return loss, emp_var, train


SETTINGS = {
    # name: (hessian kind, minima distribution, new-task Hessian)
    "shared H = I, Gaussian minima": ("identity", "gaussian", "fixed"),
    "heterogeneous H_i, Gaussian minima": ("random", "gaussian", "random"),
    "heterogeneous H_i, uniform minima": ("random", "uniform", "random"),
}


def variance_sweep(seed: int = 0, d: int = 8, n_sources: int = 6, v_grid=None, n_draws: int = 4000) -> dict:
    """For each setting and each v in v_grid: Monte Carlo mean/SE of L_new(th*), prediction, linear fit.

    Reports fitted slope/intercept/R^2 (scipy linregress on the MC means), the predicted slope, and
    R^2 of the prediction itself: 1 - sum (MC - pred)^2 / sum (MC - mean MC)^2.
    """
    from scipy import stats

    rng = np.random.default_rng(seed)
    v_grid = np.linspace(0.0, 4.0, 11) if v_grid is None else np.asarray(v_grid, float)
    lo, hi = 0.5, 2.0
    out = {"d": d, "n_sources": n_sources, "n_draws": n_draws, "v_grid": v_grid.tolist(), "settings": {}}
    for name, (hkind, dist, hnew) in SETTINGS.items():
        if hkind == "identity":
            Hs, Hbar = np.broadcast_to(np.eye(d), (n_sources, d, d)).copy(), np.eye(d)
        else:
            Hs, Hbar = random_spd(rng, d, size=n_sources, lo=lo, hi=hi), 0.5 * (lo + hi) * np.eye(d)
        slope_pred = predicted_slope(Hs, Hbar)
        means, ses, preds, corr, train = [], [], [], [], []
        for v in v_grid:
            loss, emp, tr = monte_carlo_new_loss(rng, Hs, v, n_draws, dist, hnew, Hbar, (lo, hi))
            train.append(tr.mean())
            means.append(loss.mean())
            ses.append(loss.std(ddof=1) / np.sqrt(n_draws))
            preds.append(expected_new_loss(Hs, v / d * np.eye(d), Hbar))
            corr.append(float(np.corrcoef(loss, emp)[0, 1]) if v > 0 else float("nan"))
        means, ses, preds = map(np.asarray, (means, ses, preds))
        fit = stats.linregress(v_grid, means)
        fit_train = stats.linregress(v_grid, np.asarray(train))
        ss_tot = ((means - means.mean()) ** 2).sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(ses > 0, (means - preds) / ses, 0.0)
        out["settings"][name] = {
            "slope_pred": float(slope_pred),
            "slope_fit": float(fit.slope),
            "slope_fit_se": float(fit.stderr),
            "intercept_fit": float(fit.intercept),
            "intercept_fit_se": float(fit.intercept_stderr),
            "r2_fit": float(fit.rvalue ** 2),
            "r2_pred": float(1.0 - ((means - preds) ** 2).sum() / ss_tot),
            "slope_rel_err": float(fit.slope / slope_pred - 1.0),
            "max_abs_z": float(np.abs(z).max()),
            "mc_mean": means.tolist(),
            "mc_se": ses.tolist(),
            "pred": preds.tolist(),
            "corr_loss_vs_empirical_var": corr,
            "train_slope_pred": expected_train_loss(Hs, np.eye(d) / d),
            "train_slope_fit": float(fit_train.slope),
            "mc_train_mean": train,
        }
    return out
