"""Theory toy for Nexus: quadratic-basin law (Theorem 2.2) and an over-parameterised multi-source test.

Heavy imports (torch, scipy, matplotlib) happen only when run_toy is called.
"""
from __future__ import annotations

__all__ = ["run_toy"]


def run_toy(out_dir, seed: int = 0, quick: bool = False) -> dict:
    """Run the toy and write toy.json, toy.md and PNG plots into out_dir; see nexus_optim.toy.run."""
    from .run import run_toy as _run_toy

    return _run_toy(out_dir, seed=seed, quick=quick)
