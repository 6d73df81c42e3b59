"""NexusTrainer (integrations/hf_trainer.py): transformers.Trainer with the Nexus update.

Tiny LLaMA on CPU. 40 sequences, micro-batch 4 -> 10 micro-batches per epoch; K=3 gives
windows 3,3,3,1 (the short last window is an outer step over its one micro-batch, as the
Trainer does for AdamW)."""

import warnings

import pytest
import torch

from nexus_optim import Nexus
from nexus_optim.models import build_model

transformers = pytest.importorskip("transformers")
from transformers import (Trainer, TrainerCallback, TrainingArguments,  # noqa: E402
                          get_cosine_schedule_with_warmup)

from nexus_optim.integrations import NexusTrainer, nexus_optimizer_cls_and_kwargs  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            intermediate_size=64)
K, STEPS, CLIP = 3, 8, 0.5


class Counting(torch.utils.data.Dataset):
    """Counting sequences; ``masked``: a varying prefix of each row's labels is -100, so
    micro-batches hold different label-token counts (Trainer's token normalisation)."""

    def __init__(self, n=40, seq_len=16, vocab=64, masked=False):
        g = torch.Generator().manual_seed(0)
        starts = torch.randint(0, vocab, (n, 1), generator=g)
        self.rows = (starts + torch.arange(seq_len)) % vocab
        self.labels = self.rows.clone()
        if masked:
            for i, r in enumerate(torch.randint(0, seq_len - 2, (n,), generator=g).tolist()):
                self.labels[i, :r] = -100

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.labels[i]}


class Recorder:
    """A collator that keeps every micro-batch in the order the Trainer consumed it."""

    def __init__(self):
        self.batches = []

    def __call__(self, rows):
        batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        self.batches.append({k: v.clone() for k, v in batch.items()})
        return batch


def model():
    return build_model("nano", vocab_size=64, max_seq_len=16, seed=0, **TINY)


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4,
                gradient_accumulation_steps=K, learning_rate=3e-3, weight_decay=0.1,
                max_grad_norm=CLIP, lr_scheduler_type="cosine", warmup_steps=2,
                adam_beta2=0.95, logging_steps=1, save_strategy="no", report_to=[],
                use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def assert_close(a, b, atol):
    worst = max((x - y).abs().max().item() for x, y in zip(a, b))
    assert worst <= atol, f"max |diff| {worst:.3g} > {atol}"


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("norm", ["tokens", "mean"])
def test_inner_lr0_equals_trainer_with_adamw(tmp_path, norm):
    """Same accumulation, clipping (which bites: CLIP=0.5), cosine warmup schedule.

    "tokens": the model takes ``num_items_in_batch`` and the micro-batches hold different
    label counts (the Trainer divides each summed loss by the window's token count);
    "mean": the Trainer divides each micro-batch's mean loss by K."""
    ds = Counting(masked=norm == "tokens")
    m_ref = model()
    ref = Trainer(model=m_ref, args=args(tmp_path / "a", optim="adamw_torch"), train_dataset=ds)
    m_nx = model()
    tr = NexusTrainer(model=m_nx, args=args(tmp_path / "n"), train_dataset=ds,
                      nexus_kwargs=dict(inner_lr=0.0))
    assert ref.model_accepts_loss_kwargs and tr.model_accepts_loss_kwargs
    if norm == "mean":
        ref.model_accepts_loss_kwargs = tr.model_accepts_loss_kwargs = False
    ref.train()
    tr.train()
    nexus = tr._nexus
    assert isinstance(nexus, Nexus) and nexus.outer_steps == STEPS and nexus.inner_steps == K
    assert nexus.max_grad_norm == CLIP and tr.args.max_grad_norm == CLIP  # restored
    grad_norms = [h["grad_norm"] for h in ref.state.log_history if "grad_norm" in h]
    assert max(grad_norms) > CLIP  # the clip is active
    assert_close(params(m_nx), params(m_ref), 1e-6)
    assert losses(tr) == pytest.approx(losses(ref), abs=1e-6)
    assert tr.state.log_history[-2]["learning_rate"] == pytest.approx(
        ref.state.log_history[-2]["learning_rate"])


