"""Count n-gram reference lines: unigram and smoothed-bigram losses per source (and OOD).

Fitted on the TRAINING tokens, evaluated on every source's val split with the same
deterministic windows and the same definition of the predicted positions as the model
losses (`nexus_optim.eval.losses`): ``tokens[:max_tokens]`` cut into non-overlapping windows
of ``seq_len`` (the trailing partial window dropped), every window's tokens but its first
are predicted, and a bigram's context is the previous token *inside the window* (so the
first prediction of a window has one token of context, like the model's). Losses are mean
next-token cross-entropy in nats/token; bits/byte when ``byte_lengths`` (UTF-8 bytes per
token id, e.g. ``eval.losses.token_byte_lengths(prepared.tokenizer())``) is given.

Pooling ("as the model sees them"): the sampler draws a source with probability
``w_s / sum w`` per micro-batch, whatever its size, so the training distribution is the
weighted mixture of the per-source empirical distributions. ``pooling="weighted"`` (default)
fits on *effective* counts ``c(x) = sum_s a_s c_s(x)`` with ``a_s = (w_s / W) N / N_s``
(``N_s`` train tokens of s, ``N = sum N_s``: the total count is kept, each source's share
is its weight). ``pooling="concat"``: raw counts of all train shards concatenated (the two
agree when the weights are proportional to the train sizes). Sources with weight 0 are left
out of the fit (the model never sees them).

Unigram (maximum likelihood, no add-one): ``p(v) = c(v) / Z``; a token never seen in
training gets a floor of half a count, ``p(v) = 0.5 / Z``, with ``Z = sum_v max(c(v), 0.5)``
(every loss is finite; the seen tokens lose at most ``0.5 * #unseen / N`` of their mass).

Bigram: interpolated Kneser-Ney with a single absolute discount ``D`` (Chen & Goodman 1998):

    p(v | u) = max(c(u,v) - D, 0) / c(u)  +  lambda(u) p_cont(v)
    lambda(u) = sum_v min(c(u,v), D) / c(u)        (= D N1+(u .) / c(u) for integer counts)
    p_cont(v) = max(N1+(. v), 0.5) / sum_v' max(N1+(. v'), 0.5)   N1+(. v) = #{u: c(u,v) > 0}
    p(v | u) = p_cont(v)                            for a context never seen (c(u) = 0)

``c(u) = sum_v c(u,v)`` counts ``u`` as a context. The ``min(c, D)`` form of lambda keeps the
distribution normalised with fractional (weighted) counts. ``D`` defaults to Ney's estimate
``n1 / (n1 + 2 n2)`` from the integer pair counts of the fitted sources (``n_k`` = number of
distinct pairs seen exactly k times), clipped to [0.1, 0.9]; 0.75 when no pair is seen once
or twice. Every unseen pair and unseen token therefore gets a positive probability.

Pairs are counted as sparse int64 codes ``u * V + v`` (``np.unique``), never a V x V matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nexus_optim.data.windows import num_eval_windows
from nexus_optim.eval.losses import pooled_losses

UNSEEN_FLOOR = 0.5  # counts given to a token never seen (unigram) / never seen as a continuation
_CHUNK = 1 << 23  # pairs per np.unique call while counting (bounds the peak memory)


# --------------------------------------------------------------------------- counting
def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum the values of equal codes over several (sorted codes, values) parts."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    if len(parts) == 1:
        return parts[0]
    codes, inv = np.unique(np.concatenate([c for c, _ in parts]), return_inverse=True)
    vals = np.bincount(inv, weights=np.concatenate([v for _, v in parts]).astype(np.float64),
                       minlength=len(codes))
    return codes, vals


def pair_counts(tokens: np.ndarray, vocab_size: int, chunk: int = _CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Adjacent pairs of a token stream as (sorted unique codes ``u * V + v``, integer counts)."""
    n = len(tokens) - 1
    parts = []
    for i in range(0, max(n, 0), chunk):
        block = np.asarray(tokens[i:min(i + chunk, n) + 1], dtype=np.int64)
        codes, counts = np.unique(block[:-1] * vocab_size + block[1:], return_counts=True)
        parts.append((codes, counts.astype(np.float64)))
        if len(parts) >= 8:
            parts = [_merge(parts)]
    codes, counts = _merge(parts)
    return codes, np.rint(counts).astype(np.int64)


def ney_discount(int_counts: np.ndarray) -> float:
    """Ney's absolute discount ``n1 / (n1 + 2 n2)``, clipped to [0.1, 0.9]; 0.75 if n1 = n2 = 0."""
    n1, n2 = int(np.sum(int_counts == 1)), int(np.sum(int_counts == 2))
    if n1 + n2 == 0:
        return 0.75
    return float(np.clip(n1 / (n1 + 2 * n2), 0.1, 0.9))


def _floored(counts: np.ndarray) -> np.ndarray:
    c = np.where(counts > 0, counts, UNSEEN_FLOOR)
    return c / c.sum()


