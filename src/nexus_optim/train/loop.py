"""The one training loop, for every optimizer.

Per outer step: K micro-batches from the mixture sampler (identical for every
optimizer at a given seed), one forward/backward each, then

    adamw                 grads accumulate (loss/K); clip; AdamW step
    nexus / fish / random Nexus.step() after every backward (the K-th one is the
                          outer step; clipping happens inside, on G)

then the LR schedule steps. Tokens per outer step are the same for all optimizers:
K * micro_batch_size * seq_len (per rank). Evaluation and checkpoints happen at outer
steps, where the model holds the outer weights.

Under torchrun (WORLD_SIZE > 1; ``train/distributed.py``, docs/distributed.md): one
process group (NCCL on CUDA, gloo on CPU), the model in DDP or FSDP2 (``train.parallel``;
``train/parallel.py``, also for bf16, activation checkpointing and compile), each rank
drawing its own micro-batches, every forward/backward inside ``backward_context``: AdamW
"accumulate" (no gradient sync except the K-th), Nexus ``train.inner_sync`` "sync" (every
backward reduces) or "local" (DDP ``no_sync`` always; Nexus averages G). Rank 0 alone
logs, checkpoints and exports (FSDP2: all ranks gather with it, and all evaluate); tokens
count all ranks; the checkpoint holds every rank's sampler and RNG state.

The run directory (``train/rundir.py``, docs/reliability.md): rank 0 locks it for the
run's lifetime and decides how the run starts (new / overwrite / resume /
resume-or-start); a resumed run must keep its optimizer, model, data (the checksums of
its prepared shards and tokenizer) and tokens per step. Every top-level entry the run
creates is recorded in its manifest first (``rundir.record_created``).

Stops (a signal, a full disk): ``train/stops.py``; the stopped run saves a checkpoint
where it can and raises `TrainingStopped`.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import yaml

from nexus_optim.data.prepare import prepare_data
from nexus_optim.eval.losses import evaluate_sources
from nexus_optim.models.export import export_hf
from nexus_optim.models.presets import build_model, count_params
from nexus_optim.optim.distributed import backward_context
from nexus_optim.runtime import autocast_for, is_disk_full, one_line, pick_device, write_text
from nexus_optim.train.checkpoint import (CheckpointError, load_checkpoint, rng_state,
                                          save_checkpoint, set_rng_state)
from nexus_optim.train.config import Config, save_config, validate
from nexus_optim.train.distributed import setup_distributed
from nexus_optim.train.logging import MetricsLogger
from nexus_optim.train.optimizers import build_optimizer, gamma_record, step_protocol
from nexus_optim.train.parallel import place_model
from nexus_optim.train.run_info import run_meta
from nexus_optim.train.run_data import build_sampler, check_resume_data, recorded_prepared
from nexus_optim.train.rundir import open_run_dir, record_created, record_progress, start_mode
from nexus_optim.train.schedules import build_scheduler
from nexus_optim.train.step import at_outer_weights, data_parallel_modes, outer_step, step_counters
from nexus_optim.train.stops import StopSignals, TrainingStopped, disk_full, stopped_by_signal


class Trainer:
    """Holds the run's objects; ``run()`` trains to ``train.steps`` outer steps.

    ``resume``: False (a new run: ``train.out_dir`` must not hold one), True (continue
    from the newest complete checkpoint; none is an error) or ``"or-start"`` (continue if
    there is a checkpoint, else start). ``overwrite``: delete the run in ``out_dir`` first.
    """

    def __init__(self, cfg: Config, resume: bool | str = False, overwrite: bool = False,
                 callbacks: tuple[Callable[["Trainer"], None], ...] = ()):
        validate(cfg)  # a Config built or changed in Python: every bound, before anything is written
        self.cfg = cfg
        # called with the trainer after every outer step (its eval and checkpoint included)
        self.callbacks = list(callbacks)
        t = cfg.train
        self.out = Path(t.out_dir)
        mode = start_mode(resume, overwrite)
        self.dist, self.device = setup_distributed(pick_device(t.device))
        main = self.dist.is_main
        # rank 0 locks and checks the run directory; every rank gets its verdict
        self.lock, verdict = None, None
        if main:
            try:
                self.lock, resume_from = open_run_dir(self.out, cfg, mode)
                verdict = ("ok", str(resume_from) if resume_from else None)
            except ValueError as e:
                verdict = ("error", str(e))
        verdict = self.dist.broadcast_object(verdict)
        if verdict[0] == "error":
            raise ValueError(verdict[1])
        resume_from = Path(verdict[1]) if verdict[1] else None
        try:
            self._setup(resume_from)
        except BaseException as e:
            self.release()  # e.g. a checkpoint refused by _restore: the directory is free again
            if isinstance(e, Exception) and is_disk_full(e):
                raise disk_full(e, self.out) from None
            raise

    def _setup(self, resume_from: Path | None) -> None:
        cfg, t = self.cfg, self.cfg.train
        rank, world, main = self.dist.rank, self.dist.world, self.dist.is_main
        self.protocol = step_protocol(cfg.optim.name)
        # backward_context mode ("none" | "accumulate" | "sync" | "local") and Nexus' inner_sync
        self.sync_mode, inner_sync = data_parallel_modes(self.protocol, world, t.inner_sync)
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        self.prepared = self.dist.main_first(
            lambda: prepare_data(cfg.data, progress=t.progress and main))
        self.prepared.check_seq_len(cfg.model.seq_len)  # a too-short split fails now, not at eval
        if resume_from is not None and main:
            check_resume_data(resume_from, self.prepared)  # before anything is written
        self.tokenizer = self.prepared.tokenizer()
        init_seed = t.seed if cfg.model.init_seed is None else cfg.model.init_seed
        self.model = build_model(cfg.model.preset, vocab_size=len(self.tokenizer),
                                 max_seq_len=cfg.model.seq_len, seed=init_seed,
                                 **cfg.model.overrides).to(self.device)
        self.n_params = count_params(self.model)
        saved = None
        if resume_from is not None:  # the weights into the plain module, before any wrapping
            saved = load_checkpoint(resume_from, self.model, verify=False)
        self.placement = place_model(self.model, self.device, world, self.sync_mode,  # AC, DDP
                                     t.parallel, t.bf16, cfg.model.activation_checkpointing,
                                     cfg.model.compile)  # or FSDP2 (in place), compile
        # bf16: FSDP2's MixedPrecisionPolicy when sharded, else autocast (CUDA)
        self.autocast_bf16 = t.bf16 and not self.placement.sharded
        self.optimizer = build_optimizer(cfg.optim, self.model, seed=t.seed,
                                         inner_sync=inner_sync)
        self.scheduler = build_scheduler(self.optimizer, t.steps, cfg.schedule.kind,
                                         cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio,
                                         cfg.schedule.decay_fraction)
        self.sampler = build_sampler(cfg, self.prepared, rank, world, self.device.type == "cuda")
        self.step, self.tokens = 0, 0
        self._saved_step = None  # the last step checkpointed (a stop saves unless it is this one)
        if saved is not None:
            self._restore(resume_from, *saved)
        if main:
            record_created(self.out, "metrics.jsonl", "tb")
        self.logger = MetricsLogger(self.out, enabled=main,
                                    resume_step=self.step if resume_from else None)
        self.meta = {}
        # the run's own prepared data, which `nexus eval` reads (never the config's sources)
        self.prepared_json = recorded_prepared(self.prepared)
        if main:
            record_created(self.out, "config.yaml", "prepared.json", "meta.yaml")
            save_config(cfg, self.out / "config.yaml")
            write_text(self.out / "prepared.json", self.prepared_json)
            extra = ({"world_size": world, "inner_sync": self.sync_mode, "parallel": t.parallel}
                     if world > 1 else {})
            self.meta = run_meta(t.seed, {"n_params": self.n_params, "device": str(self.device),
                                          "resumed_from": str(resume_from) if resume_from else None,
                                          "tokens_per_step": self.tokens_per_step(),
                                          **gamma_record(cfg.optim, self.optimizer), **extra})
            write_text(self.out / "meta.yaml", yaml.safe_dump(self.meta, sort_keys=False))
        self.dist.barrier()

    def tokens_per_step(self) -> int:
        """Tokens per outer step over all ranks."""
        return self.cfg.tokens_per_step() * self.dist.world

    # --------------------------------------------------------------------------- steps
    def _micro_batch_loss(self, _i: int = 0) -> torch.Tensor:
        ids = self.sampler.next().input_ids.to(self.device, non_blocking=True)
        with autocast_for(self.device, self.autocast_bf16):  # no KV cache: one forward
            return self.placement.forward(input_ids=ids, labels=ids, use_cache=False).loss

    def train_step(self) -> dict:
        """One outer step (``train/step.py``); returns the mean micro-batch loss."""
        K = self.cfg.optim.inner_steps
        net = self.placement.net
        # DDP decides in forward whether this backward reduces: both go in the context
        losses = outer_step(
            self.optimizer, self.protocol, K, self._micro_batch_loss,
            backward_context=lambda i: backward_context(net, self.sync_mode,
                                                        last_micro_batch=i == K - 1),
            clip_params=self.model.parameters(), max_grad_norm=self.cfg.optim.max_grad_norm)
        self.scheduler.step()
        self.step += 1
        self.tokens += self.tokens_per_step()
        return {"train/loss": float(torch.stack(losses).float().mean())}  # this rank's

    def evaluate(self) -> dict:
        """Losses (and gradient cosines) at the outer weights: ``Nexus.outer_weights()``
        swaps the anchor in if the model is mid inner loop (a no-op at an outer step)."""
        t = self.cfg.train
        with at_outer_weights(self.optimizer):
            out = evaluate_sources(self.model, self.prepared, self.cfg.model.seq_len,
                                   t.eval_batch_size, t.eval_tokens, self.device,
                                   self.autocast_bf16)
            if t.grad_sim_batches > 0:  # geom/cos/<a>/<b>, geom/grad_sim (eval/gradsim.py)
                from nexus_optim.eval.gradsim import grad_sim_metrics
                out.update(grad_sim_metrics(self.model, self.prepared, self.cfg))
        return out

    # ---------------------------------------------------------------------- checkpoint
    def save(self) -> Path | None:
        """Checkpoint at an outer step (replicas are identical there): rank 0 writes the
        model, optimizer and scheduler once, and every rank's sampler and RNG state
        (``trainer.pt["ranks"]``). Call on every rank; returns the path on rank 0."""
        mine = {"rng": rng_state(), "sampler": self.sampler.state_dict()}
        ranks = self.dist.all_gather_object(mine)
        # FSDP2: every rank gathers the shards with rank 0 (train/parallel.py)
        weights = self.placement.full_weights()
        optimizer = self.placement.full_optimizer_state(self.optimizer.state_dict())
        path = None
        if self.dist.is_main:
            trainer_state = {"step": self.step, "tokens": self.tokens, **mine,
                             "world_size": self.dist.world}
            if self.dist.enabled:
                trainer_state["ranks"] = ranks
            opt_state = {"optimizer": optimizer, "scheduler": self.scheduler.state_dict()}
            record_created(self.out, "checkpoints")
            path = save_checkpoint(self.out / "checkpoints", self.step, weights, opt_state,
                                   trainer_state,
                                   yaml.safe_dump(self.cfg.to_dict(), sort_keys=False),
                                   {**self.meta, "step": self.step, "tokens": self.tokens},
                                   keep=self.cfg.train.keep_checkpoints,
                                   extra_files={"prepared.json": self.prepared_json})
            record_progress(self.out, last_checkpoint=self.step)
        self._saved_step = self.step
        self.dist.barrier()
        return path

    def _restore(self, path: Path, opt_state: dict, trainer_state: dict) -> None:
        """The rest of a checkpoint whose weights ``_setup`` loaded (rank 0 verified its
        checksums in open_run_dir; weights_only loading either way)."""
        saved_world = trainer_state.get("world_size", 1)
        if saved_world != self.dist.world:
            raise ValueError(
                f"--resume: checkpoint {str(path)!r} was written by {saved_world} process(es), "
                f"this run has {self.dist.world}; resume with the same number of processes "
                "(torchrun --nnodes x --nproc_per_node)")
        where = path / "optimizer.pt"
        try:
            self.optimizer.load_state_dict(
                self.placement.shard_optimizer_state(opt_state["optimizer"], self.optimizer))
            self.scheduler.load_state_dict(opt_state["scheduler"])
            where = path / "trainer.pt"
            mine = trainer_state["ranks"][self.dist.rank] if self.dist.enabled else trainer_state
            self.sampler.load_state_dict(mine["sampler"])
            set_rng_state(mine["rng"])
            self.step, self.tokens = int(trainer_state["step"]), int(trainer_state["tokens"])
            self._saved_step = self.step
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            msg = one_line(e)
            raise CheckpointError(f"--resume: {str(where)!r} does not fit this run "
                                  f"({type(e).__name__}: {msg})") from None

    def export_hf(self, out_dir: str | Path | None = None) -> Path | None:
        """``save_pretrained`` + tokenizer (EOS-prefixing, as in training), loadable with
        ``AutoModelForCausalLM`` / ``AutoTokenizer`` and ``lm_eval --model hf``. Call on
        every rank (FSDP2 gathers the weights); rank 0 writes and returns the path."""
        weights = self.placement.full_weights()
        if not self.dist.is_main:
            return None
        model = self.model
        if self.placement.sharded:  # a plain model on rank 0's CPU, from the gathered weights
            m = self.cfg.model
            model = build_model(m.preset, vocab_size=len(self.tokenizer),
                                max_seq_len=m.seq_len, **m.overrides)
            model.load_state_dict(weights.state_dict())
        if out_dir is None:
            record_created(self.out, "hf")
        return export_hf(model, self.tokenizer, out_dir or self.out / "hf",
                         max_length=self.cfg.model.seq_len,
                         meta={**self.meta, "step": self.step, "tokens": self.tokens})

    # ----------------------------------------------------------------------------- run
    def run(self, until: int | None = None) -> dict:
        """Train to ``train.steps`` (or stop early after outer step ``until``, as an
        interruption would: no final export). Releases the run-directory lock at the end."""
        if self.dist.is_main and self.lock is not None and not self.lock.held:
            self.lock.acquire()  # run() again after a previous run() released it
        self._signals = StopSignals().catch(distributed=self.dist.enabled)
        try:
            return self._run(until)
        except TrainingStopped:
            raise
        except Exception as e:
            if is_disk_full(e):
                raise disk_full(e, self.out) from None
            raise
        finally:
            self._signals.restore()
            self.release()

    # --------------------------------------------------------------------------- stops
    def _stop(self, signum: int) -> TrainingStopped:
        """Save a checkpoint at this outer step (unless just saved) and say how to resume."""
        if self._saved_step != self.step:
            self.save()
        self.logger.close()
        return stopped_by_signal(signum, self.step, self.cfg.train.steps, self.out)

    def release(self) -> None:
        """Release the run-directory lock (rank 0); ``run()`` and ``close()`` do."""
        if self.lock is not None:
            self.lock.release()

    def _run(self, until: int | None) -> dict:
        from tqdm.auto import tqdm

        t = self.cfg.train
        stop = t.steps if until is None else min(until, t.steps)
        bar = tqdm(total=t.steps, initial=self.step, disable=not (t.progress and self.dist.is_main),
                   unit="step", desc=f"{self.cfg.optim.name} seed {t.seed}", dynamic_ncols=True)
        self._last_eval: dict = {}
        self._window = [time.perf_counter(), 0]  # start time, tokens since
        while self.step < stop:
            metrics = self.train_step()
            self._window[1] += self.tokens_per_step()
            if self.dist.enabled:  # the mean over ranks: every rank sees the same value
                metrics["train/loss"] = self.dist.mean(metrics["train/loss"], self.device)
            if not math.isfinite(metrics["train/loss"]):
                raise FloatingPointError(f"training loss is {metrics['train/loss']} at step {self.step}")
            self._after_step(metrics, bar)
            bar.update(1)
            for callback in self.callbacks:
                callback(self)
            stop_signal = self._signals.received  # train/stops.py
            if stop_signal is not None and self.step < t.steps:
                bar.close()
                raise self._stop(stop_signal)
        bar.close()
        self.logger.close()
        if t.export_hf and self.step == t.steps:
            self.export_hf()
            self.dist.barrier()
        if self.dist.is_main and self.step == t.steps:
            record_progress(self.out, finished=True)
        return {"step": self.step, "tokens": self.tokens, **self._last_eval}

    def _after_step(self, metrics: dict, bar) -> None:
        """Log, evaluate and checkpoint after an outer step, as the config says."""
        t = self.cfg.train
        done = self.step == t.steps
        if self.step % t.log_every == 0 or done:
            elapsed = time.perf_counter() - self._window[0]
            metrics.update({"lr": self.optimizer.param_groups[0]["lr"], "tokens": self.tokens,
                            "tokens_per_s": self._window[1] / max(elapsed, 1e-9)})
            metrics.update(step_counters(self.optimizer))
            self.logger.log(self.step, metrics)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}",
                            tok_s=f"{metrics['tokens_per_s']:.0f}")
            self._window = [time.perf_counter(), 0]
        if (t.eval_every and self.step % t.eval_every == 0) or done:
            # DDP: rank 0 on the plain module (no hook fires); FSDP2: every rank (the
            # forward all-gathers), the same numbers everywhere, rank 0 logs them
            if self.dist.is_main or self.placement.sharded:
                self._last_eval = self.evaluate()
                self.logger.log(self.step, {**self._last_eval, "tokens": self.tokens})
            self.dist.barrier()
            self._window[0] = time.perf_counter()  # eval time is not training time
        if (t.ckpt_every and self.step % t.ckpt_every == 0) or done:
            if self.dist.enabled:  # rank 0 saves its copy: check that all are the same
                self._check_replicas()
            self.save()
            self._window[0] = time.perf_counter()

    def _check_replicas(self) -> None:
        """Log ``dist/replica_mismatches`` (tensors whose bits differ between ranks; DDP); warn."""
        bad = self.placement.replica_mismatches()
        if bad is None:
            return
        self.logger.log(self.step, {"dist/replica_mismatches": bad})
        if bad and self.dist.is_main:
            warnings.warn(f"step {self.step}: {bad} parameter tensor(s) differ between ranks; "
                          "the checkpoint holds rank 0's copy", RuntimeWarning, stacklevel=2)

    def close(self) -> None:
        """Release the run lock, stop a prefetch thread, destroy a group this trainer made."""
        self.release()
        getattr(getattr(self, "sampler", None), "close", lambda: None)()
        self.dist.close()


def train(cfg: Config, resume: bool | str = False, overwrite: bool = False,
          callbacks: tuple[Callable[[Trainer], None], ...] = ()) -> dict:
    """Train a new run, or resume from the newest complete checkpoint in
    ``train.out_dir`` (see `Trainer` for ``resume`` / ``overwrite``); under torchrun, on
    every rank, destroying the process group at the end."""
    had_group = dist.is_available() and dist.is_initialized()
    trainer = None
    try:
        trainer = Trainer(cfg, resume=resume, overwrite=overwrite, callbacks=callbacks)
        result = trainer.run()
        trainer.dist.barrier()  # all ranks reach destroy_process_group together (pytorch#75097)
        return result
    finally:
        if trainer is not None:
            trainer.close()
        elif not had_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # Trainer() failed after setting it up
