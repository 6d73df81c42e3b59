"""How the trainer places the model on its ranks, and the full state an FSDP2 run writes.

Switches (``train/config.py``; docs/distributed.md, "Memory and speed switches"):

    train.parallel        under torchrun (WORLD_SIZE > 1): ``ddp`` (default; replicated
                          parameters, every inner_sync mode) or ``fsdp`` (FSDP2
                          ``fully_shard`` on every decoder layer and on the root module;
                          inner_sync "sync" only). One process: ignored.
    train.bf16            ddp / one process: bf16 autocast on CUDA (ignored on CPU).
                          fsdp: ``MixedPrecisionPolicy(param_dtype=bf16,
                          reduce_dtype=fp32)`` on every device, CPU included: forward and
                          backward compute in bf16 while the sharded parameters (the
                          master weights), the gradients the optimizer sees, Nexus'
                          anchors and trajectory sums and the outer optimizer's state stay
                          fp32.
    model.activation_checkpointing
                          each decoder layer's forward runs under non-reentrant
                          ``torch.utils.checkpoint``: its activations are recomputed in
                          the backward instead of kept (inside FSDP2's hooks, so a
                          recompute never all-gathers again). Same numbers, less memory.
    model.compile         ``torch.compile`` of the (wrapped) model.

An FSDP2 run checkpoints in the format of a single process: every rank takes part in
gathering each sharded parameter and optimizer-state tensor (``DTensor.full_tensor``, one
at a time), rank 0 writes the full tensors; on resume every rank reads them and keeps
its own shard (``distribute_tensor`` without communication). So a checkpoint of any run
reads with ``nexus eval`` / ``export``, and resume is exact (tests/train/test_fsdp.py).
Rank 0 holds one full copy of the weights and the optimizer state on the CPU while it
writes (about 16 bytes per parameter with AdamW or Nexus: 16 GB at 1B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from nexus_optim.optim.distributed import is_dtensor
from nexus_optim.train.distributed import replica_mismatches

PARALLEL = ("ddp", "fsdp")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of a LLaMA-style causal LM (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(f"{type(model).__name__} has no model.layers: activation "
                         "checkpointing and train.parallel=fsdp need a LLaMA-style decoder")
    return list(layers)


def checkpoint_activations(model: nn.Module) -> None:
    """Run every decoder layer's forward under non-reentrant activation checkpointing.
    The module's ``__call__`` (and any hook on it, FSDP2's included) is left as it is;
    parameter names do not change."""
    from torch.utils.checkpoint import checkpoint

    for layer in decoder_layers(model):
        def forward(*args: Any, _inner: Callable = layer.forward, **kwargs: Any) -> Any:
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
        layer.forward = forward


def shard(model: nn.Module, device: torch.device, bf16: bool) -> None:
    """FSDP2 ``fully_shard`` of every decoder layer, then of the root (in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if bf16 else MixedPrecisionPolicy())
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


class FullWeights:
    """A model's full (unsharded) state dict, for ``safetensors.torch.save_model``: names
    that share one parameter (tied embeddings) share one tensor, so it stores it once."""

    def __init__(self, state: dict[str, Tensor]):
        self._state = state

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self._state)


@dataclass
class Placement:
    """The model as this rank trains it. ``model`` is the module itself (sharded in place
    under FSDP2), ``ddp`` its DDP wrapper (or None), ``forward`` what computes the loss
    (the compiled net when ``model.compile``)."""

    model: nn.Module
    ddp: nn.Module | None
    forward: Callable
    sharded: bool

    @property
    def net(self) -> nn.Module:
        """What the backward context acts on (``optim.distributed.backward_context``)."""
        return self.ddp if self.ddp is not None else self.model

    def full_weights(self) -> nn.Module | FullWeights | None:
        """What ``save_model`` writes: the module, or under FSDP2 its gathered weights on
        rank 0 (None on the other ranks). Call on every rank."""
        if not self.sharded:
            return self.model
        gathered: dict[int, Tensor] = {}
        out = {}
        for name, t in self.model.state_dict(keep_vars=True).items():  # tied: one object
            if id(t) not in gathered:
                gathered[id(t)] = _full(t)
            out[name] = gathered[id(t)]
        return FullWeights(out) if dist.get_rank() == 0 else None

    def full_optimizer_state(self, state_dict: dict) -> dict:
        """An optimizer state dict with every sharded tensor gathered (on CPU). Call on
        every rank (the same state dict structure everywhere)."""
        if not self.sharded:
            return state_dict
        return {**state_dict, "state": {i: {k: _full(v) for k, v in entry.items()}
                                        for i, entry in state_dict["state"].items()}}

    def shard_optimizer_state(self, state_dict: dict, optimizer: torch.optim.Optimizer) -> dict:
        """The inverse of ``full_optimizer_state`` for ``optimizer``: every state tensor
        with its parameter's (global) shape becomes a DTensor laid out like the
        parameter, this rank's shard only. Anything that does not fit is left for
        ``optimizer.load_state_dict`` to refuse."""
        if not self.sharded:
            return state_dict
        from torch.distributed.tensor import distribute_tensor

        params = [p for g in optimizer.param_groups for p in g["params"]]
        saved = state_dict.get("param_groups")
        if not isinstance(saved, list) or not isinstance(state_dict.get("state"), dict):
            return state_dict
        ids = [i for g in saved if isinstance(g, dict) for i in g.get("params", [])]
        state = dict(state_dict["state"])
        for pid, p in zip(ids, params):
            entry = state.get(pid)
            if not (is_dtensor(p) and isinstance(entry, dict)):
                continue
            state[pid] = {k: (distribute_tensor(v.to(p.device), p.device_mesh, p.placements,
                                                src_data_rank=None)
                              if isinstance(v, Tensor) and v.dim() and v.shape == p.shape else v)
                          for k, v in entry.items()}
        return {**state_dict, "state": state}

    def replica_mismatches(self) -> int | None:
        """Parameter tensors whose bits differ between ranks (None under FSDP2: each
        rank holds its own shard, there is nothing to compare)."""
        return None if self.sharded else replica_mismatches(list(self.model.parameters()))


def _full(value: Any) -> Any:
    return value.detach().full_tensor().cpu() if is_dtensor(value) else value


def place_model(model: nn.Module, device: torch.device, world: int, sync_mode: str,
                parallel: str, bf16: bool, activation_checkpointing: bool,
                compile_model: bool) -> Placement:
    """Apply the switches (module docstring) in their order: activation checkpointing,
    then DDP or FSDP2 (WORLD_SIZE > 1), then ``torch.compile``."""
    from nexus_optim.optim.distributed import ddp_kwargs

    if activation_checkpointing:
        checkpoint_activations(model)
    ddp, sharded = None, world > 1 and parallel == "fsdp"
    if sharded:
        shard(model, device, bf16)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            **ddp_kwargs(sync_mode))
    net = ddp if ddp is not None else model
    return Placement(model, ddp, torch.compile(net) if compile_model else net, sharded)
