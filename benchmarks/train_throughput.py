"""Training throughput: tokens/s and model FLOP utilisation (MFU), AdamW vs Nexus.

Runs the real training loop (``Trainer.train_step``) for each preset and optimizer,
alternating A B A B ... so that drift in machine load hits both alike, and measures
the fp32 matmul peak of this machine in the same run.

    FLOPs/token = 6 * N_matmul + 12 * L * d * T     (forward + backward; N_matmul =
                  non-embedding parameters + the LM-head matrix V*d, T = seq_len)
    MFU = tokens/s * FLOPs/token / peak

Usage: python benchmarks/train_throughput.py [--presets nano micro] [--pairs 5]
       [--steps 10] [--threads 2] [--device cpu|cuda] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nexus_optim.train.config import from_dict
from nexus_optim.train.loop import Trainer


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str = "cpu", repeats: int = 20) -> float:
    """Best-of matmul FLOP/s: fp32 1024^3 on CPU (this thread count), bf16 8192^3 on CUDA."""
    n, dtype = (1024, torch.float32) if device == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def flops_per_token(model, seq_len: int) -> float:
    c = model.config
    n_embed = c.vocab_size * c.hidden_size
    n_all = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    n_matmul = n_all - n_embed * (1 if c.tie_word_embeddings else 2) + n_embed
    return 6 * n_matmul + 12 * c.num_hidden_layers * c.hidden_size * seq_len


def synthetic_corpus(root: Path) -> str:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]
    path = root / "text.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(200)) for _ in range(400)))
    return str(path)


def make_trainer(preset: str, name: str, data_dir: str, corpus: str, micro_batch: int,
                 seq_len: int, out: str, device: str = "cpu", compile: bool = False,
                 bf16: bool = True) -> Trainer:
    cfg = from_dict({
        "data": {"data_dir": data_dir, "vocab_size": 4096,
                 "sources": [{"name": "a", "kind": "files", "paths": [corpus]},
                             {"name": "b", "kind": "files", "paths": [corpus]}]},
        "model": {"preset": preset, "seq_len": seq_len, "compile": compile},
        "optim": {"name": name, "inner_steps": 4},
        "train": {"out_dir": out, "steps": 10_000, "micro_batch_size": micro_batch,
                  "progress": False, "export_hf": False, "device": device, "bf16": bf16},
    })
    return Trainer(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["nano", "micro"])
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "nexus"])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6, help="outer steps per timed block")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (model.compile)")
    ap.add_argument("--fp32", action="store_true",
                    help="no bf16 autocast on CUDA (train.bf16=false; CPU is always fp32)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_peak(args.device)
    what = f"fp32 1024^3, {args.threads} threads" if args.device == "cpu" else "bf16 8192^3, CUDA"
    print(f"matmul peak ({what}): {peak / 1e9:.1f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = synthetic_corpus(Path(tmp))
        for preset in args.presets:
            trainers = {n: make_trainer(preset, n, f"{tmp}/data", corpus, args.micro_batch,
                                        args.seq_len, f"{tmp}/{preset}_{n}", args.device,
                                        args.compile, not args.fp32)
                        for n in args.optimizers}
            tokens = args.steps * trainers[args.optimizers[0]].cfg.tokens_per_step()
            fpt = flops_per_token(trainers[args.optimizers[0]].model, args.seq_len)
            times: dict[str, list[float]] = {n: [] for n in args.optimizers}
            for tr in trainers.values():  # warm-up
                tr.train_step()
            for _ in range(args.pairs):
                for n, tr in trainers.items():
                    _sync(args.device)
                    t = time.perf_counter()
                    for _ in range(args.steps):
                        tr.train_step()
                    _sync(args.device)
                    times[n].append(time.perf_counter() - t)
            base = statistics.median(times[args.optimizers[0]])
            for n in args.optimizers:
                med = statistics.median(times[n])
                tps = tokens / med
                rows.append({"preset": preset, "optimizer": n, "s_per_outer_step": med / args.steps,
                             "params": trainers[n].n_params, "tokens_per_s": tps,
                             "mfu": tps * fpt / peak, "time_ratio": med / base})
    print(f"\n| preset | params | optimizer | s / outer step | tokens/s | MFU (vs measured peak) | time ratio vs {args.optimizers[0]} |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {r['optimizer']} | {r['s_per_outer_step']:.3f} "
              f"| {r['tokens_per_s']:.0f} | {100 * r['mfu']:.1f}% | {r['time_ratio']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_flops": peak, "rows": rows, "args": vars(args)},
                                              indent=2))


if __name__ == "__main__":
    main()
