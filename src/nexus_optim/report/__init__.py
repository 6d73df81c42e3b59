"""Comparison reports: runs at matched loss and equal tokens, statistics, plots."""

from nexus_optim.report.compare import compare_runs

__all__ = ["compare_runs"]
