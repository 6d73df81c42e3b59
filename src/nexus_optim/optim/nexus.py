"""Nexus: K normalized inner steps, one per micro-batch, then one outer step.

One outer step t, with micro-batches B_1..B_K and inner step size gamma:

    anchor <- theta_t                                   (fp32)
    for k = 1..K:                                       (one ``step()`` call each)
        g_k   <- grad L_{B_k}(theta)                    (at the current inner point)
        theta <- theta - gamma * d(g_k)                 d: see ``functional``
    G     <- (1/n) sum_k g_k              ("trajectory", default)
          or (anchor - theta_K)/(gamma n) ("displacement")
    theta <- anchor;  clip G to max_grad_norm;  theta <- Outer.step(theta, G)

n = number of finite micro-batches (a non-finite one is skipped: no move, not in G).
What each reading optimizes to first order in gamma (neither is exactly the paper's
-(gamma/2) grad CosSim for general Hessians), what gamma means per mode and the
fixed-gamma loss floor: docs/algorithm.md. With ``inner_lr=0`` and "trajectory",
Nexus is exactly the outer optimizer with K-step gradient accumulation. Between outer
steps the model holds an inner probe point: ``eval()`` / ``train()`` (or
``with opt.outer_weights():``) swap the outer weights in and back out.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor
from torch.optim import Optimizer

from nexus_optim.optim import distributed as dist_ops
from nexus_optim.optim import checks, functional, guards
from nexus_optim.optim import state as nexus_state
from nexus_optim.optim.loop_state import LoopState, Settings
from nexus_optim.optim.plan import Plan, state_dtype


class Nexus(Optimizer):
    """Nexus optimizer (Chen et al., 2026) over any ``torch.optim`` outer optimizer.

    Call ``step()`` once per micro-batch (after ``backward()``); every
    ``inner_steps``-th call restores the anchor and performs the outer step.
    ``step()`` consumes ``p.grad``: it may mask or replace it (at the K-th call it
    becomes the outer gradient G). Read gradients before ``step()``.

    Args:
        params: parameters or parameter groups (``inner_lr`` may be set per group).
        lr: outer learning rate (passed to ``outer``).
        inner_lr: inner step size gamma (per-group key). Move lengths: "global" and
            "random" gamma, "per_tensor" gamma*sqrt(number of tensors), "none"
            gamma*||g|| (docs/algorithm.md converts between modes).
        inner_steps: K, micro-batches per outer step (>= 1).
        outer: the outer optimizer class (or a callable ``outer(params, lr=..., **kw)``).
        inner_norm: "global" | "per_tensor" | "none" (Fish-style raw steps) | "random"
            (seeded random direction, one unit vector over all parameters, the same
            length as the "global" move).
        outer_grad: "trajectory" (mean raw gradient along the path) | "displacement"
            ((anchor - theta_K) / (inner_lr * n)).
        max_grad_norm: clip the outer gradient's global norm (``clip_grad_norm_``).
        inner_lr_follows_lr: use inner_lr * lr / initial_lr, so gamma follows the
            outer schedule.
        seed: seed of the random directions (``inner_norm="random"``).
        inner_eps: eps in the normalization g / (||g|| + eps).
        inner_sync: data parallel (docs/distributed.md): "sync" | "local" | None or
            "none" | "auto" (default: "sync" if torch.distributed is initialized
            with more than one rank, else "none").
        bucket_cap_mb: bucket size of the "local" outer all-reduce (one per bucket).
        process_group: process group of the "local" all-reduce (default: world).
        **outer_kwargs: passed to ``outer`` (betas, weight_decay, eps, maximize, ...).
            With ``maximize=True`` the inner moves ascend too (Nexus maximizes f
            exactly as it would minimize -f).

    Attributes:
        outer: the outer optimizer; ``self.param_groups is self.outer.param_groups``.
        loop: the loop state (``loop_state.LoopState``), read by the properties below.
        inner_steps: K; may be changed between outer steps (``inner_step == 0``).
        outer_steps: number of completed outer steps.
        inner_step: position in the current inner loop, 0..K-1 (0 = at an anchor).
        last_step_was_outer: whether the last ``step()`` completed an outer step.
        skipped_micro_batches: micro-batches skipped for a non-finite gradient (read
            lazily: the skip is decided on the device; reading it syncs).

    Host reads: none per micro-batch (the non-finite skip is a device-side mask; on
    CPU, where a read is free, a branch); one scalar per outer step (is there one?).
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
        bucket_cap_mb: float = dist_ops.DEFAULT_BUCKET_CAP_MB,
        process_group: Any = None,
        **outer_kwargs: Any,
    ) -> None:
        checks.check_arguments(lr=lr, inner_lr=inner_lr, inner_steps=inner_steps,
                               inner_norm=inner_norm, outer_grad=outer_grad,
                               max_grad_norm=max_grad_norm, inner_eps=inner_eps)
        self.outer: Optimizer = checks.build_outer(outer, params, lr, outer_kwargs, Nexus)
        defaults = dict(self.outer.defaults, lr=lr, inner_lr=inner_lr)
        self.loop = LoopState()  # everything that changes from one step() to the next
        self.inner_steps, self.inner_norm, self.outer_grad = inner_steps, inner_norm, outer_grad
        self.max_grad_norm, self.inner_lr_follows_lr = max_grad_norm, inner_lr_follows_lr
        self.seed, self.inner_eps = seed, inner_eps
        self._hosts_checked: set = set()  # guards.check_host: each host once
        self._plans: dict[tuple[bool, ...], Plan] = {}  # by which parameters have a gradient
        self._initializing = True
        super().__init__(self.outer.param_groups, defaults)
        self._initializing = False
        self.param_groups = self.outer.param_groups  # same list, same dicts
        self.state = nexus_state.NexusState(self.loop, self._counters, self.outer)  # type: ignore
        self.register_state_dict_post_hook(self._pack_state_dict)  # first: users' see dicts
        for group in self.param_groups:
            self._init_group(group)
        self._reindex()
        self._sync = dist_ops.OuterGradSync(inner_sync, self._params, bucket_cap_mb,
                                            process_group)
        self.inner_sync = self._sync.mode
        nexus_state.materialize_outer(self.outer, self._params)
        checks.warn_large_inner_lr(
            self.param_groups, inner_norm, float(dist_ops.grad_norms(
                [p.detach() for p in self._params])[1]) if self._params else 0.0,
            len(self._params))

    # ------------------------------------------------------------- loop state
    @property
    def inner_steps(self) -> int:
        """K, micro-batches per outer step; may change only at an anchor (inner_step 0)."""
        return self._inner_steps

    @inner_steps.setter
    def inner_steps(self, value: int) -> None:
        checks.check_inner_steps(value)
        if self.loop.inner_step != 0 and value != self._inner_steps:
            raise RuntimeError(
                f"inner_steps: can change only at an outer step boundary (inner_step is "
                f"{self.loop.inner_step} of {self._inner_steps}, not 0)")
        self._inner_steps = value

    outer_steps = property(lambda self: self.loop.outer_steps, doc="completed outer steps")
    inner_step = property(lambda self: self.loop.inner_step, doc="0..K-1 (0: at an anchor)")
    last_step_was_outer = property(lambda self: self.loop.last_step_was_outer)
    skipped_micro_batches = property(lambda self: self.loop.skipped(),
                                     doc="non-finite micro-batches skipped (syncs when read)")

    def _settings(self) -> Settings:
        return Settings(self.inner_steps, self.inner_norm, self.outer_grad)

    def _counters(self) -> list[Tensor]:  # the loop state as DCP carries it
        return self.loop.to_counters(self._settings(), len(self._params))

    # ----------------------------------------------------------------- groups/state
    def _init_group(self, group: dict[str, Any]) -> None:
        group.setdefault("inner_lr", self.defaults["inner_lr"])
        checks.check_group(group["inner_lr"], self.outer_grad, group["params"])
        group.setdefault("initial_lr", group["lr"])
        for p in group["params"]:
            state = self.state[p]
            dtype = state_dtype(p)
            state["nexus_anchor"] = p.detach().to(dtype, copy=True)
            if self.outer_grad == "trajectory":
                state["nexus_trajectory"] = torch.zeros_like(p, dtype=dtype)
            if self.inner_norm == "random" and self.loop.generator is None:
                self.loop.generator = torch.Generator(device=dist_ops.to_local([p])[0].device)
                self.loop.generator.manual_seed(self.seed)

    def _reindex(self) -> None:
        self._params = [p for g in self.param_groups for p in g["params"]]
        self.state.reindex(self._params)
        self._plans = {}
        self._anchors = dist_ops.to_local(self._state_list(self._params, "nexus_anchor"))
        self._local_params = dist_ops.to_local(self._params)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the outer optimizer (and create its Nexus state eagerly)."""
        if getattr(self, "_initializing", False):
            super().add_param_group(param_group)
            return
        if self.loop.inner_step != 0:
            raise RuntimeError("add_param_group: only allowed at an outer step boundary "
                               f"(inner_step is {self.loop.inner_step}, not 0)")
        params = param_group["params"]  # checked before the outer optimizer has it
        if not isinstance(params, (Tensor, set)):  # torch's add_param_group lists it too
            param_group["params"] = params = list(params)
        checks.check_group(param_group.get("inner_lr", self.defaults["inner_lr"]),
                           self.outer_grad, [params] if isinstance(params, Tensor) else params)
        self.outer.add_param_group(param_group)
        self._init_group(self.param_groups[-1])
        self._reindex()

    def _state_list(self, params: list[Tensor], key: str) -> list[Tensor]:
        return [self.state.own[p][key] for p in params]

    def _step_size(self, group: dict[str, Any]) -> float:
        """The signed inner step of a group: -gamma (descend) or +gamma (maximize)."""
        gamma = checks.group_inner_lr(group, self.param_groups)
        if self.inner_lr_follows_lr:
            initial = float(group.get("initial_lr", group["lr"]))
            gamma = gamma * float(group["lr"]) / initial if initial > 0 else 0.0
        return gamma if group.get("maximize", False) else -gamma

    def _move_step(self, group: dict[str, Any]) -> float:
        """The inner move's step; a random direction has no sign to flip (maximize)."""
        step = self._step_size(group)
        return -abs(step) if self.inner_norm == "random" else step

    # -------------------------------------------------------------- eval / train
    def eval(self) -> None:
        """Put the outer weights (the anchor) into the parameters, keeping the probe
        point; ``train()`` restores it. Idempotent; free at an anchor. HF Trainer
        calls it before evaluation (the schedule-free convention)."""
        if self.loop.eval_mode:
            return
        self.loop.eval_mode = True
        if self.loop.inner_step == 0:
            return
        with torch.no_grad():
            self.loop.probe = [p.detach().clone() for p in self._params]
            functional.restore_(self._local_params, self._anchors)

    def train(self) -> None:
        """Back to training: restore the probe point ``eval()`` stashed. Idempotent,
        and a no-op when not in eval mode (Trainer calls it every training step)."""
        if not self.loop.eval_mode:
            return
        self.loop.eval_mode = False
        if self.loop.probe is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._local_params, dist_ops.to_local(self.loop.probe))
            self.loop.probe = None

    @contextlib.contextmanager
    def outer_weights(self) -> Iterator["Nexus"]:
        """``with opt.outer_weights(): evaluate(model)`` evaluates theta_t, not the probe."""
        was_eval = self.loop.eval_mode
        self.eval()
        try:
            yield self
        finally:
            if not was_eval:
                self.train()

    # ------------------------------------------------------------------------ step
    def _plan(self) -> Plan:
        key = tuple(p.grad is not None for p in self._params)
        plan = self._plans.get(key)
        if plan is None:
            checks.check_dense_grads(self._params)
            traj = (self._state_list(self._params, "nexus_trajectory")
                    if self.outer_grad == "trajectory" else None)
            plan = self._plans[key] = Plan(self._params, self.param_groups, key, traj)
        self.loop.touched.add(key)
        return plan

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One inner move on the current gradients; every K-th call an outer step."""
        loop = self.loop
        if loop.inner_step == 0:  # plain HF Trainer / accelerate accumulation: refuse
            guards.check_host(self, self._hosts_checked)
        if loop.eval_mode:
            raise RuntimeError("Nexus.step(): in eval mode; call opt.train() before stepping")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        loop.last_step_was_outer = False
        if not any(p.grad is not None for p in self._params):
            return loss  # no gradient anywhere: change nothing
        plan = self._plan()
        first, last = loop.inner_step == 0, loop.inner_step == self.inner_steps - 1
        if first:
            checks.check_dense_grads(plan.params)
            functional.snapshot_(self._anchors, self._local_params)
            loop.begin_loop(self._local_params[0].device)
            if plan.traj_others:
                torch._foreach_zero_(plan.traj_others)
        grads = [p.grad for p in plan.params]
        norms, total = dist_ops.grad_norms(grads)
        finite_t = torch.isfinite(total)
        loop.finite += finite_t
        finite: Tensor | bool = bool(finite_t) if plan.on_cpu else finite_t
        trajectory = self.outer_grad == "trajectory"
        move = not (trajectory and last)
        random = None
        if self.inner_norm == "random" and move:
            random = dist_ops.random_direction(plan.params, loop.generator)
        functional.inner_update_(
            plan.local_params, dist_ops.to_local(grads), norms, total, finite,
            slices=[(a, b, self._move_step(g)) for a, b, g in plan.groups],
            mode=self.inner_norm, eps=self.inner_eps, move=move,
            accumulators=None if first and last else plan.traj, random=random,
            accumulate="fold" if last else ("copy" if first else "add"),
        )
        loop.inner_step += 1
        if loop.inner_step == self.inner_steps:
            self._outer_step()
        return loss

    def _outer_step(self) -> None:
        count, touched = self.loop.end_loop(self.inner_steps, len(self._params))
        skipped = self.inner_steps - count
        if skipped and not self.loop.warned_nonfinite:
            self.loop.warned_nonfinite = True
            warnings.warn(
                f"Nexus: {skipped} of {self.inner_steps} micro-batches had a non-finite "
                f"gradient in outer step {self.loop.outer_steps} and were skipped (counted in "
                "skipped_micro_batches; warned once)", RuntimeWarning, stacklevel=3)
        params = [p for p, t in zip(self._params, touched) if t]
        if count == 0 and not self._sync.local:  # all non-finite: no outer step
            functional.restore_(self._local_params, self._anchors)
            checks.check_weights_finite(self._state_list(self._params, "nexus_anchor"),
                                        self.loop.outer_steps)
            return
        for p in params:
            if p.grad is None:  # had a gradient earlier in the loop, not at the last call
                p.grad = torch.zeros_like(p)
                if self.outer_grad == "trajectory":
                    p.grad.copy_(self.state[p]["nexus_trajectory"])
        self._outer_gradient(params, touched, count)
        functional.restore_(self._local_params, self._anchors)
        if self._sync.local:  # average G over ranks: one all-reduce per bucket
            params = self._sync.average_outer_grads(self._params, params, count > 0)
            if not params:  # no rank had a finite micro-batch: no outer step anywhere
                checks.check_weights_finite(self._state_list(self._params, "nexus_anchor"),
                                            self.loop.outer_steps)
                return
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
        self.outer.step()
        self.loop.outer_steps += 1
        self.loop.last_step_was_outer = True

    def _outer_gradient(self, params: list[Tensor], touched: list[bool], count: int) -> None:
        """p.grad <- G for the parameters touched in this loop (before the restore)."""
        if self.outer_grad == "trajectory":  # p.grad holds the sum (folded by the K-th call)
            functional.trajectory_gradient_(dist_ops.to_local([p.grad for p in params]),
                                            max(count, 1))  # count 0 only in "local" mode
            return
        offset = 0
        for group in self.param_groups:
            size = len(group["params"])
            ps = [p for p, t in zip(group["params"], touched[offset:offset + size]) if t]
            offset += size
            step = self._step_size(group)
            # G = (anchor - theta_K)/(gamma n); a maximizing group moved up: flip
            scale = -1.0 / (step * count) if step != 0 and count > 0 else 0.0
            functional.displacement_gradient_(
                dist_ops.to_local([p.grad for p in ps]),
                dist_ops.to_local(self._state_list(ps, "nexus_anchor")),
                dist_ops.to_local(ps), scale)

    # ------------------------------------------------------------------ state dict
    def _pack_state_dict(self, _opt: Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
        """The first post hook of torch's own ``state_dict()``, which packs ``self.state``
        (the outer state plus the ``nexus_*`` keys DCP carries, optim/state.py): the
        per-parameter views become plain dicts."""
        sd["state"] = nexus_state.pack(sd["state"], self._counters())
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load outer and Nexus state atomically (all checked before anything changes;
        an outer optimizer that refuses its part is put back). Reads 0.1 and 0.2 too.

        Not torch's ``Optimizer.load_state_dict``: it would cast the fp32 anchors to a
        bf16 parameter's dtype and replace ``param_groups``/``state`` with new objects
        (shared with the outer optimizer, whose own ``load_state_dict`` loads its part).
        The load hooks run here as torch runs them (on a shallow copy, in order)."""
        if not isinstance(state_dict, Mapping):
            raise ValueError("state_dict: must be a dict (what Nexus.state_dict() returns), "
                             f"got {type(state_dict).__name__}")
        state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        outer_sd, mine = nexus_state.unpack(state_dict, self._params, self.param_groups,
                                            self._settings(), self.loop.generator)  # validates
        checks.load_outer_atomically(self.outer, outer_sd)
        self.param_groups = self.outer.param_groups
        self._reindex()
        nexus_state.apply(self.state.own, self._params, mine, self.loop,
                          self._local_params[0].device if self._params else None)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __repr__(self) -> str:
        return (f"Nexus(inner_steps={self.inner_steps}, inner_norm={self.inner_norm!r}, "
                f"outer_grad={self.outer_grad!r}, outer={self.outer!r})")
