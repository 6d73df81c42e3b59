"""Data-parallel Nexus: the two ``inner_sync`` modes, the bucketed outer all-reduce,
norms over sharded (FSDP2 / DTensor) gradients, and the backward context a training
loop uses per micro-batch. Communication is torch.distributed only (collectives,
DDP, FSDP2 ``fully_shard``); nothing here talks to the network on its own.

``inner_sync`` (one outer step = K micro-batches per rank, W ranks, P parameters):

    "sync"   every micro-batch gradient is averaged over the ranks before the inner
             move (what DDP does on every backward, and what FSDP2 always does).
             Replicas are identical at every inner point; the run equals one process
             on the concatenated micro-batches. Nexus itself adds no collective
             (for sharded gradients: one tiny all-reduce of the per-tensor norms).
    "local"  every rank runs its own inner path with no communication
             (``DDP.no_sync()`` on every backward); at the K-th ``step()`` Nexus
             averages the outer gradient G over the ranks, flattened into fp32
             (fp64 for fp64 parameters) buckets of ``bucket_cap_mb``, one
             ``all_reduce`` per bucket. Replicas are identical after every outer
             step. Replicated parameters only (DDP).
    "none"   no distributed training (also ``None``).
    "auto"   "sync" when a torch.distributed process group with more than one rank
             is initialized, else "none".
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections import deque
from typing import Any, ContextManager, Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from nexus_optim.optim import functional

INNER_SYNC_MODES = ("none", "sync", "local")  # Nexus(inner_sync=...), besides "auto" and None
DEFAULT_BUCKET_CAP_MB = 25.0


# ----------------------------------------------------------------------- helpers
def is_distributed() -> bool:
    """Whether a torch.distributed process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    return dist.get_world_size(group) if is_distributed() else 1


def _dtensor_type() -> type | None:
    # torch.distributed.tensor costs ~1 s to import; if nobody imported it, no tensor
    # can be a DTensor, so do not import it here.
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None) if mod is not None else None


def is_dtensor(t: Any) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def to_local(tensors: list[Tensor]) -> list[Tensor]:
    """The local shards of DTensors (views sharing storage), other tensors unchanged.

    Nexus's per-parameter work (snapshot, move, restore, outer gradient) is pointwise
    between tensors sharded the same way (a parameter, its gradient, its anchor and
    trajectory), so it runs on local shards exactly and without communication.
    """
    cls = _dtensor_type()
    if cls is None or not any(isinstance(t, cls) for t in tensors):
        return tensors
    return [t._local_tensor if isinstance(t, cls) else t for t in tensors]


def resolve_inner_sync(inner_sync: str | None, params: Iterable[Tensor] = (), group: Any = None) -> str:
    """Normalize ``inner_sync`` to "none" | "sync" | "local" (see the module doc).

    Raises ValueError for an unknown value, for "local" without an initialized
    process group, and for "local" with sharded (DTensor) parameters: a sharded
    parameter's inner move needs its gradient reduced over the ranks, i.e. "sync".
    """
    if inner_sync is None:
        return "none"
    if inner_sync == "auto":
        return "sync" if is_distributed() and world_size(group) > 1 else "none"
    if inner_sync not in INNER_SYNC_MODES:
        raise ValueError(
            f"inner_sync: {inner_sync!r} is not one of 'auto', None, "
            + ", ".join(repr(a) for a in INNER_SYNC_MODES)
        )
    if inner_sync == "local":
        if not is_distributed():
            raise ValueError(
                "inner_sync='local': torch.distributed is not initialized "
                "(launch with torchrun and call init_process_group first, or use 'none')"
            )
        if any(is_dtensor(p) for p in params):
            raise ValueError(
                "inner_sync='local': parameters are sharded (DTensor / FSDP2); local inner "
                "paths need replicated parameters (DDP). Use inner_sync='sync' with FSDP2."
            )
    return inner_sync


# ------------------------------------------------------------------------- norms
def grad_norms(grads: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """Per-tensor L2 norms (fp32, plain tensors) and the global norm (0-dim tensor).

    Nothing is read on the host. For DTensor gradients (FSDP2) these are norms of
    the FULL tensors, not of the local shards: ``torch._foreach_norm`` on DTensors
    returns partial norms (placement ``_NormPartial``); the partials are stacked per
    (mesh, placements) and reduced by ``full_tensor()``: one all-reduce of a vector
    of norms per distinct sharding (one for FSDP2), whatever the number of parameters.
    Plain tensors: exactly ``functional.tensor_norms`` / ``global_norm``.
    """
    cls = _dtensor_type()
    if cls is None or not any(isinstance(g, cls) for g in grads):
        norms = functional.tensor_norms(grads)
        return norms, functional.global_norm(grads, norms)
    norms: list[Tensor | None] = [None] * len(grads)
    plain = [i for i, g in enumerate(grads) if not isinstance(g, cls)]
    for i, n in zip(plain, functional.tensor_norms([grads[i] for i in plain])):
        norms[i] = n
    by_sharding: dict[Any, list[int]] = {}
    for i, g in enumerate(grads):
        if isinstance(g, cls):
            by_sharding.setdefault((g.device_mesh, tuple(g.placements)), []).append(i)
    for idx in by_sharding.values():
        partial = torch._foreach_norm([grads[i] for i in idx], 2.0,
                                      dtype=functional.norm_dtype([grads[i] for i in idx]))
        full = torch.stack(partial).full_tensor()  # one collective for the group
        for i, n in zip(idx, full.unbind()):
            norms[i] = n
    device = norms[0].device
    total = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2.0)
    return norms, total  # type: ignore[return-value]


