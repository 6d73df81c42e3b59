"""Argument checks and warnings of ``Nexus`` (one-line ``ValueError`` naming the argument)."""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch.optim import Optimizer

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


def build_outer(outer: Any, params: Any, lr: float, outer_kwargs: dict[str, Any]) -> Optimizer:
    """``outer(params, lr=lr, **outer_kwargs)``, which must be a torch.optim.Optimizer."""
    if not callable(outer):
        raise ValueError(f"outer: must be a torch.optim.Optimizer class, got {outer!r}")
    built = outer(params, lr=lr, **outer_kwargs)
    if not isinstance(built, Optimizer):
        raise ValueError(f"outer: must build a torch.optim.Optimizer, got {type(built).__name__}")
    return built


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
