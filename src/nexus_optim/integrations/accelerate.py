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
  pass it through ``prepare()`` (``AcceleratedScheduler`` steps once per process per call).
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

__all__ = ["check_accelerator"]


def check_accelerator(accelerator: Any) -> None:
    """Raise ``HostError`` if ``accelerator`` would skip Nexus' inner steps; warn on fp16."""
    k = int(getattr(accelerator, "gradient_accumulation_steps", 1) or 1)
    if k > 1:
        raise HostError(
            f"Accelerator(gradient_accumulation_steps={k}) with Nexus: "
            "AcceleratedOptimizer.step() skips the optimizer on the non-final micro-batches of "
            "accelerator.accumulate(), so Nexus would miss its inner steps. " + ACCELERATE_FIX)
    if getattr(accelerator, "scaler", None) is not None:
        warnings.warn(
            "Accelerator with a GradScaler (fp16): a micro-batch whose scaled gradient overflows "
            "skips Nexus.step(), shifting the outer-step windows; prefer mixed_precision='bf16'",
            RuntimeWarning, stacklevel=2)
