"""Cached tensor lists of one ``Nexus.step()``: which parameters have a gradient,
their group slices, local shards and trajectory buffers (rebuilt only when the pattern
of parameters with a gradient changes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nexus_optim.optim import distributed as dist_ops

if TYPE_CHECKING:
    from nexus_optim.optim.nexus import Nexus


def state_dtype(p: Tensor) -> torch.dtype:
    """Anchor/accumulator dtype: fp32 for low-precision parameters, else the param's own."""
    return p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32


class Plan:
    """Cached tensor lists for one pattern of which parameters have a gradient."""

    def __init__(self, opt: "Nexus", key: tuple[bool, ...]) -> None:
        params = opt._params
        self.params = [p for p, has in zip(params, key) if has]
        self.groups: list[tuple[int, int, dict[str, Any]]] = []
        start = 0
        for group in opt.param_groups:
            n = sum(1 for p in group["params"] if key[opt._index[id(p)]])
            if n:
                self.groups.append((start, start + n, group))
            start += n
        self.local_params = dist_ops.to_local(self.params)
        self.on_cpu = all(p.device.type == "cpu" for p in self.local_params)
        if opt.outer_grad == "trajectory":
            self.traj = dist_ops.to_local(opt._state_list(self.params, "nexus_trajectory"))
            others = [p for p, has in zip(params, key) if not has]
            self.traj_others = dist_ops.to_local(opt._state_list(others, "nexus_trajectory"))
        else:
            self.traj = self.traj_others = None