def random_direction(like: list[Tensor], generator: torch.Generator) -> tuple[list[Tensor], Tensor]:
    """One Gaussian vector u over ALL of ``like`` (one draw, whatever the number of
    tensors or parameter groups) and its full norm ||u||: (local views, norm).

    Sharded parameters (DTensor) get the local shard of the vector the unsharded run
    would draw (same seed, same global shapes), so FSDP2 and one process take the same
    random moves, and the norm is that of the full vector. This draws the full vector
    on every rank (P floats per call): fine for a control run, not free.
    """
    cls = _dtensor_type()
    if cls is None or not any(isinstance(t, cls) for t in like):
        dirs = functional.gaussian_like(like, generator)
        return dirs, functional.global_norm(dirs)
    from torch.distributed.tensor import distribute_tensor

    device = to_local(like)[0].device
    shapes = [t.shape for t in like]
    flat = torch.randn(sum(math.prod(s) for s in shapes), generator=generator, device=device,
                       dtype=torch.float32)
    norm = torch.linalg.vector_norm(flat)
    out = []
    for v, t in zip(flat.split([math.prod(s) for s in shapes]), like):
        v = v.view(t.shape)
        if isinstance(t, cls):  # local split, no communication (src_data_rank=None)
            v = distribute_tensor(v, t.device_mesh, t.placements, src_data_rank=None).to_local()
        out.append(v)
    return out, norm


