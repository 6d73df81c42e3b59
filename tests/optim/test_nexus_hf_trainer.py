"""Plain transformers.Trainer with Nexus via optimizers=(opt, scheduler): the supported
plain-Trainer setting is gradient_accumulation_steps=1, max_grad_norm=0 (Nexus clips G),
schedule in micro-batches. NexusTrainer (tests/integrations) is the first-class path."""

import pytest
import torch

from nexus_optim import Nexus
from nexus_optim.models import build_model


class _Repeating(torch.utils.data.Dataset):
    """A fixed set of token sequences with a learnable pattern."""

    def __init__(self, n=64, seq_len=32, vocab=64):
        g = torch.Generator().manual_seed(0)
        starts = torch.randint(0, vocab, (n, 1), generator=g)
        self.rows = (starts + torch.arange(seq_len)) % vocab  # counting sequences

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def _tiny():
    return build_model("nano", vocab_size=64, max_seq_len=32, seed=0,
                       hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, intermediate_size=64)


def _nexus(model, K, steps):
    from transformers import get_cosine_schedule_with_warmup

    opt = Nexus(model.parameters(), lr=3e-3, inner_lr=0.05, inner_steps=K, weight_decay=0.0,
                max_grad_norm=1.0)
    # the Trainer steps the scheduler once per micro-batch (= per Nexus.step call)
    return opt, get_cosine_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=steps)


def test_trainer_trains_tiny_llama_with_nexus(tmp_path):
    """The Trainer run is the plain Nexus loop over the same micro-batches: same weights."""
    from transformers import Trainer, TrainingArguments

    model = _tiny()
    K, steps = 2, 40
    opt, sched = _nexus(model, K, steps)
    seen = []  # the micro-batches the Trainer fed, in order
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].clone()),
                                    with_kwargs=True)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
                             max_grad_norm=0.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=_Repeating(), optimizers=(opt, sched))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) >= steps // 2 and len(seen) == steps
    assert opt.outer_steps == steps // K
    assert opt.param_groups is opt.outer.param_groups

    ref = _tiny()
    ref_opt, ref_sched = _nexus(ref, K, steps)
    ref_losses = []
    for ids in seen:
        loss = ref(input_ids=ids, labels=ids).loss
        loss.backward()
        ref_opt.step()
        ref_sched.step()
        ref_opt.zero_grad()
        ref_losses.append(loss.item())
    assert ref_opt.outer_steps == steps // K
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-6)
    assert losses[-1] == pytest.approx(ref_losses[-1], rel=1e-4)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # and it learned
