"""nexus_optim: the Nexus optimizer for multi-source LLM pretraining.

``from nexus_optim import Nexus`` pulls in nothing but torch.
"""

from nexus_optim.optim.factory import create_optimizer
from nexus_optim.optim.nexus import Nexus

__all__ = ["Nexus", "create_optimizer"]
__version__ = "0.1.0"
