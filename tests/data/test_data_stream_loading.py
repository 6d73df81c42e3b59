"""Loading at any size (issue 19, item 3): micro-batches drawn from shard sets by memmap
equal those drawn from one array; the source schedule is the same on every rank and the
windows differ; a resumed sampler continues exactly from its step index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nexus_optim.data import MixtureSampler, iter_eval_windows
from nexus_optim.data.shards import ShardSet

W = {"prose": 0.5, "math": 0.3, "code": 0.2}


def _arrays():
    rng = np.random.default_rng(0)
    return {n: rng.integers(0, 60000, 20_000 + 777 * k).astype(np.uint16) for k, n in enumerate(W)}


def _as_sets(arrays, tmp_path):
    """Each array written as uneven shard files and read back as a ShardSet."""
    out = {}
    for n, a in arrays.items():
        cuts = [0, 3001, 3002, 9000, 15555, len(a)]
        paths = []
        for k, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
            p = tmp_path / f"{n}.{k}.bin"
            a[lo:hi].tofile(p)
            paths.append(p)
        out[n] = ShardSet(paths, np.diff(cuts), np.uint16)
    return out


def _draw(s, n):
    return [s.next() for _ in range(n)]


def _same(a, b):
    return all(x.source == y.source and x.row_sources == y.row_sources and torch.equal(x.input_ids, y.input_ids)
               for x, y in zip(a, b))


@pytest.mark.parametrize("mode, shuffle", [("homogeneous", True), ("homogeneous", False), ("mixed", False)])
def test_shard_sets_give_the_same_micro_batches_as_one_array(tmp_path, mode, shuffle):
    arrays = _arrays()
    sets = _as_sets(arrays, tmp_path)
    for n in W:
        assert len(sets[n]) == len(arrays[n])
        assert np.array_equal(np.asarray(sets[n]), arrays[n])
        assert np.array_equal(sets[n][2990:3010], arrays[n][2990:3010])  # across two boundaries
    kw = dict(seq_len=512, micro_batch_size=8, mode=mode, group_size=4, shuffle_sources=shuffle, seed=3)
    assert _same(_draw(MixtureSampler(sets, W, **kw), 40), _draw(MixtureSampler(arrays, W, **kw), 40))
    a = [b for b in iter_eval_windows(sets["math"], 256, 7)]
    b = [b for b in iter_eval_windows(arrays["math"], 256, 7)]
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_ranks_share_the_source_schedule_and_draw_different_windows():
    arrays = _arrays()
    kw = dict(seq_len=256, micro_batch_size=4, group_size=4, shuffle_sources=True, seed=7)
    ranks = [_draw(MixtureSampler(arrays, W, rank=r, **kw), 64) for r in range(3)]
    for r in (1, 2):
        assert [m.source for m in ranks[r]] == [m.source for m in ranks[0]]
        assert not any(torch.equal(x.input_ids, y.input_ids) for x, y in zip(ranks[r], ranks[0]))
    # rank 0 draws what a single process drew before ranks existed (the same stream)
    single = _draw(MixtureSampler(arrays, W, **kw), 64)
    assert _same(single, ranks[0])
    # each row is a window of the source the schedule names
    for mb in ranks[1]:
        src = arrays[mb.source]
        for row in mb.input_ids.numpy():
            hits = np.flatnonzero(src[: len(src) - 255] == row[0])
            assert any(np.array_equal(src[h:h + 256], row) for h in hits)


@pytest.mark.parametrize("mode", ["homogeneous", "mixed"])
def test_resume_from_the_step_index_is_exact(tmp_path, mode):
    sets = _as_sets(_arrays(), tmp_path)
    kw = dict(seq_len=128, micro_batch_size=4, mode=mode, group_size=3, shuffle_sources=True, seed=1, rank=1)
    full = _draw(MixtureSampler(sets, W, **kw), 30)
    first = MixtureSampler(sets, W, **kw)
    _draw(first, 11)
    state = first.state_dict()
    again = MixtureSampler(sets, W, **kw)
    again.load_state_dict(state)
    assert _same(_draw(again, 19), full[11:])
    other_rank = MixtureSampler(sets, W, **{**kw, "rank": 0})
    with pytest.raises(ValueError, match="rank 1's, this sampler is rank 0's"):
        other_rank.load_state_dict(state)
    old = {k: v for k, v in state.items() if k != "rank"}  # a checkpoint from before ranks
    again.load_state_dict(old)
    assert again.step == 11


def test_shard_set_indexing():
    a = np.arange(100, dtype=np.uint32)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        paths = []
        for k, (lo, hi) in enumerate([(0, 10), (10, 10), (10, 55), (55, 100)]):
            p = Path(d) / f"{k}.bin"
            a[lo:hi].tofile(p)
            paths.append(p)
        s = ShardSet(paths, [10, 0, 45, 45], np.uint32)
        for lo, hi in [(0, 100), (5, 60), (9, 11), (10, 10), (54, 56), (99, 100), (-5, None), (None, 3)]:
            assert np.array_equal(s[lo:hi], a[lo:hi]), (lo, hi)
        assert np.array_equal(s[3:90:7], a[3:90:7])
        assert s[-1] == 99 and s[10] == 10 and s[55] == 55
        with pytest.raises(IndexError):
            s[100]
        assert s.tolist() == a.tolist() and len(s) == 100
