"""Integrations with training frameworks (import transformers / accelerate on use).

- ``NexusTrainer``, ``nexus_optimizer_cls_and_kwargs``, ``unwrap_nexus``
  (``integrations.hf_trainer``, needs transformers): HF Trainer with the Nexus update.
- ``check_accelerator`` (``integrations.accelerate``): refuse accelerate settings that
  would skip Nexus' inner steps.

``nexus_optim`` and ``nexus_optim.optim`` never import this package.
"""

from __future__ import annotations

from typing import Any

from nexus_optim.extras import require_extra

require_extra("hf", "nexus_optim.integrations")  # transformers / accelerate: the [hf] extra

_EXPORTS = {
    "NexusTrainer": "nexus_optim.integrations.hf_trainer",
    "nexus_optimizer_cls_and_kwargs": "nexus_optim.integrations.hf_trainer",
    "unwrap_nexus": "nexus_optim.integrations.hf_trainer",
    "check_accelerator": "nexus_optim.integrations.accelerate",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nexus_optim.integrations' has no attribute {name!r}")
