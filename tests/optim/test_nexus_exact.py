"""Nexus against an independent float64 reference on the cases that pin the update:
several tensors in two parameter groups (different weight decay AND inner_lr), outer
AdamW with weight decay, clipping of G, inner_lr > 0, a non-finite micro-batch in the
middle, every mode, 3 outer steps. Plus the move lengths (random over groups), the
skip divisor, all-skipped loops, maximize and the compiled inner update.

The reference is written from the algorithm (docs/algorithm.md), not from the code:
plain numpy on one flat vector, its own AdamW.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from nexus_optim import Nexus
from nexus_optim.optim import functional

SHAPES = [(2, 3), (4,), (3,), (2, 2)]  # tensors 0,1 in group A; 2,3 in group B
SIZES = [math.prod(s) for s in SHAPES]
N = sum(SIZES)
GROUP_OF = [0, 0, 1, 1]
INNER_LR = (0.05, 0.2)
WD = (0.1, 0.0)
LR, BETAS, EPS, CLIP = 0.05, (0.9, 0.99), 1e-8, 0.5


def _sources(n_sources=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_sources):
        a = rng.normal(size=(N, N))
        out.append((a @ a.T / N + 0.1 * np.eye(N), rng.normal(size=N)))  # non-commuting SPD
    return out


SOURCES = _sources()
THETA0 = np.random.default_rng(1).normal(size=N)


def _schedule(outer_steps, K, nan_at):
    """(source, scale) per micro-batch; scale nan marks a non-finite micro-batch."""
    return [[((t * K + k) % len(SOURCES), math.nan if (t, k) == nan_at else 1.0)
             for k in range(K)] for t in range(outer_steps)]


def _slices():
    out, start = [], 0
    for size in SIZES:
        out.append(slice(start, start + size))
        start += size
    return out


def _group_mask(g):
    m = np.zeros(N, dtype=bool)
    for i, sl in enumerate(_slices()):
        if GROUP_OF[i] == g:
            m[sl] = True
    return m


def reference(mode, outer_grad, schedule, seed=0, clip=CLIP):
    """Independent numpy float64 Nexus over AdamW (decoupled weight decay)."""
    theta = THETA0.copy()
    m1, m2, t_adam = np.zeros(N), np.zeros(N), 0
    gen = torch.Generator().manual_seed(seed)
    gamma = np.zeros(N)
    for g in (0, 1):
        gamma[_group_mask(g)] = INNER_LR[g]
    wd = np.zeros(N)
    for g in (0, 1):
        wd[_group_mask(g)] = WD[g]
    K = len(schedule[0])
    for micro in schedule:
        anchor, point, raw, count = theta.copy(), theta.copy(), [], 0
        for k, (src, scale) in enumerate(micro):
            H, m = SOURCES[src]
            g = scale * (H @ (point - m))
            moves = outer_grad == "displacement" or k < K - 1
            u = None
            if mode == "random" and moves:  # drawn for every move, skipped or not
                u = torch.randn(N, generator=gen, dtype=torch.float32).numpy().astype(np.float64)
            if not np.isfinite(g).all():
                continue  # skipped: no move, not in G, not counted
            count += 1
            raw.append(g)
            if not moves:
                continue
            if mode == "global":
                d = g / (np.linalg.norm(g) + 1e-12)
            elif mode == "per_tensor":
                d = np.concatenate([g[sl] / (np.linalg.norm(g[sl]) + 1e-12) for sl in _slices()])
            elif mode == "none":
                d = g
            else:
                d = u / np.linalg.norm(u)
            point = point - gamma * d
        if count == 0:
            continue  # no outer step at all
        if outer_grad == "trajectory":
            G = np.sum(raw, axis=0) / count
        else:
            G = (anchor - point) / (gamma * count)
        norm = np.linalg.norm(G)
        if clip is not None and norm > clip:
            G = G * clip / (norm + 1e-6)
        theta = anchor  # the outer step is taken from the anchor, not theta_K
        t_adam += 1
        theta = theta * (1 - LR * wd)
        m1 = BETAS[0] * m1 + (1 - BETAS[0]) * G
        m2 = BETAS[1] * m2 + (1 - BETAS[1]) * G * G
        mhat = m1 / (1 - BETAS[0] ** t_adam)
        vhat = m2 / (1 - BETAS[1] ** t_adam)
        theta = theta - LR * mhat / (np.sqrt(vhat) + EPS)
    return theta


def _params():
    flat = torch.tensor(THETA0)
    return [torch.nn.Parameter(flat[sl].clone().view(shape))
            for sl, shape in zip(_slices(), SHAPES)]


def run_nexus(mode, outer_grad, schedule, seed=0, clip=CLIP):
    ps = _params()
    groups = [{"params": [p for p, g in zip(ps, GROUP_OF) if g == i],
               "inner_lr": INNER_LR[i], "weight_decay": WD[i]} for i in (0, 1)]
    opt = Nexus(groups, lr=LR, inner_steps=len(schedule[0]), outer=torch.optim.AdamW,
                inner_norm=mode, outer_grad=outer_grad, max_grad_norm=clip, seed=seed,
                betas=BETAS, eps=EPS)
    srcs = [(torch.tensor(H), torch.tensor(m)) for H, m in SOURCES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for micro in schedule:
            for src, scale in micro:
                H, m = srcs[src]
                x = torch.cat([p.reshape(-1) for p in ps])
                (scale * 0.5 * (x - m) @ H @ (x - m)).backward()
                opt.step()
                opt.zero_grad()
    return torch.cat([p.detach().reshape(-1) for p in ps]).numpy(), opt


MODES = ["global", "per_tensor", "none", "random"]


@pytest.mark.parametrize("nan_at", [None, (1, 1)], ids=["finite", "nan-mid"])
@pytest.mark.parametrize("outer_grad", ["trajectory", "displacement"])
@pytest.mark.parametrize("mode", MODES)
def test_two_groups_adamw_matches_float64_reference(mode, outer_grad, nan_at):
    schedule = _schedule(3, 3, nan_at)
    got, opt = run_nexus(mode, outer_grad, schedule)
    want = reference(mode, outer_grad, schedule)
    tol = 1e-6 if mode == "random" else 1e-12  # random directions are drawn in fp32
    np.testing.assert_allclose(got, want, atol=tol, rtol=0)
    assert opt.skipped_micro_batches == (0 if nan_at is None else 1)
    assert opt.outer_steps == 3
    # and the reference is sensitive: one outer step fewer is far away
    assert np.abs(reference(mode, outer_grad, schedule[:2]) - want).max() > 1e-3


def test_clip_is_on_g_not_per_micro_batch():
    """The reference clips G once; clipping each g_k would change the result."""
    schedule = _schedule(2, 3, None)
    got, _ = run_nexus("global", "trajectory", schedule, clip=0.05)
    np.testing.assert_allclose(got, reference("global", "trajectory", schedule, clip=0.05),
                               atol=1e-12, rtol=0)


def _first_move(mode, inner_lr=(0.1, 0.1)):
    ps = _params()
    groups = [{"params": [p for p, g in zip(ps, GROUP_OF) if g == i], "inner_lr": inner_lr[i]}
              for i in (0, 1)]
    opt = Nexus(groups, lr=LR, inner_steps=3, inner_norm=mode, seed=3)
    before = torch.cat([p.detach().reshape(-1) for p in ps])
    H, m = (torch.tensor(a) for a in SOURCES[0])
    x = torch.cat([p.reshape(-1) for p in ps])
    (0.5 * (x - m) @ H @ (x - m)).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in ps]).clone()
    opt.step()
    move = torch.cat([p.detach().reshape(-1) for p in ps]) - before
    return move, grad


@pytest.mark.parametrize("mode", ["global", "random"])
def test_move_length_is_gamma_with_two_groups(mode):
    """One unit direction over ALL parameters, whatever the grouping (the 0.1 bug:
    random drew one unit vector per group, a move of gamma*sqrt(2))."""
    move, _ = _first_move(mode)
    assert float(move.norm()) == pytest.approx(0.1, rel=1e-6)


def test_move_lengths_per_tensor_and_none():
    move, grad = _first_move("per_tensor")
    assert float(move.norm()) == pytest.approx(0.1 * math.sqrt(len(SHAPES)), rel=1e-9)
    move, grad = _first_move("none")
    assert float(move.norm()) == pytest.approx(0.1 * float(grad.norm()), rel=1e-9)


@pytest.mark.parametrize("mode", ["global", "random"])
def test_groups_with_different_inner_lr_scale_their_slice_of_one_unit_direction(mode):
    move, _ = _first_move(mode, inner_lr=(0.1, 0.4))
    a, b = _group_mask(0), _group_mask(1)
    unit = torch.cat([move[torch.tensor(a)] / 0.1, move[torch.tensor(b)] / 0.4])
    assert float(unit.norm()) == pytest.approx(1.0, rel=1e-6)


def test_displacement_divides_by_the_number_of_finite_micro_batches():
    """K=3, the middle micro-batch non-finite, outer SGD(lr=1): G = mean of the two
    finite unit directions, theta_1 = theta_0 - (d_1 + d_3)/2 (not /3)."""
    p = torch.nn.Parameter(torch.tensor([3.0, -1.0], dtype=torch.float64))
    opt = Nexus([p], lr=1.0, inner_lr=0.5, inner_steps=3, outer=torch.optim.SGD,
                outer_grad="displacement")
    theta0 = p.detach().clone()
    dirs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for scale in (1.0, math.nan, 1.0):
            (scale * 0.5 * (p * p).sum()).backward()
            if math.isfinite(scale):
                dirs.append(p.grad / p.grad.norm())
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(p.detach(), theta0 - (dirs[0] + dirs[1]) / 2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("outer_grad", ["trajectory", "displacement"])
def test_all_skipped_loop_with_inner_lr_changes_nothing(outer_grad):
    ps = _params()
    opt = Nexus(ps, lr=LR, inner_lr=0.3, inner_steps=2, outer_grad=outer_grad)
    before = [p.detach().clone() for p in ps]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):
            (math.nan * sum((p * p).sum() for p in ps)).backward()
            opt.step()
            opt.zero_grad()
    assert opt.outer_steps == 0 and opt.inner_step == 0 and opt.skipped_micro_batches == 2
    assert all(torch.equal(a, b) for a, b in zip(before, ps))
    assert all(s["step"] == 0 for s in opt.outer.state.values())  # AdamW never stepped


@pytest.mark.parametrize("outer_grad", ["trajectory", "displacement"])
@pytest.mark.parametrize("mode", MODES)
def test_maximize_f_equals_minimize_minus_f(mode, outer_grad):
    results = []
    for maximize in (True, False):
        ps = _params()
        opt = Nexus(ps, lr=LR, inner_lr=0.1, inner_steps=3, inner_norm=mode,
                    outer_grad=outer_grad, maximize=maximize, seed=1)
        H, m = (torch.tensor(a) for a in SOURCES[0])
        for _ in range(6):
            x = torch.cat([p.reshape(-1) for p in ps])
            f = -0.5 * (x - m) @ H @ (x - m)  # a concave function to maximize
            (f if maximize else -f).backward()
            opt.step()
            opt.zero_grad()
        results.append(torch.cat([p.detach().reshape(-1) for p in ps]))
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("mode", ["global", pytest.param("per_tensor", marks=pytest.mark.slow),
                                  pytest.param("none", marks=pytest.mark.slow),
                                  pytest.param("random", marks=pytest.mark.slow)])
def test_inner_update_compiles_without_graph_breaks_and_equals_eager(mode):
    """No host read in the per-micro-batch update: torch.compile(fullgraph=True)
    traces it (an .item() or a bool(tensor) would be a graph break, i.e. an error).
    Compiled and eager agree to one fp32 ulp, not bitwise: inductor's CPU kernels
    contract a + s*b into a fused multiply-add. (About 10 s of compilation per mode:
    "global" runs by default, the rest with -m slow.)"""
    torch._dynamo.reset()

    def update(params, grads, accs):
        norms = functional.tensor_norms(grads)
        total = functional.global_norm(grads, norms)
        finite = torch.isfinite(total)
        random = None
        if mode == "random":
            u = [torch.ones_like(g) * (i + 1) for i, g in enumerate(grads)]
            random = (u, functional.global_norm(u))
        functional.inner_update_(params, grads, norms, total, finite,
                                 slices=[(0, 2, -0.1), (2, 4, -0.3)], mode=mode, eps=1e-12,
                                 move=True, accumulators=accs, accumulate="add", random=random)
        return params, grads, accs

    def make(bad=False):
        g = torch.Generator().manual_seed(5)
        params = [torch.randn(s, generator=g) for s in SHAPES]
        grads = [torch.randn(s, generator=g) for s in SHAPES]
        if bad:
            grads[1][0] = math.inf
        return params, grads, [torch.randn(s, generator=g) for s in SHAPES]

    compiled = torch.compile(update, fullgraph=True, dynamic=False)
    for bad in (False, True):
        eager_out = update(*make(bad))
        comp_out = compiled(*make(bad))
        for a_list, b_list in zip(eager_out, comp_out):
            for a, b in zip(a_list, b_list):
                torch.testing.assert_close(a, b, rtol=2.5e-7, atol=1e-7)
    # the non-finite micro-batch left params and sums untouched, on the device path
    p0, g0, a0 = make(True)
    keep = [t.clone() for t in p0 + a0]
    update(p0, g0, a0)
    assert all(torch.equal(a, b) for a, b in zip(keep, p0 + a0))
