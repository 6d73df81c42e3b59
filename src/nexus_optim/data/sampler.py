"""Deterministic, resumable mixture sampling of random token windows.

Counter-based: micro-batch ``i`` is drawn from ``np.random.default_rng([seed, 0, i])`` (and
source groups from ``[seed, 1, g]``), so the stream depends only on ``seed`` and the index,
never on global RNG state; resuming only needs the index.

Data parallel: every rank builds the sampler with the same ``seed`` and its own ``rank``.
The source schedule (which source each micro-batch comes from, homogeneous mode) depends on
``seed`` and the index only, so it is the same on every rank; the windows of rank ``r > 0``
come from ``[seed, 0, i, r]`` (rank 0 keeps ``[seed, 0, i]``: one process draws what it
always drew), so the ranks read different windows of the same source.

The token arrays may be memmaps or `shards.ShardSet`s (a split written as several shards):
a window reads only its ``seq_len`` tokens, never a whole shard.

Modes:
* ``homogeneous``: each micro-batch comes from one source. With ``shuffle_sources=False`` the
  source is drawn i.i.d. by weight for every micro-batch. With ``shuffle_sources=True`` each
  consecutive group of ``group_size`` micro-batches gets its sources by stratified
  (systematic) sampling of the weights, then a random permutation: every source appears
  round(K * w) times up to +-1, in random order, and the long-run proportions equal the weights.
* ``mixed``: each row of a micro-batch is drawn i.i.d. by weight; ``source`` is ``"mixed"``.
* ``mixed-paired``: the homogeneous mode's windows, re-split. Each group of ``group_size``
  micro-batches (one outer step) holds exactly the rows homogeneous mode draws for it (same
  seed, schedule and windows), dealt round-robin: row ``r`` of homogeneous micro-batch ``m``
  goes to position ``r * K + m`` of the group, cut into K micro-batches of ``B`` rows, so
  every micro-batch mixes the group's sources. A control paired by data with a homogeneous
  run: the outer step sees the same tokens, only their split into micro-batches differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MODES = ("homogeneous", "mixed", "mixed-paired")


@dataclass
class MicroBatch:
    source: str  # a source name, or "mixed"
    input_ids: torch.Tensor  # LongTensor [B, seq_len]
    row_sources: list[str] | None = None  # per-row source names in the mixed modes


class MixtureSampler:
    """Random windows of ``seq_len`` tokens from per-source token arrays, mixed by weight."""

    def __init__(self, data: dict[str, np.ndarray], weights: dict[str, float], seq_len: int,
                 micro_batch_size: int, mode: str = "homogeneous", group_size: int = 1,
                 shuffle_sources: bool = False, seed: int = 0, rank: int = 0):
        if mode not in MODES:
            raise ValueError(f"sampler.mode: {mode!r} is not one of {', '.join(repr(m) for m in MODES)}")
        if seq_len < 1 or micro_batch_size < 1 or group_size < 1:
            raise ValueError("sampler: seq_len, micro_batch_size and group_size must be >= 1")
        self.names = [n for n in data if weights.get(n, 0.0) > 0]  # order of `data` is kept
        if not self.names:
            raise ValueError("sampler: no source with positive weight")
        for n in self.names:
            if len(data[n]) < seq_len:
                raise ValueError(f"sampler: source {n!r} has {len(data[n])} tokens, fewer than seq_len={seq_len}")
        w = np.array([float(weights[n]) for n in self.names])
        self.probs = w / w.sum()
        self.data = data
        self.seq_len, self.batch = int(seq_len), int(micro_batch_size)
        self.mode, self.group_size, self.shuffle = mode, int(group_size), bool(shuffle_sources)
        self.seed = int(seed)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise ValueError(f"sampler: rank {rank!r} must be an integer >= 0")
        self.rank = rank
        self.step = 0
        self._paired: tuple[int, torch.Tensor, list[str]] | None = None  # (group, rows, sources): a cache

    # -- source choice -------------------------------------------------------------------
    def _group_sources(self, g: int) -> np.ndarray:
        """Source indices for the K micro-batches of group ``g`` (stratified, then permuted)."""
        rng = np.random.default_rng([self.seed, 1, g])
        k = self.group_size
        u = (np.arange(k) + rng.random()) / k
        idx = np.searchsorted(np.cumsum(self.probs), u, side="right")
        idx = np.minimum(idx, len(self.names) - 1)
        return rng.permutation(idx)

    def source_for(self, i: int) -> int:
        """Index (into ``self.names``) of the source of micro-batch ``i`` in homogeneous mode."""
        if self.shuffle:
            return int(self._group_sources(i // self.group_size)[i % self.group_size])
        rng = np.random.default_rng([self.seed, 2, i])
        return int(rng.choice(len(self.names), p=self.probs))

    # -- sampling --------------------------------------------------------------------------
    def _windows(self, rng: np.random.Generator, src: np.ndarray) -> torch.Tensor:
        out = np.empty((len(src), self.seq_len), dtype=np.int64)
        for r, s in enumerate(src):
            tokens = self.data[self.names[s]]
            start = int(rng.integers(0, len(tokens) - self.seq_len + 1))
            out[r] = tokens[start:start + self.seq_len]
        return torch.from_numpy(out)

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0, i] if self.rank == 0 else [self.seed, 0, i, self.rank])

    def _homogeneous(self, i: int) -> MicroBatch:
        s = self.source_for(i)
        return MicroBatch(self.names[s], self._windows(self._rng(i), np.full(self.batch, s)))

    def _paired_mixed(self, i: int) -> MicroBatch:
        """Micro-batch ``i`` of mode ``mixed-paired`` (module docstring): its group's
        homogeneous rows, dealt round-robin."""
        k, g = self.group_size, i // self.group_size
        if self._paired is None or self._paired[0] != g:
            group = [self._homogeneous(g * k + m) for m in range(k)]
            rows = torch.stack([mb.input_ids for mb in group], dim=1).reshape(k * self.batch, self.seq_len)
            sources = [group[m].source for r in range(self.batch) for m in range(k)]
            self._paired = (g, rows, sources)
        lo = (i % k) * self.batch
        _, rows, sources = self._paired
        return MicroBatch("mixed", rows[lo:lo + self.batch].clone(), sources[lo:lo + self.batch])

    def next(self) -> MicroBatch:
        i = self.step
        if self.mode == "mixed":
            rng = self._rng(i)
            src = rng.choice(len(self.names), size=self.batch, p=self.probs)
            mb = MicroBatch("mixed", self._windows(rng, src), [self.names[s] for s in src])
        elif self.mode == "mixed-paired":
            mb = self._paired_mixed(i)
        else:
            mb = self._homogeneous(i)
        self.step += 1
        return mb

    def __iter__(self):
        while True:
            yield self.next()

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "names": list(self.names), "mode": self.mode,
                "group_size": self.group_size, "shuffle_sources": self.shuffle, "rank": self.rank}

    def load_state_dict(self, d: dict) -> None:
        if list(d.get("names", self.names)) != self.names:
            raise ValueError(f"sampler state is for sources {d.get('names')}, this sampler has {self.names}")
        if d.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state has seed {d.get('seed')}, this sampler has seed {self.seed}")
        if d.get("rank", self.rank) != self.rank:
            raise ValueError(f"sampler state is rank {d.get('rank')}'s, this sampler is rank {self.rank}'s")
        self.step = int(d["step"])
