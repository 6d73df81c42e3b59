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
To first order in gamma, averaged over the order of two micro-batches (sum
convention, i.e. K*G), the part of the outer gradient beyond the conventional sum
g_1 + g_2 is (n_i = g_i/||g_i||, H_i Hessians, J_i the Jacobians of n_i):

    displacement:  -(gamma/2) (J_2 n_1 + J_1 n_2)
    trajectory:    -(gamma/2) (H_2 n_1 + H_1 n_2)
                 = -(gamma/2) [ s_2 J_2^T n_1 + s_1 J_1^T n_2 + c grad(s_1 + s_2) ]

with s_i = ||g_i|| and c = cos(g_1, g_2): the displacement term equals the paper's
-(gamma/2) grad CosSim only when each H_i commutes with its projector; the
trajectory term adds a look-ahead that raises gradient norms where the sources agree.
docs/algorithm.md derives both. With ``inner_lr=0`` and "trajectory", Nexus is
exactly the outer optimizer with K-step gradient accumulation.

Which weights are live: after a ``step()`` that completed an outer step
(``last_step_was_outer``) the model holds the outer weights theta_{t+1}; between
outer steps it holds an inner probe point. ``eval()`` / ``train()`` (or
``with opt.outer_weights():``) swap the outer weights in and back out.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor
from torch.optim import Optimizer

from nexus_optim.optim import distributed as dist_ops
from nexus_optim.optim import functional, guards
from nexus_optim.optim import state as nexus_state


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"{name}: {value!r} is not one of " + ", ".join(repr(a) for a in allowed)
        )


def _check_nonneg(name: str, value: Any) -> None:
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")


def _state_dtype(p: Tensor) -> torch.dtype:
    """Anchor/accumulator dtype: fp32 for low-precision parameters, else the param's own."""
    return p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32


