"""``NexusTrainer``: transformers.Trainer with the Nexus update of ``nexus train``'s loop.

Set ``TrainingArguments`` exactly as for AdamW: ``gradient_accumulation_steps=K``
(= Nexus' ``inner_steps``), ``max_grad_norm``, ``lr_scheduler_type``, ``warmup_steps``,
``max_steps`` (all counted in optimizer steps = Nexus outer steps). What it does:

- one Nexus inner step after each of the first K-1 micro-batch backwards of a window
  (``training_step``); the Trainer's own ``optimizer.step()`` on the K-th micro-batch is
  the outer step; the scheduler steps once per outer step, as for AdamW;
- the Trainer normalises each micro-batch loss by K (or, for models that take
  ``num_items_in_batch``, by the window's label-token count); every micro-batch gradient is
  multiplied by the window length n, so Nexus' trajectory mean (1/n) sum_k g_k equals the
  gradient the Trainer accumulates for AdamW (normalised inner moves are scale invariant).
  With ``inner_lr=0`` it is therefore Trainer + AdamW with the same accumulation;
- ``TrainingArguments.max_grad_norm`` goes to Nexus (it clips G, the outer gradient); the
  Trainer's own clipping, which would act on one micro-batch's gradient, is off during
  ``train()`` (the logged ``grad_norm`` is the last micro-batch's);
- the last, shorter window of an epoch (n < K micro-batches, when the epoch length is not
  a multiple of K) is an outer step over its n micro-batches, as the Trainer does for AdamW;
- every Trainer step is an outer step, so logging, evaluation and checkpoints see the
  outer weights; ``Nexus.eval()``/``train()`` (called by the Trainer around evaluation and
  before each micro-batch) cover evaluations started anywhere else;
- resume: the Trainer saves ``optimizer.state_dict()`` (the Nexus state) and reloads it
  with ``torch.load(weights_only=True)``.

Build the optimizer in one of three ways: ``NexusTrainer(..., nexus_kwargs={...})`` (or
nothing: Nexus defaults), ``optimizer_cls_and_kwargs=nexus_optimizer_cls_and_kwargs(args,
...)``, or ``optimizers=(Nexus(..., inner_steps=K), None)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from nexus_optim.integrations.accelerate import unwrap_nexus
from nexus_optim.optim.nexus import Nexus

__all__ = ["NexusTrainer", "nexus_optimizer_cls_and_kwargs", "unwrap_nexus"]


def nexus_optimizer_cls_and_kwargs(args: TrainingArguments, **nexus_kwargs: Any
                                   ) -> tuple[type[Nexus], dict[str, Any]]:
    """``(Nexus, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``.

    From ``args``: ``lr=learning_rate``, ``inner_steps=gradient_accumulation_steps``,
    ``betas=(adam_beta1, adam_beta2)``, ``eps=adam_epsilon`` (the outer AdamW's); the
    Trainer's no-decay groups carry ``weight_decay``. ``nexus_kwargs`` (``inner_lr``,
    ``outer``, ``inner_norm``, ...) override. Use it with ``NexusTrainer``; under a plain
    Trainer it is only right with ``gradient_accumulation_steps=1`` and
    ``max_grad_norm=0`` (see ``nexus_optim.optim.guards``).
    """
    kwargs: dict[str, Any] = dict(lr=args.learning_rate,
                                  inner_steps=args.gradient_accumulation_steps)
    outer = nexus_kwargs.get("outer", torch.optim.AdamW)
    if outer in (torch.optim.AdamW, torch.optim.Adam):
        kwargs.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    kwargs.update(nexus_kwargs)
    return Nexus, kwargs


#: ``TrainingArguments.optim`` values that mean the AdamW Nexus uses as its outer optimizer
_ADAMW_OPTIMS = ("adamw_torch", "adamw_torch_fused", "adamw_hf")


def _check_arguments(args: TrainingArguments) -> None:
    """Refuse arguments NexusTrainer cannot honour (one-line ValueError naming them), before
    anything runs: ``gradient_accumulation_steps`` < 1 (K, Nexus' ``inner_steps``), and an
    ``optim`` / ``optim_args`` the Trainer would use to build another optimizer (NexusTrainer
    always builds Nexus; its outer optimizer is chosen with ``nexus_kwargs={"outer": ...}``)."""
    k = args.gradient_accumulation_steps
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"NexusTrainer: TrainingArguments(gradient_accumulation_steps={k!r}) must be "
                         "an integer >= 1 (it is K, Nexus' inner_steps: micro-batches per outer step)")
    optim = getattr(args.optim, "value", args.optim)
    if optim not in _ADAMW_OPTIMS:
        raise ValueError(f"NexusTrainer: TrainingArguments(optim={optim!r}) would be ignored: the "
                         "optimizer is Nexus, whose outer optimizer is AdamW; leave optim at its "
                         "default and pass nexus_kwargs={'outer': <torch.optim class>, ...} to "
                         "change it, or use transformers.Trainer for another optimizer")
    if getattr(args, "optim_args", None):
        raise ValueError(f"NexusTrainer: TrainingArguments(optim_args={args.optim_args!r}) would be "
                         "ignored; pass Nexus' options as nexus_kwargs={...}")


class _RestoreInnerSteps(TrainerCallback):
    """After each outer step, undo a shortened window (see ``NexusTrainer.training_step``)."""

    def __init__(self, trainer: "NexusTrainer"):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        nexus = self.trainer._nexus
        if nexus is not None and nexus.inner_steps != args.gradient_accumulation_steps:
            nexus.inner_steps = args.gradient_accumulation_steps


class NexusTrainer(Trainer):
    """``transformers.Trainer`` that runs Nexus with the arguments you would give AdamW.

    Args (besides ``Trainer``'s):
        nexus_kwargs: options of the Nexus built when neither ``optimizers`` nor
            ``optimizer_cls_and_kwargs`` is given (``inner_lr``, ``outer``,
            ``inner_norm``, ...); see ``nexus_optimizer_cls_and_kwargs``.
    """

    _nexus_managed = True  # nexus_optim.optim.guards lets this host through

    def __init__(self, *args: Any, nexus_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _check_arguments(self.args)
        self.nexus_kwargs = dict(nexus_kwargs or {})
        if self.optimizer is not None and self.nexus_kwargs:
            raise ValueError("NexusTrainer: pass nexus_kwargs or optimizers=(Nexus(...), ...), "
                             "not both")
        self._nexus: Nexus | None = None
        self._trainer_clip: float | None = None
        self.add_callback(_RestoreInnerSteps(self))

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None):
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            self.optimizer_cls_and_kwargs = nexus_optimizer_cls_and_kwargs(
                self.args, **self.nexus_kwargs)
        optimizer = super().create_optimizer(model)
        self._setup_nexus(optimizer)
        return optimizer

    def _clip_from_args(self) -> float | None:
        clip = self.args.max_grad_norm
        return float(clip) if clip is not None and clip > 0 else None

    def _setup_nexus(self, optimizer: Any) -> Nexus:
        nexus = unwrap_nexus(optimizer)
        if nexus is None:
            raise TypeError(f"NexusTrainer: the optimizer is {type(optimizer).__name__}, not a "
                            "Nexus; use transformers.Trainer for other optimizers")
        k = self.args.gradient_accumulation_steps
        if nexus.inner_steps != k:
            raise ValueError(
                f"NexusTrainer: Nexus(inner_steps={nexus.inner_steps}) but TrainingArguments("
                f"gradient_accumulation_steps={k}); they are the same K: set one to the other "
                "(nexus_optimizer_cls_and_kwargs / nexus_kwargs take it from the arguments)")
        # inside train() the arguments' clip is parked in _trainer_clip (args hold 0)
        clip = self._trainer_clip if self._trainer_clip is not None else self._clip_from_args()
        if clip is not None:
            if nexus.max_grad_norm is None:
                nexus.max_grad_norm = clip
            elif nexus.max_grad_norm != clip:
                raise ValueError(
                    f"NexusTrainer: TrainingArguments(max_grad_norm={clip}) and Nexus("
                    f"max_grad_norm={nexus.max_grad_norm}) disagree; the Trainer's value is the "
                    "clip of the outer gradient: leave Nexus' at None, or set "
                    "max_grad_norm=0 in the arguments to keep Nexus' own")
        if getattr(self.accelerator, "scaler", None) is not None:
            raise ValueError(
                "NexusTrainer: fp16 with a GradScaler is not supported (the inner steps would "
                "see scaled gradients and a skipped step would shift the windows); use bf16=True")
        world = getattr(self.args, "world_size", 1)
        sync_each = self.accelerator.gradient_state.plugin_kwargs.get("sync_each_batch", False)
        if world > 1 and getattr(nexus, "inner_sync", None) == "sync" and k > 1 and not sync_each:
            raise ValueError(
                "NexusTrainer: with inner_sync='sync' every micro-batch gradient must be "
                "all-reduced, but the Trainer skips the sync on the first K-1 micro-batches; "
                "pass TrainingArguments(accelerator_config={'gradient_accumulation_kwargs': "
                "{'sync_each_batch': True}}) or Nexus(inner_sync='local')")
        self._nexus = nexus
        return nexus

    # ----------------------------------------------------------------------- train
    def train(self, *args: Any, **kwargs: Any):
        """``Trainer.train`` with the Trainer's clipping handed to Nexus (it clips G)."""
        saved = self.args.max_grad_norm
        self._trainer_clip = self._clip_from_args()
        self.args.max_grad_norm = 0.0  # no per-micro-batch clipping by the Trainer
        try:
            return super().train(*args, **kwargs)
        finally:
            self.args.max_grad_norm = saved
            self._trainer_clip = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        nexus = self._nexus if self._nexus is not None else self._setup_nexus(self.optimizer)
        n = int(self.current_gradient_accumulation_steps)
        if nexus.inner_step == 0 and n != nexus.inner_steps:
            if n > nexus.inner_steps:
                raise RuntimeError(f"NexusTrainer: a window of {n} micro-batches for "
                                   f"inner_steps={nexus.inner_steps}")
            nexus.inner_steps = n  # the epoch's last, short window; restored after its step
        loss = super().training_step(model, inputs, num_items_in_batch)
        if n > 1:  # Trainer divided by n (or by the window's token count): undo for Nexus
            grads = [p.grad for g in nexus.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, float(n))
        if not self.accelerator.sync_gradients:  # not the window's last micro-batch
            nexus.step()  # inner step; the Trainer's own step() is the K-th (outer) one
            nexus.zero_grad(set_to_none=True)
            if nexus.last_step_was_outer:  # cannot happen unless the windows are off
                warnings.warn("NexusTrainer: Nexus took an outer step inside a Trainer window",
                              RuntimeWarning, stacklevel=2)
        return loss
