"""Multiple choice built from the run's own validation documents (works for any mixture).

An item takes a passage of a val document of source s: the context is ~``context_chars`` of
text, the true continuation the next ~``continuation_chars`` (both cut at word boundaries, so a
continuation starts with a space), and the distractors are continuation-shaped spans drawn
from *other* val documents of the same source (from far-away parts of the same document
only when the source has too few documents). The gold position is drawn at random.

Scoring ranks the choices by log-likelihood given the context:

    acc       argmax_i  sum_t log p(choice_i,t | context, choice_i,<t)
    acc_norm  argmax_i  (that sum) / UTF-8 bytes of choice_i      (as lm-eval's acc_norm)

Ties go to the lowest index. Results per source and over all items (``acc``, ``acc_norm``)
with the chance level 1 / n_choices.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from random import Random

import numpy as np

from nexus_optim.eval.tasks.base import TaskContext


@dataclass
class MCItem:
    source: str
    context: str
    choices: list[str]
    label: int


def docs_from_tokens(tokens: np.ndarray, eos_id: int, tokenizer, max_tokens: int | None = None) -> list[str]:
    """The documents of an EOS-separated token shard (the first ``max_tokens`` tokens), decoded."""
    arr = np.asarray(tokens[:max_tokens] if max_tokens else tokens, dtype=np.int64)
    cuts = np.flatnonzero(arr == eos_id)
    out, start = [], 0
    for c in list(cuts) + [len(arr)]:
        if c > start:
            text = tokenizer.decode(arr[start:c].tolist(), skip_special_tokens=True)
            if text.strip():
                out.append(text)
        start = c + 1
    return out


def _word_starts(text: str) -> list[int]:
    """Positions of a space that precedes a non-space character (a continuation starts there)."""
    return [i for i in range(len(text) - 1) if text[i] == " " and not text[i + 1].isspace()]


def _span_after(starts: list[int], text: str, i0: int, n_chars: int) -> tuple[int, int] | None:
    """(i0, end) where end is the first word start >= i0 + n_chars (None if there is none)."""
    j = bisect.bisect_left(starts, i0 + n_chars)
    if j >= len(starts):
        return None
    return i0, starts[j]


def build_mc_items(docs: Sequence[str], source: str, n: int, n_choices: int = 4,
                   context_chars: int = 256, continuation_chars: int = 48,
                   seed: int = 0) -> list[MCItem]:
    """Up to ``n`` items from one source's documents (fewer if the text is too short)."""
    if n_choices < 2:
        raise ValueError("mc: n_choices must be >= 2")
    rng = Random(f"nexus-mc:{seed}:{source}")
    starts = [_word_starts(d) for d in docs]
    passages = []  # (doc, context start, continuation start, continuation end)
    for d, text in enumerate(docs):
        st = starts[d]
        if not st:
            continue
        pos = 0
        while True:
            j = bisect.bisect_left(st, pos)
            if j >= len(st):
                break
            c0 = st[j] + 1  # the context starts with the word after the space
            ctx = _span_after(st, text, c0, context_chars)
            if ctx is None:
                break
            cont = _span_after(st, text, ctx[1], continuation_chars)
            if cont is None:
                break
            passages.append((d, c0, cont[0], cont[1]))
            pos = cont[1]
    rng.shuffle(passages)
    items = []
    for d, c0, k0, k1 in passages:
        if len(items) >= n:
            break
        gold = docs[d][k0:k1]
        distractors: list[str] = []
        seen = {gold.strip()}
        others = [e for e in range(len(docs)) if e != d and starts[e]]
        pools = [others, [d]] if len(others) >= n_choices - 1 else [others + [d]]
        for pool in pools:
            tries = 0
            while pool and len(distractors) < n_choices - 1 and tries < 50 * n_choices:
                tries += 1
                e = rng.choice(pool)
                q = rng.choice(starts[e])
                if e == d and q < k1 + continuation_chars and q + 2 * continuation_chars > c0:
                    continue  # too close to the item's own passage
                span = _span_after(starts[e], docs[e], q, continuation_chars)
                if span is None:
                    continue
                text = docs[e][span[0]:span[1]]
                if text.strip() in seen:
                    continue
                seen.add(text.strip())
                distractors.append(text)
            if len(distractors) == n_choices - 1:
                break
        if len(distractors) < n_choices - 1:
            continue
        label = rng.randrange(n_choices)
        choices = distractors[:label] + [gold] + distractors[label:]
        items.append(MCItem(source, docs[d][c0:k0], choices, label))
    return items


