"""What an experiment asks of a run directory it may reuse."""

from __future__ import annotations

from pathlib import Path

from nexus_optim.train.logging import read_metrics


def eval_records(run_dir: str | Path) -> list[dict]:
    """The run's eval records (those with ``val/id``) in log order; [] if it has no
    readable ``metrics.jsonl``."""
    try:
        return [r for r in read_metrics(run_dir) if "val/id" in r]
    except (FileNotFoundError, ValueError):
        return []


def final_eval(run_dir: str | Path) -> dict | None:
    """The run's last eval record (one with ``val/id``); None if it has none or no
    readable ``metrics.jsonl``."""
    evals = eval_records(run_dir)
    return evals[-1] if evals else None


def finished(run_dir: str | Path, steps: int) -> bool:
    """The run trained to ``steps`` outer steps and logged its final eval there."""
    rec = final_eval(run_dir)
    return rec is not None and rec.get("step") == steps