# --------------------------------------------------------------------------- the model
@dataclass
class NgramModel:
    """A fitted unigram + interpolated Kneser-Ney bigram (see module docstring)."""

    vocab_size: int
    discount: float
    p_unigram: np.ndarray  # [V] probabilities
    p_cont: np.ndarray  # [V] Kneser-Ney continuation probabilities
    pair_codes: np.ndarray  # sorted int64 codes u * V + v of the seen pairs
    pair_counts: np.ndarray  # their (effective) counts
    context_total: np.ndarray  # [V] c(u)
    backoff: np.ndarray  # [V] lambda(u) (1 for unseen contexts)

    def unigram_logprob(self, targets: np.ndarray) -> np.ndarray:
        return np.log(self.p_unigram[targets])

    def bigram_logprob(self, contexts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """log p(target | context), elementwise over int arrays of equal shape."""
        u, v = np.asarray(contexts, np.int64), np.asarray(targets, np.int64)
        codes = u * self.vocab_size + v
        c_uv = np.zeros(codes.shape, np.float64)
        if len(self.pair_codes):
            idx = np.minimum(np.searchsorted(self.pair_codes, codes), len(self.pair_codes) - 1)
            seen = self.pair_codes[idx] == codes
            c_uv[seen] = self.pair_counts[idx[seen]]
        c_u = self.context_total[u]
        direct = np.maximum(c_uv - self.discount, 0.0) / np.where(c_u > 0, c_u, 1.0)
        return np.log(direct + self.backoff[u] * self.p_cont[v])


def _build(vocab_size: int, unigram: np.ndarray, codes: np.ndarray, counts: np.ndarray,
           discount: float) -> NgramModel:
    V = vocab_size
    u, v = codes // V, codes % V
    ctx = np.bincount(u, weights=counts, minlength=V)
    kept = np.bincount(u, weights=np.minimum(counts, discount), minlength=V)
    backoff = np.where(ctx > 0, kept / np.where(ctx > 0, ctx, 1.0), 1.0)
    cont = np.bincount(v, minlength=V).astype(np.float64)
    return NgramModel(V, float(discount), _floored(unigram), _floored(cont), codes, counts, ctx, backoff)


def fit_ngram(streams: dict[str, np.ndarray], vocab_size: int, weights: dict[str, float] | None = None,
              pooling: str = "weighted", discount: float | None = None) -> NgramModel:
    """Fit on training token streams (one per source, documents separated by EOS).

    ``weights``: mixture weights per source (None = equal); sources with weight 0 are left
    out. ``pooling``: ``"weighted"`` (effective counts, each source's share = its weight) or
    ``"concat"`` (raw counts). ``discount``: the KN discount D (None = Ney's estimate)."""
    if pooling not in ("weighted", "concat"):
        raise ValueError(f"fit_ngram: pooling {pooling!r} is not 'weighted' or 'concat'")
    weights = {s: 1.0 for s in streams} if weights is None else weights
    names = [s for s in streams if weights.get(s, 0.0) > 0 and len(streams[s]) > 0]
    if not names:
        raise ValueError("fit_ngram: no training stream with tokens and weight > 0")
    sizes = {s: len(streams[s]) for s in names}
    total, wsum = sum(sizes.values()), sum(weights[s] for s in names)
    unigram = np.zeros(vocab_size, np.float64)
    int_parts, eff_parts = [], []
    for s in names:
        a = weights[s] / wsum * total / sizes[s] if pooling == "weighted" else 1.0
        toks = np.asarray(streams[s])
        if toks.size and int(toks.max()) >= vocab_size:
            raise ValueError(f"fit_ngram: source {s!r} holds token id {int(toks.max())} >= vocab_size {vocab_size}")
        unigram += a * np.bincount(toks, minlength=vocab_size)
        codes, counts = pair_counts(toks, vocab_size)
        int_parts.append((codes, counts.astype(np.float64)))
        eff_parts.append((codes, a * counts.astype(np.float64)))
    codes, eff = _merge(eff_parts)
    if discount is None:
        discount = ney_discount(np.rint(_merge(int_parts)[1]).astype(np.int64))
    if not 0 < discount < 1:
        raise ValueError(f"fit_ngram: discount {discount!r} must be in (0, 1)")
    return _build(vocab_size, unigram, codes, eff, discount)


# --------------------------------------------------------------------------- evaluation
def eval_pairs(tokens: np.ndarray, seq_len: int, max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(contexts, targets) of the predicted positions of the eval windows (see module docstring)."""
    n_win = num_eval_windows(len(tokens), seq_len, max_tokens)
    block = np.asarray(tokens[:n_win * seq_len], dtype=np.int64).reshape(n_win, seq_len)
    return block[:, :-1].reshape(-1), block[:, 1:].reshape(-1)


def ngram_nll(model: NgramModel, tokens: np.ndarray, seq_len: int, max_tokens: int | None = None,
              byte_lengths: np.ndarray | None = None) -> dict[str, dict]:
    """``{"unigram": m, "bigram": m}`` with ``m = {"loss", "nll_sum", "tokens", "bytes",
    "bits_per_byte"}`` over the eval windows of one split (bits/byte None without byte_lengths)."""
    ctx, tgt = eval_pairs(tokens, seq_len, max_tokens)
    if len(tgt) == 0:
        raise ValueError(f"ngram: a val split has fewer than {seq_len} tokens")
    if int(max(ctx.max(), tgt.max())) >= model.vocab_size:
        raise ValueError(f"ngram: a val split holds a token id >= vocab_size {model.vocab_size}")
    nbytes = int(np.asarray(byte_lengths)[tgt].sum()) if byte_lengths is not None else 0
    out = {}
    for order, lp in (("unigram", model.unigram_logprob(tgt)), ("bigram", model.bigram_logprob(ctx, tgt))):
        nll = float(-lp.sum())
        out[order] = {"loss": nll / len(tgt), "nll_sum": nll, "tokens": len(tgt), "bytes": nbytes,
                      "bits_per_byte": nll / (math.log(2) * nbytes) if nbytes else None}
    return out


def _pooled(per_source: dict[str, float], roles: dict[str, str], weights: dict[str, float]) -> dict[str, float]:
    """``id`` / ``ood`` pooled exactly as the model losses are (`eval.losses.pooled_losses`)."""
    pooled = pooled_losses({f"val/{s}": x for s, x in per_source.items()}, roles,
                           {s: weights.get(s, 0.0) for s in roles})
    return {key.removeprefix("val/"): value for key, value in pooled.items()}


def _lines(name: str, results: dict[str, dict], roles, weights) -> dict[str, float]:
    """Flat keys ``ngram/<name>/val/<s>``, ``.../bpb/<s>`` plus the pooled ``id`` / ``ood``."""
    out: dict[str, float] = {}
    for metric, key in (("val", "loss"), ("bpb", "bits_per_byte")):
        per = {s: r[key] for s, r in results.items() if r[key] is not None}
        if not per:
            continue
        for s, x in {**per, **_pooled(per, roles, weights)}.items():
            out[f"ngram/{name}/{metric}/{s}"] = float(x)
    return out


def _own_lines(train, vals, V, seq_len, max_tokens, byte_lengths, discount, roles, weights) -> dict[str, float]:
    """``ngram/<order>_own/...``: each train source's val split under n-grams fitted on that
    source's train split alone, plus their weighted ``id`` pool."""
    res = {s: ngram_nll(fit_ngram({s: toks}, V, discount=discount), vals[s], seq_len, max_tokens, byte_lengths)
           for s, toks in train.items() if s in vals and weights.get(s, 0.0) > 0}
    out: dict[str, float] = {}
    for order in ("unigram", "bigram"):
        out.update(_lines(f"{order}_own", {s: r[order] for s, r in res.items()}, roles, weights))
    return out


def mixture_streams(prepared) -> dict[str, np.ndarray]:
    """The train shards of the train sources of a `PreparedData` (memmaps)."""
    return {s: prepared.load(s, "train") for s, r in prepared.roles.items()
            if r == "train" and "train" in prepared.shards.get(s, {})}


def ngram_reference(prepared, seq_len: int, max_tokens: int | None = None,
                    byte_lengths: np.ndarray | None = None, pooling: str = "weighted",
                    discount: float | None = None, per_source: bool = False) -> dict[str, float]:
    """Reference lines for a report, keyed like the model losses with an ``ngram/<order>/`` prefix.

    One unigram and one bigram fitted on the train splits of the mixture (``pooling``, see
    module docstring), evaluated on every val split with the model's windows (``seq_len``,
    ``max_tokens``: pass the run's eval settings). Keys: ``ngram/unigram/val/<source>``,
    ``ngram/bigram/val/<source>``, ``.../val/id`` (mixture weights), ``.../val/ood`` (mean
    over OOD sources), the same under ``bpb/`` when ``byte_lengths`` is given, and
    ``ngram/discount`` (the KN discount used). ``per_source=True`` adds
    ``ngram/unigram_own/...`` and ``ngram/bigram_own/...``: each train source's val split
    under n-grams fitted on that source's train split alone (train sources and ``id`` only).
    """
    roles, weights = prepared.roles, prepared.weights
    train = mixture_streams(prepared)
    vals = {s: prepared.load(s, "val") for s, splits in prepared.shards.items() if "val" in splits}
    V = int(prepared.vocab_size) or 1 + max(int(t.max()) for t in [*train.values(), *vals.values()] if len(t))
    model = fit_ngram(train, V, weights, pooling=pooling, discount=discount)
    res = {s: ngram_nll(model, t, seq_len, max_tokens, byte_lengths) for s, t in vals.items()}
    out = {}
    for order in ("unigram", "bigram"):
        out.update(_lines(order, {s: r[order] for s, r in res.items()}, roles, weights))
    out["ngram/discount"] = model.discount
    if per_source:
        out.update(_own_lines(train, vals, V, seq_len, max_tokens, byte_lengths, discount, roles, weights))
    return out
