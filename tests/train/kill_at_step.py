"""torchrun entry of tests/train/test_torchrun.py: ``nexus train ARGS`` whose last rank
SIGKILLs itself after outer step N, as a crashed worker would (only in torchrun's first
attempt, so that a restarted worker resumes). The kill comes from this test-side callback
(``Trainer(callbacks=...)``), not from anything in the trainer.

    python -m torch.distributed.run ... tests/train/kill_at_step.py N train --config C ...
"""

from __future__ import annotations

import functools
import os
import signal
import sys

from nexus_optim.cli import main
from nexus_optim.train import loop


def kill_after(step: int):
    def callback(trainer) -> None:
        if trainer.step == step and trainer.dist.rank == trainer.dist.world - 1:
            os.kill(os.getpid(), signal.SIGKILL)
    return callback


if __name__ == "__main__":
    step = int(sys.argv.pop(1))
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        loop.train = functools.partial(loop.train, callbacks=(kill_after(step),))
    sys.exit(main(sys.argv[1:]))
