"""The data pipeline at scale (issue 19): preparation throughput against the tokenizer's own
limit, peak memory at two corpus sizes, and loader throughput.

    python benchmarks/data_pipeline.py --work /tmp/dp --sizes-mb 200 2000 --json dp.json
    python benchmarks/data_pipeline.py --work /tmp/dp --sizes-mb 5 20          # a quick look

For each size it generates (seeded, nothing downloaded) a three-source corpus of about that
many MB of UTF-8 text: ``web`` (prose-like, ``.jsonl.gz``), ``math`` (question/answer pairs,
``.parquet``) and ``code`` (Python-like, ``.jsonl.gz``), split over files of at most
``--file-mb`` MB, and measures, each in a fresh process:

* ``prepare``: ``prepare_data`` from an empty cache with a given tokenizer (``--tokenizer``,
  else a byte-level BPE of ``--vocab`` trained once on a sample of the smallest corpus, not
  timed): wall time, text MB/s, tokens/s and peak RSS (``ru_maxrss``);
* ``limit``: the same tokenizer's batch call (``shards.batch_encode``: the pipeline's own;
  the same batch size, all cores) over the first ``--limit-mb`` MB of each source's prepared
  documents, already in memory: MB/s, three times in a row (the median is used; all three
  are printed, since a shared VM moves them by 10-20 %). ``prepare / limit`` is the
  fraction of the tokenizer's speed the pipeline reaches (target >= 0.8);
* ``loader``: ``MixtureSampler`` micro-batches of ``--micro-batch`` x ``--seq`` tokens from
  the prepared train shard sets (memmaps, page cache warm, one torch thread): tokens/s
  (target >= 2 M).

Peak RSS targets: <= 1.5 GB, and the largest size within 10 % of the smallest. Prints a
Markdown table and the machine load (``os.getloadavg``); run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SOURCES = ("web", "math", "code")


# --- corpus ------------------------------------------------------------------------------

def _words(rng: np.random.Generator, n: int) -> np.ndarray:
    syll = np.array(["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "an", "el", "or", "us", "th", "er",
                     "in", "qu", "st", "ve", "do", "ra", "xi", "ph", "ge", "wa"])
    lens = rng.integers(1, 4, n)
    picks = rng.integers(0, len(syll), (n, 3))
    return np.array(["".join(syll[picks[i, :lens[i]]]) for i in range(n)])


def _sentence_pool(rng: np.random.Generator, kind: str, n: int) -> list[str]:
    """``n`` short pieces of text of one kind; documents are random runs of them."""
    if kind == "math":
        a, b = rng.integers(0, 10_000, n), rng.integers(1, 1000, n)
        ops = rng.integers(0, 3, n)
        out = []
        for x, y, o in zip(a.tolist(), b.tolist(), ops.tolist()):
            sym, val = ("+", x + y) if o == 0 else ("*", x * y) if o == 1 else ("-", x - y)
            out.append(f"Question: what is {x} {sym} {y}?\nAnswer: {x} {sym} {y} = {val}.")
        return out
    words = _words(rng, 30_000)
    zipf = np.minimum(rng.zipf(1.2, (n, 16)) - 1, len(words) - 1)
    lens = rng.integers(4, 16, n)
    if kind == "code":
        out = []
        for i in range(n):
            w = words[zipf[i, :lens[i]]]
            out.append(f"def {w[0]}_{i % 97}({w[1]}, {w[2]}):\n    return {w[1]} * {i % 13} + len({w[2]!r})\n")
        return out
    return [(" ".join(words[zipf[i, :lens[i]]]) + ".").capitalize() for i in range(n)]


def make_corpus(root: Path, mb: float, file_mb: float, seed: int = 0) -> dict[str, list[str]]:
    """Write the corpus under ``root`` (kept when already complete); returns source -> files."""
    done = root / "corpus.json"
    if done.exists():
        return json.loads(done.read_text())
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    per_source = mb * 1e6 / len(SOURCES)
    for k, src in enumerate(SOURCES):
        rng = np.random.default_rng([seed, k])
        pool = _sentence_pool(rng, src, 200_000)
        files[src] = []
        written, part = 0, 0
        while written < per_source:
            target = min(file_mb * 1e6, per_source - written)
            docs, size, d = [], 0, 0
            while size < target:
                idx = rng.integers(0, len(pool), int(rng.integers(3, 40)))
                doc = ("\n" if src != "web" else " ").join(pool[i] for i in idx) + f" [{part}.{d}]"
                docs.append(doc)
                size += len(doc)
                d += 1
            written += size
            path = root / (f"{src}-{part:04d}.parquet" if src == "math" else f"{src}-{part:04d}.jsonl.gz")
            tmp = path.with_name(path.name + ".tmp")
            if src == "math":
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({"text": docs}), tmp, row_group_size=8192)
            else:
                with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as f:
                    for doc in docs:
                        f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            os.replace(tmp, path)
            files[src].append(str(path))
            part += 1
    done.write_text(json.dumps(files))
    return files


# --- measurements (each in its own process) -------------------------------------------------

def _config(files: dict[str, list[str]], data_dir: Path, tokenizer: str) -> dict:
    return {"data_dir": str(data_dir), "tokenizer": tokenizer, "val_fraction": 0.005,
            "sources": [{"name": s, "kind": "files", "paths": files[s]} for s in SOURCES]}


def _child_prepare(cfg: dict) -> dict:
    import resource

    from nexus_optim.data import DataConfig, prepare_data

    import threading

    samples: list[tuple[float, int]] = []  # (s, RSS MiB) every 0.5 s: where the peak is
    stop = threading.Event()

    peak = [0.0, 0, 0]  # (s, RSS MiB, of it anonymous MiB) at the highest sample, every 0.1 s

    def watch():
        while not stop.wait(0.1):
            with open("/proc/self/status") as f:
                kb = {x.split(":")[0]: int(x.split()[1]) for x in f if x.startswith(("VmRSS", "RssAnon"))}
            rss = kb.get("VmRSS", 0) // 1024
            if rss > peak[1]:
                peak[:] = [round(time.perf_counter() - t, 1), rss, kb.get("RssAnon", 0) // 1024]
            if not samples or time.perf_counter() - t - samples[-1][0] >= 0.5:
                samples.append((round(time.perf_counter() - t, 1), rss))

    t, start = time.perf_counter(), time.time()
    if os.path.exists("/proc/self/status"):
        threading.Thread(target=watch, daemon=True).start()
    data = prepare_data(DataConfig.from_dict(cfg), progress=False)
    wall = time.perf_counter() - t
    stop.set()
    meta = {}
    for d in Path(cfg["data_dir"], "docs").iterdir():
        m = json.loads((d / "meta.json").read_text())
        meta[m["name"]] = m
    text_bytes = sum(sum(m["bytes"].values()) for m in meta.values())
    tokens = sum(data.train_tokens.values()) + sum(data.val_tokens.values())
    return {"wall_s": wall, "text_mb": text_bytes / 1e6, "tokens": tokens,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_sample": peak,
            "docs": {s: m["docs"] for s, m in meta.items()}, "rss_samples": samples[::max(1, len(samples) // 60)],
            "stage_done_s": {s: round(Path(cfg["data_dir"], "docs", d.name, "meta.json").stat().st_mtime - start, 1)
                             for d in Path(cfg["data_dir"], "docs").iterdir() for s in [d.name.split("-")[0]]}}


def _child_limit(cfg: dict, limit_mb: float) -> dict:
    from nexus_optim.data.prepared import iter_docs
    from nexus_optim.data.shards import batch_encode
    from nexus_optim.data.tokenize_stage import BATCH_CHARS
    from nexus_optim.data.tokenizer import load_tokenizer

    backend = load_tokenizer(cfg["tokenizer"]).backend_tokenizer
    batches = []
    for d in sorted(Path(cfg["data_dir"], "docs").iterdir()):  # the same documents, held in memory
        got, batch, bsize = 0, [], 0
        for doc in iter_docs(d / "train.jsonl"):
            batch.append(doc)
            bsize += len(doc)
            if bsize >= BATCH_CHARS:
                batches.append(batch)
                got += bsize
                batch, bsize = [], 0
                if got >= limit_mb * 1e6 / len(SOURCES):
                    break
        if batch:
            batches.append(batch)
    t = time.perf_counter()
    tokens = 0
    for b in batches:
        tokens += sum(len(e.ids) for e in batch_encode(backend, b))  # the pipeline's own call
    wall = time.perf_counter() - t
    text = sum(len(x.encode("utf-8")) for b in batches for x in b)
    return {"wall_s": wall, "text_mb": text / 1e6, "tokens": tokens}


def _child_loader(cfg: dict, micro_batch: int, seq: int, seconds: float) -> dict:
    import torch

    from nexus_optim.data import DataConfig, MixtureSampler, prepare_data

    torch.set_num_threads(1)
    data = prepare_data(DataConfig.from_dict(cfg), progress=False)
    train = {s: data.load(s, "train") for s in data.sources_with_role("train")}
    out = {}
    for mode in ("homogeneous", "mixed"):
        s = MixtureSampler(train, data.weights, seq, micro_batch, mode=mode, group_size=4,
                           shuffle_sources=True, seed=0)
        for _ in range(20):
            s.next()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            n += s.next().input_ids.numel()
        out[mode] = n / (time.perf_counter() - t)
    out["shards"] = {s: len(data.shard_sets.get(s, {}).get("train", [])) or 1 for s in train}
    return out


def _run_child(what: str, *args) -> dict:
    code = ("import json, sys; sys.path.insert(0, %r); import data_pipeline as d; "
            "print(json.dumps(getattr(d, '_child_' + sys.argv[1])(*json.loads(sys.argv[2]))))"
            % str(Path(__file__).resolve().parent))
    out = subprocess.run([sys.executable, "-c", code, what, json.dumps(list(args))], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _train_tokenizer(files: dict[str, list[str]], path: Path, vocab: int) -> str:
    from nexus_optim.data.sources import BuildContext
    from nexus_optim.data.sources.files import iter_documents
    from nexus_optim.data.tokenizer import train_bpe

    def sample():
        for s in SOURCES:
            n = 0
            for d in iter_documents(BuildContext("unused", 0, paths=files[s][:1]), {}, None):
                yield d
                n += len(d)
                if n > 3_000_000:
                    break

    return train_bpe(sample(), vocab, path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="folder for the corpora and caches (reused)")
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[200, 2000])
    ap.add_argument("--file-mb", type=float, default=100.0)
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json or dir; default: train a BPE")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--limit-mb", type=float, default=60.0)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--loader-seconds", type=float, default=5.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    tokenizer = a.tokenizer
    for mb in a.sizes_mb:
        t = time.perf_counter()
        files = make_corpus(work / f"corpus-{mb:g}MB", mb, a.file_mb)
        gen = time.perf_counter() - t
        if tokenizer is None:
            tokenizer = _train_tokenizer(files, work / f"tokenizer-{a.vocab}.json", a.vocab)
        cache = work / f"cache-{mb:g}MB"
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        cfg = _config(files, cache, str(Path(tokenizer).resolve()))
        load0 = os.getloadavg()
        prep = _run_child("prepare", cfg)
        limits = [_run_child("limit", cfg, a.limit_mb) for _ in range(3)]  # noise: 3 repeats
        limit = sorted(limits, key=lambda r: r["text_mb"] / r["wall_s"])[1]  # the median
        loader = _run_child("loader", cfg, a.micro_batch, a.seq, a.loader_seconds)
        rows.append({"size_mb": mb, "generate_s": gen, "prepare": prep, "limit": limit,
                     "limit_mb_s": [r["text_mb"] / r["wall_s"] for r in limits], "loader": loader,
                     "load_before": load0, "load_after": os.getloadavg()})
        print(f"{mb:g} MB: prepare {prep['text_mb'] / prep['wall_s']:.2f} MB/s, limit "
              f"{limit['text_mb'] / limit['wall_s']:.2f} MB/s, rss {prep['peak_rss_mb']:.0f} MiB, "
              f"loader {loader['homogeneous'] / 1e6:.1f} M tok/s", file=sys.stderr, flush=True)
    result = {"rows": rows, "cpus": os.cpu_count(), "python": platform.python_version(),
              "machine": platform.machine(), "tokenizer": str(tokenizer)}
    print(render(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return result


def render(result: dict) -> str:
    lines = ["| corpus | text MB | prepare s | prepare MB/s | tokens/s | limit MB/s | prepare / limit "
             "| peak RSS MiB | loader M tok/s (homog. / mixed) | limit runs MB/s | highest RSS sample "
             "| load avg |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        p, lim, ld = r["prepare"], r["limit"], r["loader"]
        mbs, lmbs = p["text_mb"] / p["wall_s"], lim["text_mb"] / lim["wall_s"]
        lines.append(f"| {r['size_mb']:g} MB | {p['text_mb']:.0f} | {p['wall_s']:.1f} | {mbs:.2f} | "
                     f"{p['tokens'] / p['wall_s']:,.0f} | {lmbs:.2f} | {mbs / lmbs:.2f} | {p['peak_rss_mb']:.0f} | "
                     f"{ld['homogeneous'] / 1e6:.1f} / {ld['mixed'] / 1e6:.1f} | "
                     f"{' / '.join(f'{x:.2f}' for x in r.get('limit_mb_s', []))} | "
                     f"{p.get('peak_sample', ['-'] * 3)[1]} MiB at {p.get('peak_sample', ['-'] * 3)[0]} s | "
                     f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f} |")
    rss = [r["prepare"]["peak_rss_mb"] for r in result["rows"]]
    if len(rss) > 1:
        lines.append(f"\npeak RSS, largest / smallest corpus: {rss[-1] / rss[0]:.3f}; cpus {result['cpus']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
