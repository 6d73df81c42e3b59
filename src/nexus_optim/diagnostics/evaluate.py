"""``nexus eval``: losses and downstream tasks of one checkpoint, as a JSON-able dict."""

from __future__ import annotations

import time
from pathlib import Path

from nexus_optim.eval.losses import evaluate_losses
from nexus_optim.eval.tasks import TaskContext, parse_tasks, run_tasks
from nexus_optim.runtime import pick_device, write_text
from nexus_optim.train.artifacts import load_trained
from nexus_optim.train.rundir import refuse_run_files


def evaluate_checkpoint(path: str | Path, losses: bool = True, tasks=(), limit: int | None = None,
                        max_tokens: int | None = None, batch_size: int | None = None,
                        device: str = "auto", seed: int = 0, progress: bool = True,
                        log_samples: bool = False, options: dict | None = None,
                        data_dir: str | Path | None = None, prepare: bool = False) -> dict:
    """Load a checkpoint (or a run dir's newest usable one) and evaluate it.

    ``losses``: `evaluate_losses` over every source's val split (``max_tokens`` per source,
    default all). ``tasks``: names from `nexus_optim.eval.tasks.TASKS` (``limit`` items each).
    Data: the run's own prepared data, or the same files under ``data_dir``; built from
    the checkpoint's config only with ``prepare`` (`train.artifacts.load_trained`). Only
    the weights, config and metadata of the checkpoint are read, never its pickles.
    """
    tasks = parse_tasks(tasks) if tasks else []
    dev = pick_device(device)
    model, cfg, prepared, state = load_trained(path, device=dev, data_dir=data_dir, prepare=prepare)
    ckpt = state["checkpoint"]
    tokenizer = prepared.tokenizer()
    bf16 = cfg.train.bf16
    bs = batch_size or cfg.train.eval_batch_size
    result: dict = {"checkpoint": str(ckpt.resolve()), "step": state.get("step"),
                    "tokens": state.get("tokens"), "optimizer": cfg.optim.name, "seed": cfg.train.seed,
                    "preset": cfg.model.preset, "seq_len": cfg.model.seq_len, "device": str(dev)}
    t0 = time.time()
    if losses:
        result["losses"] = evaluate_losses(model, prepared, cfg.model.seq_len, bs, max_tokens, dev,
                                           bf16, tokenizer=tokenizer, progress=progress)
        result["losses"]["seconds"] = round(time.time() - t0, 2)
    if tasks:
        ctx = TaskContext(model=model, tokenizer=tokenizer, prepared=prepared,
                          data_dir=prepared.data_dir or None, batch_size=bs, max_length=cfg.model.seq_len,
                          seed=seed, bf16=bf16, progress=progress, log_samples=log_samples,
                          options=options or {})
        result["tasks"] = run_tasks(tasks, ctx, limit)
    return result


def check_result_path(path: str | Path) -> None:
    """``nexus eval --out``: refuse (one line, before evaluating) a path inside a run's
    checkpoints or one of a run's own files (`train.rundir.refuse_run_files`)."""
    refuse_run_files(path, "eval --out")
    if Path(path).is_dir():
        raise ValueError(f"eval --out: {str(path)!r} is a directory; give a file name (e.g. "
                         f"{str(Path(path) / 'eval.json')!r})")


def write_result(path: str | Path, result: dict) -> Path:
    """Write ``result`` as JSON to ``path`` (checked again, then atomically)."""
    import json

    check_result_path(path)
    return write_text(path, json.dumps(result, indent=1, default=str) + "\n")
