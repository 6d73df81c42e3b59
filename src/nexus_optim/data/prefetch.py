"""Draw micro-batches ahead in a background thread (``train.prefetch``).

`Prefetcher` wraps a `sampler.MixtureSampler` and has its interface (``next``,
``state_dict``, ``load_state_dict``): a daemon thread keeps up to ``depth`` micro-batches
ready (windows read from the memmaps, optionally copied into pinned memory so that the
trainer's ``.to(cuda, non_blocking=True)`` is asynchronous), while the caller trains on the
previous one. The sampler is counter-based (micro-batch ``i`` depends only on the seed, the
rank and ``i``), so the stream is exactly the sampler's own; ``state_dict`` reports the
position of the caller (the micro-batches it has taken), not of the thread, so a checkpoint
resumes exactly whatever was drawn ahead. Errors in the thread reach the caller at its next
``next()``.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from nexus_optim.data.sampler import MicroBatch, MixtureSampler


class Prefetcher:
    """``depth`` (>= 1) micro-batches of ``sampler`` drawn ahead; ``pin``: pinned memory."""

    def __init__(self, sampler: MixtureSampler, depth: int, pin: bool = False):
        if depth < 1:
            raise ValueError(f"prefetch: depth must be >= 1, got {depth}")
        self.sampler, self.depth, self.pin = sampler, depth, pin
        self.step = sampler.step  # the caller's position
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

    def _produce(self, stop: threading.Event, q: queue.Queue) -> None:
        try:
            while not stop.is_set():
                mb = self.sampler.next()
                if self.pin:
                    mb.input_ids = mb.input_ids.pin_memory()
                while not stop.is_set():
                    try:
                        q.put(mb, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the caller
            q.put(e)

    def _start(self) -> None:
        self.sampler.step = self.step
        self._stop, self._queue = threading.Event(), queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._produce, args=(self._stop, self._queue),
                                        daemon=True, name="nexus-prefetch")
        self._thread.start()

    def next(self) -> MicroBatch:
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        self.step += 1
        return item

    def __iter__(self):
        while True:
            yield self.next()

    def close(self) -> None:
        """Stop the thread and drop what it drew ahead (the next ``next()`` restarts it
        at the caller's position)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sampler.step = self.step

    def state_dict(self) -> dict[str, Any]:
        return {**self.sampler.state_dict(), "step": self.step}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.close()
        self.sampler.load_state_dict(d)  # validates
        self.step = self.sampler.step
