"""The documents stage of `prepare_data`: each source's documents written to
``docs/<name>-<key>/`` as ``train.jsonl`` / ``val.jsonl`` and ``meta.json`` (key: `doc_key`,
a hash of the source's config). Builtin kinds are built in a process pool; ``files``
sources are streamed from their files meanwhile, never held whole."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from nexus_optim.data.config import DataConfig, SourceConfig
from nexus_optim.data.prepared import _write_json, read_docs, split_single_doc
from nexus_optim.data.progress import Bar
from nexus_optim.data.sources import KINDS, BuildContext, build_part, plan
from nexus_optim.data.sources.files import STREAM_VERSION, iter_documents, source_files, total_bytes
from nexus_optim.data.text import stable_hash, unit_hash

DOCS_VERSION = 1
_COST = {"mathematics_dataset": 0, "gsm_multilingual": 1, "gsm": 2, "gcide": 3, "golang": 4}


def doc_key(s: SourceConfig, cfg: DataConfig) -> str:
    """The cache key of a source's documents: its config, its files (size, mtime), the seed,
    the val fraction of a train source and the versions of the code that builds them."""
    files = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in source_files(s.paths)]
    versions = [KINDS[k].version for k, _, _ in plan(s.kind, s.options, s.max_chars)]
    key = {"name": s.name, "kind": s.kind, "role": s.role, "options": s.options,
           "max_chars": s.max_chars, "files": files, "seed": cfg.seed,
           "val_fraction": cfg.val_fraction if s.role == "train" else None,
           "versions": versions, "v": DOCS_VERSION}
    if s.kind == "files":
        key["stream"] = STREAM_VERSION
    return stable_hash(key)


def _run_task(task):
    kind, ctx, options, budget = task
    t = time.time()
    return build_part(kind, ctx, options, budget), time.time() - t


class _DocsFile:
    """One split's ``.jsonl`` being written: a temp file renamed into place by ``finish``,
    with its size and sha256 computed on the way."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + f".tmp{os.getpid()}")
        self.f = open(self.tmp, "wb")
        self.h, self.size, self.docs, self.chars, self.bytes = hashlib.sha256(), 0, 0, 0, 0

    def add(self, doc: str) -> None:
        line = (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")
        self.f.write(line)
        self.h.update(line)
        self.size += len(line)
        self.docs += 1
        self.chars += len(doc)
        self.bytes += len(doc) if doc.isascii() else len(doc.encode("utf-8"))

    def reopen(self) -> list[str]:
        """The documents written so far (small sources only: the rare split fix-ups), and a
        fresh empty file."""
        self.f.close()
        docs = read_docs(self.tmp)
        self.__init__(self.path)
        return docs

    def finish(self) -> dict:
        self.f.close()
        os.replace(self.tmp, self.path)
        return {"size": self.size, "sha256": self.h.hexdigest()}

    def abort(self) -> None:
        self.f.close()
        if self.tmp.exists():
            self.tmp.unlink()


def _write_documents(cfg: DataConfig, s: SourceConfig, docs, out_dir: Path) -> None:
    """Stream one source's documents into ``train.jsonl`` / ``val.jsonl`` and ``meta.json``.

    Document ``i`` of a train source goes to val when ``unit_hash(seed, name, i) <
    val_fraction`` (`text.split_docs`, computed one document at a time, with its fix-ups:
    at least one document each way, a single document cut in two)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in out_dir.glob("*.jsonl.tmp*"):  # left by a killed build
        if p.name.split(".jsonl.tmp")[0] in ("train", "val"):
            p.unlink()
    out = {"val": _DocsFile(out_dir / "val.jsonl")}
    if s.role == "train":
        out["train"] = _DocsFile(out_dir / "train.jsonl")
    n, lo, hi = 0, (2.0, -1), (-1.0, -1)
    try:
        for i, d in enumerate(docs):
            if s.role == "train":
                u = unit_hash(cfg.seed, s.name, i)
                lo, hi = min(lo, (u, i)), max(hi, (u, -i))
                out["val" if u < cfg.val_fraction else "train"].add(d)
            else:
                out["val"].add(d)
            n += 1
        if n == 0:
            raise ValueError(f"source {s.name!r} produced no documents")
        if s.role == "train" and n == 1:
            (doc,) = out["train"].reopen() + out["val"].reopen()
            train_part, val_part = split_single_doc(doc, cfg.val_fraction, s.name)
            out["train"].add(train_part)
            out["val"].add(val_part)
        elif s.role == "train" and (out["val"].docs == 0 or out["train"].docs == 0):
            src, dst, j = ("train", "val", lo[1]) if out["val"].docs == 0 else ("val", "train", -hi[1])
            kept = out[src].reopen()  # everything went one way: the source is this split
            for k, d in enumerate(kept):
                out[dst if k == j else src].add(d)
        meta = {"name": s.name, "kind": s.kind, "role": s.role, "docs": {}, "chars": {}, "bytes": {},
                "files": {}}
        for split, w in out.items():
            meta["docs"][split], meta["chars"][split], meta["bytes"][split] = w.docs, w.chars, w.bytes
            meta["files"][split] = w.finish()
    finally:
        for w in out.values():
            w.abort()
    _write_json(out_dir / "meta.json", meta)  # written last: marks the directory complete


def build_documents(cfg: DataConfig, todo: list[tuple[SourceConfig, Path]], workers: int, log,
                    progress: bool = False) -> None:
    """Documents of the ``todo`` sources: builtin kinds are built (in a process pool) as
    lists; ``files`` sources are streamed from their files in this process meanwhile."""
    tasks, owner = [], []
    streamed = [(s, d) for s, d in todo if s.kind == "files"]
    for s, _ in todo:
        if s.kind == "files":
            continue
        ctx = BuildContext(data_dir=cfg.data_dir, seed=cfg.seed, name=s.name, paths=list(s.paths))
        for kind, opts, budget in plan(s.kind, s.options, s.max_chars):
            tasks.append((kind, ctx, opts, budget))
            owner.append(s.name)
    order = sorted(range(len(tasks)), key=lambda i: (_COST.get(tasks[i][0], 9), i))
    results: dict[int, list[str]] = {}
    ex = None
    if workers > 1 and len(tasks) > 1:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ex = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context(method))
    try:
        futs = {i: ex.submit(_run_task, tasks[i]) for i in order} if ex else {}
        for s, out_dir in streamed:
            ctx = BuildContext(data_dir=cfg.data_dir, seed=cfg.seed, name=s.name, paths=list(s.paths))
            with Bar(progress, f"{s.name}: reading", total_bytes(s.paths)) as bar:
                docs = bar.count_docs(iter_documents(ctx, s.options, s.max_chars, on_bytes=bar.bytes))
                t = time.time()
                _write_documents(cfg, s, docs, out_dir)
            log(f"built {s.name}/files: {bar.docs} docs in {time.time() - t:.1f}s")
        for i in order:
            results[i], dt = futs[i].result() if ex else _run_task(tasks[i])
            log(f"built {owner[i]}/{tasks[i][0]}: {len(results[i])} docs in {dt:.1f}s")
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
    for s, out_dir in todo:
        if s.kind != "files":
            _write_documents(cfg, s, (d for i in range(len(tasks)) if owner[i] == s.name for d in results[i]),
                             out_dir)