class _Plan:
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
        outer_steps: number of completed outer steps.
        inner_step: position in the current inner loop, 0..K-1 (0 = at an anchor).
        last_step_was_outer: whether the last ``step()`` completed an outer step.
        skipped_micro_batches: micro-batches skipped for a non-finite gradient (read
            lazily: the skip is decided on the device; reading it syncs).

    Host reads: none per micro-batch on accelerators (the non-finite skip is a
    device-side mask); one scalar per outer step (the number of finite
    micro-batches, which decides whether there is an outer step at all, as
    ``torch.amp.GradScaler.step`` does). On CPU tensors a host read costs nothing
    and the skip is a Python branch.
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
        _check_nonneg("lr", lr)
        _check_nonneg("inner_lr", inner_lr)
        if not isinstance(inner_steps, int) or isinstance(inner_steps, bool) or inner_steps < 1:
            raise ValueError(f"inner_steps: must be an integer >= 1, got {inner_steps!r}")
        _check_choice("inner_norm", inner_norm, functional.INNER_NORMS)
        _check_choice("outer_grad", outer_grad, functional.OUTER_GRADS)
        if max_grad_norm is not None and not (
            isinstance(max_grad_norm, (int, float)) and not isinstance(max_grad_norm, bool)
            and math.isfinite(max_grad_norm) and max_grad_norm > 0
        ):
            raise ValueError(
                f"max_grad_norm: must be None or a finite number > 0, got {max_grad_norm!r}")
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
        self._skipped_before = 0  # skipped in completed outer steps (host)
        self._finite_count: Tensor | None = None  # finite micro-batches in this loop (device)
        self._warned_nonfinite = False
        self._calls = 0
        self._touched: set[tuple[bool, ...]] = set()  # grad patterns seen in this loop
        self._generator: torch.Generator | None = None
        self._probe: list[Tensor] | None = None  # the inner point while in eval mode
        self._eval_mode = False
        self._plans: dict[tuple[bool, ...], _Plan] = {}

        self._initializing = True
        super().__init__(self.outer.param_groups, defaults)
        self._initializing = False
        self.param_groups = self.outer.param_groups  # same list, same dicts
        self.state = nexus_state.NexusState(self)  # type: ignore[assignment]
        for group in self.param_groups:
            self._init_group(group)
        self._reindex()
        self._sync = dist_ops.OuterGradSync(inner_sync, self._params, bucket_cap_mb,
                                            process_group)
        self.inner_sync = self._sync.mode
        nexus_state.materialize_outer(self)
        self._warn_large_inner_lr()

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
            state["nexus_anchor"] = p.detach().to(dtype, copy=True)
            if self.outer_grad == "trajectory":
                state["nexus_trajectory"] = torch.zeros_like(p, dtype=dtype)
            if self.inner_norm == "random" and self._generator is None:
                self._generator = torch.Generator(device=dist_ops.to_local([p])[0].device)
                self._generator.manual_seed(self.seed)

    def _reindex(self) -> None:
        self._params = [p for g in self.param_groups for p in g["params"]]
        self._index = {id(p): i for i, p in enumerate(self._params)}
        self._plans = {}
        self._anchors = dist_ops.to_local(self._state_list(self._params, "nexus_anchor"))
        self._local_params = dist_ops.to_local(self._params)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the outer optimizer (and create its Nexus state eagerly)."""
        if getattr(self, "_initializing", False):
            super().add_param_group(param_group)
            return
        if self.inner_step != 0:
            raise RuntimeError("add_param_group: only allowed at an outer step boundary "
                               f"(inner_step is {self.inner_step}, not 0)")
        self.outer.add_param_group(param_group)
        self._init_group(self.param_groups[-1])
        self._reindex()

    def _state_list(self, params: list[Tensor], key: str) -> list[Tensor]:
        return [self.state[p][key] for p in params]

    def _step_size(self, group: dict[str, Any]) -> float:
        """The signed inner step of a group: -gamma (descend) or +gamma (maximize)."""
        gamma = float(group["inner_lr"])
        if self.inner_lr_follows_lr:
            initial = float(group.get("initial_lr", group["lr"]))
            gamma = gamma * float(group["lr"]) / initial if initial > 0 else 0.0
        return gamma if group.get("maximize", False) else -gamma

    def _move_step(self, group: dict[str, Any]) -> float:
        """The step of the inner move: a random direction has no sign to flip, so
        maximizing f takes the same random moves as minimizing -f."""
        step = self._step_size(group)
        return -abs(step) if self.inner_norm == "random" else step

    def _warn_large_inner_lr(self) -> None:
        """Warn (once, at construction) when one inner move would be longer than the
        weights themselves: such a gamma leaves the basin (inner losses explode)."""
        if self.inner_norm == "none" or not self._params:
            return  # the "none" move scales with ||g||: unknown before the first step
        norm = float(dist_ops.grad_norms([p.detach() for p in self._params])[1])
        tensors = len(self._params)
        for group in self.param_groups:
            length = float(group["inner_lr"]) * (
                math.sqrt(tensors) if self.inner_norm == "per_tensor" else 1.0)
            if norm > 0 and length > norm:
                warnings.warn(
                    f"Nexus: inner_lr={group['inner_lr']} moves {length:.3g} per inner step, "
                    f"more than the norm of all weights ({norm:.3g}); inner points will "
                    "leave the basin (typical inner_lr: 0.01-1)", RuntimeWarning, stacklevel=3)
                return

    @property
    def skipped_micro_batches(self) -> int:
        """Micro-batches skipped for a non-finite gradient (syncs when read)."""
        in_loop = 0
        if self._finite_count is not None and self.inner_step > 0:
            in_loop = self.inner_step - int(self._finite_count)
        return self._skipped_before + in_loop

    # -------------------------------------------------------------- eval / train
    def eval(self) -> None:
        """Put the outer weights (the anchor) into the parameters, keeping the probe
        point; ``train()`` restores it. Idempotent; free at an anchor. HF Trainer
        calls it before evaluation (the schedule-free convention)."""
        if self._eval_mode:
            return
        self._eval_mode = True
        if self.inner_step == 0:
            return
        with torch.no_grad():
            self._probe = [p.detach().clone() for p in self._params]
            functional.restore_(self._local_params, self._anchors)

    def train(self) -> None:
        """Back to training: restore the probe point ``eval()`` stashed. Idempotent,
        and a no-op when not in eval mode (Trainer calls it every training step)."""
        if not self._eval_mode:
            return
        self._eval_mode = False
        if self._probe is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._local_params, dist_ops.to_local(self._probe))
            self._probe = None

    @contextlib.contextmanager
    def outer_weights(self) -> Iterator["Nexus"]:
        """``with opt.outer_weights(): evaluate(model)`` evaluates theta_t, not the probe."""
        was_eval = self._eval_mode
        self.eval()
        try:
            yield self
        finally:
            if not was_eval:
                self.train()

    # ------------------------------------------------------------------------ step
    def _plan(self) -> _Plan:
        key = tuple(p.grad is not None for p in self._params)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(self, key)
        self._touched.add(key)
        return plan

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One inner move on the current gradients; every K-th call an outer step."""
        guards.check_host(self)  # plain HF Trainer / accelerate accumulation: refuse
        if self._eval_mode:
            raise RuntimeError("Nexus.step(): the optimizer is in eval mode (outer weights "
                               "loaded); call opt.train() before stepping")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_step_was_outer = False
        if not any(p.grad is not None for p in self._params):
            return loss  # no gradient anywhere: change nothing
        plan = self._plan()
        self._calls += 1
        first, last = self.inner_step == 0, self.inner_step == self.inner_steps - 1
        if first:
            functional.snapshot_(self._anchors, self._local_params)
            self._finite_count = torch.zeros((), dtype=torch.int64,
                                             device=self._local_params[0].device)
            if plan.traj_others:
                torch._foreach_zero_(plan.traj_others)
        grads = [p.grad for p in plan.params]
        norms, total = dist_ops.grad_norms(grads)
        finite_t = torch.isfinite(total)
        self._finite_count += finite_t
        finite: Tensor | bool = bool(finite_t) if plan.on_cpu else finite_t
        trajectory = self.outer_grad == "trajectory"
        move = not (trajectory and last)
        random = None
        if self.inner_norm == "random" and move:
            random = dist_ops.random_direction(plan.params, self._generator)
        functional.inner_update_(
            plan.local_params, dist_ops.to_local(grads), norms, total, finite,
            slices=[(a, b, self._move_step(g)) for a, b, g in plan.groups],
            mode=self.inner_norm, eps=self.inner_eps, move=move,
            accumulators=None if first and last else plan.traj, random=random,
            accumulate="fold" if last else ("copy" if first else "add"),
        )
        self.inner_step += 1
        if self.inner_step == self.inner_steps:
            self._outer_step(plan)
        return loss

    def _outer_step(self, last_plan: _Plan) -> None:
        count = int(self._finite_count)  # the one host read per outer step
        touched = [any(key[i] for key in self._touched) for i in range(len(self._params))]
        self.inner_step = 0
        self._touched = set()
        self._finite_count = None
        skipped = self.inner_steps - count
        self._skipped_before += skipped
        if skipped and not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                f"Nexus: {skipped} of {self.inner_steps} micro-batches had a non-finite "
                f"gradient in outer step {self.outer_steps} and were skipped (counted in "
                "skipped_micro_batches; warned once)", RuntimeWarning, stacklevel=3)
        params = [p for p, t in zip(self._params, touched) if t]
        if count == 0 and not self._sync.local:  # all non-finite: no outer step
            functional.restore_(self._local_params, self._anchors)
            return
        in_last = {id(p) for p in last_plan.params}
        for p in params:
            if p.grad is None:  # had a gradient earlier in the loop, not at the last call
                p.grad = torch.zeros_like(p)
                if self.outer_grad == "trajectory":
                    p.grad.copy_(self.state[p]["nexus_trajectory"])
            elif id(p) not in in_last:
                raise RuntimeError("Nexus: a gradient appeared between step() calls")
        grads = dist_ops.to_local([p.grad for p in params])
        if self.outer_grad == "trajectory":
            functional.trajectory_gradient_(grads, max(count, 1))  # 0 only in "local" mode
        else:
            for group in self.param_groups:
                ps = [p for p in group["params"] if touched[self._index[id(p)]]]
                step = self._step_size(group)
                # G = (anchor - theta_K)/(gamma n); a maximizing group moved up: flip
                scale = -1.0 / (step * count) if step != 0 and count > 0 else 0.0
                functional.displacement_gradient_(
                    dist_ops.to_local([p.grad for p in ps]),
                    dist_ops.to_local(self._state_list(ps, "nexus_anchor")),
                    dist_ops.to_local(ps), scale)
        functional.restore_(self._local_params, self._anchors)
        if self._sync.local:  # average G over ranks: one all-reduce per bucket
            params = self._sync.average_outer_grads(self._params, params, count > 0)
            if not params:  # no rank had a finite micro-batch: no outer step anywhere
                return
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
        self.outer.step()
        self.outer_steps += 1
        self.last_step_was_outer = True

    # ------------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The outer optimizer's state dict with the Nexus state inside ``state``.

        ``state[i]`` (i-th parameter in param-group order) gets ``nexus_anchor``,
        ``nexus_trajectory`` (trajectory mode), ``nexus_counters`` (int64: outer
        steps, inner step, finite micro-batches, skipped, calls, touched, last step
        was outer) and, for i = 0, ``nexus_rng``; in eval mode mid loop also
        ``nexus_probe``. So ``torch.distributed.checkpoint`` (which keeps only
        ``state`` and ``param_groups``) carries all of it.
        """
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        sd = self.outer.state_dict()
        sd["state"] = nexus_state.pack(self, sd["state"])
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load outer and Nexus state, atomically: every shape and setting is checked
        before anything changes. fp32 buffers stay fp32; groups stay shared. Loads
        the 0.1 format (a top-level ``"nexus"`` entry) too."""
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        outer_sd, mine = nexus_state.unpack(self, state_dict)  # validates; raises ValueError
        self.outer.load_state_dict(outer_sd)
        self.param_groups = self.outer.param_groups
        self._reindex()
        nexus_state.apply(self, mine)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __repr__(self) -> str:
        return (
            f"Nexus(inner_steps={self.inner_steps}, inner_norm={self.inner_norm!r}, "
            f"outer_grad={self.outer_grad!r}, outer={self.outer!r})"
        )
