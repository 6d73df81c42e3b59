"""The trainer's side of torchrun: process-group setup and teardown, rank helpers.

``setup_distributed`` reads what torchrun exports (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``). With ``WORLD_SIZE`` unset or 1 it changes nothing: one process, no
process group. Otherwise it initializes the default process group (NCCL on CUDA,
with device ``cuda:LOCAL_RANK``; gloo on CPU), unless the caller already did, in
which case that group is used and left to the caller to destroy. All communication
is torch.distributed's own (barrier, ``all_reduce``, ``all_gather_object``,
``broadcast_object_list``); the gradients go through DDP and ``Nexus``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# Rank 0 evaluates, checkpoints and exports while the other ranks wait in a barrier;
# the timeout bounds that wait (and any collective).
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass
class DistContext:
    """Rank, world size and local rank of this process (0, 1, 0 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True: we initialized the group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` alone)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of a float over the ranks (one ``all_reduce`` of one number, fp64)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) / self.world

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on global rank 0, then on each node's local rank 0, then on the
        other ranks (a barrier between the phases). For cached, idempotent work such
        as ``prepare_data``: one process builds the cache, the others load it; with a
        node-local cache directory each node builds its own, never two processes the
        same one at the same time."""
        if not self.enabled:
            return fn()
        result = fn() if self.rank == 0 else None
        self.barrier()
        if self.rank != 0 and self.local_rank == 0:
            result = fn()
        self.barrier()
        if self.local_rank != 0:
            result = fn()
        return result  # type: ignore[return-value]

    def close(self) -> None:
        """Destroy the process group if ``setup_distributed`` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Initialize the process group under torchrun; return the context and the device
    this rank trains on (``cuda:LOCAL_RANK`` for a CUDA ``device``).

    ``device`` is the resolved ``train.device`` (``loop.pick_device``).
    """
    if dist.is_available() and dist.is_initialized():  # the caller set it up
        world, rank = dist.get_world_size(), dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        ctx = DistContext(rank, world, local, owns_group=False)
    elif env_world_size() > 1:
        if not dist.is_available():
            raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        rank, world = int(os.environ["RANK"]), env_world_size()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if device.type == "cuda":
            torch.cuda.set_device(local)
            kwargs["device_id"] = torch.device("cuda", local)
        dist.init_process_group(backend, timeout=DEFAULT_TIMEOUT, **kwargs)
        ctx = DistContext(rank, world, local, owns_group=True)
    else:
        return DistContext(), device
    if device.type == "cuda":
        if not ctx.owns_group:
            torch.cuda.set_device(ctx.local_rank)
        device = torch.device("cuda", ctx.local_rank)
    return ctx, device


@torch.no_grad()
def replica_mismatches(tensors: list[torch.Tensor]) -> int:
    """How many of ``tensors`` are not bitwise the same on all ranks (0 without a
    process group). Each rank reduces every tensor to an integer checksum of its bits
    (the sum, wrapping in int64, of its elements read as integers); one ``all_gather``
    of these N integers per rank, not a copy of the model."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0
    if not tensors:
        return 0
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    sums = torch.stack([t.detach().reshape(-1).view(ints[t.element_size()])
                        .sum(dtype=torch.int64) for t in tensors])
    gathered = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    table = torch.stack(gathered)
    return int((table != table[0]).any(dim=0).sum())
