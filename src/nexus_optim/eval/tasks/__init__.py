"""Offline downstream tasks (one module per kind); `run_tasks` runs a list of them.

    gsm    GSM8K-style word problems, held-out templates; greedy decoding, exact match
    arith  seeded arithmetic questions ("What is 37 + 48?"); greedy decoding, exact match
    mc     continuation multiple choice from the run's val documents; log-likelihood ranking
    code   function bodies checked by running tests in a subprocess; pass@1
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Sequence

from nexus_optim.eval.tasks.base import TaskContext

TASKS = ("gsm", "arith", "mc", "code")


def parse_tasks(spec: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if "all" in names:
        names = list(TASKS)
    bad = [t for t in names if t not in TASKS]
    if bad:
        raise ValueError(f"--tasks: unknown task(s) {', '.join(bad)}; known: {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def run_task(name: str, ctx: TaskContext, limit: int | None = None) -> dict:
    import importlib

    mod = importlib.import_module(f"nexus_optim.eval.tasks.{name}")
    return mod.run(ctx, limit)


def run_tasks(names: Sequence[str], ctx: TaskContext, limit: int | None = None,
              raise_errors: bool = False) -> dict:
    """``{task: metrics}``; a task that cannot run (e.g. GSM templates not available offline)
    gets ``{"error": message}`` unless ``raise_errors``."""
    out = {}
    for name in parse_tasks(names):
        t0 = time.time()
        try:
            res = run_task(name, ctx, limit)
        except Exception as e:  # noqa: BLE001 - reported in the results, the other tasks still run
            if raise_errors:
                raise
            print(f"nexus eval: task {name} failed: {e}", file=sys.stderr)
            res = {"error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=3)}
        res["seconds"] = round(time.time() - t0, 2)
        out[name] = res
    return out


__all__ = ["TASKS", "TaskContext", "parse_tasks", "run_task", "run_tasks"]
