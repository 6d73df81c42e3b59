"""`data.prefetch.Prefetcher` (``train.prefetch``): the sampler's own stream, drawn ahead in a
thread, with the caller's position in ``state_dict`` so a checkpoint resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nexus_optim.data.prefetch import Prefetcher
from nexus_optim.data.sampler import MixtureSampler


def _sampler(mode: str = "homogeneous", step: int = 0) -> MixtureSampler:
    data = {"a": np.arange(5000, dtype=np.uint16) % 97, "b": np.arange(7000, dtype=np.uint16) % 89,
            "c": np.arange(3000, dtype=np.uint16) % 71}
    s = MixtureSampler(data, {"a": 0.5, "b": 0.3, "c": 0.2}, seq_len=16, micro_batch_size=4,
                       mode=mode, group_size=3, shuffle_sources=True, seed=7, rank=1)
    s.step = step
    return s


def _same(a, b) -> bool:
    return a.source == b.source and torch.equal(a.input_ids, b.input_ids)


@pytest.mark.parametrize("mode", ["homogeneous", "mixed", "mixed-paired"])
def test_prefetched_stream_is_the_samplers(mode):
    plain, ahead = _sampler(mode), Prefetcher(_sampler(mode), depth=3)
    try:
        assert all(_same(plain.next(), ahead.next()) for _ in range(25))
    finally:
        ahead.close()


def test_state_dict_is_the_callers_position_and_resumes_exactly():
    ahead = Prefetcher(_sampler(), depth=4)
    for _ in range(5):
        ahead.next()
    while ahead._queue.qsize() < 4:  # the thread has drawn ahead of the caller
        pass
    state = ahead.state_dict()
    assert state["step"] == 5 and ahead.sampler.step > 5
    expected = [ahead.next() for _ in range(6)]
    ahead.close()
    resumed = _sampler()
    resumed.load_state_dict(state)  # a plain sampler continues where the caller was
    assert all(_same(e, resumed.next()) for e in expected)
    again = Prefetcher(_sampler(), depth=2)  # and a prefetcher rewound mid-stream
    again.next()
    again.load_state_dict(state)
    assert all(_same(e, again.next()) for e in expected)
    again.close()


def test_refuses_another_runs_state_and_a_bad_depth():
    ahead = Prefetcher(_sampler(), depth=2)
    with pytest.raises(ValueError, match="seed"):
        ahead.load_state_dict({**ahead.state_dict(), "seed": 8})
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetcher(_sampler(), depth=0)


class _Failing(MixtureSampler):
    def next(self):
        if self.step == 3:
            raise OSError("shard unreadable")
        return super().next()


def test_an_error_in_the_thread_reaches_the_caller():
    base = _sampler()
    failing = _Failing(base.data, {"a": 0.5, "b": 0.3, "c": 0.2}, 16, 4, seed=7)
    ahead = Prefetcher(failing, depth=2)
    for _ in range(3):
        ahead.next()
    with pytest.raises(OSError, match="shard unreadable"):
        ahead.next()
    assert ahead._thread is None


def test_trainer_with_prefetch_equals_without(tiny_config, tmp_path):
    from nexus_optim.train.config import from_dict
    from nexus_optim.train.logging import read_metrics
    from nexus_optim.train.loop import Trainer, train

    def losses(out):
        return [r["train/loss"] for r in read_metrics(out) if "train/loss" in r]

    base = {"train.steps": 6, "train.ckpt_every": 2, "train.eval_every": 0, "train.threads": 1}
    train(from_dict(tiny_config(**base, **{"train.out_dir": str(tmp_path / "plain")})))
    cfg = from_dict(tiny_config(**base, **{"train.out_dir": str(tmp_path / "ahead"),
                                           "train.prefetch": 3}))
    trainer = Trainer(cfg)  # stopped after step 3 (the newest checkpoint is step 2), resumed
    try:
        trainer.run(until=3)
    finally:
        trainer.close()
    assert trainer.sampler._thread is None  # close() stopped it
    train(cfg, resume=True)
    assert losses(tmp_path / "ahead") == losses(tmp_path / "plain")
