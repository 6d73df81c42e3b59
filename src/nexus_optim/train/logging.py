"""Metrics: JSONL (one record per line) + TensorBoard, on the main process only."""

from __future__ import annotations

import json
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
            kept = [l for l in self.path.read_text().splitlines()
                    if l.strip() and json.loads(l)["step"] <= resume_step]
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
    """All records of a ``metrics.jsonl`` (or of ``RUN_DIR/metrics.jsonl``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
