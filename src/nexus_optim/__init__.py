"""nexus_optim: the Nexus optimizer for multi-source LLM pretraining.

``from nexus_optim import Nexus`` pulls in nothing but torch. The names below load on first
use, so the ``nexus`` command can say which extra is missing before anything heavy loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexus_optim.optim.factory import create_optimizer
    from nexus_optim.optim.nexus import Nexus

__all__ = ["Nexus", "create_optimizer"]
__version__ = "0.3.0"


def __getattr__(name: str) -> Any:
    if name == "Nexus":
        from nexus_optim.optim.nexus import Nexus

        return Nexus
    if name == "create_optimizer":
        from nexus_optim.optim.factory import create_optimizer

        return create_optimizer
    raise AttributeError(f"module 'nexus_optim' has no attribute {name!r}")
