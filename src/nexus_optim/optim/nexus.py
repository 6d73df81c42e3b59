"""Nexus: K normalized inner steps, one per micro-batch, then one outer step.

One outer step t, with micro-batches B_1..B_K and inner step size gamma:

    anchor <- theta_t                                   (fp32)
    for k = 1..K:                                       (one ``step()`` call each)
        g_k   <- grad L_{B_k}(theta)                    (at the current inner point)
        theta <- theta - gamma * d(g_k)                 d: see ``functional``
    G     <- (1/K) sum_k g_k              ("trajectory", default)
          or (anchor - theta_K)/(gamma K) ("displacement")
    theta <- anchor;  clip G to max_grad_norm;  theta <- Outer.step(theta, G)

In expectation over the order of two micro-batches, G = conventional gradient
- (gamma/2) grad CosSim(g_1, g_2) + O(gamma^2): the outer step descends the summed
loss while raising the cosine similarity between micro-batch (source) gradients.
With ``inner_lr=0`` and "trajectory", Nexus is exactly the outer optimizer with
K-step gradient accumulation.

Which weights are live: after a ``step()`` that completed an outer step
(``last_step_was_outer``) the model holds the outer weights theta_{t+1}; between
outer steps it holds an inner probe point. Evaluate and save at outer steps.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from nexus_optim.optim import distributed as D
from nexus_optim.optim import functional as F

_NEXUS_KEYS = ("inner_lr",)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"{name}: {value!r} is not one of " + ", ".join(repr(a) for a in allowed)
        )


def _check_nonneg(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name}: must be a number >= 0, got {value!r}")


def _state_dtype(p: Tensor) -> torch.dtype:
    """Anchor/accumulator dtype: fp32 for low-precision parameters, else the param's own."""
    return p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32


