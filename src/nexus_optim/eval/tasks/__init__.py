"""Offline downstream tasks (one module per kind); `run_tasks` runs a list of them.

    gsm    GSM8K-style word problems, held-out templates; greedy decoding, exact match
    arith  seeded arithmetic questions ("What is 37 + 48?"); greedy decoding, exact match
    mc     continuation multiple choice from the run's val documents; log-likelihood ranking
    code   function bodies checked by running tests in a subprocess; pass@1
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Sequence

from nexus_optim.eval.tasks.base import TaskContext

TASKS = ("gsm", "arith", "mc", "code")

#: Every option of each task (``--task-option TASK.KEY=VALUE``, ``TaskContext.options``) with its
#: type and range, checked by `check_options` before anything is evaluated; the defaults are
#: in the task modules. Upper bounds keep a typo from running for hours (a 30 s timeout per
#: program is already 6x the default; 4096 new tokens is beyond any preset's context).
OPTIONS: dict[str, dict[str, tuple]] = {
    "gsm": {"fewshot": (int, 0, 16), "max_new_tokens": (int, 1, 4096), "language": (str, None, None)},
    "arith": {"fewshot": (int, 0, 64), "digits": (int, 1, 18), "max_new_tokens": (int, 1, 4096),
              "ops": (str, None, None), "mul_digits": (int, 1, 18), "allow_negative": (bool, None, None)},
    "mc": {"n_choices": (int, 2, 26), "context_chars": (int, 1, 1_000_000),
           "continuation_chars": (int, 1, 1_000_000), "sources": (list, None, None),
           "max_doc_tokens": (int, 1, 1 << 31)},
    "code": {"max_new_tokens": (int, 1, 4096), "timeout": (float, 0.0, 300.0), "workers": (int, 1, 64)},
}


def _type_ok(value, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)


def check_options(options: dict) -> None:
    """Refuse an unknown task or option (naming the allowed ones), a value of the wrong type,
    ``nan`` / ``inf``, or one out of range: a one-line ValueError naming ``--task-option
    TASK.KEY``."""
    if not isinstance(options, dict):
        raise ValueError(f"--task-option: expected {{task: {{key: value}}}}, got {type(options).__name__}")
    for task, opts in options.items():
        if task not in OPTIONS:
            raise ValueError(f"--task-option {task}.*: unknown task {task!r}; known: {', '.join(OPTIONS)}")
        if not isinstance(opts, dict):
            raise ValueError(f"--task-option {task}.*: expected a mapping of options, got {opts!r}")
        for key, value in opts.items():
            where = f"--task-option {task}.{key}"
            if key not in OPTIONS[task]:
                raise ValueError(f"{where}: unknown option; allowed for {task}: {', '.join(OPTIONS[task])}")
            kind, lo, hi = OPTIONS[task][key]
            if isinstance(value, str) and kind is float:  # YAML reads 1e3 as a str
                try:
                    value = opts[key] = float(value)
                except ValueError:
                    pass
            if not _type_ok(value, kind):
                name = "a list of source names" if kind is list else kind.__name__
                raise ValueError(f"{where}: expected {name}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{where}: must be a finite number, got {value!r}")
            if lo is not None and not (lo < value if kind is float else lo <= value) or (hi is not None and value > hi):
                low = f"> {lo}" if kind is float else f">= {lo}"
                raise ValueError(f"{where}: must be {low} and <= {hi}, got {value!r}")


#: ``--limit`` above this is refused: tasks build their items up front (arith generates them,
#: gsm draws templates), and a million greedy-decoded items per task is already days of work
MAX_LIMIT = 1_000_000


def check_limit(limit) -> None:
    """``--limit``: None (each task's default) or an integer in [1, MAX_LIMIT]."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT):
        raise ValueError(f"--limit: must be a positive integer (items per task) <= {MAX_LIMIT}, got {limit!r}")


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
    gets ``{"error": message}`` unless ``raise_errors``. Bad options or ``limit`` are a
    ValueError before any task runs."""
    check_options(ctx.options)
    check_limit(limit)
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


__all__ = ["OPTIONS", "TASKS", "TaskContext", "check_limit", "check_options", "parse_tasks", "run_task",
           "run_tasks"]
