"""Wall-time and memory overhead of Nexus against AdamW with gradient accumulation.

Setting: a small LLaMA (``--preset micro``: ~5.8M parameters) trained on CPU with
K = ``--inner-steps`` micro-batches per outer step.

* AdamW baseline: K micro-batches of loss/K accumulated into ``.grad``, one
  ``AdamW.step()`` and one ``zero_grad()`` per outer step.
* Nexus (outer optimizer: the same AdamW): one ``step()`` and one ``zero_grad()``
  per micro-batch on the unscaled micro-batch loss; the K-th call is the outer step.

Every configuration has its own copy of the same initial model. Timed blocks of
``--steps`` outer steps run in rounds  A N1 A N2 ... A NM A  (A = AdamW, Ni = the
Nexus modes, their order rotated every round), so each Nexus block has an AdamW
block on both sides and the two sides cancel linear drift in machine load. All
configurations see the same fresh random token batches of a fixed shape in a
round (``(micro_batch, seq_len)``, new batches for every micro-batch).

Reported per configuration:

* ``outer step``: median wall time of one outer step (K forward/backward passes plus
  the optimizer calls) over all its timed outer steps.
* ``wall-time ratio``: median over rounds of  Nexus block / mean(the two AdamW blocks
  beside it)  (paired ratio; min..max over rounds in brackets). This is the number
  the target is about, but on a shared 2-core machine its noise can exceed 2%.
* ``optimizer calls``: median wall time of one outer step's optimizer calls
  (``step()`` + ``zero_grad()``: K calls for Nexus, one for AdamW), timed in
  isolation on K fixed real micro-batch gradients (cloned into ``.grad`` before each
  call, untimed), in ``--opt-reps`` rounds of the same A N1 A N2 ... A alternation.
  ``optimizer-time ratio`` = 1 + median over rounds of (Nexus calls - mean of the
  AdamW calls beside them) / median AdamW outer step. The forward/backward passes
  run the same code for both optimizers, so this is the overhead without their
  noise; it leaves out one difference of the training loop: Nexus's backward writes
  a fresh ``.grad`` every micro-batch where AdamW's accumulates into it (the
  wall-time ratio includes that).

* ``state``: exact bytes of all tensors held in optimizer state (Nexus: ``state``
  anchor/trajectory + ``outer.state``; AdamW: ``state``), extra over AdamW in units
  of one fp32 copy of the weights (4 bytes x parameters).
* ``peak``: the high-water mark of live bytes in torch's CPU allocator during the
  first two outer steps (the optimizer is built inside the window, so its state,
  the gradients, activations and every transient buffer are counted), from the
  memory events of ``torch.profiler`` (``profile_memory=True``); extra over AdamW in
  fp32 weight copies. It counts tensor storage exactly and nothing else (no Python
  objects, no allocator slack). ``--rss`` adds a process-level cross-check: one
  fresh subprocess per optimizer (``MALLOC_MMAP_THRESHOLD_`` fixed so freed large
  blocks go back to the OS) reports the growth of its peak RSS (``VmHWM``) over the
  same two outer steps (the high-water mark is reset after the model is built,
  through ``/proc/self/clear_refs``; Linux only). Not ``ru_maxrss``: a child started
  from a large parent inherits the parent's peak in it.

The JSON also has, per block, the process CPU time and the optimizer time measured
inside the training loop (``ratio_cpu``, ``ratio_opt_wall``, ``ratio_opt_cpu``).

Targets (issue): time ratio <= 1.02; extra memory <= 1 copy (displacement),
<= 2 copies (trajectory).

    python benchmarks/optimizer_overhead.py --pairs 5 --steps 1 --rss --json out.json

(about 3.5 minutes on 2 idle CPU cores; ``--profile N`` adds a per-op breakdown of the
optimizer calls.) Results and discussion: docs/performance.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from nexus_optim import Nexus
from nexus_optim.models import build_model, count_params
from nexus_optim.train.step import outer_step, protocol_of

DEFAULT_MODES = (
    ("global", "trajectory"),
    ("global", "displacement"),
    ("per_tensor", "trajectory"),
    ("none", "displacement"),
    ("random", "trajectory"),
)
ALL_MODES = tuple(
    (n, g)
    for n in ("global", "per_tensor", "none", "random")
    for g in ("trajectory", "displacement")
)
TARGET_RATIO = 1.02
METRICS = ("wall", "cpu", "opt_wall", "opt_cpu")
RATIOS = ("ratio_wall", "ratio_cpu", "ratio_opt_wall", "ratio_opt_cpu")
TARGET_COPIES = {"trajectory": 2.0, "displacement": 1.0}


# --------------------------------------------------------------------------- setup
@dataclass
class Config:
    name: str
    inner_norm: str | None = None  # None: the AdamW baseline
    outer_grad: str | None = None
    model: Any = None
    opt: Any = None
    steps: list[dict[str, float]] = field(default_factory=list)  # every timed outer step
    blocks: list[dict[str, Any]] = field(default_factory=list)  # one per timed block

    @property
    def is_adamw(self) -> bool:
        return self.inner_norm is None


def parse_modes(text: str) -> tuple[tuple[str, str], ...]:
    if text == "default":
        return DEFAULT_MODES
    if text == "all":
        return ALL_MODES
    modes = []
    for item in text.split(","):
        norm, _, grad = item.strip().partition("+")
        modes.append((norm, grad))
    return tuple(modes)


def make_optimizer(cfg: Config, model: torch.nn.Module, args: argparse.Namespace):
    params = list(model.parameters())
    if cfg.is_adamw:
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return Nexus(
        params,
        lr=args.lr,
        inner_lr=args.inner_lr,
        inner_steps=args.inner_steps,
        outer=torch.optim.AdamW,
        inner_norm=cfg.inner_norm,
        outer_grad=cfg.outer_grad,
        weight_decay=args.weight_decay,
    )


def make_batches(args: argparse.Namespace, round_idx: int, n_outer: int) -> list[torch.Tensor]:
    """Fresh token batches for one block; identical for every configuration of a round."""
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + round_idx)
    shape = (args.micro_batch, args.seq_len)
    return [
        torch.randint(0, args.vocab_size, shape, generator=gen)
        for _ in range(n_outer * args.inner_steps)
    ]


def state_bytes(*states: dict) -> int:
    """Bytes of all distinct tensor storages held in optimizer state dicts."""
    seen: dict[int, int] = {}
    for state in states:
        for per_param in state.values():
            for value in per_param.values():
                if torch.is_tensor(value):
                    storage = value.untyped_storage()
                    seen[storage.data_ptr()] = max(
                        seen.get(storage.data_ptr(), 0), storage.nbytes()
                    )
    return sum(seen.values())


def optimizer_state_bytes(opt) -> int:
    if isinstance(opt, Nexus):  # resident buffers: Nexus' own and the outer optimizer's
        return state_bytes(opt.state.own, opt.outer.state)
    return state_bytes(opt.state)


# ---------------------------------------------------------------------- training
def run_outer_steps(cfg: Config, batches: list[torch.Tensor], k: int) -> list[dict]:
    """Run len(batches)/k outer steps (``train/step.py``'s ``outer_step``, as the trainer);
    per outer step the wall and process-CPU time of the whole step and of the optimizer
    calls (``step()`` + ``zero_grad()``) in it."""
    model, opt = cfg.model, cfg.opt
    perf, proc = time.perf_counter, time.process_time
    protocol = protocol_of(opt)
    out = []
    for s in range(len(batches) // k):
        t0, c0, opt_time = perf(), proc(), [0.0, 0.0]

        def timed_update(o) -> None:
            t1, c1 = perf(), proc()
            o.step()
            o.zero_grad(set_to_none=True)
            opt_time[0] += perf() - t1
            opt_time[1] += proc() - c1

        def loss_of(i: int, s: int = s) -> Tensor:
            x = batches[s * k + i]
            return model(input_ids=x, labels=x).loss

        outer_step(opt, protocol, k, loss_of, update=timed_update)
        out.append({"wall": perf() - t0, "cpu": proc() - c0,
                    "opt_wall": opt_time[0], "opt_cpu": opt_time[1]})
    return out


def memory_events_peak(trace_path: str) -> int:
    """Peak of the running sum of allocation events (bytes above the window's start)."""
    with open(trace_path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    events.sort(key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
    live = peak = 0
    for e in events:
        if e["args"].get("Device Type", 0) != 0:  # CPU only
            continue
        live += int(e["args"]["Bytes"])
        peak = max(peak, live)
    return peak


def warmup_with_peak(cfg: Config, args: argparse.Namespace) -> int:
    """Build the optimizer and run two outer steps inside a memory-profiled window."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    batches = make_batches(args, round_idx=-1, n_outer=2)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        cfg.opt = make_optimizer(cfg, cfg.model, args)
        run_outer_steps(cfg, batches, args.inner_steps)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        peak = memory_events_peak(path)
    del prof
    gc.collect()
    return peak


# ------------------------------------------------------- isolated optimizer calls
def real_gradients(model: torch.nn.Module, args: argparse.Namespace) -> list[list[Tensor]]:
    """K sets of real micro-batch gradients (one per micro-batch) of ``model``."""
    params = list(model.parameters())
    out = []
    for x in make_batches(args, round_idx=-3, n_outer=1):
        for p in params:
            p.grad = None
        model(input_ids=x, labels=x).loss.backward()
        out.append([p.grad for p in params])
    for p in params:
        p.grad = None
    return out


def optimizer_calls_s(cfg: Config, grads: list[list[Tensor]]) -> float:
    """Wall time of one outer step's optimizer calls on the given gradients.

    The gradients are cloned into ``.grad`` before every call, outside the timing
    (a fresh ``.grad`` per micro-batch, as after ``zero_grad(set_to_none=True)``).
    """
    params, opt = list(cfg.model.parameters()), cfg.opt
    total = 0.0
    for gs in grads[-1:] if cfg.is_adamw else grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        t0 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        total += time.perf_counter() - t0
    if not cfg.is_adamw and not opt.last_step_was_outer:
        raise RuntimeError(f"{cfg.name}: the K-th step() was not an outer step")
    return total


# ------------------------------------------------------------------ rss children
def _vm_hwm_bytes() -> int:
    """Peak resident set size of this process (VmHWM in /proc/self/status).

    Not ``ru_maxrss``: after fork+exec that also holds the parent's peak RSS.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_child(args: argparse.Namespace) -> None:
    """Subprocess body for --rss: peak-RSS growth over two outer steps of one optimizer."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    norm, _, grad = args._rss_child.partition("+")
    cfg = Config(args._rss_child) if norm == "adamw" else Config(args._rss_child, norm, grad)
    cfg.model = build_model(args.preset, vocab_size=args.vocab_size, max_seq_len=args.seq_len,
                            seed=args.seed)
    batches = make_batches(args, round_idx=-1, n_outer=2)
    gc.collect()
    # Reset the high-water mark to the current RSS (Linux >= 4.0): building the model
    # peaks above what two outer steps of this small model add on top of it.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _vm_hwm_bytes()
    cfg.opt = make_optimizer(cfg, cfg.model, args)
    run_outer_steps(cfg, batches, args.inner_steps)
    after = _vm_hwm_bytes()
    print(json.dumps({"hwm_before": before, "hwm_after": after}))


def rss_growth(name: str, argv: list[str]) -> dict[str, int]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    res = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *argv, "--_rss-child", name],
        env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- profile
def profile_steps(cfg: Config, args: argparse.Namespace, top: int) -> str:
    """torch.profiler table of the optimizer calls only, over one outer step."""
    from torch.profiler import ProfilerActivity, profile, record_function

    batches = make_batches(args, round_idx=-2, n_outer=1)
    model, opt, k = cfg.model, cfg.opt, args.inner_steps
    def recorded_update(o) -> None:
        with record_function("## optimizer ##"):
            o.step()
            o.zero_grad(set_to_none=True)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        outer_step(opt, protocol_of(opt), k,
                   lambda i: model(input_ids=batches[i], labels=batches[i]).loss,
                   update=recorded_update)
    # self time of the ops that ran inside the optimizer calls, by op name
    total_us, self_us, calls = 0.0, {}, {}
    for e in prof.events():
        if e.name == "## optimizer ##":
            total_us += e.cpu_time_total
            continue
        parent = e.cpu_parent
        while parent is not None and parent.name != "## optimizer ##":
            parent = parent.cpu_parent
        if parent is None:
            continue
        self_us[e.name] = self_us.get(e.name, 0.0) + e.self_cpu_time_total
        calls[e.name] = calls.get(e.name, 0) + 1
    lines = [f"{cfg.name}: optimizer calls {total_us / 1e3:.1f} ms per outer step "
             f"(self time by op, top {top}):"]
    for name, us in sorted(self_us.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {us / 1e3:8.2f} ms  {calls[name]:5d} calls  {name}")
    return "\n".join(lines)


# -------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=5, help="rounds A N1 A N2 ... A (>= 5)")
    p.add_argument("--steps", type=int, default=1, help="timed outer steps per block")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--preset", default="micro")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--inner-steps", type=int, default=4, help="K")
    p.add_argument("--modes", default="default",
                   help="'default', 'all', or e.g. 'global+trajectory,none+displacement'")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--inner-lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--opt-reps", type=int, default=30,
                   help="rounds A N1 A N2 ... A of the isolated optimizer-call timing")
    p.add_argument("--rss", action="store_true",
                   help="also measure peak-RSS growth in one fresh subprocess per optimizer")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, print the top-N ops of one outer step per config")
    p.add_argument("--json", metavar="OUT", help="write all measurements to OUT")
    p.add_argument("--_rss-child", dest="_rss_child", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._rss_child:
        rss_child(args)
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    modes = parse_modes(args.modes)
    for norm, grad in modes:
        if norm not in ("global", "per_tensor", "none", "random") or grad not in TARGET_COPIES:
            p.error(f"--modes: bad mode {norm}+{grad}")
    if args.pairs < 1 or args.steps < 1 or args.opt_reps < 1:
        p.error("--pairs, --steps and --opt-reps must be >= 1")
    if args.pairs < 5:
        print(f"# note: --pairs {args.pairs} < 5: a smoke run, not a measurement")
    load_start = os.getloadavg()
    t_start = time.perf_counter()

    base = build_model(args.preset, vocab_size=args.vocab_size, max_seq_len=args.seq_len,
                       seed=args.seed)
    n_params = count_params(base)
    copy_bytes = 4 * n_params
    configs = [Config("AdamW (accum)")] + [Config(f"Nexus {n}+{g}", n, g) for n, g in modes]
    adamw, nexus = configs[0], configs[1:]
    for cfg in configs:
        cfg.model = copy.deepcopy(base)
        cfg.model.train()
    del base

    print(f"# {args.preset}: {n_params / 1e6:.2f}M params, K={args.inner_steps}, "
          f"micro-batch {args.micro_batch}x{args.seq_len}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load avg {load_start[0]:.2f}", flush=True)

    # warm-up (two outer steps each) doubles as the peak-memory window
    peak = {}
    for cfg in configs:
        peak[cfg.name] = warmup_with_peak(cfg, args)
        print(f"# warm-up {cfg.name}: peak {peak[cfg.name] / 2**20:.1f} MiB", flush=True)
    state = {cfg.name: optimizer_state_bytes(cfg.opt) for cfg in configs}

    # timed rounds: A N1 A N2 ... A NM A, Nexus order rotated per round
    for r in range(args.pairs):
        order = nexus[r % len(nexus):] + nexus[: r % len(nexus)]
        batches = make_batches(args, r, args.steps)
        seq = [adamw]
        for cfg in order:
            seq += [cfg, adamw]
        for cfg in seq:
            gc.collect()
            gc.disable()
            try:
                times = run_outer_steps(cfg, batches, args.inner_steps)
            finally:
                gc.enable()
            cfg.steps += times
            block = {m: statistics.median(t[m] for t in times) for m in METRICS}
            block["round"] = r
            cfg.blocks.append(block)
        round_a = [b for b in adamw.blocks if b["round"] == r]
        for j, cfg in enumerate(order):  # AdamW blocks j and j+1 enclose it
            blk, ref = cfg.blocks[-1], {
                m: (round_a[j][m] + round_a[j + 1][m]) / 2 for m in METRICS
            }
            blk["ratio_wall"] = blk["wall"] / ref["wall"]
            blk["ratio_cpu"] = blk["cpu"] / ref["cpu"]
            blk["ratio_opt_wall"] = 1.0 + (blk["opt_wall"] - ref["opt_wall"]) / ref["wall"]
            blk["ratio_opt_cpu"] = 1.0 + (blk["opt_cpu"] - ref["opt_cpu"]) / ref["cpu"]
        print(f"# round {r + 1}/{args.pairs} done ({time.perf_counter() - t_start:.0f} s, "
              f"load avg {os.getloadavg()[0]:.2f})", flush=True)

    # isolated optimizer calls on fixed real gradients, same alternation, many rounds
    grads = real_gradients(adamw.model, args)
    opt_calls: dict[str, list[float]] = {cfg.name: [] for cfg in configs}
    opt_diff: dict[str, list[float]] = {cfg.name: [] for cfg in nexus}
    for r in range(args.opt_reps):
        order = nexus[r % len(nexus):] + nexus[: r % len(nexus)]
        a_prev = optimizer_calls_s(adamw, grads)
        opt_calls[adamw.name].append(a_prev)
        for cfg in order:
            t = optimizer_calls_s(cfg, grads)
            a_next = optimizer_calls_s(adamw, grads)
            opt_calls[cfg.name].append(t)
            opt_calls[adamw.name].append(a_next)
            opt_diff[cfg.name].append(t - (a_prev + a_next) / 2)
            a_prev = a_next
    del grads
    print(f"# isolated optimizer calls done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    skipped = {cfg.name: cfg.opt.skipped_micro_batches for cfg in nexus}
    if any(skipped.values()):
        print(f"# WARNING: non-finite micro-batches were skipped: {skipped}")

    rss = {}
    if args.rss:
        child_argv = [
            "--micro-batch", str(args.micro_batch), "--seq-len", str(args.seq_len),
            "--preset", args.preset, "--vocab-size", str(args.vocab_size),
            "--inner-steps", str(args.inner_steps), "--lr", str(args.lr),
            "--inner-lr", str(args.inner_lr), "--weight-decay", str(args.weight_decay),
            "--threads", str(args.threads), "--seed", str(args.seed),
        ]
        for cfg in configs:
            key = "adamw" if cfg.is_adamw else f"{cfg.inner_norm}+{cfg.outer_grad}"
            res = rss_growth(key, child_argv)
            rss[cfg.name] = res["hwm_after"] - res["hwm_before"]
            print(f"# peak RSS growth {cfg.name}: {rss[cfg.name] / 2**20:.1f} MiB", flush=True)

    # ------------------------------------------------------------------- report
    def med(cfg: Config, key: str) -> float:
        return statistics.median(t[key] for t in cfg.steps)

    def copies(x: float) -> str:
        return f"{round(x, 2) + 0.0:+.2f}"  # no "-0.00"

    def spread(values: list[float], digits: int) -> str:
        return (f"{statistics.median(values):.{digits}f} "
                f"[{min(values):.{digits}f}..{max(values):.{digits}f}]")

    a_wall = med(adamw, "wall")
    head = ["optimizer", "outer step, s", "wall-time ratio", "optimizer calls, ms",
            "optimizer-time ratio", "state extra", "peak extra"]
    if args.rss:
        head.append("peak RSS extra")
    head.append("targets met (time: wall / optimizer; memory)")
    rows = [[f"AdamW, {args.inner_steps}-step accumulation", f"{a_wall:.3f}", "1",
             f"{1e3 * statistics.median(opt_calls[adamw.name]):.1f}", "1",
             f"({state[adamw.name] / copy_bytes:.2f} abs.)", "0"]
            + (["0"] if args.rss else []) + [""]]
    results = []
    yn = {True: "yes", False: "no"}
    for cfg in nexus:
        bl = cfg.blocks
        r_wall = [b["ratio_wall"] for b in bl]
        r_opt = 1.0 + statistics.median(opt_diff[cfg.name]) / a_wall
        extra_state = (state[cfg.name] - state[adamw.name]) / copy_bytes
        extra_peak = (peak[cfg.name] - peak[adamw.name]) / copy_bytes
        extra_rss = (rss[cfg.name] - rss[adamw.name]) / copy_bytes if args.rss else None
        limit = TARGET_COPIES[cfg.outer_grad]
        wall_ok = statistics.median(r_wall) <= TARGET_RATIO
        opt_ok = r_opt <= TARGET_RATIO
        mem_ok = extra_state <= limit + 1e-9 and extra_peak <= limit + 1e-9
        row = [f"Nexus {cfg.inner_norm}+{cfg.outer_grad}", f"{med(cfg, 'wall'):.3f}",
               spread(r_wall, 3), f"{1e3 * statistics.median(opt_calls[cfg.name]):.1f}",
               f"{r_opt:.4f}", copies(extra_state), copies(extra_peak)]
        if args.rss:
            row.append(copies(extra_rss))
        row.append(f"{yn[wall_ok]} / {yn[opt_ok]}; {yn[mem_ok]} (<= {limit:.0f})")
        rows.append(row)
        results.append({
            "name": cfg.name, "inner_norm": cfg.inner_norm, "outer_grad": cfg.outer_grad,
            "median": {m: med(cfg, m) for m in METRICS},
            "ratio_median": {k: statistics.median(b[k] for b in bl) for k in RATIOS},
            "blocks": bl, "steps": cfg.steps,
            "isolated_optimizer_calls_s": opt_calls[cfg.name],
            "isolated_optimizer_calls_minus_adamw_s": opt_diff[cfg.name],
            "optimizer_time_ratio": r_opt,
            "state_bytes": state[cfg.name], "state_extra_copies": extra_state,
            "peak_bytes": peak[cfg.name], "peak_extra_copies": extra_peak,
            "rss_growth_bytes": rss.get(cfg.name), "rss_extra_copies": extra_rss,
            "skipped_micro_batches": skipped[cfg.name],
            "targets": {"time_ratio": TARGET_RATIO, "extra_copies": limit},
            "time_met_wall": wall_ok, "time_met_optimizer": opt_ok, "memory_met": mem_ok,
        })

    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    elapsed = time.perf_counter() - t_start
    load_end = os.getloadavg()
    print(f"\n{n_params / 1e6:.2f}M params; 1 copy = {copy_bytes / 2**20:.1f} MiB; "
          f"AdamW: state {state[adamw.name] / 2**20:.1f} MiB, peak "
          f"{peak[adamw.name] / 2**20:.1f} MiB above the weights; {args.pairs} rounds x "
          f"{args.steps} outer step(s) per block; {elapsed:.0f} s; "
          f"load avg {load_start[0]:.2f} -> {load_end[0]:.2f}")

    if args.profile:
        print()
        for cfg in configs:
            print(profile_steps(cfg, args, args.profile))

    if args.json:
        payload = {
            "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "env": {
                "torch": torch.__version__, "python": platform.python_version(),
                "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "machine": platform.machine(), "processor": platform.processor(),
                "load_avg_start": load_start, "load_avg_end": load_end,
                "elapsed_s": elapsed,
            },
            "n_params": n_params, "fp32_copy_bytes": copy_bytes,
            "adamw": {
                "median": {m: med(adamw, m) for m in METRICS},
                "blocks": adamw.blocks, "steps": adamw.steps,
                "isolated_optimizer_calls_s": opt_calls[adamw.name],
                "state_bytes": state[adamw.name], "peak_bytes": peak[adamw.name],
                "rss_growth_bytes": rss.get(adamw.name),
            },
            "nexus": results,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main()
