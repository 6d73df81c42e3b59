"""Cached tensor lists of one ``Nexus.step()``: which parameters have a gradient,
their group slices, local shards and trajectory buffers (rebuilt only when the pattern
of parameters with a gradient changes)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nexus_optim.optim import distributed as dist_ops


def state_dtype(p: Tensor) -> torch.dtype:
    """Anchor/accumulator dtype: fp32 for low-precision parameters, else the param's own."""
    return p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32


class Plan:
    """Cached tensor lists for one pattern of which parameters have a gradient.

    ``params``: all parameters, in group order (the concatenation of the groups'
    ``"params"``); ``groups``: the parameter groups; ``key``: per parameter, whether it
    has a gradient; ``trajectories``: per parameter, its trajectory sum (None in
    "displacement" mode)."""

    def __init__(self, params: list[Tensor], groups: list[dict[str, Any]],
                 key: tuple[bool, ...], trajectories: list[Tensor] | None) -> None:
        self.params = [p for p, has in zip(params, key) if has]
        self.groups: list[tuple[int, int, dict[str, Any]]] = []
        start = offset = 0
        for group in groups:
            size = len(group["params"])
            n = sum(key[offset:offset + size])
            offset += size
            if n:
                self.groups.append((start, start + n, group))
            start += n
        self.local_params = dist_ops.to_local(self.params)
        self.on_cpu = all(p.device.type == "cpu" for p in self.local_params)
        if trajectories is not None:
            self.traj = dist_ops.to_local([t for t, has in zip(trajectories, key) if has])
            self.traj_others = dist_ops.to_local(
                [t for t, has in zip(trajectories, key) if not has])
        else:
            self.traj = self.traj_others = None
