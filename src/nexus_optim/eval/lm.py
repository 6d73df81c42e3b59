"""Model primitives for downstream tasks: continuation log-likelihoods and greedy decoding.

Both work with any causal LM whose ``forward(input_ids=..., attention_mask=...)`` returns an
object with ``.logits`` [batch, time, vocab] (HF models, or small test modules).

Every sequence starts with the EOS token when ``prefix_eos`` (the training data has EOS
between documents, so a document start follows EOS); the exported HF tokenizer does the
same (see `nexus_optim.models.export`), so lm-evaluation-harness sees identical inputs.

* `loglikelihoods`: ``sum_t log p(cont_t | context, cont_<t)`` for (context, continuation)
  pairs; context and continuation are tokenized separately and concatenated; the context is
  truncated on the left to fit ``max_length``. Batched with right padding (exact for causal
  models: padding after a position never changes its logits).
* `greedy_generate`: argmax decoding, batched with left padding (attention mask + position
  ids), through ``model.generate`` (KV cache) for HF models and a plain re-forward loop
  otherwise; the completion is cut at the first stop string and at EOS.
"""

from __future__ import annotations

import contextlib

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from nexus_optim.runtime import autocast_for


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def model_max_length(model) -> int | None:
    """Positions the model was trained for (``config.max_position_embeddings``), if known."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None)
    return int(n) if n else None


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


@dataclass
class LogLik:
    logprob: float  # sum of log p over the continuation tokens (nats)
    n_tokens: int  # continuation tokens
    is_greedy: bool  # every continuation token is the argmax


@torch.no_grad()
def loglikelihoods(model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16,
                   max_length: int | None = None, prefix_eos: bool = True, bf16: bool = True,
                   progress: bool = False) -> list[LogLik]:
    """Log-likelihood of each continuation given its context (see module docstring)."""
    device = model_device(model)
    max_length = max_length or model_max_length(model)
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    seqs: list[tuple[list[int], int]] = []  # (input tokens incl. the last target, n continuation tokens)
    for ctx, cont in requests:
        ctx_ids = ([eos] if prefix_eos else []) + encode(tokenizer, ctx)
        cont_ids = encode(tokenizer, cont)
        if not cont_ids:
            raise ValueError(f"loglikelihoods: empty continuation for context {ctx[-40:]!r}")
        if not ctx_ids:
            raise ValueError("loglikelihoods: empty context (use prefix_eos=True)")
        whole = ctx_ids + cont_ids
        if max_length is not None and len(whole) - 1 > max_length:
            if len(cont_ids) > max_length:
                raise ValueError(f"loglikelihoods: continuation of {len(cont_ids)} tokens > max_length {max_length}")
            whole = whole[-(max_length + 1):]
        seqs.append((whole, len(cont_ids)))
    out: list[LogLik | None] = [None] * len(seqs)
    with _eval_mode(model):
        for idx in _longest_first([len(w) for w, _ in seqs], batch_size, progress, "loglik"):
            width = max(len(seqs[i][0]) for i in idx) - 1
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                inp = seqs[i][0][:-1]
                ids[r, :len(inp)] = torch.tensor(inp)
                mask[r, :len(inp)] = 1
            with autocast_for(device, bf16):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for r, i in enumerate(idx):
                whole, n = seqs[i]
                L = len(whole) - 1
                targets = torch.tensor(whole[-n:])
                rows = torch.log_softmax(logits[r, L - n:L].float(), dim=-1).cpu()
                lp = rows.gather(1, targets[:, None])[:, 0]
                out[i] = LogLik(float(lp.double().sum()), n, bool((rows.argmax(-1) == targets).all()))
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def _eval_mode(model):
    """``model`` in eval mode for the block, then back to the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _longest_first(lengths: list[int], batch_size: int, progress: bool, desc: str):
    """Batches of item indices, longest items first (similar lengths share a batch)."""
    from tqdm.auto import tqdm

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for b0 in tqdm(range(0, len(order), batch_size), disable=not progress, desc=desc,
                   dynamic_ncols=True):
        yield order[b0:b0 + batch_size]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            j = text.find(s)
            if j != -1:
                cut = min(cut, j)
    return text[:cut]


def _stop_criteria(tokenizer, stop: Sequence[str], prompt_width: int):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = [any(s in tokenizer.decode(row[prompt_width:].tolist(), skip_special_tokens=True)
                        for s in stop) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopStrings()]) if stop else None


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    return ids, mask


def _loop_generate(model, ids, mask, max_new_tokens: int, eos: int, pad: int,
                   should_stop: Callable[[int, list[int]], bool]) -> list[list[int]]:
    """Greedy decoding without a cache: re-run the whole (left-padded) sequence each step."""
    n = ids.size(0)
    new: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(max_new_tokens):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        nxt = logits.float().argmax(-1)
        for r in range(n):
            if not done[r]:
                t = int(nxt[r])
                if t == eos:
                    done[r] = True
                else:
                    new[r].append(t)
                    done[r] = should_stop(r, new[r])
            if done[r]:
                nxt[r] = pad
        if all(done):
            break
        ids = torch.cat([ids, nxt[:, None].to(ids)], dim=1)
        mask = torch.cat([mask, torch.tensor([[0 if d else 1] for d in done]).to(mask)], dim=1)
    return new


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64,
                    stop: Sequence[str] = (), batch_size: int = 8, max_length: int | None = None,
                    prefix_eos: bool = True, bf16: bool = True, use_hf_generate: bool | None = None,
                    progress: bool = False) -> list[str]:
    """Greedy completions of ``prompts`` (each cut at its first stop string / EOS).

    Prompts are truncated on the left so prompt + ``max_new_tokens`` fit ``max_length``
    (default: the model's ``max_position_embeddings``).
    """
    device = model_device(model)
    max_length = max_length or model_max_length(model)
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    # prompts keep their last tokens so that prompt + completion fit max_length (at least
    # half of max_length when max_new_tokens alone would not leave room)
    keep = None if max_length is None else max(max_length - max_new_tokens, max_length // 2, 1)
    enc = []
    for p in prompts:
        ids = ([eos] if prefix_eos else []) + encode(tokenizer, p)
        enc.append(ids[-keep:] if keep else ids)
    if use_hf_generate is None:
        use_hf_generate = callable(getattr(model, "generate", None)) and hasattr(model, "generation_config")
    out: list[str | None] = [None] * len(enc)
    with _eval_mode(model):
        for idx in _longest_first([len(e) for e in enc], batch_size, progress, "generate"):
            ids, mask = _left_pad([enc[i] for i in idx], pad)
            ids, mask = ids.to(device), mask.to(device)
            with autocast_for(device, bf16):
                if use_hf_generate:
                    gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                         max_new_tokens=max_new_tokens, eos_token_id=eos,
                                         pad_token_id=pad, num_beams=1, temperature=None,
                                         top_p=None, top_k=None,
                                         stopping_criteria=_stop_criteria(tokenizer, stop, ids.size(1)))
                    new = []
                    for row in gen[:, ids.size(1):].tolist():
                        row = row[:row.index(eos)] if eos in row else row
                        new.append(row)
                else:
                    new = _loop_generate(
                        model, ids, mask, max_new_tokens, eos, pad,
                        lambda r, toks: bool(stop) and any(
                            s in tokenizer.decode(toks, skip_special_tokens=True) for s in stop))
            for r, i in enumerate(idx):
                out[i] = cut_at_stop(tokenizer.decode(new[r], skip_special_tokens=True), stop)
    return out  # type: ignore[return-value]
