"""Count n-gram reference lines (`nexus_optim.eval.ngram`)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from token_arrays import prepared_from_arrays
from nexus_optim.eval.ngram import (eval_pairs, fit_ngram, ney_discount, ngram_nll, ngram_reference,
                                    pair_counts)


def _markov(n: int, V: int, seed: int) -> np.ndarray:
    """A sparse random first-order Markov chain (each token has 3 likely successors)."""
    rng = np.random.default_rng(seed)
    succ = rng.integers(0, V, size=(V, 3))
    out = np.empty(n, np.int64)
    out[0] = 0
    choice = rng.integers(0, 3, size=n)
    for i in range(1, n):
        out[i] = succ[out[i - 1], choice[i]]
    return out


def test_unigram_loss_is_the_entropy_by_hand():
    train = np.array([0, 0, 1, 2] * 100)  # p = 1/2, 1/4, 1/4
    model = fit_ngram({"a": train}, vocab_size=3)
    # one window covering [x] + train: the targets are exactly the training stream
    res = ngram_nll(model, np.concatenate([[1], train]), seq_len=len(train) + 1)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert res["unigram"]["tokens"] == len(train)
    assert res["unigram"]["loss"] == pytest.approx(entropy, rel=1e-12)


def test_bigram_on_a_deterministic_cycle_is_near_zero():
    V = 10
    train = np.tile(np.arange(V), 500)
    model = fit_ngram({"a": train}, vocab_size=V)
    res = ngram_nll(model, np.tile(np.arange(V), 20), seq_len=50)
    assert res["unigram"]["loss"] == pytest.approx(math.log(V), rel=1e-9)
    assert res["bigram"]["loss"] < 0.01
    assert res["bigram"]["loss"] < res["unigram"]["loss"]


def test_smoothing_gives_finite_loss_on_unseen_pairs_and_tokens():
    V = 20  # tokens 10..19 never appear in training
    model = fit_ngram({"a": np.tile(np.arange(10), 100)}, vocab_size=V)
    val = np.array([0, 5, 5, 19, 12, 3, 0, 2])  # unseen pairs, unseen tokens, unseen contexts
    res = ngram_nll(model, val, seq_len=len(val))
    for order in ("unigram", "bigram"):
        assert math.isfinite(res[order]["loss"]) and res[order]["loss"] > 0
    # every conditional distribution sums to one (seen and unseen contexts)
    u = np.repeat(np.arange(V), V)
    v = np.tile(np.arange(V), V)
    p = np.exp(model.bigram_logprob(u, v)).reshape(V, V)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(model.unigram_logprob(np.arange(V))).sum(), 1.0, rtol=1e-12)


# ----------------------------------------------------------------------- brute force reference
def _brute(streams: dict, weights: dict, V: int, val: list, seq_len: int) -> tuple[float, float]:
    """The documented estimator written with dicts and loops (no numpy in the model)."""
    total = sum(len(s) for s in streams.values())
    wsum = sum(weights.values())
    uni, pairs, raw = Counter(), Counter(), Counter()
    for name, s in streams.items():
        a = weights[name] / wsum * total / len(s)
        for t in s:
            uni[t] += a
        for x, y in zip(s[:-1], s[1:]):
            pairs[(x, y)] += a
            raw[(x, y)] += 1
    n1 = sum(1 for c in raw.values() if c == 1)
    n2 = sum(1 for c in raw.values() if c == 2)
    D = min(max(n1 / (n1 + 2 * n2), 0.1), 0.9) if n1 + n2 else 0.75
    zu = sum(uni[t] if uni[t] > 0 else 0.5 for t in range(V))
    cont = {t: len({x for (x, y) in pairs if y == t}) for t in range(V)}
    zc = sum(c if c > 0 else 0.5 for c in cont.values())

    def p_bigram(x, y):
        p_lo = (cont[y] if cont[y] > 0 else 0.5) / zc
        cx = sum(c for (a, _), c in pairs.items() if a == x)
        if cx == 0:
            return p_lo
        lam = sum(min(c, D) for (a, _), c in pairs.items() if a == x) / cx
        return max(pairs.get((x, y), 0.0) - D, 0.0) / cx + lam * p_lo

    nll_u = nll_b = 0.0
    n = 0
    for w in range(len(val) // seq_len):
        win = val[w * seq_len:(w + 1) * seq_len]
        for x, y in zip(win[:-1], win[1:]):
            nll_u -= math.log((uni[y] if uni[y] > 0 else 0.5) / zu)
            nll_b -= math.log(p_bigram(x, y))
            n += 1
    return nll_u / n, nll_b / n


@pytest.mark.parametrize("weights", [{"a": 1.0, "b": 1.0}, {"a": 0.2, "b": 0.8}])
def test_matches_brute_force_on_a_small_example(weights):
    rng = np.random.default_rng(3)
    V = 7  # token 6 never appears in training
    streams = {"a": rng.integers(0, 4, 60).tolist(), "b": rng.integers(2, 6, 25).tolist()}
    val = rng.integers(0, 7, 53).tolist()
    want_u, want_b = _brute(streams, weights, V, val, seq_len=8)
    model = fit_ngram({k: np.array(s) for k, s in streams.items()}, V, weights)
    got = ngram_nll(model, np.array(val), seq_len=8)
    assert got["unigram"]["tokens"] == 6 * 7
    assert got["unigram"]["loss"] == pytest.approx(want_u, rel=1e-12)
    assert got["bigram"]["loss"] == pytest.approx(want_b, rel=1e-12)


def test_training_stream_beats_its_shuffle():
    train = _markov(20_000, V=50, seed=0)
    model = fit_ngram({"a": train}, vocab_size=50)
    shuffled = np.random.default_rng(1).permutation(train)
    own, shuf = ngram_nll(model, train, 128), ngram_nll(model, shuffled, 128)
    assert own["bigram"]["loss"] < shuf["bigram"]["loss"] - 1.0
    assert own["bigram"]["loss"] < own["unigram"]["loss"]
    assert own["unigram"]["loss"] == pytest.approx(shuf["unigram"]["loss"], abs=0.02)


def test_counting_helpers():
    t = np.array([1, 2, 1, 2, 3], np.uint16)
    codes, counts = pair_counts(t, vocab_size=4, chunk=2)  # chunked == one pass
    assert dict(zip(codes.tolist(), counts.tolist())) == {1 * 4 + 2: 2, 2 * 4 + 1: 1, 2 * 4 + 3: 1}
    assert ney_discount(np.array([1, 1, 2, 5])) == pytest.approx(2 / (2 + 2))
    assert ney_discount(np.array([5, 7])) == 0.75
    ctx, tgt = eval_pairs(np.arange(11), seq_len=4, max_tokens=None)  # two windows, tail dropped
    assert ctx.tolist() == [0, 1, 2, 4, 5, 6] and tgt.tolist() == [1, 2, 3, 5, 6, 7]
    assert eval_pairs(np.arange(11), seq_len=4, max_tokens=5)[1].tolist() == [1, 2, 3]


# ----------------------------------------------------------------------- on a PreparedData
def test_ngram_reference_keys_pooling_and_bits_per_byte(tmp_path):
    V = 60
    a, b, c = _markov(6000, V, 0), _markov(3000, V, 1), _markov(2000, V, 2)
    arrays = {("a", "train"): a[:5000], ("a", "val"): a[5000:], ("b", "train"): b[:2500],
              ("b", "val"): b[2500:], ("ood_x", "val"): c}
    roles, weights = {"a": "train", "b": "train", "ood_x": "ood"}, {"a": 1.0, "b": 3.0, "ood_x": 0.0}
    prepared = prepared_from_arrays(tmp_path, arrays, roles, weights, V,
                                    sources=list(dict.fromkeys(s for s, _ in arrays)))
    lengths = np.arange(V) % 4 + 1
    out = ngram_reference(prepared, seq_len=64, byte_lengths=lengths, per_source=True)
    for order in ("unigram", "bigram"):
        for s in ("a", "b", "ood_x"):
            assert math.isfinite(out[f"ngram/{order}/val/{s}"]) and f"ngram/{order}/bpb/{s}" in out
        va, vb = out[f"ngram/{order}/val/a"], out[f"ngram/{order}/val/b"]
        assert out[f"ngram/{order}/val/id"] == pytest.approx((va + 3 * vb) / 4)
        assert out[f"ngram/{order}/val/ood"] == out[f"ngram/{order}/val/ood_x"]  # one OOD source
        assert f"ngram/{order}_own/val/id" in out and f"ngram/{order}_own/val/ood" not in out
    assert out["ngram/bigram/val/id"] < out["ngram/unigram/val/id"]
    # different chains: the OOD source is far worse than in-distribution under the bigram
    assert out["ngram/bigram/val/ood"] > out["ngram/bigram/val/id"] + 1.0
    # bits/byte from the same NLL and the target bytes of the same windows
    ctx, tgt = eval_pairs(a[5000:], 64)
    model = fit_ngram({"a": a[:5000], "b": b[:2500]}, V, {"a": 1.0, "b": 3.0})
    nll = -model.bigram_logprob(ctx, tgt).sum()
    assert out["ngram/bigram/bpb/a"] == pytest.approx(nll / (math.log(2) * lengths[tgt].sum()))
    assert out["ngram/bigram/val/a"] == pytest.approx(nll / len(tgt))
    # the per-source fit of "a" sees only "a": better on "a" than the pooled fit
    assert out["ngram/bigram_own/val/a"] < out["ngram/bigram/val/a"]
    assert 0.1 <= out["ngram/discount"] <= 0.9


def test_weighted_and_concat_pooling_agree_for_proportional_weights():
    a, b = _markov(4000, 30, 0), _markov(2000, 30, 1)
    val = _markov(1000, 30, 0)
    r = [ngram_nll(fit_ngram({"a": a, "b": b}, 30, w, pooling=p), val, 100)["bigram"]["loss"]
         for w, p in (({"a": 2.0, "b": 1.0}, "weighted"), (None, "concat"))]
    assert r[0] == pytest.approx(r[1], rel=1e-12)
    with pytest.raises(ValueError, match="pooling"):
        fit_ngram({"a": a}, 30, pooling="mean")
    with pytest.raises(ValueError, match="vocab_size"):
        fit_ngram({"a": a}, 10)
