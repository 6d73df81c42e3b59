"""Nexus state in the shape torch.distributed.checkpoint carries.

DCP (``get/set_optimizer_state_dict``, ``dcp.save``/``dcp.load``) keeps only an
optimizer state dict's ``state`` (per parameter) and ``param_groups``, and rebuilds
flattened state from the keys of ``optimizer.state[param]``. So every piece of Nexus
state is a per-parameter entry next to the outer optimizer's own (``exp_avg``, ...):

    state[i]["nexus_anchor"]      fp32 anchor theta_t (DTensor under FSDP2)
    state[i]["nexus_trajectory"]  fp32 sum of the gradients so far (trajectory mode)
    state[i]["nexus_counters"]    int64 loop state (``loop_state.LoopState.to_counters``)
    state[0]["nexus_rng"]         uint8 generator state (random mode)
    state[i]["nexus_probe"]       the inner point, only when saved in eval mode mid loop

``NexusState`` is ``Nexus.state``: a read-through view of the outer optimizer's state
plus these keys, so ``optimizer.state[param]`` lists every key DCP must move.
``pack`` turns torch's packed ``state`` into plain dicts; ``unpack`` validates a state
dict (shapes, settings, value types) before anything changes and splits it; ``apply``
copies the Nexus part into the buffers, keeping them fp32 (torch's ``load_state_dict``
would cast them to a bf16 parameter's dtype). The 0.1 format (a top-level ``"nexus"``
entry) is read too. Every function takes what it needs as arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor

from nexus_optim.optim.loop_state import LoopState, Settings, counters_from_v0_1

PREFIX = "nexus_"


class ParamState(MutableMapping):
    """``Nexus.state[p]``: the outer optimizer's state of p, plus Nexus' own keys."""

    def __init__(self, view: "NexusState", p: Tensor) -> None:
        self._view, self._p = view, p

    def _outer(self) -> dict:
        return self._view.outer[self._p]

    def _own(self) -> dict:
        return self._view.own.setdefault(self._p, {})

    def _derived(self) -> list[str]:
        view = self._view
        keys = ["nexus_counters"]
        if view.loop.generator is not None and view.params and view.params[0] is self._p:
            keys.append("nexus_rng")
        if view.loop.probe is not None:
            keys.append("nexus_probe")
        return keys

    def __getitem__(self, key: str) -> Any:
        if key.startswith(PREFIX):
            if key in self._own():
                return self._own()[key]
            if key in self._derived():
                return self._view.derived(self._p, key)
            raise KeyError(key)
        outer = self._view.outer
        if self._p not in outer:  # a defaultdict: do not create an empty entry by reading
            raise KeyError(key)
        return outer[self._p][key]

    def __setitem__(self, key: str, value: Any) -> None:
        (self._own() if key.startswith(PREFIX) else self._outer())[key] = value

    def __delitem__(self, key: str) -> None:
        del (self._own() if key.startswith(PREFIX) else self._outer())[key]

    def __iter__(self) -> Iterator[str]:
        outer = self._view.outer
        yield from (outer[self._p] if self._p in outer else ())
        yield from self._own()
        yield from self._derived()

    def __len__(self) -> int:
        return sum(1 for _ in self)


class NexusState(Mapping):
    """``Nexus.state``: param -> ``ParamState`` (never empty once built: the anchors
    are created eagerly, so DCP's ``_init_optim_state`` does not step it).

    ``loop``: the optimizer's loop state; ``counters()``: its per-parameter counters
    (``LoopState.to_counters`` with the optimizer's settings); ``outer_optimizer``: the
    outer optimizer, whose ``state`` is read through (its ``load_state_dict`` replaces
    that dict); ``reindex`` is called whenever the parameters change."""

    def __init__(self, loop: LoopState, counters: Callable[[], list[Tensor]],
                 outer_optimizer: torch.optim.Optimizer) -> None:
        self.loop, self.counters, self.outer_optimizer = loop, counters, outer_optimizer
        self.own: dict[Tensor, dict[str, Tensor]] = {}
        self.params: list[Tensor] = []
        self.index: dict[int, int] = {}

    @property
    def outer(self) -> dict:
        return self.outer_optimizer.state

    def reindex(self, params: list[Tensor]) -> None:
        self.params = params
        self.index = {id(p): i for i, p in enumerate(params)}

    def derived(self, p: Tensor, key: str) -> Tensor:
        if key == "nexus_counters":
            return self.counters()[self.index[id(p)]]
        if key == "nexus_rng":
            return self.loop.generator.get_state()
        if key == "nexus_probe":
            return self.loop.probe[self.index[id(p)]]
        raise KeyError(key)

    def __getitem__(self, p: Tensor) -> ParamState:
        return ParamState(self, p)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.own)

    def __len__(self) -> int:
        return len(self.own)

    def __contains__(self, p: object) -> bool:
        return p in self.own


def pack(packed: dict[int, Mapping], counters: list[Tensor]) -> dict[int, dict[str, Any]]:
    """torch's packed ``state`` (index -> ``ParamState``) as plain dicts in index order,
    with ``counters`` (one per index: computed once, not once per parameter)."""
    out: dict[int, dict[str, Any]] = {}
    for i in sorted(packed):
        view = packed[i]
        out[i] = {key: (counters[i].clone() if key == "nexus_counters" else view[key])
                  for key in view}
    return out


def _legacy(sd: dict[str, Any], settings: Settings, n_params: int) -> dict[str, Any]:
    """The 0.1 format (top-level "nexus" entry) in the current layout."""
    sd = dict(sd)
    nexus = sd.pop("nexus")
    cfg = nexus["config"]
    for key in ("inner_steps", "outer_grad", "inner_norm"):
        if cfg[key] != getattr(settings, key):
            raise ValueError(f"{key}: checkpoint has {cfg[key]!r}, optimizer has "
                             f"{getattr(settings, key)!r}")
    if len(nexus["state"]) != n_params:
        raise ValueError(f"state_dict: {len(nexus['state'])} parameters in checkpoint, "
                         f"{n_params} here")
    state = {i: dict(v) for i, v in sd["state"].items()}
    counters = counters_from_v0_1(nexus, settings, n_params)
    for i in range(n_params):
        entry = state.setdefault(i, {})
        old = nexus["state"][i]
        entry["nexus_anchor"] = old["anchor"]
        if "trajectory" in old:
            entry["nexus_trajectory"] = old["trajectory"]
        entry["nexus_counters"] = counters[i]
        if i == 0 and nexus.get("rng") is not None:
            entry["nexus_rng"] = nexus["rng"]
    sd["state"] = state
    return sd


def _shape(t: Any) -> tuple[int, ...] | None:
    return tuple(t.shape) if isinstance(t, Tensor) else None


def _check_value(where: str, value: Any) -> None:
    """An outer optimizer's state value: a tensor, a number, a bool or None (what torch's
    optimizers keep), or a list/tuple/dict of those."""
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_value(where, v)
    elif isinstance(value, dict):
        for v in value.values():
            _check_value(where, v)
    elif not (value is None or isinstance(value, (Tensor, int, float, bool))):
        raise ValueError(f"state_dict: {where} is a {type(value).__name__}; optimizer state "
                         "holds tensors and numbers")


def _check_groups(saved_groups: Any, groups: list[dict[str, Any]]) -> list[int]:
    """The saved parameter ids in order (validated against this optimizer's groups)."""
    if not isinstance(saved_groups, list) or len(saved_groups) != len(groups):
        n = len(saved_groups) if isinstance(saved_groups, list) else 0
        raise ValueError(f"state_dict: {n} parameter groups in checkpoint, {len(groups)} here")
    for g, (mine, saved) in enumerate(zip(groups, saved_groups)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            raise ValueError(f"state_dict: param_groups[{g}] is not a dict with a 'params' list")
        if len(saved["params"]) != len(mine["params"]):
            raise ValueError(f"state_dict: param_groups[{g}] has {len(saved['params'])} "
                             f"parameters in checkpoint, {len(mine['params'])} here")
    return [i for sg in saved_groups for i in sg["params"]]


def _split_entry(pid: Any, entry: Any, n: int, p: Tensor) -> tuple[dict, dict]:
    """One saved ``state[pid]`` for parameter n: (Nexus keys, outer keys), validated."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"state_dict: state[{pid!r}] is a {type(entry).__name__}, not a dict")
    ours = {k: v for k, v in entry.items() if k.startswith(PREFIX)}
    rest = {k: v for k, v in entry.items() if not k.startswith(PREFIX)}
    for key, value in rest.items():  # outer state: same rank => same shape
        _check_value(f"state[{pid}][{key!r}]", value)
        if (isinstance(value, Tensor) and value.dim() == p.dim() and value.dim() > 0
                and tuple(value.shape) != tuple(p.shape)):
            raise ValueError(f"state_dict: state[{pid}][{key!r}] has shape "
                             f"{tuple(value.shape)}, parameter {n} has {tuple(p.shape)}")
    for key in ("nexus_anchor", "nexus_trajectory", "nexus_probe"):
        if key in ours and _shape(ours[key]) != tuple(p.shape):
            raise ValueError(f"state_dict: state[{pid}][{key!r}] has shape "
                             f"{_shape(ours[key])}, parameter {n} has {tuple(p.shape)}")
        if key in ours and not ours[key].is_floating_point():
            raise ValueError(f"state_dict: state[{pid}][{key!r}] has dtype "
                             f"{ours[key].dtype}, not a floating-point one")
    for key in ("nexus_counters", "nexus_rng"):
        if key in ours and not isinstance(ours[key], Tensor):
            raise ValueError(f"state_dict: state[{pid}][{key!r}] is a "
                             f"{type(ours[key]).__name__}, not a tensor")
    return ours, rest


def _check_complete(mine: dict[int, dict], n_params: int, settings: Settings,
                    generator: torch.Generator | None) -> None:
    """Every parameter has its Nexus state, saved with these settings."""
    for n in range(n_params):
        ours = mine.get(n, {})
        if "nexus_anchor" not in ours or "nexus_counters" not in ours:
            raise ValueError(f"state_dict: parameter {n} has no Nexus state "
                             "(not a Nexus state dict, or saved by another optimizer)")
        if ("nexus_trajectory" in ours) != (settings.outer_grad == "trajectory"):
            raise ValueError("outer_grad: checkpoint was saved with a different outer_grad "
                             f"(this optimizer has {settings.outer_grad!r})")
    if not n_params:
        return
    LoopState.check_counters(mine[0]["nexus_counters"], settings)
    if settings.inner_norm == "random" and "nexus_rng" not in mine[0]:
        raise ValueError("state_dict: random mode without 'nexus_rng' in state[0]")
    rng, want = mine[0].get("nexus_rng"), generator and generator.get_state().numel()
    if rng is not None and want and rng.numel() != want:
        raise ValueError(f"state_dict: state[0]['nexus_rng'] has {rng.numel()} elements, "
                         f"this generator's state has {want}")


def unpack(state_dict: Any, params: list[Tensor], groups: list[dict[str, Any]],
           settings: Settings, generator: torch.Generator | None = None
           ) -> tuple[dict[str, Any], dict[int, dict]]:
    """Split and validate: (the outer optimizer's state dict, Nexus keys per index).
    ``generator``: this optimizer's (random mode). Raises ValueError naming the first
    problem; changes nothing."""
    if not isinstance(state_dict, Mapping):
        raise ValueError("state_dict: must be a dict with 'state' and 'param_groups' (what "
                         f"Nexus.state_dict() returns), got {type(state_dict).__name__}")
    if "nexus" in state_dict:
        state_dict = _legacy(state_dict, settings, len(params))
    ids = _check_groups(state_dict.get("param_groups"), groups)
    index = {pid: n for n, pid in enumerate(ids)}  # saved id -> our position
    saved_state = state_dict.get("state", {})
    if not isinstance(saved_state, Mapping):
        raise ValueError(f"state_dict: 'state' is a {type(saved_state).__name__}, not a dict")
    outer_state: dict[Any, dict] = {}
    mine: dict[int, dict] = {}
    for pid, entry in saved_state.items():
        if pid not in index:
            raise ValueError(f"state_dict: state for parameter {pid!r}, which no group lists")
        n = index[pid]
        mine[n], rest = _split_entry(pid, entry, n, params[n])
        if rest:
            outer_state[pid] = rest
    _check_complete(mine, len(params), settings, generator)
    outer_sd = {k: v for k, v in state_dict.items() if k != "state"}
    outer_sd["state"] = outer_state
    return outer_sd, mine


@torch.no_grad()
def apply(own: dict[Tensor, dict[str, Tensor]], params: list[Tensor],
          mine: dict[int, dict], loop: LoopState, device: torch.device) -> None:
    """Copy validated Nexus state into the (already allocated) buffers ``own`` and the
    loop state; a probe saved in eval mode goes back into the parameters."""
    probe = []
    for n, p in enumerate(params):
        buffers, ours = own[p], mine[n]
        buffers["nexus_anchor"].copy_(ours["nexus_anchor"])
        if "nexus_trajectory" in buffers:
            buffers["nexus_trajectory"].copy_(ours["nexus_trajectory"])
        if "nexus_probe" in ours:
            probe.append((p, ours["nexus_probe"]))
    if params:
        loop.load_counters([mine[n]["nexus_counters"] for n in range(len(params))], device,
                           mine[0].get("nexus_rng"))
    for p, value in probe:  # saved in eval mode: the live point was the probe
        p.copy_(value)


_EAGER_OK = {"Adam", "AdamW", "Muon", "RAdam"}


@torch.no_grad()
def materialize_outer(outer: torch.optim.Optimizer, all_params: list[Tensor]) -> bool:
    """Create the outer optimizer's per-parameter state now, so that a fresh Nexus
    already lists every key a DCP template needs (DCP's own ``_init_optim_state`` does
    the same for plain optimizers, with a zero-gradient step at lr 0).

    Done for outer optimizers whose zeroed state equals a fresh one (Adam, AdamW,
    RAdam, Muon; SGD with dampening 0; or a class with the attribute
    ``nexus_eager_state = True``): one ``step()`` on zero gradients at lr 0 (leaves
    the weights unchanged), then every ``step`` counter reset to 0. Returns whether
    it ran; otherwise the outer state stays lazy (DCP then needs a checkpoint taken
    after the first outer step to build its template).
    """
    name = type(outer).__name__
    ok = getattr(outer, "nexus_eager_state", None)
    if ok is None:
        ok = name in _EAGER_OK or (
            name == "SGD" and all(g.get("dampening", 0) == 0 for g in outer.param_groups))
    if not ok or any(outer.state.get(p) for p in all_params):
        return False
    params = [p for p in all_params if p.requires_grad]
    saved = [(p, p.grad) for p in params]
    lrs = [g["lr"] for g in outer.param_groups]
    try:
        for p in params:
            p.grad = torch.zeros_like(p)
        for g in outer.param_groups:
            g["lr"] = torch.zeros_like(g["lr"]) if isinstance(g["lr"], Tensor) else 0.0
        outer.step()
    finally:
        for g, lr in zip(outer.param_groups, lrs):
            g["lr"] = lr
        for p, grad in saved:
            p.grad = grad
    for p in params:
        for key, value in outer.state.get(p, {}).items():
            if key == "step":
                if isinstance(value, Tensor):
                    value.zero_()
                else:
                    outer.state[p][key] = 0
    return True
