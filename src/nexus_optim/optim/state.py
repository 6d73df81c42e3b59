"""Nexus state in the shape torch.distributed.checkpoint carries.

DCP (``get/set_optimizer_state_dict``, ``dcp.save``/``dcp.load``) keeps only an
optimizer state dict's ``state`` (per parameter) and ``param_groups``, and rebuilds
flattened state from the keys of ``optimizer.state[param]``. So every piece of Nexus
state is a per-parameter entry next to the outer optimizer's own (``exp_avg``, ...):

    state[i]["nexus_anchor"]      fp32 anchor theta_t (DTensor under FSDP2)
    state[i]["nexus_trajectory"]  fp32 sum of the gradients so far (trajectory mode)
    state[i]["nexus_counters"]    int64 [version, K, inner_norm, outer_grad, outer
                                  steps, inner step, finite micro-batches in the loop,
                                  skipped before, calls, last step was outer, touched]
    state[0]["nexus_rng"]         uint8 generator state (random mode)
    state[i]["nexus_probe"]       the inner point, only when saved in eval mode mid loop

``NexusState`` is ``Nexus.state``: a read-through view of the outer optimizer's state
plus these keys, so ``optimizer.state[param]`` lists every key DCP must move.
Loading validates everything (shapes, settings) before anything changes, keeps the
fp32 buffers fp32 (torch's ``load_state_dict`` would cast them to a bf16 parameter's
dtype) and reads the 0.1 format (a top-level ``"nexus"`` entry).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nexus_optim.optim import functional

if TYPE_CHECKING:
    from nexus_optim.optim.nexus import Nexus

VERSION = 2
PREFIX = "nexus_"
(_V, _K, _NORM, _GRAD, _OUTER, _INNER, _FINITE, _SKIPPED, _CALLS, _LAST, _TOUCHED) = range(11)


class ParamState(MutableMapping):
    """``Nexus.state[p]``: the outer optimizer's state of p, plus Nexus' own keys."""

    def __init__(self, view: "NexusState", p: Tensor) -> None:
        self._view, self._p = view, p

    def _outer(self) -> dict:
        return self._view.opt.outer.state[self._p]

    def _own(self) -> dict:
        return self._view.own.setdefault(self._p, {})

    def _derived(self) -> list[str]:
        opt = self._view.opt
        keys = ["nexus_counters"]
        if opt._generator is not None and opt._params and opt._params[0] is self._p:
            keys.append("nexus_rng")
        if opt._probe is not None:
            keys.append("nexus_probe")
        return keys

    def __getitem__(self, key: str) -> Any:
        if key.startswith(PREFIX):
            if key in self._own():
                return self._own()[key]
            if key in self._derived():
                return derived_value(self._view.opt, self._p, key)
            raise KeyError(key)
        outer = self._view.opt.outer.state
        if self._p not in outer:  # a defaultdict: do not create an empty entry by reading
            raise KeyError(key)
        return outer[self._p][key]

    def __setitem__(self, key: str, value: Any) -> None:
        (self._own() if key.startswith(PREFIX) else self._outer())[key] = value

    def __delitem__(self, key: str) -> None:
        del (self._own() if key.startswith(PREFIX) else self._outer())[key]

    def __iter__(self) -> Iterator[str]:
        outer = self._view.opt.outer.state
        yield from (outer[self._p] if self._p in outer else ())
        yield from self._own()
        yield from self._derived()

    def __len__(self) -> int:
        return sum(1 for _ in self)


class NexusState(Mapping):
    """``Nexus.state``: param -> ``ParamState`` (never empty once built: the anchors
    are created eagerly, so DCP's ``_init_optim_state`` does not step it)."""

    def __init__(self, opt: "Nexus") -> None:
        self.opt = opt
        self.own: dict[Tensor, dict[str, Tensor]] = {}

    def __getitem__(self, p: Tensor) -> ParamState:
        return ParamState(self, p)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.own)

    def __len__(self) -> int:
        return len(self.own)

    def __contains__(self, p: object) -> bool:
        return p in self.own


def counters(opt: "Nexus", touched: bool) -> Tensor:
    finite = 0 if opt._finite_count is None else int(opt._finite_count)
    return torch.tensor(
        [VERSION, opt.inner_steps, functional.INNER_NORMS.index(opt.inner_norm),
         functional.OUTER_GRADS.index(opt.outer_grad), opt.outer_steps, opt.inner_step,
         finite, opt._skipped_before, opt._calls, int(opt.last_step_was_outer), int(touched)],
        dtype=torch.int64)