class Nexus(Optimizer):
    """Nexus optimizer (Chen et al., 2026) over any ``torch.optim`` outer optimizer.

    Call ``step()`` once per micro-batch (after ``backward()``); every
    ``inner_steps``-th call restores the anchor and performs the outer step.

    Args:
        params: parameters or parameter groups (``inner_lr`` may be set per group).
        lr: outer learning rate (passed to ``outer``).
        inner_lr: inner step size gamma (per-group key).
        inner_steps: K, micro-batches per outer step (>= 1).
        outer: the outer optimizer class (or a callable ``outer(params, lr=..., **kw)``).
        inner_norm: "global" | "per_tensor" | "none" (Fish-style raw steps) | "random"
            (seeded random direction of the same length as the "global" move).
        outer_grad: "trajectory" (mean raw gradient along the path) | "displacement"
            ((anchor - theta_K) / (inner_lr * K)).
        max_grad_norm: clip the outer gradient's global norm (``clip_grad_norm_``).
        inner_lr_follows_lr: use inner_lr * lr / initial_lr, so gamma follows the
            outer schedule.
        seed: seed of the random directions (``inner_norm="random"``).
        inner_eps: eps in the normalization g / (||g|| + eps).
        inner_sync: data parallel (docs/distributed.md): "sync" (micro-batch gradients
            already averaged over ranks, by DDP or FSDP2) | "local" (per-rank inner
            paths under ``DDP.no_sync()``; G averaged once per outer step) | None or
            "none" | "auto" (default: "sync" if torch.distributed is initialized
            with more than one rank, else "none").
        bucket_cap_mb: bucket size of the "local" outer all-reduce (one per bucket).
        process_group: process group of the "local" all-reduce (default: world).
        **outer_kwargs: passed to ``outer`` (betas, weight_decay, eps, ...).

    Attributes:
        outer: the outer optimizer; ``self.param_groups is self.outer.param_groups``.
        outer_steps: number of completed outer steps.
        inner_step: position in the current inner loop, 0..K-1 (0 = at an anchor).
        last_step_was_outer: whether the last ``step()`` completed an outer step.
        skipped_micro_batches: micro-batches skipped for a non-finite gradient.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 3e-4,
        inner_lr: float = 0.05,
        inner_steps: int = 4,
        outer: type[Optimizer] | Callable[..., Optimizer] = torch.optim.AdamW,
        inner_norm: str = "global",
        outer_grad: str = "trajectory",
        max_grad_norm: float | None = None,
        inner_lr_follows_lr: bool = False,
        seed: int = 0,
        inner_eps: float = 1e-12,
        inner_sync: str | None = "auto",
        bucket_cap_mb: float = D.DEFAULT_BUCKET_CAP_MB,
        process_group: Any = None,
        **outer_kwargs: Any,
    ) -> None:
        _check_nonneg("lr", lr)
        _check_nonneg("inner_lr", inner_lr)
        if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or inner_steps < 1:
            raise ValueError(f"inner_steps: must be an integer >= 1, got {inner_steps!r}")
        _check_choice("inner_norm", inner_norm, F.INNER_NORMS)
        _check_choice("outer_grad", outer_grad, F.OUTER_GRADS)
        if max_grad_norm is not None and not (
            isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0
        ):
            raise ValueError(f"max_grad_norm: must be None or a number > 0, got {max_grad_norm!r}")
        _check_nonneg("inner_eps", inner_eps)
        if not callable(outer):
            raise ValueError(f"outer: must be a torch.optim.Optimizer class, got {outer!r}")

        self.outer: Optimizer = outer(params, lr=lr, **outer_kwargs)
        if not isinstance(self.outer, Optimizer):
            raise ValueError(
                f"outer: must build a torch.optim.Optimizer, got {type(self.outer).__name__}"
            )
        defaults = dict(self.outer.defaults, lr=lr, inner_lr=inner_lr)
        self.inner_steps = inner_steps
        self.inner_norm = inner_norm
        self.outer_grad = outer_grad
        self.max_grad_norm = max_grad_norm
        self.inner_lr_follows_lr = inner_lr_follows_lr
        self.seed = seed
        self.inner_eps = inner_eps
        self.outer_steps = 0
        self.inner_step = 0
        self.last_step_was_outer = False
        self.skipped_micro_batches = 0
        self._finite_in_loop = 0
        self._warned_nonfinite = False
        self._calls = 0
        self._touched: set[int] = set()  # ids of params with a gradient in this loop
        self._generator: torch.Generator | None = None

        self._initializing = True
        super().__init__(self.outer.param_groups, defaults)
        self._initializing = False
        self.param_groups = self.outer.param_groups  # same list, same dicts
        for group in self.param_groups:
            self._init_group(group)
        self._sync = D.OuterGradSync(inner_sync, self._all_params(), bucket_cap_mb, process_group)
        self.inner_sync = self._sync.mode

    # ----------------------------------------------------------------- groups/state
    def _init_group(self, group: dict[str, Any]) -> None:
        group.setdefault("inner_lr", self.defaults["inner_lr"])
        _check_nonneg("inner_lr", group["inner_lr"])
        if self.outer_grad == "displacement" and group["inner_lr"] == 0:
            raise ValueError(
                "inner_lr: must be > 0 with outer_grad='displacement' "
                "(use outer_grad='trajectory' for inner_lr=0)"
            )
        group.setdefault("initial_lr", group["lr"])
        for p in group["params"]:
            state = self.state[p]
            dtype = _state_dtype(p)
            state["anchor"] = p.detach().to(dtype, copy=True)
            if self.outer_grad == "trajectory":
                state["trajectory"] = torch.zeros_like(p, dtype=dtype)
            if self.inner_norm == "random" and self._generator is None:
                self._generator = torch.Generator(device=p.device)
                self._generator.manual_seed(self.seed)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the outer optimizer (and create its Nexus state eagerly)."""
        if getattr(self, "_initializing", False):
            super().add_param_group(param_group)
            return
        if self.inner_step != 0:
            raise RuntimeError("add_param_group: only allowed at an outer step boundary")
        self.outer.add_param_group(param_group)
        self._init_group(self.param_groups[-1])

    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _inner_lr(self, group: dict[str, Any]) -> float:
        gamma = float(group["inner_lr"])
        if self.inner_lr_follows_lr:
            initial = float(group.get("initial_lr", group["lr"]))
            gamma = gamma * float(group["lr"]) / initial if initial > 0 else 0.0
        return gamma

    # ------------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One inner move on the current gradients; every K-th call an outer step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_step_was_outer = False

        groups = []  # (group, params, grads, state list) for params with a gradient
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            if ps:
                groups.append((group, ps, [p.grad for p in ps], [self.state[p] for p in ps]))
        if not groups:
            return loss  # no gradient anywhere: change nothing

        self._calls += 1
        self._touched.update(id(p) for _, ps, _, _ in groups for p in ps)
        if self.inner_step == 0:
            params = self._all_params()
            F.snapshot_(D.to_local(self._state_list(params, "anchor")), D.to_local(params))

        all_grads = [g for _, _, gs, _ in groups for g in gs]
        norms, total = D.grad_norms(all_grads)  # full-tensor norms also for DTensor shards
        last = self.inner_step == self.inner_steps - 1
        if not math.isfinite(total):
            self._skip_nonfinite()
        else:
            self._finite_in_loop += 1
            self._inner_update(groups, norms, total, last)

        self.inner_step += 1
        if self.inner_step == self.inner_steps:
            self._outer_step()
        return loss

    def _skip_nonfinite(self) -> None:
        self.skipped_micro_batches += 1
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                f"Nexus: non-finite gradient at step() call {self._calls} "
                f"(outer step {self.outer_steps}, inner step {self.inner_step}); "
                "skipping this micro-batch (counted in skipped_micro_batches; warned once)",
                RuntimeWarning,
                stacklevel=3,
            )

    def _inner_update(self, groups: list, norms: list[Tensor], total: float, last: bool) -> None:
        if self.outer_grad == "trajectory":
            for _, ps, gs, sts in groups:
                F.accumulate_([s["trajectory"] for s in sts], gs)
            if last:
                return  # the K-th move is discarded by the restore in trajectory mode
        offset = 0
        for group, ps, gs, _ in groups:
            gamma = self._inner_lr(group)
            n = len(ps)
            if gamma == 0.0:
                offset += n
                continue
            if self.inner_norm == "random":
                dirs, factor = D.random_directions(ps, self._generator, self.inner_eps), 1.0
            else:
                dirs, factor = F.normalized_directions(
                    D.to_local(gs), self.inner_norm, total, norms[offset : offset + n],
                    self.inner_eps,
                )
            F.inner_move_(D.to_local(ps), dirs, gamma * factor)
            offset += n

    def _outer_step(self) -> None:
        touched = [
            [p for p in g["params"] if id(p) in self._touched] for g in self.param_groups
        ]
        params = [p for ps in touched for p in ps]
        count, self._finite_in_loop = self._finite_in_loop, 0
        self.inner_step = 0
        self._touched = set()
        anchors = self._state_list(params, "anchor")
        if count == 0 and not self._sync.local:  # all non-finite: no outer step
            F.restore_(D.to_local(params), D.to_local(anchors))
            if self.outer_grad == "trajectory":
                torch._foreach_zero_(self._state_list(params, "trajectory"))
            return
        for p in params:
            if p.grad is None:  # had a gradient earlier in the loop, not at the last call
                p.grad = torch.zeros_like(p)
        if self.outer_grad == "trajectory":
            F.trajectory_gradient_(
                D.to_local([p.grad for p in params]),
                D.to_local(self._state_list(params, "trajectory")),
                max(count, 1),  # count 0 only in "local" mode: G = 0 from this rank
            )
        else:
            for group, ps in zip(self.param_groups, touched):
                gamma = self._inner_lr(group)
                scale = 1.0 / (gamma * self.inner_steps) if gamma > 0 else 0.0
                F.displacement_gradient_(
                    D.to_local([p.grad for p in ps]),
                    D.to_local(self._state_list(ps, "anchor")),
                    D.to_local(ps),
                    scale,
                )
        F.restore_(D.to_local(params), D.to_local(anchors))
        if self._sync.local:  # average G over ranks: one all-reduce per bucket
            params = self._sync.average_outer_grads(self._all_params(), params, count > 0)
            if not params:  # no rank had a finite micro-batch: no outer step anywhere
                return
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
        self.outer.step()
        self.outer_steps += 1
        self.last_step_was_outer = True

    def _state_list(self, params: list[Tensor], key: str) -> list[Tensor]:
        return [self.state[p][key] for p in params]

    # ------------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The outer optimizer's state dict plus a ``"nexus"`` entry.

        ``nexus.state[i]`` holds the fp32 anchor (and trajectory accumulator) of the
        i-th parameter in param-group order (the same indices as ``state``).
        """
        sd = self.outer.state_dict()
        params = self._all_params()
        sd["nexus"] = {
            "state": {i: dict(self.state[p]) for i, p in enumerate(params)},
            "config": {
                "inner_steps": self.inner_steps,
                "inner_norm": self.inner_norm,
                "outer_grad": self.outer_grad,
            },
            "outer_steps": self.outer_steps,
            "inner_step": self.inner_step,
            "finite_in_loop": self._finite_in_loop,
            "skipped_micro_batches": self.skipped_micro_batches,
            "calls": self._calls,
            "touched": [i for i, p in enumerate(params) if id(p) in self._touched],
            "last_step_was_outer": self.last_step_was_outer,
            "rng": None if self._generator is None else self._generator.get_state(),
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load outer and Nexus state; fp32 buffers stay fp32; groups stay shared."""
        state_dict = dict(state_dict)
        nexus = state_dict.pop("nexus", None)
        if nexus is None:
            raise ValueError("state_dict: no 'nexus' entry (not a Nexus state dict)")
        for key in ("inner_steps", "outer_grad", "inner_norm"):
            if nexus["config"][key] != getattr(self, key):
                raise ValueError(
                    f"{key}: checkpoint has {nexus['config'][key]!r}, optimizer has "
                    f"{getattr(self, key)!r}"
                )
        self.outer.load_state_dict(state_dict)
        self.param_groups = self.outer.param_groups
        params = self._all_params()
        if len(nexus["state"]) != len(params):
            raise ValueError(
                f"state_dict: {len(nexus['state'])} parameters in checkpoint, {len(params)} here"
            )
        for i, p in enumerate(params):
            for key, value in nexus["state"][i].items():
                self.state[p][key].copy_(value)
        self.outer_steps = nexus["outer_steps"]
        self.inner_step = nexus["inner_step"]
        self._finite_in_loop = nexus["finite_in_loop"]
        self.skipped_micro_batches = nexus["skipped_micro_batches"]
        self._calls = nexus["calls"]
        self._touched = {id(params[i]) for i in nexus["touched"]}
        self.last_step_was_outer = nexus["last_step_was_outer"]
        if nexus["rng"] is not None and self._generator is not None:
            self._generator.set_state(nexus["rng"])

    def __repr__(self) -> str:
        return (
            f"Nexus(inner_steps={self.inner_steps}, inner_norm={self.inner_norm!r}, "
            f"outer_grad={self.outer_grad!r}, outer={self.outer!r})"
        )
