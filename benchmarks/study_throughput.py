"""Does a CPU speed-up make the study's training runs faster? Side by side, one process.

The runs of ``nexus study`` (design "cpu": nano with 2 layers, vocabulary 512, seq_len 128,
micro-batch 8, K = 4) trained at about 18k tokens/s, one thread per run, two runs at a time
on 2 cores. This measures, on the same model geometry and the real training step
(``Trainer.train_step``), each variant against the study's own setting:

    eager-1t     the study's setting: no compile, 1 thread (baseline)
    compile-1t   ``model.compile=true`` (torch.compile of the model, inductor), 1 thread
    eager-2t     no compile, 2 threads in one run (the study runs two 1-thread runs instead)

``train.bf16`` is not a variant: autocast is CUDA-only (CPU is always fp32). Timed blocks
of ``--steps`` outer steps alternate between the variants (A B C A B C ...) so that drift in
machine load hits all alike; medians over ``--blocks`` blocks; the compile warm-up (its
first steps) is excluded and reported separately. Numbers: each variant trains from the
same seed and data for the warm-up plus the timed steps, and the largest |difference| of
its per-step training loss from the baseline's is reported (results must change only by
rounding). The machine's load (``os.getloadavg``) is printed before and after: other
processes share the cores, so the ratio between variants is the number to read.

The data is a synthetic two-source corpus (the step time depends on the model's shape,
not on the text). Usage:

    python benchmarks/study_throughput.py [--optimizers adamw nexus] [--blocks 5]
        [--steps 8] [--json OUT]
    python benchmarks/study_throughput.py --variants eager-1t --models cpu dose-s dose-l
        (the dose design's sizing: each size's tokens/s relative to the CPU study's model,
        measured side by side, so that machine load cancels in the ratio)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import synthetic_corpus  # noqa: E402  (the benchmark's corpus, one place)

from nexus_optim.train.config import from_dict  # noqa: E402
from nexus_optim.train.loop import Trainer  # noqa: E402

# model geometries (nano with these overrides, vocabulary 512): the CPU study's and the dose
# design's two sizes (experiments/design.py DoseDesign.sizes)
MODELS = {"cpu": {"num_hidden_layers": 2},
          "dose-s": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 176},
          "dose-l": {"num_hidden_layers": 3}}
VARIANTS = {"eager-1t": {"compile": False, "threads": 1},
            "compile-1t": {"compile": True, "threads": 1},
            "eager-2t": {"compile": False, "threads": 2}}


def study_trainer(name: str, variant: dict, data_dir: str, corpus: str, out: str,
                  overrides: dict | None = None) -> Trainer:
    """A trainer with the CPU study's geometry (``experiments/design.py`` "cpu")."""
    cfg = from_dict({
        "data": {"data_dir": data_dir, "vocab_size": 512,
                 "sources": [{"name": "a", "kind": "files", "paths": [corpus]},
                             {"name": "b", "kind": "files", "paths": [corpus]}]},
        "model": {"preset": "nano", "overrides": overrides or MODELS["cpu"], "seq_len": 128,
                  "compile": variant["compile"]},
        "optim": {"name": name, "inner_steps": 4, "lr": 3e-3,
                  **({"inner_lr": 0.03} if name == "nexus" else {})},
        "train": {"out_dir": out, "steps": 10_000, "micro_batch_size": 8, "seed": 0,
                  "progress": False, "export_hf": False, "device": "cpu",
                  "threads": variant["threads"]},
    })
    return Trainer(cfg)


def _step(tr: Trainer, threads: int) -> float:
    torch.set_num_threads(threads)  # each trainer set its own at setup; they share a process
    return tr.train_step()["train/loss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "nexus"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--models", nargs="+", default=["cpu"], choices=list(MODELS),
                    help="geometries; each (model, variant) is a column, the first is the baseline")
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="outer steps per timed block")
    ap.add_argument("--warmup", type=int, default=3, help="untimed outer steps first (compile happens here)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    load0 = os.getloadavg()
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} on {os.cpu_count()} cores",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = synthetic_corpus(Path(tmp))
        for name in args.optimizers:
            trs, losses, warm = {}, {}, {}
            cols = [f"{m}/{v}" if len(args.models) > 1 else v for m in args.models for v in args.variants]
            for c in cols:
                m, v = c.split("/") if "/" in c else (args.models[0], c)
                trs[c] = study_trainer(name, VARIANTS[v], f"{tmp}/data", corpus, f"{tmp}/{name}_{m}_{v}", MODELS[m])
                t = time.perf_counter()
                losses[c] = [_step(trs[c], VARIANTS[v]["threads"]) for _ in range(args.warmup)]
                warm[c] = time.perf_counter() - t
            tokens = args.steps * trs[cols[0]].cfg.tokens_per_step()
            times: dict[str, list[float]] = {c: [] for c in cols}
            for _ in range(args.blocks):
                for c, tr in trs.items():
                    v = c.split("/")[-1]
                    t = time.perf_counter()
                    losses[c] += [_step(tr, VARIANTS[v]["threads"]) for _ in range(args.steps)]
                    times[c].append(time.perf_counter() - t)
            base = cols[0]
            for v in cols:
                med = statistics.median(times[v])
                rows.append({"optimizer": name, "variant": v, "params": trs[v].n_params, "tokens_per_s": tokens / med,
                             "speedup": statistics.median(times[base]) / med, "warmup_s": warm[v],
                             "max_abs_loss_diff": max(abs(a - b) for a, b in zip(losses[v], losses[base])),
                             "first_step_loss_diff": abs(losses[v][0] - losses[base][0]),
                             "steps_compared": len(losses[v]), "block_s": times[v]})
                print(f"{name} {v}: {tokens / med:,.0f} tokens/s", flush=True)
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(f"\n| optimizer | variant | tokens/s (median of {args.blocks} blocks of {args.steps} steps) | "
          f"speed-up vs the first | warm-up ({args.warmup} steps) s | train-loss diff at step 1 | "
          f"max abs train-loss diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['optimizer']} | {r['variant']} | {r['tokens_per_s']:,.0f} | {r['speedup']:.2f}x | "
              f"{r['warmup_s']:.1f} | {r['first_step_loss_diff']:.1e} | {r['max_abs_loss_diff']:.2e} "
              f"({r['steps_compared']} steps) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load_before": load0, "load_after": load1,
                                               "torch": torch.__version__, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