def test_inner_lr_equals_the_manual_loop(tmp_path):
    """inner_lr > 0: the project's loop (one Nexus.step per micro-batch, loss not divided
    by K, clip on G, schedule per outer step) on the micro-batches the Trainer used."""
    rec = Recorder()
    m_tr = model()
    opts = dict(inner_lr=0.05, weight_decay=0.0)
    tr = NexusTrainer(model=m_tr, args=args(tmp_path, weight_decay=0.0, num_train_epochs=1,
                                            max_steps=-1, dataloader_drop_last=True),
                      train_dataset=Counting(n=48), data_collator=rec, nexus_kwargs=opts)
    tr.train()
    assert tr._nexus.outer_steps == 4 and len(rec.batches) == 12
    m = model()
    opt = Nexus(m.parameters(), lr=3e-3, inner_lr=0.05, inner_steps=K, max_grad_norm=CLIP,
                betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=4)
    m.train()
    for b in rec.batches:
        m(**b).loss.backward()
        opt.step()
        opt.zero_grad()
        if opt.last_step_was_outer:
            sched.step()
    assert_close(params(m_tr), params(m), 1e-6)


def test_recipe_and_explicit_optimizer(tmp_path):
    a = args(tmp_path, max_steps=2)
    cls, kw = nexus_optimizer_cls_and_kwargs(a, inner_lr=0.05)
    assert cls is Nexus and kw["inner_steps"] == K and kw["lr"] == 3e-3
    assert kw["betas"] == (0.9, 0.95)
    tr = NexusTrainer(model=model(), args=a, train_dataset=Counting(),
                      optimizer_cls_and_kwargs=(cls, kw))
    tr.train()
    assert tr._nexus.outer_steps == 2
    # groups from the Trainer: no decay on norms
    assert sorted(g["weight_decay"] for g in tr._nexus.param_groups) == [0.0, 0.1]

    m = model()
    wrong = Nexus(m.parameters(), inner_steps=2)
    with pytest.raises(ValueError, match="gradient_accumulation_steps=3"):
        NexusTrainer(model=m, args=a, train_dataset=Counting(), optimizers=(wrong, None)).train()
    clip2 = Nexus(m.parameters(), inner_steps=K, max_grad_norm=2.0)
    with pytest.raises(ValueError, match="disagree"):
        NexusTrainer(model=m, args=a, train_dataset=Counting(), optimizers=(clip2, None)).train()
    with pytest.raises(TypeError, match="not a Nexus"):
        NexusTrainer(model=m, args=a, train_dataset=Counting(),
                     optimizers=(torch.optim.AdamW(m.parameters()), None)).train()


class _EvalLosses(TrainerCallback):
    def __init__(self):
        self.trainer, self.mid, self.at_step = None, [], []

    def on_substep_end(self, args, state, control, **kw):  # inside a window: a probe point
        nexus = self.trainer._nexus
        if nexus.inner_step == 1 and not self.mid:
            m = self.trainer.model
            probe = _eval_loss(m)
            anchor = _loss_at_anchor(m, nexus)
            mid_eval = self.trainer.evaluate()["eval_loss"]  # Trainer calls optimizer.eval()
            nexus.train()  # what the Trainer's next training_step does first
            self.mid.append((mid_eval, anchor, probe, _eval_loss(m)))


def _loss_at_anchor(m, nexus):
    with nexus.outer_weights():
        return _eval_loss(m)


def _eval_loss(m):
    ds = Counting(n=8)
    with torch.no_grad():
        ids = torch.stack([ds[i]["input_ids"] for i in range(8)])
        return m(input_ids=ids, labels=ids).loss.item()


@pytest.mark.skipif(not hasattr(Nexus, "outer_weights"), reason="needs Nexus.eval/train")
def test_evaluation_sees_the_outer_weights(tmp_path):
    cb = _EvalLosses()
    tr = NexusTrainer(model=model(), args=args(tmp_path, max_steps=3, eval_strategy="steps",
                                               eval_steps=1, per_device_eval_batch_size=8),
                      train_dataset=Counting(), eval_dataset=Counting(n=8), callbacks=[cb],
                      nexus_kwargs=dict(inner_lr=0.2))
    cb.trainer = tr
    tr.train()
    (mid_eval, anchor_loss, probe_loss, after), = cb.mid
    assert mid_eval == pytest.approx(anchor_loss, abs=1e-5)  # the outer weights ...
    assert abs(probe_loss - anchor_loss) > 1e-4  # ... not the probe point
    assert after == pytest.approx(probe_loss, abs=1e-6)  # the next micro-batch: probe again
    evals = [h["eval_loss"] for h in tr.state.log_history if "eval_loss" in h]
    assert len(evals) == 1 + 3 and tr._nexus.inner_step == 0  # the mid one + one per step
    assert evals[-1] == pytest.approx(_eval_loss(tr.model), abs=1e-5)


