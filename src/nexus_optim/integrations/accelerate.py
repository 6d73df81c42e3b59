"""Nexus under HF accelerate: the settings that keep the update unchanged.

``model, opt = accelerator.prepare(model, opt)`` wraps Nexus in ``AcceleratedOptimizer``,
whose ``step()`` calls ``Nexus.step()`` only when ``accelerator.sync_gradients`` is True
and ``zero_grad()`` only then too. With ``Accelerator(gradient_accumulation_steps=1)``
(the default) and no ``accelerator.accumulate()``, that is every call, and training equals
the plain loop (tests/integrations/test_accelerate.py):

    for batch in loader:                        # one micro-batch
        loss = model(**batch).loss              # NOT divided by K
        accelerator.backward(loss)
        opt.step()                              # reaches Nexus every micro-batch
        opt.zero_grad()
        if nexus.last_step_was_outer:           # nexus: the Nexus you passed to prepare()
            sched.step()

- ``gradient_accumulation_steps > 1`` / ``accumulate()`` would skip Nexus' inner steps:
  ``check_accelerator`` raises (Nexus' own ``inner_steps`` is the accumulation).
- Clip with ``Nexus(max_grad_norm=...)`` (on G), not ``accelerator.clip_grad_norm_``
  (that clips each micro-batch gradient).
- fp16 (GradScaler): a micro-batch whose scaled gradient overflows skips ``Nexus.step()``
  entirely, shifting the outer-step windows by one: ``check_accelerator`` warns; use bf16
  (no scaler; Nexus skips non-finite micro-batches itself and counts them).
- The scheduler: step it yourself at outer steps (``nexus.last_step_was_outer``); do not
  pass it through ``prepare()``: ``AcceleratedScheduler`` steps it on every ``opt.step()``
  that syncs, i.e. every micro-batch with Nexus (and once per process), so the schedule
  would run K times too fast. ``check_accelerator`` called after ``prepare()`` refuses it.
- ``AcceleratedOptimizer`` forwards ``state_dict``/``load_state_dict``, ``param_groups``,
  ``train()``/``eval()``; read Nexus' attributes (``last_step_was_outer``,
  ``outer_steps``, ...) on the Nexus object itself (``opt.optimizer``).
- Multi-process DDP: the backward of every micro-batch all-reduces (Nexus
  ``inner_sync="sync"``, the default under torch.distributed); for ``"local"`` wrap each
  backward in ``accelerator.no_sync(model)`` (docs/distributed.md).
"""

from __future__ import annotations

import warnings
from typing import Any

from nexus_optim.optim.guards import ACCELERATE_FIX, HostError
from nexus_optim.optim.nexus import Nexus

__all__ = ["check_accelerator", "unwrap_nexus"]


def unwrap_nexus(optimizer: Any) -> Nexus | None:
    """The Nexus inside accelerate/Trainer wrappers (``.optimizer`` chains), or None."""
    for _ in range(8):
        if isinstance(optimizer, Nexus):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
        if optimizer is None:
            return None
    return None


def check_accelerator(accelerator: Any) -> None:
    """Raise ``HostError`` if ``accelerator`` would skip Nexus' inner steps, or (called after
    ``prepare()``) if it holds a prepared scheduler of a Nexus with ``inner_steps > 1``, which
    it would step every micro-batch; warn on fp16."""
    k = int(getattr(accelerator, "gradient_accumulation_steps", 1) or 1)
    if k > 1:
        raise HostError(
            f"Accelerator(gradient_accumulation_steps={k}) with Nexus: "
            "AcceleratedOptimizer.step() skips the optimizer on the non-final micro-batches of "
            "accelerator.accumulate(), so Nexus would miss its inner steps. " + ACCELERATE_FIX)
    for sched in getattr(accelerator, "_schedulers", None) or ():
        inner = getattr(sched, "scheduler", sched)
        nexus = unwrap_nexus(getattr(inner, "optimizer", None))
        if nexus is not None and nexus.inner_steps > 1:
            raise HostError(
                f"a {type(inner).__name__} of Nexus(inner_steps={nexus.inner_steps}) went through "
                "accelerator.prepare(): AcceleratedScheduler steps it on every opt.step() that "
                "syncs, which is every micro-batch with Nexus, so the schedule would run "
                f"{nexus.inner_steps}x too fast. Keep the scheduler out of prepare() and call "
                "sched.step() when nexus.last_step_was_outer.")
    if getattr(accelerator, "scaler", None) is not None:
        warnings.warn(
            "Accelerator with a GradScaler (fp16): a micro-batch whose scaled gradient overflows "
            "skips Nexus.step(), shifting the outer-step windows; prefer mixed_precision='bf16'",
            RuntimeWarning, stacklevel=2)
