"""Metrics: JSONL (one record per line) + TensorBoard, on the main process only.

A torn last line (what a full disk, a power loss or a kill mid-append leaves) is dropped
with a one-line warning naming the file, by ``read_metrics`` and on resume; any other
line that is not a JSON record with a ``step`` is a one-line ValueError naming
``file:line``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from nexus_optim.runtime import write_text


class MetricsLogger:
    """``log(step, {...})`` appends ``{"step": step, ...}`` to ``metrics.jsonl`` and
    writes scalars to TensorBoard. On resume, records after ``resume_step`` (written
    by the interrupted run after its last checkpoint) are dropped first."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [json.dumps(r) for r in read_metrics(self.path) if r["step"] <= resume_step]
            write_text(self.path, "".join(l + "\n" for l in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=resume_step)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a ``metrics.jsonl`` (or of ``RUN_DIR/metrics.jsonl``); a torn last
    line is dropped with a warning (module docstring)."""
    p = Path(path)
    if p.is_dir() and p.name != "metrics.jsonl":  # a run dir (a metrics.jsonl dir: an error below)
        p = p / "metrics.jsonl"
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"metrics: cannot read {str(p)!r} ({e.strerror or e})") from None
    lines = text.split("\n")
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not isinstance(r, dict) or not isinstance(r.get("step"), int):
                raise ValueError("not a record with an integer 'step'")
        except ValueError as e:
            if all(not rest.strip() for rest in lines[i:]) and not text.endswith("\n"):
                warnings.warn(f"{str(p)!r}: dropped a torn last line (line {i}, {len(line)} "
                              "characters without a newline: an interrupted write)",
                              RuntimeWarning, stacklevel=2)
                break
            raise ValueError(f"{p}:{i}: not a metrics record ({type(e).__name__}: "
                             f"{str(e)[:100]})") from None
        records.append(r)
    return records