def derived_value(opt: "Nexus", p: Tensor, key: str) -> Tensor:
    if key == "nexus_counters":
        i = opt._index[id(p)]
        return counters(opt, any(k[i] for k in opt._touched))
    if key == "nexus_rng":
        return opt._generator.get_state()
    if key == "nexus_probe":
        return opt._probe[opt._index[id(p)]]
    raise KeyError(key)


def pack(opt: "Nexus", outer_state: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The outer ``state`` (index -> dict) with the Nexus keys added per parameter."""
    out: dict[int, dict[str, Any]] = {}
    base = counters(opt, touched=False)  # one read of the device count, not one per parameter
    for i, p in enumerate(opt._params):
        entry = dict(outer_state.get(i, {}))
        view = opt.state[p]
        for key in view:
            if key == "nexus_counters":
                entry[key] = base.clone()
                entry[key][_TOUCHED] = int(any(k[i] for k in opt._touched))
            elif key.startswith(PREFIX):
                entry[key] = view[key]
        out[i] = entry
    return out


def _legacy(opt: "Nexus", sd: dict[str, Any]) -> dict[str, Any]:
    """The 0.1 format (top-level "nexus" entry) in the current layout."""
    sd = dict(sd)
    nexus = sd.pop("nexus")
    cfg = nexus["config"]
    for key in ("inner_steps", "outer_grad", "inner_norm"):
        if cfg[key] != getattr(opt, key):
            raise ValueError(f"{key}: checkpoint has {cfg[key]!r}, optimizer has "
                             f"{getattr(opt, key)!r}")
    if len(nexus["state"]) != len(opt._params):
        raise ValueError(f"state_dict: {len(nexus['state'])} parameters in checkpoint, "
                         f"{len(opt._params)} here")
    state = {i: dict(v) for i, v in sd["state"].items()}
    touched = set(nexus["touched"])
    skipped_in_loop = nexus["inner_step"] - nexus["finite_in_loop"]
    for i in range(len(opt._params)):
        entry = state.setdefault(i, {})
        old = nexus["state"][i]
        entry["nexus_anchor"] = old["anchor"]
        if "trajectory" in old:
            entry["nexus_trajectory"] = old["trajectory"]
        entry["nexus_counters"] = torch.tensor(
            [VERSION, cfg["inner_steps"], functional.INNER_NORMS.index(cfg["inner_norm"]),
             functional.OUTER_GRADS.index(cfg["outer_grad"]), nexus["outer_steps"],
             nexus["inner_step"], nexus["finite_in_loop"],
             nexus["skipped_micro_batches"] - skipped_in_loop, nexus["calls"],
             int(nexus["last_step_was_outer"]), int(i in touched)], dtype=torch.int64)
        if i == 0 and nexus.get("rng") is not None:
            entry["nexus_rng"] = nexus["rng"]
    sd["state"] = state
    return sd


def _shape(t: Any) -> tuple[int, ...] | None:
    return tuple(t.shape) if isinstance(t, Tensor) else None


def unpack(opt: "Nexus", state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[int, dict]]:
    """Split and validate: (the outer optimizer's state dict, Nexus keys per index).
    Raises ValueError naming the first problem; changes nothing."""
    if "nexus" in state_dict:
        state_dict = _legacy(opt, state_dict)
    groups, saved_groups = opt.param_groups, state_dict.get("param_groups")
    if not isinstance(saved_groups, list) or len(saved_groups) != len(groups):
        raise ValueError(f"state_dict: {len(saved_groups or [])} parameter groups in "
                         f"checkpoint, {len(groups)} here")
    for g, (mine, saved) in enumerate(zip(groups, saved_groups)):
        if len(saved["params"]) != len(mine["params"]):
            raise ValueError(f"state_dict: param_groups[{g}] has {len(saved['params'])} "
                             f"parameters in checkpoint, {len(mine['params'])} here")
    ids = [i for sg in saved_groups for i in sg["params"]]
    index = {pid: n for n, pid in enumerate(ids)}  # saved id -> our position
    outer_state: dict[Any, dict] = {}
    mine: dict[int, dict] = {}
    for pid, entry in state_dict.get("state", {}).items():
        if pid not in index:
            raise ValueError(f"state_dict: state for parameter {pid!r}, which no group lists")
        n = index[pid]
        p = opt._params[n]
        ours = {k: v for k, v in entry.items() if k.startswith(PREFIX)}
        rest = {k: v for k, v in entry.items() if not k.startswith(PREFIX)}
        for key, value in rest.items():  # outer state: same rank => same shape
            if (isinstance(value, Tensor) and value.dim() == p.dim() and value.dim() > 0
                    and tuple(value.shape) != tuple(p.shape)):
                raise ValueError(f"state_dict: state[{pid}][{key!r}] has shape "
                                 f"{tuple(value.shape)}, parameter {n} has {tuple(p.shape)}")
        for key in ("nexus_anchor", "nexus_trajectory", "nexus_probe"):
            if key in ours and _shape(ours[key]) != tuple(p.shape):
                raise ValueError(f"state_dict: state[{pid}][{key!r}] has shape "
                                 f"{_shape(ours[key])}, parameter {n} has {tuple(p.shape)}")
        if rest:
            outer_state[pid] = rest
        mine[n] = ours
    for n in range(len(opt._params)):
        ours = mine.get(n, {})
        if "nexus_anchor" not in ours or "nexus_counters" not in ours:
            raise ValueError(f"state_dict: parameter {n} has no Nexus state "
                             "(not a Nexus state dict, or saved by another optimizer)")
        if ("nexus_trajectory" in ours) != (opt.outer_grad == "trajectory"):
            raise ValueError("outer_grad: checkpoint was saved with a different outer_grad "
                             f"(this optimizer has {opt.outer_grad!r})")
    c = mine[0]["nexus_counters"].tolist()
    if c[_V] != VERSION:
        raise ValueError(f"state_dict: Nexus state version {c[_V]}, expected {VERSION}")
    for name, have, pos, names in (("inner_steps", opt.inner_steps, _K, None),
                                   ("inner_norm", opt.inner_norm, _NORM, functional.INNER_NORMS),
                                   ("outer_grad", opt.outer_grad, _GRAD, functional.OUTER_GRADS)):
        saved = c[pos] if names is None else names[c[pos]]
        if saved != have:
            raise ValueError(f"{name}: checkpoint has {saved!r}, optimizer has {have!r}")
    if opt.inner_norm == "random" and "nexus_rng" not in mine[0]:
        raise ValueError("state_dict: random mode without 'nexus_rng' in state[0]")
    outer_sd = {k: v for k, v in state_dict.items() if k != "state"}
    outer_sd["state"] = outer_state
    return outer_sd, mine


@torch.no_grad()
def apply(opt: "Nexus", mine: dict[int, dict]) -> None:
    """Copy validated Nexus state into the (already allocated) buffers."""
    from nexus_optim.optim import distributed as dist_ops

    probe = []
    for n, p in enumerate(opt._params):
        own = opt.state.own[p]
        ours = mine[n]
        own["nexus_anchor"].copy_(ours["nexus_anchor"])
        if "nexus_trajectory" in own:
            own["nexus_trajectory"].copy_(ours["nexus_trajectory"])
        if "nexus_probe" in ours:
            probe.append((p, ours["nexus_probe"]))
    c = mine[0]["nexus_counters"].tolist()
    opt.outer_steps, opt.inner_step = c[_OUTER], c[_INNER]
    opt._skipped_before, opt._calls = c[_SKIPPED], c[_CALLS]
    opt.last_step_was_outer = bool(c[_LAST])
    touched = tuple(bool(mine[n]["nexus_counters"][_TOUCHED]) for n in range(len(opt._params)))
    opt._touched = {touched} if opt.inner_step > 0 else set()
    device = dist_ops.to_local(opt._params[:1])[0].device
    opt._finite_count = (torch.tensor(c[_FINITE], dtype=torch.int64, device=device)
                         if opt.inner_step > 0 else None)
    if opt._generator is not None:
        opt._generator.set_state(mine[0]["nexus_rng"].to("cpu", torch.uint8))
    opt._eval_mode, opt._probe = False, None
    for p, value in probe:  # saved in eval mode: the live point was the probe
        p.copy_(value)


_EAGER_OK = {"Adam", "AdamW", "Muon", "RAdam"}


@torch.no_grad()
def materialize_outer(opt: "Nexus") -> bool:
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
    outer = opt.outer
    name = type(outer).__name__
    ok = getattr(outer, "nexus_eager_state", None)
    if ok is None:
        ok = name in _EAGER_OK or (
            name == "SGD" and all(g.get("dampening", 0) == 0 for g in outer.param_groups))
    if not ok or any(outer.state.get(p) for p in opt._params):
        return False
    params = [p for p in opt._params if p.requires_grad]
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
