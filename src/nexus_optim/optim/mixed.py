"""Muon on hidden matrices + AdamW on everything else, as ONE ``torch.optim.Optimizer``.

``torch.optim.Muon`` accepts only 2-D parameters; the standard recipe (Keller Jordan's
Muon, Moonshot's "Muon is scalable") runs it on the hidden weight matrices and AdamW on
embeddings, the LM head, norms and biases. ``MuonAdamW`` does both in one object:

- every param group carries ``"use_muon"`` (True: Muon, False: AdamW); build them with
  ``muon_param_groups(model)``;
- ``param_groups`` is one list whose dicts ARE the sub-optimizers' groups (the same
  objects), so one LR scheduler (or ``Nexus``, which shares ``param_groups`` with its
  outer optimizer) drives both;
- ``state`` is one dict shared with both sub-optimizers, so ``state_dict()`` /
  ``load_state_dict()`` are torch's own (one state dict, indices over all groups);
- it is a valid ``Nexus`` outer: ``Nexus(muon_param_groups(model), outer=MuonAdamW, ...)``
  (Nexus calls ``outer(groups, lr=lr, **outer_kwargs)``).

``lr`` is the Muon groups' default lr and, unless ``adamw_lr`` is given, the AdamW
groups' too. With ``adjust_lr_fn="match_rms_adamw"`` (Moonshot) one lr and weight decay
tuned for AdamW fit both; with the default ("original", Keller Jordan) Muon wants a
larger lr (~0.02) than AdamW (``adamw_lr`` ~3e-4). A group's own ``lr`` always wins.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["MuonAdamW", "muon_param_groups"]

_MUON_KEYS = ("momentum", "nesterov", "ns_coefficients", "ns_steps", "adjust_lr_fn")


class MuonAdamW(Optimizer):
    """Muon for groups with ``use_muon=True``, AdamW for groups with ``use_muon=False``.

    Args:
        params: parameter groups, each with a bool ``"use_muon"`` (``muon_param_groups``).
        lr: default lr of every group (the Muon groups' lr; AdamW's unless ``adamw_lr``).
        weight_decay: default decoupled weight decay of every group.
        adamw_lr: default lr of the AdamW groups (None: ``lr``).
        betas, eps, amsgrad: AdamW's.
        momentum, nesterov, ns_coefficients, ns_steps, adjust_lr_fn, muon_eps: Muon's
            (``muon_eps`` is Muon's ``eps``).
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        *,
        adamw_lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        amsgrad: bool = False,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] | None = None,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        muon_eps: float = 1e-7,
    ) -> None:
        groups = list(params)
        if not groups or not all(isinstance(g, dict) for g in groups):
            raise ValueError(
                "MuonAdamW: params must be parameter groups with a 'use_muon' key; build them "
                "with nexus_optim.optim.mixed.muon_param_groups(model)"
            )
        self._adamw_kwargs = dict(lr=lr if adamw_lr is None else adamw_lr, betas=betas,
                                  eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        self._muon_kwargs = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                 nesterov=nesterov, ns_steps=ns_steps,
                                 adjust_lr_fn=adjust_lr_fn, eps=muon_eps)
        if ns_coefficients is not None:
            self._muon_kwargs["ns_coefficients"] = tuple(ns_coefficients)
        self.muon: Optimizer | None = None
        self.adamw: Optimizer | None = None
        for g in groups:
            self._check_group(g)
        muon_groups = [g for g in groups if g["use_muon"]]
        adamw_groups = [g for g in groups if not g["use_muon"]]
        # the sub-optimizers fill their defaults into these very dicts
        if muon_groups:
            self.muon = torch.optim.Muon(muon_groups, **self._muon_kwargs)
        if adamw_groups:
            self.adamw = torch.optim.AdamW(adamw_groups, **self._adamw_kwargs)
        self._initializing = True
        super().__init__(groups, dict(lr=lr, weight_decay=weight_decay))
        self._initializing = False
        self._link()

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        if not isinstance(group.get("use_muon"), bool):
            raise ValueError(
                "MuonAdamW: every parameter group needs 'use_muon': True (Muon, 2-D hidden "
                "matrices) or False (AdamW); build them with "
                "nexus_optim.optim.mixed.muon_param_groups(model)"
            )
        if group["use_muon"]:
            ps = group["params"]
            for p in [ps] if isinstance(ps, Tensor) else ps:
                if isinstance(p, Tensor) and p.ndim != 2:
                    raise ValueError(
                        f"MuonAdamW: a use_muon group holds a {p.ndim}-D parameter of shape "
                        f"{tuple(p.shape)}; Muon takes only 2-D matrices (put it in a "
                        "use_muon=False group)"
                    )

    def _link(self) -> None:
        """Point the sub-optimizers at this optimizer's state and (same-object) groups."""
        if "_initializing" not in self.__dict__:  # not constructed yet
            return
        for sub, flag in ((self.muon, True), (self.adamw, False)):
            if sub is not None:
                sub.state = self.state
                sub.param_groups = [g for g in self.param_groups if g["use_muon"] is flag]

    def __setstate__(self, state: dict[str, Any]) -> None:  # torch's load_state_dict ends here
        super().__setstate__(state)
        self._link()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_initializing", True):  # from Optimizer.__init__: already routed
            super().add_param_group(param_group)
            return
        self._check_group(param_group)
        flag = param_group["use_muon"]
        if flag and self.muon is None:
            self.muon = torch.optim.Muon([param_group], **self._muon_kwargs)
        elif not flag and self.adamw is None:
            self.adamw = torch.optim.AdamW([param_group], **self._adamw_kwargs)
        else:
            (self.muon if flag else self.adamw).add_param_group(param_group)
        super().add_param_group(param_group)  # disjointness check, then append
        self._link()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = [g.get("use_muon") for g in state_dict["param_groups"]]
        here = [g["use_muon"] for g in self.param_groups]
        if saved != here:
            raise ValueError(f"MuonAdamW.load_state_dict: checkpoint groups have use_muon={saved}, "
                             f"this optimizer has {here}")
        super().load_state_dict(state_dict)  # -> __setstate__ -> _link

    # ---------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._link()  # cheap; survives anyone reassigning state / param_groups
        for sub in (self.muon, self.adamw):
            if sub is not None:
                sub.step()
        return loss

    def __repr__(self) -> str:
        n_muon = sum(len(g["params"]) for g in self.param_groups if g["use_muon"])
        n_adamw = sum(len(g["params"]) for g in self.param_groups if not g["use_muon"])
        return f"MuonAdamW(muon: {n_muon} tensors, adamw: {n_adamw} tensors)"


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in name