def score_mc(items: Sequence[MCItem], logprobs: Sequence[Sequence[float]], log_samples: bool = False) -> dict:
    """Accuracy of the argmax of raw and byte-normalised log-likelihoods, overall and per source."""
    per: dict[str, dict] = {}
    samples = []
    for it, lps in zip(items, logprobs, strict=True):
        lps = [float(x) for x in lps]
        norm = [lp / max(len(c.encode("utf-8")), 1) for lp, c in zip(lps, it.choices)]
        pick, pick_n = int(np.argmax(lps)), int(np.argmax(norm))
        s = per.setdefault(it.source, {"n": 0, "acc": 0.0, "acc_norm": 0.0})
        s["n"] += 1
        s["acc"] += pick == it.label
        s["acc_norm"] += pick_n == it.label
        if log_samples:
            samples.append({**asdict(it), "logprobs": lps, "pred": pick, "pred_norm": pick_n})
    n = sum(s["n"] for s in per.values())
    out = {"n": n,
           "acc": sum(s["acc"] for s in per.values()) / n if n else float("nan"),
           "acc_norm": sum(s["acc_norm"] for s in per.values()) / n if n else float("nan"),
           "sources": {k: {"n": v["n"], "acc": v["acc"] / v["n"], "acc_norm": v["acc_norm"] / v["n"]}
                       for k, v in per.items()}}
    if samples:
        out["samples"] = samples
    return out


def items_for_prepared(prepared, tokenizer, n_per_source: int, seed: int = 0, n_choices: int = 4,
                       context_chars: int = 256, continuation_chars: int = 48,
                       max_length: int | None = None, sources: Sequence[str] | None = None,
                       max_doc_tokens: int = 2_000_000) -> list[MCItem]:
    """Items from the val split of every source (or ``sources``); passage lengths shrink to fit
    ``max_length`` tokens (context <= 3/4, continuation <= 1/4 of it, using bytes per token)."""
    items = []
    for s in sources or [s for s, sp in prepared.shards.items() if "val" in sp]:
        ctx_c, cont_c = context_chars, continuation_chars
        if max_length:
            bpt = max(prepared.bytes_per_token(s), 1.0) if s in prepared.val_bytes else 1.0
            ctx_c = max(16, min(ctx_c, int(0.75 * (max_length - 2) * bpt)))
            cont_c = max(8, min(cont_c, int(0.25 * (max_length - 2) * bpt)))
        docs = docs_from_tokens(prepared.load(s, "val"), prepared.eos_id, tokenizer, max_doc_tokens)
        items += build_mc_items(docs, s, n_per_source, n_choices, ctx_c, cont_c, seed)
    return items


def evaluate_items(ctx: TaskContext, items: Sequence[MCItem]) -> dict:
    requests = [(it.context, c) for it in items for c in it.choices]
    lls = ctx.loglikelihoods(requests)
    logprobs, k = [], 0
    for it in items:
        logprobs.append([ll.logprob for ll in lls[k:k + len(it.choices)]])
        k += len(it.choices)
    return score_mc(items, logprobs, ctx.log_samples)


def run(ctx: TaskContext, limit: int | None = None, items: Sequence[MCItem] | None = None) -> dict:
    opts = {"n_choices": 4, "context_chars": 256, "continuation_chars": 48, **ctx.options.get("mc", {})}
    if items is None:
        if ctx.prepared is None:
            raise ValueError("mc: needs the run's prepared data (a checkpoint or run directory)")
        items = items_for_prepared(ctx.prepared, ctx.tokenizer, limit or 100, ctx.seed,
                                   max_length=ctx.max_length or _max_len(ctx.model), **opts)
    if not items:
        raise ValueError("mc: no items could be built (val documents too short?)")
    return {**evaluate_items(ctx, items), "n_choices": len(items[0].choices),
            "chance": 1.0 / len(items[0].choices)}


def _max_len(model):
    from nexus_optim.eval.lm import model_max_length

    return model_max_length(model)
