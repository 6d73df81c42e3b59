#!/usr/bin/env bash
# Nexus vs AdamW training-loop time on one GPU (issue 9 target: ratio <= 1.01).
# 130m preset, bf16 autocast, K = 4 micro-batches of 16 x 512 tokens, the project's own
# training loop (Trainer.train_step), AdamW (K-step accumulation) and Nexus
# (global+trajectory) alternating, eager and with torch.compile of the model.
# Runs in about 3-4 minutes on one H100/H200. Writes to $OUT (default runs/gpu_overhead):
#   gpu_overhead.json   every row of both runs, with the arguments and the GPU name
#   gpu_overhead.md     the table for docs/performance.md
# Run from the repo root on the lent machine:  OUT=$OUT bash benchmarks/gpu_overhead.sh
# (uses the machine's torch/transformers with PYTHONPATH=src; nothing is downloaded).
set -euo pipefail
OUT="${OUT:-runs/gpu_overhead}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PY:-python3}"
ARGS=(--device cuda --presets 130m --micro-batch 16 --seq-len 512 --pairs 5 --steps 5)  # bf16 autocast: the config default on CUDA
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
timeout 150 $PY benchmarks/train_throughput.py "${ARGS[@]}" --json "$OUT/eager.json" | tee "$OUT/eager.txt"
timeout 200 $PY benchmarks/train_throughput.py "${ARGS[@]}" --compile --json "$OUT/compiled.json" | tee "$OUT/compiled.txt"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
gpu = (out / "gpu.txt").read_text().strip()
runs = {k: json.loads((out / f"{k}.json").read_text()) for k in ("eager", "compiled")}
lines = [f"GPU: {gpu}. Command: `OUT=... bash benchmarks/gpu_overhead.sh` (medians of 5 alternating blocks of 5 outer steps).", "",
         "| model | optimizer | s / outer step | tokens/s | time ratio vs AdamW | target <= 1.01 |",
         "| --- | --- | --- | --- | --- | --- |"]
for kind, run in runs.items():
    for r in run["rows"]:
        ok = "" if r["optimizer"] == "adamw" else ("met" if r["time_ratio"] <= 1.01 else "not met")
        lines.append(f"| 130m {kind} | {r['optimizer']} | {r['s_per_outer_step']:.4f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['time_ratio']:.3f} | {ok} |")
(out / "gpu_overhead.md").write_text("\n".join(lines) + "\n")
(out / "gpu_overhead.json").write_text(json.dumps({"gpu": gpu, **runs}, indent=2))
print("\n".join(lines))
PY
rm -f "$OUT/eager.json" "$OUT/compiled.json"
