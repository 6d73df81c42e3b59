"""MixtureSampler determinism, proportions and resume; eval windows."""

import random
from collections import Counter

import numpy as np
import pytest
import torch

from nexus_optim.data import MixtureSampler, iter_eval_windows


def _data():
    # each source's tokens live in a distinct id range, so a window's source is recognisable
    return {name: (np.arange(5000) % 1000 + 1000 * k).astype(np.uint16)
            for k, name in enumerate(["prose", "math", "code"])}


W = {"prose": 0.5, "math": 0.3, "code": 0.2}


def _take(s, n):
    return [s.next() for _ in range(n)]


def _same(a, b):
    return all(x.source == y.source and torch.equal(x.input_ids, y.input_ids) for x, y in zip(a, b))


@pytest.mark.parametrize("mode,shuffle", [("homogeneous", False), ("homogeneous", True), ("mixed", False),
                                          ("mixed-paired", True)])
def test_deterministic_and_independent_of_global_rng(mode, shuffle):
    kw = dict(seq_len=16, micro_batch_size=4, mode=mode, group_size=3, shuffle_sources=shuffle, seed=7)
    a = _take(MixtureSampler(_data(), W, **kw), 20)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    b_s = MixtureSampler(_data(), W, **kw)
    torch.rand(10), np.random.rand(10), random.random()
    b = _take(b_s, 20)
    assert _same(a, b)
    c = _take(MixtureSampler(_data(), W, **{**kw, "seed": 8}), 20)
    assert not _same(a, c)


def test_batches_are_windows_of_the_named_source():
    s = MixtureSampler(_data(), W, seq_len=32, micro_batch_size=3, seed=0)
    for mb in _take(s, 30):
        assert mb.input_ids.dtype == torch.long and mb.input_ids.shape == (3, 32)
        k = ["prose", "math", "code"].index(mb.source)
        assert ((mb.input_ids // 1000) == k).all()
        assert (torch.diff(mb.input_ids, dim=1) % 1000 == 1).all()  # contiguous windows


@pytest.mark.parametrize("shuffle,group", [(False, 1), (True, 1), (True, 4), (True, 10)])
def test_homogeneous_proportions_follow_weights(shuffle, group):
    s = MixtureSampler(_data(), W, seq_len=8, micro_batch_size=1, group_size=group,
                       shuffle_sources=shuffle, seed=0)
    n = 4000
    counts = Counter(s.source_for(i) for i in range(n))
    for k, name in enumerate(s.names):
        assert abs(counts[k] / n - W[name]) < 0.03


def test_shuffled_groups_visit_sources_in_random_order_with_exact_counts():
    w = {"prose": 1.0, "math": 1.0, "code": 1.0}
    s = MixtureSampler(_data(), w, seq_len=8, micro_batch_size=1, group_size=3, shuffle_sources=True, seed=0)
    groups = [tuple(s.source_for(3 * g + j) for j in range(3)) for g in range(50)]
    assert all(sorted(g) == [0, 1, 2] for g in groups)  # each group visits every source once
    assert len(set(groups)) > 1  # ...in varying order


def test_mixed_rows_follow_weights():
    s = MixtureSampler(_data(), W, seq_len=8, micro_batch_size=50, mode="mixed", seed=0)
    rows = Counter(src for mb in _take(s, 60) for src in mb.row_sources)
    total = sum(rows.values())
    for name, w in W.items():
        assert abs(rows[name] / total - w) < 0.03
    mb = s.next()
    assert mb.source == "mixed"
    for r, src in enumerate(mb.row_sources):
        assert (mb.input_ids[r] // 1000 == list(W).index(src)).all()


@pytest.mark.parametrize("mode,shuffle", [("homogeneous", True), ("mixed", False), ("mixed-paired", True)])
def test_resume_continues_identically(mode, shuffle):
    kw = dict(seq_len=16, micro_batch_size=2, mode=mode, group_size=4, shuffle_sources=shuffle, seed=3)
    full = _take(MixtureSampler(_data(), W, **kw), 25)
    first = MixtureSampler(_data(), W, **kw)
    _take(first, 11)  # stop mid-group
    state = first.state_dict()
    resumed = MixtureSampler(_data(), W, **kw)
    resumed.load_state_dict(state)
    assert _same(_take(resumed, 14), full[11:])


@pytest.mark.parametrize("batch,shuffle,rank", [(6, True, 0), (2, False, 0), (5, True, 1)])
def test_mixed_paired_is_the_homogeneous_groups_rows_dealt_round_robin(batch, shuffle, rank):
    """Each outer step (group of K micro-batches) holds exactly the rows homogeneous mode
    draws for it: row r of homogeneous micro-batch m at position r * K + m of the group."""
    K, groups = 3, 5
    kw = dict(seq_len=16, micro_batch_size=batch, group_size=K, shuffle_sources=shuffle, seed=11, rank=rank)
    homo = _take(MixtureSampler(_data(), W, mode="homogeneous", **kw), K * groups)
    paired = _take(MixtureSampler(_data(), W, mode="mixed-paired", **kw), K * groups)
    for g in range(groups):
        h, p = homo[g * K:(g + 1) * K], paired[g * K:(g + 1) * K]
        rows = torch.cat([mb.input_ids for mb in p])
        names = [n for mb in p for n in mb.row_sources]
        assert all(mb.source == "mixed" and mb.input_ids.shape == (batch, 16) for mb in p)
        for m in range(K):
            for r in range(batch):
                assert torch.equal(rows[r * K + m], h[m].input_ids[r]) and names[r * K + m] == h[m].source
        for mb in p:  # rows come from the named sources (id ranges of _data)
            assert [("prose", "math", "code")[int(x[0]) // 1000] for x in mb.input_ids] == mb.row_sources
        if batch >= K and len({mb.source for mb in h}) > 1:  # every micro-batch mixes the group's sources
            assert all(len(set(mb.row_sources)) > 1 for mb in p)


def test_errors():
    with pytest.raises(ValueError, match="mode"):
        MixtureSampler(_data(), W, seq_len=8, micro_batch_size=1, mode="mix")
    with pytest.raises(ValueError, match="fewer than seq_len"):
        MixtureSampler({"a": np.arange(5)}, {"a": 1.0}, seq_len=8, micro_batch_size=1)
    s = MixtureSampler(_data(), W, seq_len=8, micro_batch_size=1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        s.load_state_dict({**s.state_dict(), "seed": 1})


def test_zero_weight_source_is_never_sampled():
    s = MixtureSampler(_data(), {"prose": 1.0, "math": 0.0, "code": 1.0}, seq_len=8, micro_batch_size=1)
    assert "math" not in {mb.source for mb in _take(s, 100)}


def test_eval_windows_cover_in_order():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = list(iter_eval_windows(tokens, seq_len=64, batch_size=4))
    flat = torch.cat(batches).flatten()
    assert [b.shape[0] for b in batches] == [4, 4, 4, 3] and all(b.dtype == torch.long for b in batches)
    assert torch.equal(flat, torch.arange(15 * 64))
    capped = list(iter_eval_windows(tokens, seq_len=64, batch_size=4, max_tokens=200))
    assert torch.equal(torch.cat(capped).flatten(), torch.arange(192))
    assert list(iter_eval_windows(tokens[:10], seq_len=64, batch_size=4)) == []
