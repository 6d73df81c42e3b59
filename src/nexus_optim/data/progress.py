"""Progress bars of `prepare_data`'s stages (documents read, shards tokenized): one tqdm bar
per source and stage, shown when ``progress`` is on."""

from __future__ import annotations

import time


class Bar:
    """A tqdm bar for one source and stage: on-disk MB read (MB/s, ETA), documents, tokens/s."""

    def __init__(self, on: bool, desc: str, total: int):
        self.on, self.docs, self.tokens, self.t0 = on, 0, 0, time.time()
        self.bar = None
        if on:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                            mininterval=1.0, leave=True, dynamic_ncols=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self._postfix()
            self.bar.close()

    def _postfix(self):
        dt = max(time.time() - self.t0, 1e-9)
        post = {"docs": f"{self.docs:,}"}
        if self.tokens:
            post["tok/s"] = f"{self.tokens / dt:,.0f}"
        self.bar.set_postfix(post, refresh=False)

    def bytes(self, n: int) -> None:
        if self.bar is not None and n:
            self._postfix()
            self.bar.update(n)

    def batch(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens

    def count_docs(self, docs):
        for d in docs:
            self.docs += 1
            yield d