def test_resume_from_checkpoint_continues(tmp_path):
    kw = dict(save_strategy="steps", save_steps=4)
    opts = dict(inner_lr=0.05)
    full = NexusTrainer(model=model(), args=args(tmp_path / "full", **kw),
                        train_dataset=Counting(), nexus_kwargs=opts)
    full.train()
    half = NexusTrainer(model=model(), args=args(tmp_path / "half", max_steps=STEPS, **kw),
                        train_dataset=Counting(), nexus_kwargs=opts)

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:
                control.should_training_stop = True

    half.add_callback(Stop())
    half.train()
    ckpt = tmp_path / "half" / "checkpoint-4"
    assert (ckpt / "optimizer.pt").exists()
    resumed = NexusTrainer(model=model(), args=args(tmp_path / "half", **kw),
                           train_dataset=Counting(), nexus_kwargs=opts)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed._nexus.outer_steps == STEPS
    # the loss curve continues: steps 5..8 as in the uninterrupted run
    assert losses(resumed)[-4:] == pytest.approx(losses(full)[-4:], abs=1e-6)
    assert_close(params(resumed.model), params(full.model), 1e-6)


def _wired():
    import inspect

    return "check_host" in inspect.getsource(Nexus)


@pytest.mark.skipif(not _wired(), reason="Nexus.step does not call guards.check_host yet")
def test_plain_trainer_with_accumulation_raises(tmp_path):
    m = model()
    opt = Nexus(m.parameters(), inner_steps=K)
    tr = Trainer(model=m, args=args(tmp_path, max_steps=2), train_dataset=Counting(),
                 optimizers=(opt, None))
    with pytest.raises(ValueError, match="NexusTrainer"):
        tr.train()


@pytest.mark.skipif(not _wired(), reason="Nexus.step does not call guards.check_host yet")
def test_plain_trainer_clipping_warns(tmp_path):
    m = model()
    opt = Nexus(m.parameters(), inner_steps=2)
    tr = Trainer(model=m, args=args(tmp_path, max_steps=2, gradient_accumulation_steps=1),
                 train_dataset=Counting(), optimizers=(opt, None))
    with pytest.warns(RuntimeWarning, match=r"mean\(clip\(g_k\)\)"):
        tr.train()


class _GuardedNexus(Nexus):
    """Nexus with the guard wired in, as nexus.py is asked to do."""

    def step(self, closure=None):
        from nexus_optim.optim.guards import check_host

        check_host(self)
        return super().step(closure)


def test_guard_under_plain_trainer(tmp_path):
    m = model()
    tr = Trainer(model=m, args=args(tmp_path, max_steps=2), train_dataset=Counting(),
                 optimizers=(_GuardedNexus(m.parameters(), inner_steps=K), None))
    with pytest.raises(ValueError, match="gradient_accumulation_steps=3.*NexusTrainer"):
        tr.train()
    m = model()
    tr = Trainer(model=m, args=args(tmp_path, max_steps=2, gradient_accumulation_steps=1),
                 train_dataset=Counting(), optimizers=(_GuardedNexus(m.parameters(), inner_steps=2), None))
    with pytest.warns(RuntimeWarning, match=r"mean\(clip\(g_k\)\) instead of clip\(mean g_k\)"):
        tr.train()
    # NexusTrainer is let through, no warning
    m = model()
    tr = NexusTrainer(model=m, args=args(tmp_path, max_steps=2), train_dataset=Counting(),
                      optimizers=(_GuardedNexus(m.parameters(), inner_steps=K), None))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        tr.train()
    assert tr._nexus.outer_steps == 2


def test_plain_loop_is_not_affected_by_the_guard():
    m = model()
    opt = _GuardedNexus(m.parameters(), inner_steps=2)
    ids = Counting(n=4).rows
    for _ in range(4):
        m(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    assert opt.outer_steps == 2


@pytest.mark.parametrize("kw, message", [
    ({"gradient_accumulation_steps": 0}, "TrainingArguments(gradient_accumulation_steps=0) must be an integer >= 1"),
    ({"optim": "adafactor"}, "TrainingArguments(optim='adafactor') would be ignored: the optimizer is Nexus"),
    ({"optim": "sgd"}, "TrainingArguments(optim='sgd') would be ignored"),
    ({"optim_args": "foo=1"}, "TrainingArguments(optim_args='foo=1') would be ignored"),
])
def test_arguments_nexus_trainer_cannot_honour_are_refused(tmp_path, kw, message):
    """(issue 21) before: a ZeroDivisionError deep in train(), or optim silently ignored."""
    with pytest.raises(ValueError) as e:
        NexusTrainer(model=model(), args=args(tmp_path, **kw), train_dataset=Counting())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_adamw_optim_values_are_accepted(tmp_path):
    for optim in ("adamw_torch", "adamw_torch_fused"):
        NexusTrainer(model=model(), args=args(tmp_path, optim=optim), train_dataset=Counting())
