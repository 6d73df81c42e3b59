"""THE outer step: K micro-batches -> one update, for every optimizer.

Every optimizer of the harness follows one of two protocols (``StepProtocol``):

    ACCUMULATE       (adamw, muon, any torch optimizer)  backward(loss / K) on each
                     micro-batch; after the K-th: clip (``max_grad_norm``), step, zero_grad
    PER_MICRO_BATCH  (nexus, fish, random-control: ``Nexus``)  backward(loss) and
                     step + zero_grad after every micro-batch; the K-th step is the outer
                     step (clipping happens inside Nexus, on G)

``outer_step`` runs one outer step under a protocol; the trainer (``train/loop.py``),
the closeness fine-tunes (``diagnostics/closeness.py``), the toy (``toy/overparam.py``) and
``benchmarks/optimizer_overhead.py`` all call it. The registry (``train/optimizers.py``)
names each optimizer's protocol; ``protocol_of`` finds it for an optimizer built elsewhere.

Data-parallel modes (one vocabulary, ``optim.distributed``'s): ``data_parallel_modes``
maps (protocol, world size, ``train.inner_sync`` "sync" | "local") to the mode of
``backward_context`` ("none" | "accumulate" | "sync" | "local") and the ``inner_sync``
argument of the optimizer ("auto" on one process).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from nexus_optim.optim import Nexus
from nexus_optim.train.config import INNER_SYNCS  # train.inner_sync: optim's names less "none"


@dataclass(frozen=True)
class StepProtocol:
    """How the outer step drives an optimizer."""

    name: str
    steps_every_micro_batch: bool  # step() after each backward (else: accumulate loss / K)


ACCUMULATE = StepProtocol("accumulate", steps_every_micro_batch=False)
PER_MICRO_BATCH = StepProtocol("per-micro-batch", steps_every_micro_batch=True)


def protocol_of(opt: torch.optim.Optimizer) -> StepProtocol:
    """The protocol of an optimizer built outside the registry (toy, benchmarks)."""
    return PER_MICRO_BATCH if isinstance(opt, Nexus) else ACCUMULATE


def data_parallel_modes(protocol: StepProtocol, world: int, inner_sync: str) -> tuple[str, str]:
    """(``backward_context`` mode, the optimizer's ``inner_sync``) for a run of ``world``
    processes with ``train.inner_sync`` (docs/distributed.md)."""
    if inner_sync not in INNER_SYNCS:
        raise ValueError(f"train.inner_sync: {inner_sync!r} is not one of "
                         + ", ".join(map(repr, INNER_SYNCS)))
    if world == 1:
        return "none", "auto"
    return (inner_sync if protocol.steps_every_micro_batch else "accumulate"), inner_sync


def _update(opt: torch.optim.Optimizer) -> None:
    opt.step()
    opt.zero_grad(set_to_none=True)


def outer_step(opt: torch.optim.Optimizer, protocol: StepProtocol, k: int,
               micro_batch_loss: Callable[[int], torch.Tensor], *,
               backward_context: Callable[[int], ContextManager] | None = None,
               clip_params=None, max_grad_norm: float | None = None,
               update: Callable[[torch.optim.Optimizer], None] = _update) -> list[torch.Tensor]:
    """One outer step of ``k`` micro-batches; returns their (detached) losses.

    ``micro_batch_loss(i)``: the loss of micro-batch i (forward included, so that DDP sees
    forward and backward inside ``backward_context(i)``, default a null context).
    ``clip_params`` / ``max_grad_norm``: gradient clipping of the accumulated gradient
    (ACCUMULATE only; Nexus clips G itself). ``update(opt)``: step + zero_grad (a benchmark
    passes a timed one).
    """
    losses = []
    for i in range(k):
        with backward_context(i) if backward_context else contextlib.nullcontext():
            loss = micro_batch_loss(i)
            (loss if protocol.steps_every_micro_batch else loss / k).backward()
        if protocol.steps_every_micro_batch:
            update(opt)
        losses.append(loss.detach())
    if protocol.steps_every_micro_batch:
        if not (opt.last_step_was_outer or opt.skipped_micro_batches > 0):
            raise RuntimeError(f"outer_step: the {k}-th step() of {type(opt).__name__} was not an "
                               f"outer step (inner_steps != {k}?)")
    else:
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(clip_params, max_grad_norm)
        update(opt)
    return losses


def at_outer_weights(opt: torch.optim.Optimizer) -> ContextManager:
    """A context in which the model holds the outer weights (Nexus mid inner loop swaps
    its anchor in); a null context for other optimizers."""
    return opt.outer_weights() if isinstance(opt, Nexus) else contextlib.nullcontext()


def step_counters(opt: torch.optim.Optimizer) -> dict:
    """Counters an optimizer keeps across steps, for the metrics log."""
    return {"skipped_micro_batches": opt.skipped_micro_batches} if isinstance(opt, Nexus) else {}