def muon_param_groups(
    model: nn.Module,
    weight_decay: float = 0.1,
    no_decay_norms_and_biases: bool = True,
    adamw_lr: float | None = None,
) -> list[dict[str, Any]]:
    """The standard Muon recipe's groups for ``MuonAdamW`` (or ``Nexus(outer=MuonAdamW)``).

    - ``use_muon=True``: 2-D weight matrices of the hidden layers;
    - ``use_muon=False``: embeddings (``nn.Embedding``), the output head
      (``model.get_output_embeddings()`` or a module named ``lm_head``; tied weights count
      once), with ``weight_decay``;
    - ``use_muon=False``: norms, biases and every other non-2-D parameter, without weight
      decay if ``no_decay_norms_and_biases``.

    Empty groups are left out. ``adamw_lr`` (optional) is set as the AdamW groups' ``lr``.
    """
    special: set[int] = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding) or name.split(".")[-1] == "lm_head":
            special.update(id(p) for p in m.parameters(recurse=False))
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is not None:
        special.update(id(p) for p in head.parameters(recurse=False))
    norm_params = {id(p) for m in model.modules() if _is_norm(m)
                   for p in m.parameters(recurse=False)}

    seen: set[int] = set()
    hidden, embed_head, other = [], [], []
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in special:
            embed_head.append(p)
        elif p.ndim == 2 and id(p) not in norm_params:
            hidden.append(p)
        else:
            other.append(p)
    adam_extra = {} if adamw_lr is None else {"lr": adamw_lr}
    groups = [
        {"params": hidden, "use_muon": True, "weight_decay": weight_decay},
        {"params": embed_head, "use_muon": False, "weight_decay": weight_decay, **adam_extra},
        {"params": other, "use_muon": False,
         "weight_decay": 0.0 if no_decay_norms_and_biases else weight_decay, **adam_extra},
    ]
    return [g for g in groups if g["params"]]