# ------------------------------------------------------------- bucketed all-reduce
def reduce_dtype(t: Tensor) -> torch.dtype:
    """The dtype G is averaged in: fp64 for fp64 tensors, else fp32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def bucket_plan(tensors: list[Tensor], bucket_cap_bytes: int) -> list[list[int]]:
    """Split tensor indices into consecutive buckets of at most ``bucket_cap_bytes``
    (counted in ``reduce_dtype``), one device and dtype per bucket; a tensor larger
    than the cap gets a bucket of its own. Deterministic: the same model gives the
    same plan on every rank."""
    buckets: list[list[int]] = []
    size = 0
    key = None
    for i, t in enumerate(tensors):
        dtype = reduce_dtype(t)
        nbytes = t.numel() * dtype.itemsize
        if not buckets or size + nbytes > bucket_cap_bytes or (t.device, dtype) != key:
            buckets.append([])
            size = 0
            key = (t.device, dtype)
        buckets[-1].append(i)
        size += nbytes
    return buckets


def _pipelined_all_reduce(n_buckets: int, pack, unpack, group: Any) -> None:
    """Sum ``pack(b)`` over the ranks for each bucket b (async ``all_reduce``, at most two
    buckets in flight), calling ``unpack(b, flat)`` on each result in bucket order."""
    pending: deque = deque()
    for b in range(n_buckets):
        flat = pack(b)
        work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group, async_op=True)
        pending.append((b, flat, work))
        if len(pending) > 1:  # keep at most two buckets in flight
            b0, f0, w0 = pending.popleft()
            w0.wait()
            unpack(b0, f0)
    while pending:
        b0, f0, w0 = pending.popleft()
        w0.wait()
        unpack(b0, f0)


class OuterGradSync:
    """The data-parallel side of one Nexus instance (``Nexus._sync``).

    Only ``"local"`` does anything: ``average_outer_grads`` averages the outer
    gradient over the ranks once per outer step.
    """

    def __init__(
        self,
        inner_sync: str | None,
        params: list[Tensor],
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
        process_group: Any = None,
    ) -> None:
        if not (isinstance(bucket_cap_mb, (int, float)) and bucket_cap_mb > 0):
            raise ValueError(f"bucket_cap_mb: must be a number > 0, got {bucket_cap_mb!r}")
        self.mode = resolve_inner_sync(inner_sync, params, process_group)
        self.local = self.mode == "local"
        self.bucket_cap_bytes = max(1, int(bucket_cap_mb * 2**20))
        self.group = process_group

    def plan(self, params: list[Tensor]) -> list[list[int]]:
        """Bucket plan (indices into ``params``) of the outer all-reduce."""
        return bucket_plan([p for p in params if p.requires_grad], self.bucket_cap_bytes)

    @torch.no_grad()
    def average_outer_grads(
        self, all_params: list[Tensor], local_params: list[Tensor], has_grad: bool
    ) -> list[Tensor]:
        """Average the outer gradients ``p.grad`` over the ranks ("local" mode).

        Every rank passes ALL its parameters (same order on every rank) and the ones
        with an outer gradient here (``local_params``; ``has_grad`` False when all of
        this rank's micro-batches were non-finite). The gradients are packed into fp32
        buckets (zeros for parameters without a gradient here) and summed with one
        ``all_reduce`` per bucket (at most two in flight); the first bucket also
        carries one flag per parameter and one per rank, so the ranks agree, without
        another collective, on which parameters get an outer step and on the divisor:
        the number of ranks with a finite gradient. Sets ``p.grad`` of those
        parameters to the average and returns them (empty: no rank had a finite
        gradient, skip the outer step everywhere).
        """
        params = [p for p in all_params if p.requires_grad]
        if not params:
            return []
        mine = {id(p) for p in local_params} if has_grad else set()
        buckets = bucket_plan(params, self.bucket_cap_bytes)
        n = len(params)
        meta = torch.zeros(n + 1, dtype=torch.float32)
        if has_grad:
            meta[n] = 1.0
            flags = [i for i, p in enumerate(params) if id(p) in mine]
            meta[flags] = 1.0
        state: dict[str, Any] = {}

        def pack(b: int) -> Tensor:
            idx = buckets[b]
            dtype = reduce_dtype(params[idx[0]])
            parts = [
                params[i].grad.reshape(-1).to(dtype)
                if id(params[i]) in mine
                else torch.zeros(params[i].numel(), dtype=dtype, device=params[i].device)
                for i in idx
            ]
            if b == 0:
                parts.insert(0, meta.to(device=parts[0].device, dtype=dtype))
            return torch.cat(parts)

        def unpack(b: int, flat: Tensor) -> None:
            idx = buckets[b]
            if b == 0:
                flags, ranks = flat[:n], float(flat[n])
                flat = flat[n + 1 :]
                state["touched"] = (flags > 0).tolist()
                state["scale"] = 1.0 / ranks if ranks > 0 else 0.0
            flat.mul_(state["scale"])
            offset = 0
            for i in idx:
                p = params[i]
                k = p.numel()
                if state["touched"][i] and state["scale"] > 0:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    p.grad.copy_(flat[offset : offset + k].view_as(p))
                offset += k

        _pipelined_all_reduce(len(buckets), pack, unpack, self.group)
        if state.get("scale", 0.0) == 0:
            return []
        return [p for i, p in enumerate(params) if state["touched"][i]]


# --------------------------------------------------------------- training loop side
def backward_context(
    model: torch.nn.Module, inner_sync: str, *, last_micro_batch: bool = True
) -> ContextManager:
    """The context to run one micro-batch's ``backward()`` in.

    ``inner_sync``:
        "sync"        reduce gradients on every backward (Nexus sync; nullcontext).
        "local"       never (``model.no_sync()``): Nexus averages G once per outer step.
        "accumulate"  only on the last micro-batch of the outer step: conventional
                      gradient accumulation for the AdamW baseline.
        "none"/None   nullcontext (no distributed training).

    ``model`` is the DDP-wrapped module (``no_sync``), an FSDP2 module
    (``set_requires_gradient_sync``; "accumulate" only), or a plain module (no-op).
    """
    mode = "none" if inner_sync is None else inner_sync
    if mode not in ("none", "sync", "local", "accumulate"):
        raise ValueError(f"inner_sync: {inner_sync!r} is not one of none, sync, local, accumulate")
    skip = mode == "local" or (mode == "accumulate" and not last_micro_batch)
    if not skip:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        if mode == "local":
            raise ValueError("inner_sync='local' needs DDP (replicated parameters), not FSDP2")
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


def ddp_kwargs(inner_sync: str | None) -> dict[str, Any]:
    """Extra ``DistributedDataParallel`` arguments for a mode: for "local", no buffer
    broadcast on every forward (``forward_sync_buffers=False``, or
    ``broadcast_buffers=False`` before torch 2.13); DDP's constructor still makes all
    ranks start from rank 0's weights and buffers. Keep the default (pass nothing)
    for models whose buffers change in forward (BatchNorm running stats)."""
    if inner_sync != "local":
        return {}
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


@contextlib.contextmanager
def _fsdp_no_sync(model: Any):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@torch.no_grad()
def max_replica_difference(tensors: Iterable[Tensor], group: Any = None) -> float:
    """max |t - (t on the group's first rank)| over the tensors and ranks: a check for
    tests and debugging (two collectives: a broadcast of all tensors flattened in
    fp64, and a max all-reduce). 0.0 without torch.distributed."""
    if not is_distributed():
        return 0.0
    flat = [t.detach().reshape(-1).to(torch.float64) for t in tensors]
    if not flat:
        return 0.0
    mine = torch.cat([f.to(flat[0].device) for f in flat])
    ref = mine.clone()
    src = dist.get_global_rank(group, 0) if group is not None else 0
    dist.broadcast(ref, src=src, group=group)
    worst = (mine - ref).abs().max() if mine.numel() else torch.zeros((), dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    return float(worst)
