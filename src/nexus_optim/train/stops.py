"""Stopping a training run before ``train.steps`` (``Trainer.run``, docs/reliability.md):

SIGINT (Ctrl-C) or SIGTERM during ``run()`` of a single-process run lets the current outer
step finish, saves a checkpoint there and raises `TrainingStopped` (exit code 130 / 143,
one line saying how to resume); a second signal stops at once. Under torchrun the ranks
stop at once (a checkpoint needs every rank; resume from the last periodic one). A full
disk (ENOSPC / EDQUOT, from any write: checkpoint, metrics, TensorBoard, export) raises
`TrainingStopped` (exit code 1) naming the path and the checkpoint a resume continues from.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from nexus_optim.train.checkpoint import latest_checkpoint


class TrainingStopped(Exception):
    """The run stopped before ``train.steps`` (a signal, a full disk) after saving what it
    could; the message is one line saying how to resume; ``exit_code`` for the shell."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


#: signals that stop a run at the end of the current outer step, and their exit codes
STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopSignals:
    """While caught (`catch` ... `restore`), SIGINT / SIGTERM set ``received``, read at the
    end of each outer step; the previous handlers come back at once, so a second signal
    stops immediately. Only in the main thread (Python delivers signals there), and only on
    one process: under torchrun the agent's SIGTERM usually means a peer died, and a
    checkpoint needs every rank (it would hang in a collective), so the ranks stop at once
    as before."""

    def __init__(self):
        self.received: int | None = None
        self.previous: dict = {}

    def catch(self, distributed: bool) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread() or distributed:
            return self
        # a signal the caller ignores (nohup, a background job of a script) stays ignored
        self.previous = {sig: h for sig in STOP_SIGNALS
                         if (h := signal.getsignal(sig)) != signal.SIG_IGN}
        for sig in self.previous:
            signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, _frame) -> None:
        self.received = signum
        self.restore()
        print(f"nexus train: {signal.Signals(signum).name} received: stopping after this "
              f"outer step and saving a checkpoint (send it again to stop at once, "
              f"without saving)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, h in self.previous.items():
            signal.signal(sig, h)


def stopped_by_signal(signum: int, step: int, steps: int, out: Path) -> TrainingStopped:
    """What a run stopped by ``signum`` after ``step`` (its checkpoint saved) raises."""
    name = signal.Signals(signum).name
    ckpt = out / "checkpoints" / f"step_{step:06d}"
    return TrainingStopped(
        f"stopped by {name} after step {step} of {steps}; saved "
        f"checkpoint {str(ckpt)!r}; to continue, rerun the same command (nexus train: with "
        f"--resume; nexus demo/study resume by themselves) (train.out_dir {str(out)!r})",
        STOP_SIGNALS.get(signum, 1))


def disk_full(e: BaseException, out: Path) -> TrainingStopped:
    """What a run in ``out`` raises for a full disk ``e``: the path it was writing (from the
    exception's chain) and the checkpoint a resume continues from."""
    where, cur = None, e
    while cur is not None and where is None:
        where = getattr(cur, "filename", None)
        cur = cur.__cause__ or cur.__context__
    last = latest_checkpoint(out / "checkpoints")
    then = (f"continues from checkpoint {last.name!r}" if last is not None
            else "starts over (no checkpoint was written)")
    return TrainingStopped(
        f"the disk is full (No space left on device) writing "
        f"{str(where) if where else 'under ' + repr(str(out))}; free space on that file "
        f"system and rerun the same command (nexus train: with --resume; it {then})", 1)
