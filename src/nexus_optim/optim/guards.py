"""Refuse hosts that would silently change the Nexus update (torch only; imports nothing).

``check_host(opt, checked)`` runs in ``Nexus.step()`` at the first micro-batch of every
outer step (a host that skips or clips micro-batches shows at the first one). It walks a
few caller frames looking for the two wrappers that call ``step()`` on a user's behalf:

- accelerate's ``AcceleratedOptimizer`` with ``gradient_accumulation_steps > 1``: it skips
  ``step()`` on every non-final micro-batch of an ``accelerator.accumulate()`` window,
  so Nexus would take one inner step per K micro-batches -> ``ValueError``;
- a plain ``transformers.Trainer`` with ``gradient_accumulation_steps > 1`` (same
  skipping, plus the schedule) -> ``ValueError``; with ``max_grad_norm > 0`` it clips
  every micro-batch gradient, so the outer gradient becomes mean(clip(g_k)) instead of
  clip(mean g_k) -> ``RuntimeWarning`` (once per optimizer).

``nexus_optim.integrations.NexusTrainer`` (whose class sets ``_nexus_managed = True``)
handles both and is let through. Nothing is imported: the classes are recognised by
their module and name, so the check costs a few frame look-ups per outer step (none
unless accelerate or transformers is imported). Each host is checked once per
``checked`` set (``Nexus`` keeps one: warned once per optimizer).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

__all__ = ["check_host", "HostError"]

_MAX_FRAMES = 10

TRAINER_FIX = (
    "Use nexus_optim.integrations.NexusTrainer (a drop-in transformers.Trainer: set "
    "gradient_accumulation_steps=K, max_grad_norm, the schedule and max_steps as for AdamW), "
    "or keep transformers.Trainer with gradient_accumulation_steps=1, max_grad_norm=0, "
    "Nexus(inner_steps=K, max_grad_norm=...) and the schedule sized in micro-batches."
)
ACCELERATE_FIX = (
    "Build the Accelerator with gradient_accumulation_steps=1 and do not wrap the backward "
    "in accelerator.accumulate(): Nexus(inner_steps=K) is the accumulation (call "
    "optimizer.step() after every micro-batch backward)."
)


class HostError(ValueError):
    """A training framework would call Nexus.step() in a way that changes the algorithm."""


def _is(obj: Any, module_prefix: str, names: tuple[str, ...]) -> bool:
    for cls in type(obj).__mro__:
        if cls.__name__ in names and cls.__module__.startswith(module_prefix):
            return True
    return False


def _find_hosts(opt: Any) -> tuple[Any, Any]:
    """(AcceleratedOptimizer wrapping ``opt`` or None, transformers Trainer or None)."""
    accelerated = trainer = None
    if "accelerate" not in sys.modules and "transformers" not in sys.modules:
        return None, None
    frame = sys._getframe(2)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if owner is not None and owner is not opt:
            if accelerated is None and getattr(owner, "optimizer", None) is opt and _is(
                    owner, "accelerate", ("AcceleratedOptimizer",)):
                accelerated = owner
            elif trainer is None and _is(owner, "transformers", ("Trainer",)):
                trainer = owner
                break
        frame = frame.f_back
    return accelerated, trainer


def check_host(opt: Any, checked: set | None = None) -> None:
    """Raise ``HostError`` (or warn) if the caller would silently change the algorithm.
    ``checked``: the hosts already checked (updated; None: check every time)."""
    accelerated, trainer = _find_hosts(opt)
    if accelerated is None and trainer is None:
        return
    if trainer is not None and getattr(trainer, "_nexus_managed", False):
        return
    checked = set() if checked is None else checked
    key = (id(accelerated), id(trainer))
    if key in checked:
        return
    if trainer is not None:
        args = trainer.args
        k = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        if k > 1:
            raise HostError(
                f"Nexus under transformers.Trainer with gradient_accumulation_steps={k}: the "
                f"Trainer calls optimizer.step() once per {k} micro-batches, so Nexus would take "
                f"one inner step per {k} micro-batches and an outer step every "
                f"{k * getattr(opt, 'inner_steps', 1)}. " + TRAINER_FIX)
        clip = getattr(args, "max_grad_norm", 0) or 0
        if clip > 0 and getattr(opt, "inner_steps", 1) > 1:
            warnings.warn(
                f"Nexus under transformers.Trainer with max_grad_norm={clip}: the Trainer clips "
                "every micro-batch gradient before step(), so the outer gradient is "
                "mean(clip(g_k)) instead of clip(mean g_k) (a different algorithm). "
                + TRAINER_FIX, RuntimeWarning, stacklevel=3)
    elif accelerated is not None:
        gs = getattr(accelerated, "gradient_state", None)
        k = int(getattr(gs, "num_steps", 1) or 1)
        if k > 1:
            raise HostError(
                f"Nexus under accelerate with gradient_accumulation_steps={k}: "
                "AcceleratedOptimizer.step() skips the optimizer on the non-final micro-batches "
                "of accelerator.accumulate(), so Nexus would miss its inner steps. "
                + ACCELERATE_FIX)
    checked.add(key)
