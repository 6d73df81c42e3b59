"""The loop state of one ``Nexus``: one named type, and its per-parameter form.

Everything that changes from one ``step()`` to the next, besides the tensors (anchors,
trajectory sums, the outer optimizer's state), is one ``LoopState``, ``Nexus.loop``:
where the inner loop is, how many outer steps and skipped micro-batches there were,
which parameters had a gradient in this loop, the random generator, the probe point
held while in eval mode.

``torch.distributed.checkpoint`` carries only per-parameter state, so in a state dict
the loop state is one int64 counter vector per parameter (``to_counters``; read back by
``check_counters`` + ``load_counters``):

    [version, K, inner_norm, outer_grad, outer steps, inner step, finite micro-batches
     in the loop, skipped in completed loops, reserved, last step was outer, touched]

The layout is the 0.2 one (``VERSION`` 2); slot ``RESERVED`` held the number of
``step()`` calls in 0.2, which nothing read: written as 0, ignored when read.
The generator state (random mode) is ``state[0]["nexus_rng"]``; the probe, when saved in
eval mode mid loop, ``state[i]["nexus_probe"]`` (docs in ``optim/state.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from nexus_optim.optim.functional import INNER_NORMS, OUTER_GRADS

VERSION = 2
(V, K, NORM, GRAD, OUTER, INNER, FINITE, SKIPPED, RESERVED, LAST, TOUCHED) = range(11)


@dataclass(frozen=True)
class Settings:
    """The settings a saved loop state must agree with."""

    inner_steps: int
    inner_norm: str
    outer_grad: str


@dataclass
class LoopState:
    """Where one Nexus is in its loop (host values, except ``finite``)."""

    outer_steps: int = 0
    inner_step: int = 0  # 0..K-1; 0 = at an anchor
    last_step_was_outer: bool = False
    skipped_before: int = 0  # micro-batches skipped in completed loops
    finite: Tensor | None = None  # finite micro-batches in this loop (device; None at an anchor)
    touched: set[tuple[bool, ...]] = field(default_factory=set)  # gradient patterns this loop
    generator: torch.Generator | None = None  # random directions (inner_norm="random")
    probe: list[Tensor] | None = None  # the inner point, stashed while in eval mode
    eval_mode: bool = False
    warned_nonfinite: bool = False  # the skip warning is given once

    # ------------------------------------------------------------------ the loop
    def begin_loop(self, device: torch.device) -> None:
        """At the first micro-batch of an outer step."""
        self.finite = torch.zeros((), dtype=torch.int64, device=device)

    def end_loop(self, inner_steps: int, n_params: int) -> tuple[int, list[bool]]:
        """At the K-th micro-batch: (finite micro-batches, which parameters had a
        gradient in the loop); the one host read of an outer step. Back at an anchor."""
        count = int(self.finite)
        touched = self.touched_params(n_params)
        self.inner_step, self.touched, self.finite = 0, set(), None
        self.skipped_before += inner_steps - count
        return count, touched

    def touched_params(self, n_params: int) -> list[bool]:
        return [any(key[i] for key in self.touched) for i in range(n_params)]

    def skipped(self) -> int:
        """Micro-batches skipped for a non-finite gradient so far (reads ``finite``)."""
        in_loop = 0
        if self.finite is not None and self.inner_step > 0:
            in_loop = self.inner_step - int(self.finite)
        return self.skipped_before + in_loop

    # ------------------------------------------------------- per-parameter form
    def to_counters(self, settings: Settings, n_params: int) -> list[Tensor]:
        """One int64 counter vector per parameter (one host read of ``finite``)."""
        finite = 0 if self.finite is None else int(self.finite)
        base = torch.tensor(
            [VERSION, settings.inner_steps, INNER_NORMS.index(settings.inner_norm),
             OUTER_GRADS.index(settings.outer_grad), self.outer_steps, self.inner_step,
             finite, self.skipped_before, 0, int(self.last_step_was_outer), 0],
            dtype=torch.int64)
        out = []
        for touched in self.touched_params(n_params):
            c = base.clone()
            c[TOUCHED] = int(touched)
            out.append(c)
        return out

    @staticmethod
    def check_counters(first: Tensor, settings: Settings) -> None:
        """Raise ValueError (one line, naming the setting) unless the counters of
        parameter 0 were written by this version with these settings."""
        c = first.tolist()
        if len(c) != TOUCHED + 1 or c[V] != VERSION:
            raise ValueError(f"state_dict: Nexus state version {c[V] if c else None}, "
                             f"expected {VERSION}")
        for name, have, pos, names in (
                ("inner_steps", settings.inner_steps, K, None),
                ("inner_norm", settings.inner_norm, NORM, INNER_NORMS),
                ("outer_grad", settings.outer_grad, GRAD, OUTER_GRADS)):
            saved = c[pos] if names is None else (
                names[c[pos]] if 0 <= c[pos] < len(names) else c[pos])
            if saved != have:
                raise ValueError(f"{name}: checkpoint has {saved!r}, optimizer has {have!r}")

    def load_counters(self, counters: list[Tensor], device: torch.device,
                      rng_state: Tensor | None) -> None:
        """Back from ``to_counters`` (checked by ``check_counters``); out of eval mode."""
        c = counters[0].tolist()
        self.outer_steps, self.inner_step = c[OUTER], c[INNER]
        self.skipped_before = c[SKIPPED]
        self.last_step_was_outer = bool(c[LAST])
        self.touched = ({tuple(bool(x[TOUCHED]) for x in counters)}
                        if self.inner_step > 0 else set())
        self.finite = (torch.tensor(c[FINITE], dtype=torch.int64, device=device)
                       if self.inner_step > 0 else None)
        if self.generator is not None and rng_state is not None:
            self.generator.set_state(rng_state.to("cpu", torch.uint8))
        self.eval_mode, self.probe = False, None


def counters_from_v0_1(nexus: dict, settings: Settings, n_params: int) -> list[Tensor]:
    """The counters of a 0.1 state dict's top-level ``"nexus"`` entry."""
    skipped_in_loop = nexus["inner_step"] - nexus["finite_in_loop"]
    loop = LoopState(outer_steps=nexus["outer_steps"], inner_step=nexus["inner_step"],
                     last_step_was_outer=bool(nexus["last_step_was_outer"]),
                     skipped_before=nexus["skipped_micro_batches"] - skipped_in_loop,
                     finite=torch.tensor(nexus["finite_in_loop"]))
    touched = set(nexus["touched"])
    loop.touched = {tuple(i in touched for i in range(n_params))}
    return loop.to_counters(settings, n_params)
