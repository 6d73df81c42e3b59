"""The one training loop, for every optimizer.

Per outer step: K micro-batches from the mixture sampler (identical for every
optimizer at a given seed), one forward/backward each, then

    adamw                 grads accumulate (loss/K); clip; AdamW step
    nexus / fish / random Nexus.step() after every backward (the K-th one is the
                          outer step; clipping happens inside, on G)

then the LR schedule steps. Tokens per outer step are the same for all optimizers:
K * micro_batch_size * seq_len. Evaluation and checkpoints happen at outer steps,
where the model holds the outer weights.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import yaml

from nexus_optim.data.prepare import prepare_data
from nexus_optim.data.sampler import MixtureSampler
from nexus_optim.eval.losses import autocast_for, evaluate_sources
from nexus_optim.models.presets import build_model, count_params
from nexus_optim.optim import Nexus
from nexus_optim.train.checkpoint import (latest_checkpoint, load_checkpoint, rng_state,
                                          save_checkpoint, set_rng_state)
from nexus_optim.train.config import Config, save_config
from nexus_optim.train.logging import MetricsLogger
from nexus_optim.train.optimizers import build_optimizer
from nexus_optim.train.run_info import run_meta
from nexus_optim.train.schedules import build_scheduler


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def build_sampler(cfg: Config, prepared, rank: int = 0, world: int = 1) -> MixtureSampler:
    """The training mixture; rank r of w draws from seed stream (seed, r)."""
    train = {s: prepared.load(s, "train") for s, r in prepared.roles.items()
             if r == "train" and prepared.weights[s] > 0}
    seed = cfg.train.seed if world == 1 else cfg.train.seed * 1000 + rank
    return MixtureSampler(train, {s: prepared.weights[s] for s in train}, cfg.model.seq_len,
                          cfg.train.micro_batch_size, mode=cfg.train.sampling,
                          group_size=cfg.optim.inner_steps,
                          shuffle_sources=cfg.train.shuffle_sources, seed=seed)


class Trainer:
    """Holds the run's objects; ``run()`` trains to ``train.steps`` outer steps."""

    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg = cfg
        t = cfg.train
        self.out = Path(t.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(t.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        self.prepared = prepare_data(cfg.data, progress=t.progress)
        self.tokenizer = self.prepared.tokenizer()
        init_seed = t.seed if cfg.model.init_seed is None else cfg.model.init_seed
        self.model = build_model(cfg.model.preset, vocab_size=len(self.tokenizer),
                                 max_seq_len=cfg.model.seq_len, seed=init_seed,
                                 **cfg.model.overrides).to(self.device)
        self.n_params = count_params(self.model)
        self.optimizer = build_optimizer(cfg.optim, self.model, seed=t.seed)
        self.scheduler = build_scheduler(self.optimizer, t.steps, cfg.schedule.kind,
                                         cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio,
                                         cfg.schedule.decay_fraction)
        self.sampler = build_sampler(cfg, self.prepared)
        self.forward = torch.compile(self.model) if cfg.model.compile else self.model
        self.step, self.tokens = 0, 0
        resume_from = latest_checkpoint(self.out / "checkpoints") if resume else None
        if resume_from is not None:
            self._restore(resume_from)
        self.logger = MetricsLogger(self.out, resume_step=self.step if resume else None)
        save_config(cfg, self.out / "config.yaml")
        self.meta = run_meta(t.seed, {"n_params": self.n_params, "device": str(self.device),
                                      "resumed_from": str(resume_from) if resume_from else None,
                                      "tokens_per_step": cfg.tokens_per_step()})
        (self.out / "meta.yaml").write_text(yaml.safe_dump(self.meta, sort_keys=False))

    # --------------------------------------------------------------------------- steps
    def _micro_batch_loss(self) -> tuple[torch.Tensor, str]:
        mb = self.sampler.next()
        ids = mb.input_ids.to(self.device, non_blocking=True)
        with autocast_for(self.device, self.cfg.train.bf16):
            loss = self.forward(input_ids=ids, labels=ids).loss
        return loss, mb.source

    def train_step(self) -> dict:
        """One outer step: K micro-batches; returns the mean micro-batch loss."""
        K = self.cfg.optim.inner_steps
        opt = self.optimizer
        losses = []
        for _ in range(K):
            loss, _source = self._micro_batch_loss()
            if isinstance(opt, Nexus):
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                (loss / K).backward()
            losses.append(loss.detach())
        if isinstance(opt, Nexus):
            assert opt.last_step_was_outer or opt.skipped_micro_batches > 0
        else:
            if self.cfg.optim.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.tokens += self.cfg.tokens_per_step()
        return {"train/loss": float(torch.stack(losses).float().mean())}

    def evaluate(self) -> dict:
        t = self.cfg.train
        out = evaluate_sources(self.model, self.prepared, self.cfg.model.seq_len,
                               t.eval_batch_size, t.eval_tokens, self.device, t.bf16)
        if t.grad_sim_batches > 0:  # geom/cos/<a>/<b>, geom/grad_sim (eval/geometry_gradsim.py)
            from nexus_optim.eval.geometry_gradsim import grad_sim_metrics
            out.update(grad_sim_metrics(self.model, self.prepared, self.cfg))
        return out

    # ---------------------------------------------------------------------- checkpoint
    def save(self) -> Path:
        trainer_state = {"step": self.step, "tokens": self.tokens, "rng": rng_state(),
                         "sampler": self.sampler.state_dict()}
        opt_state = {"optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict()}
        return save_checkpoint(self.out / "checkpoints", self.step, self.model, opt_state,
                               trainer_state, yaml.safe_dump(self.cfg.to_dict(), sort_keys=False),
                               {**self.meta, "step": self.step, "tokens": self.tokens},
                               keep=self.cfg.train.keep_checkpoints)

    def _restore(self, path: Path) -> None:
        opt_state, trainer_state = load_checkpoint(path, self.model)
        self.optimizer.load_state_dict(opt_state["optimizer"])
        self.scheduler.load_state_dict(opt_state["scheduler"])
        self.sampler.load_state_dict(trainer_state["sampler"])
        set_rng_state(trainer_state["rng"])
        self.step, self.tokens = trainer_state["step"], trainer_state["tokens"]

    def export_hf(self, out_dir: str | Path | None = None) -> Path:
        """``save_pretrained`` + tokenizer (EOS-prefixing, as in training), loadable with
        ``AutoModelForCausalLM`` / ``AutoTokenizer`` and ``lm_eval --model hf``."""
        from nexus_optim.eval.export import export_hf

        return export_hf(self.model, self.tokenizer, out_dir or self.out / "hf",
                         max_length=self.cfg.model.seq_len,
                         meta={**self.meta, "step": self.step, "tokens": self.tokens})

    # ----------------------------------------------------------------------------- run
    def run(self, until: int | None = None) -> dict:
        """Train to ``train.steps`` (or stop early after outer step ``until``, as an
        interruption would: no final export)."""
        from tqdm.auto import tqdm

        t = self.cfg.train
        stop = t.steps if until is None else min(until, t.steps)
        bar = tqdm(total=t.steps, initial=self.step, disable=not t.progress, unit="step",
                   desc=f"{self.cfg.optim.name} seed {t.seed}", dynamic_ncols=True)
        last_eval: dict = {}
        window_start, window_tokens = time.perf_counter(), 0
        while self.step < stop:
            metrics = self.train_step()
            window_tokens += self.cfg.tokens_per_step()
            if not math.isfinite(metrics["train/loss"]):
                raise FloatingPointError(f"training loss is {metrics['train/loss']} at step {self.step}")
            done = self.step == t.steps
            if self.step % t.log_every == 0 or done:
                elapsed = time.perf_counter() - window_start
                metrics.update({"lr": self.optimizer.param_groups[0]["lr"], "tokens": self.tokens,
                                "tokens_per_s": window_tokens / max(elapsed, 1e-9)})
                if isinstance(self.optimizer, Nexus):
                    metrics["skipped_micro_batches"] = self.optimizer.skipped_micro_batches
                self.logger.log(self.step, metrics)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}",
                                tok_s=f"{metrics['tokens_per_s']:.0f}")
                window_start, window_tokens = time.perf_counter(), 0
            if (t.eval_every and self.step % t.eval_every == 0) or done:
                last_eval = self.evaluate()
                self.logger.log(self.step, {**last_eval, "tokens": self.tokens})
                window_start = time.perf_counter()  # eval time is not training time
            if (t.ckpt_every and self.step % t.ckpt_every == 0) or done:
                self.save()
                window_start = time.perf_counter()
            bar.update(1)
        bar.close()
        self.logger.close()
        if t.export_hf and self.step == t.steps:
            self.export_hf()
        return {"step": self.step, "tokens": self.tokens, **last_eval}


def train(cfg: Config, resume: bool = False) -> dict:
    """Train (or resume from the latest checkpoint in ``train.out_dir``)."""
    return Trainer(cfg, resume=resume).run()
