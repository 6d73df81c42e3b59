"""Argument checks and warnings of ``Nexus`` (one-line ``ValueError`` naming the argument),
and the checks of what it is given later: gradients, group settings, weights, state."""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from nexus_optim.optim import distributed as dist_ops
from nexus_optim.optim.functional import INNER_NORMS, OUTER_GRADS


def check_arguments(*, lr: Any, inner_lr: Any, inner_steps: Any, inner_norm: Any,
                    outer_grad: Any, max_grad_norm: Any, inner_eps: Any) -> None:
    """Every scalar argument of ``Nexus``, before anything is built."""
    check_nonneg("lr", lr)
    check_nonneg("inner_lr", inner_lr)
    check_inner_steps(inner_steps)
    check_choice("inner_norm", inner_norm, INNER_NORMS)
    check_choice("outer_grad", outer_grad, OUTER_GRADS)
    check_max_grad_norm(max_grad_norm)
    check_nonneg("inner_eps", inner_eps)


def build_outer(outer: Any, params: Any, lr: float, outer_kwargs: dict[str, Any],
                wrapper: type) -> Optimizer:
    """``outer(params, lr=lr, **outer_kwargs)``, which must be a torch.optim.Optimizer
    whose ``step()`` needs no closure, and not a ``wrapper`` (Nexus) itself."""
    if isinstance(outer, type) and not issubclass(outer, Optimizer):
        raise ValueError(f"outer: must be a torch.optim.Optimizer class (or a callable that "
                         f"builds one), got the class {outer.__module__}.{outer.__qualname__}")
    if isinstance(outer, type) and issubclass(outer, wrapper):
        raise ValueError(f"outer: {outer.__name__} cannot be the outer optimizer of "
                         f"{wrapper.__name__} (use AdamW, SGD, MuonAdamW, ...)")
    if not callable(outer):
        raise ValueError(f"outer: must be a torch.optim.Optimizer class, got {outer!r}")
    built = outer(params, lr=lr, **outer_kwargs)
    if not isinstance(built, Optimizer):
        raise ValueError(f"outer: must build a torch.optim.Optimizer, got {type(built).__name__}")
    if isinstance(built, wrapper):
        raise ValueError(f"outer: built a {wrapper.__name__}, which cannot be the outer "
                         f"optimizer of {wrapper.__name__} (use AdamW, SGD, MuonAdamW, ...)")
    closure = inspect.signature(type(built).step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ValueError(f"outer: {type(built).__name__}.step() needs a closure (it evaluates "
                         "the loss itself); Nexus calls the outer step() without one, once "
                         "per K micro-batches (use AdamW, SGD, MuonAdamW, ...)")
    return built


def check_group(inner_lr: Any, outer_grad: str, params: Any) -> None:
    """A parameter group's ``inner_lr`` and parameters (before it is added anywhere)."""
    check_nonneg("inner_lr", inner_lr)
    if outer_grad == "displacement" and inner_lr == 0:
        raise ValueError("inner_lr: must be > 0 with outer_grad='displacement' "
                         "(use outer_grad='trajectory' for inner_lr=0)")
    check_params(params)


def check_params(params: Any) -> None:
    """Real floating-point parameters only (the inner moves and norms are real)."""
    for p in params:
        if isinstance(p, Tensor) and p.is_complex():
            raise ValueError(f"params: a parameter of shape {tuple(p.shape)} is complex "
                             f"({p.dtype}); Nexus supports real floating-point parameters "
                             "(torch.view_as_real makes a real one)")


def check_dense_grads(params: list[Tensor]) -> None:
    """Dense gradients only (nn.Embedding(sparse=True) gives sparse ones)."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            raise ValueError(f"params: a parameter of shape {tuple(p.shape)} has a sparse "
                             "gradient; Nexus needs dense gradients (nn.Embedding(..., "
                             "sparse=False))")


def group_inner_lr(group: dict[str, Any], groups: list[dict[str, Any]]) -> float:
    """A group's ``inner_lr`` (it may have been changed since the group was added)."""
    gamma = group["inner_lr"]
    if (isinstance(gamma, bool) or not isinstance(gamma, (int, float))
            or not math.isfinite(gamma) or gamma < 0):
        where = next(i for i, g in enumerate(groups) if g is group)
        raise ValueError(f"param_groups[{where}]['inner_lr']: must be a finite number >= 0, "
                         f"got {gamma!r}")
    return float(gamma)


def check_weights_finite(anchors: list[Tensor], outer_steps: int) -> None:
    """After a loop with no finite micro-batch: if the weights (the anchors) are not
    finite, every later micro-batch would be skipped too; say so instead."""
    if anchors and not bool(torch.isfinite(dist_ops.grad_norms(anchors)[1])):
        raise RuntimeError(
            f"Nexus: the weights are not finite (NaN or inf) at outer step {outer_steps}, so "
            "every micro-batch's gradient is non-finite and skipped: training cannot "
            "continue (load a checkpoint from before they broke)")


def load_outer_atomically(outer: Optimizer, outer_sd: dict[str, Any]) -> None:
    """``outer.load_state_dict(outer_sd)``; if the outer optimizer refuses it (state or
    groups of another optimizer class), put it back as it was and raise ValueError."""
    before = {"defaults": outer.defaults, "state": outer.state,
              "param_groups": outer.param_groups}
    # the settings each group has now (its optimizer's defaults): a loaded group lacking
    # one was saved by another optimizer class, and its step() would fail on it
    required = [[k for k in outer.defaults if k in g] for g in outer.param_groups]
    try:
        outer.load_state_dict(outer_sd)
        for g, (group, keys) in enumerate(zip(outer.param_groups, required)):
            missing = [k for k in keys if k not in group]
            if missing:
                raise ValueError(f"param_groups[{g}] has no {missing[0]!r}")
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        outer.__setstate__(before)  # torch's own way back: the same objects as before
        why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise ValueError(f"state_dict: {type(outer).__name__} cannot load the saved outer "
                         f"state ({why}); saved with another outer optimizer? Nothing was "
                         "loaded") from None


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"{name}: {value!r} is not one of " + ", ".join(repr(a) for a in allowed)
        )


def check_nonneg(name: str, value: Any) -> None:
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")


def check_inner_steps(value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"inner_steps: must be an integer >= 1, got {value!r}")


def check_max_grad_norm(value: Any) -> None:
    if value is not None and not (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and value > 0
    ):
        raise ValueError(f"max_grad_norm: must be None or a finite number > 0, got {value!r}")


def warn_large_inner_lr(groups: list[dict[str, Any]], inner_norm: str, weight_norm: float,
                        n_tensors: int) -> None:
    """Warn when one inner move would be longer than the weights themselves: such a
    gamma leaves the basin (inner losses explode). The "none" move scales with ||g||,
    unknown before the first step: not checked."""
    if inner_norm == "none" or weight_norm <= 0:
        return
    for group in groups:
        length = float(group["inner_lr"]) * (
            math.sqrt(n_tensors) if inner_norm == "per_tensor" else 1.0)
        if length > weight_norm:
            warnings.warn(
                f"Nexus: inner_lr={group['inner_lr']} moves {length:.3g} per inner step, "
                f"more than the norm of all weights ({weight_norm:.3g}); inner points will "
                "leave the basin (typical inner_lr: 0.01-1)", RuntimeWarning, stacklevel=4)
            return
