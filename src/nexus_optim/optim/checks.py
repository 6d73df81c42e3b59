"""Argument checks and warnings of ``Nexus`` (one-line ``ValueError`` naming the argument)."""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch import Tensor


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
