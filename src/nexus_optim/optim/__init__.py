"""The optimizer family: Nexus and its functional core (torch only)."""

from nexus_optim.optim.factory import create_optimizer
from nexus_optim.optim.nexus import Nexus

__all__ = ["Nexus", "create_optimizer"]
