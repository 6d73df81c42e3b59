"""Time per outer step of data-parallel training: AdamW with DDP gradient accumulation
(no_sync on the first K-1 micro-batches) vs Nexus inner_sync="sync" vs "local".

    torchrun --standalone --nproc_per_node 2 benchmarks/distributed_step_time.py
    torchrun --standalone --nproc_per_node 8 benchmarks/distributed_step_time.py \
        --d-model 1024 --layers 8 --micro-batch 8 --seq 512 --json gpu.json   # GPUs

Model: a small pre-norm Transformer encoder LM (torch.nn only; embedding, L layers,
tied head), ~3.5M parameters at the defaults. Backend: nccl on CUDA, else gloo.
Per mode: ``--warmup`` outer steps, then ``--steps`` timed outer steps (a barrier
before each; the time is the slowest rank's); all modes run ``--repeats`` times,
interleaved, and the table shows each mode's lowest median. One extra untimed outer step counts
the collectives: DDP's buckets through a counting comm hook, Nexus's own
all-reduces by wrapping ``torch.distributed.all_reduce``. Prints a Markdown table
(rank 0) and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from nexus_optim.optim import Nexus
from nexus_optim.optim import distributed as D

MODES = ("adamw_accum", "nexus_sync", "nexus_local")


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.zeros(seq, d))
        layer = torch.nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(seq)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x) + self.pos[: x.shape[1]]
        h = self.blocks(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True)
        return self.norm(h) @ self.emb.weight.T


class Counter:
    """Counts DDP bucket all-reduces (comm hook) and torch.distributed.all_reduce calls."""

    def __init__(self) -> None:
        self.ddp_calls = self.ddp_bytes = self.nexus_calls = self.nexus_bytes = 0
        self.active = self.in_hook = False

    def ddp_hook(self, state, bucket):
        if self.active:
            self.ddp_calls += 1
            self.ddp_bytes += bucket.buffer().numel() * bucket.buffer().element_size()
        self.in_hook = True  # the default hook calls dist.all_reduce: not Nexus's
        try:
            return default_hooks.allreduce_hook(state, bucket)
        finally:
            self.in_hook = False

    def __enter__(self):
        self.active, self._orig = True, dist.all_reduce

        def wrapped(tensor, *a, **k):
            if not self.in_hook:
                self.nexus_calls += 1
                self.nexus_bytes += tensor.numel() * tensor.element_size()
            return self._orig(tensor, *a, **k)

        dist.all_reduce = wrapped
        return self

    def __exit__(self, *exc):
        dist.all_reduce, self.active = self._orig, False


def run_mode(mode: str, args, device, rank: int, world: int) -> dict:
    torch.manual_seed(0)
    model = TinyLM(args.vocab, args.d_model, args.layers, args.heads, args.seq).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    sync = {"adamw_accum": "accumulate", "nexus_sync": "sync", "nexus_local": "local"}[mode]
    ddp = DDP(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=args.bucket_cap_mb,
        **D.ddp_kwargs(sync),
    )
    counter = Counter()
    ddp.register_comm_hook(None, counter.ddp_hook)
    if mode == "adamw_accum":
        opt = torch.optim.AdamW(ddp.parameters(), lr=3e-4, weight_decay=0.1)
    else:
        opt = Nexus(
            ddp.parameters(), lr=3e-4, inner_lr=0.05, inner_steps=args.inner_steps,
            weight_decay=0.1, inner_sync=sync, bucket_cap_mb=args.bucket_cap_mb,
        )  # fmt: skip
    gen = torch.Generator().manual_seed(1234 + rank)
    batches = [
        torch.randint(0, args.vocab, (args.micro_batch, args.seq + 1), generator=gen).to(device)
        for _ in range(args.inner_steps)
    ]

    def outer_step() -> None:
        for k, b in enumerate(batches):
            with D.backward_context(ddp, sync, last_micro_batch=k == args.inner_steps - 1):
                logits = ddp(b[:, :-1])
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1)
                )
                (loss / args.inner_steps if mode == "adamw_accum" else loss).backward()
            if mode != "adamw_accum":
                opt.step()
                opt.zero_grad(set_to_none=True)
        if mode == "adamw_accum":
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        outer_step()
    with counter:
        outer_step()
    times = []
    for _ in range(args.steps):
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        outer_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        times.append(float(dt))
    replica = D.max_replica_difference(ddp.parameters())
    return {
        "mode": mode,
        "params": n_params,
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "times_s": times,
        "ddp_allreduces": counter.ddp_calls,
        "ddp_bytes": counter.ddp_bytes,
        "nexus_allreduces": counter.nexus_calls,
        "nexus_bytes": counter.nexus_bytes,
        "replica_diff_after_outer": replica,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--inner-steps", type=int, default=4, help="K micro-batches per outer step")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of all modes")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    modes = args.modes.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(args.repeats):  # interleaved: A B C A B C, against drift and order
        for m in modes:
            runs[m].append(run_mode(m, args, device, rank, world))
    rows = []
    for m in modes:  # the repeat with the lowest median
        best = min(runs[m], key=lambda r: r["median_s"])
        rows.append(dict(best, repeat_medians_s=[r["median_s"] for r in runs[m]]))
    if rank == 0:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        print(
            f"\n{world} ranks, {dist.get_backend()}, {where}, threads/rank "
            f"{torch.get_num_threads()}, P = {rows[0]['params'] / 1e6:.2f}M, "
            f"K = {args.inner_steps}, micro-batch {args.micro_batch}x{args.seq}\n"
        )
        base = next((r["median_s"] for r in rows if r["mode"] == "adamw_accum"), None)
        print("| mode | s / outer step (median) | vs AdamW | all-reduces / outer step | MB sent into all-reduce / outer step |")
        print("|---|---|---|---|---|")
        for r in rows:
            rel = f"{r['median_s'] / base:.2f}x" if base else "-"
            calls = r["ddp_allreduces"] + r["nexus_allreduces"]
            mb = (r["ddp_bytes"] + r["nexus_bytes"]) / 2**20
            print(f"| {r['mode']} | {r['median_s']:.3f} | {rel} | {calls} | {mb:.1f} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "world": world, "device": where, "rows": rows}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
