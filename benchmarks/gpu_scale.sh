#!/usr/bin/env bash
# Issue 19's GPU smoke run: a slice of the data_pipeline benchmark corpus, prepared with a
# BPE tokenizer of VOCAB entries (or TOKENIZER=path/to/tokenizer.json: a pretrained one, if
# the machine has one; nothing is downloaded), then the PRESET model trained from it for
# STEPS outer steps with bf16 and torch.compile (and FSDP2 when NPROC >= 2; one process has
# nothing to shard), K=4 x 16 x 2048 tokens per rank. About 6-8 minutes on one H200.
# Writes to $OUT: data.json (preparation: MB/s, tokens/s, limit, RSS, loader), train.log,
# metrics.jsonl (tokens_per_s per log step), gpu_mem.csv (nvidia-smi every 0.5 s),
# scale.md (the rows for docs/performance.md).
#   OUT=$OUT bash benchmarks/gpu_scale.sh         # on the lent machine, from the repo root
# CPU dry run of the plumbing (~3 min): DEVICE=cpu NPROC=2 COMPILE=false PRESET=nano SIZE_MB=5 STEPS=3 SEQ=128 MB=2 \
#   VOCAB=2048 OUT=/tmp/gs bash benchmarks/gpu_scale.sh
set -euo pipefail
OUT="${OUT:-runs/gpu_scale}"; mkdir -p "$OUT"
WORK="${WORK:-/tmp/nexus_gpu_scale}"
PRESET="${PRESET:-130m}"; SIZE_MB="${SIZE_MB:-300}"; STEPS="${STEPS:-300}"; SEQ="${SEQ:-2048}"
MB="${MB:-16}"; VOCAB="${VOCAB:-50304}"; DEVICE="${DEVICE:-cuda}"; NPROC="${NPROC:-1}"; COMPILE="${COMPILE:-true}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PY:-python3}"
TOK_ARGS=(); [ -n "${TOKENIZER:-}" ] && TOK_ARGS=(--tokenizer "$TOKENIZER")
timeout 300 $PY benchmarks/data_pipeline.py --work "$WORK" --sizes-mb "$SIZE_MB" --vocab "$VOCAB" \
  --seq "$SEQ" "${TOK_ARGS[@]}" --json "$OUT/data.json" | tee "$OUT/data.md"
# the training config: the same data section as the benchmark's (a cache hit)
$PY - "$OUT/data.json" "$WORK" "$SIZE_MB" > "$WORK/train.yaml" <<'PY'
import json, sys, yaml
from pathlib import Path
res, work, mb = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), float(sys.argv[3])
corpus = work / f"corpus-{mb:g}MB"
files = {s: sorted(str(p) for p in corpus.glob(f"{s}-*")) for s in ("web", "math", "code")}
data = {"data_dir": str(work / f"cache-{mb:g}MB"), "tokenizer": res["tokenizer"], "val_fraction": 0.005,
        "sources": [{"name": s, "kind": "files", "paths": files[s]} for s in ("web", "math", "code")]}
print(yaml.safe_dump({"data": data}))
PY
PAR=ddp; [ "$NPROC" -ge 2 ] && PAR=fsdp
[ "$DEVICE" = cuda ] && { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv -lms 500 > "$OUT/gpu_mem.csv" & MON=$!; }
timeout 420 $PY -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m nexus_optim.cli train \
  --config "$WORK/train.yaml" --set model.preset="$PRESET" --set model.seq_len="$SEQ" \
  --set model.compile="$COMPILE" --set train.bf16=true --set train.parallel=$PAR --set train.device="$DEVICE" \
  --set optim.name=nexus --set optim.inner_steps=4 --set optim.lr=1.5e-3 --set train.micro_batch_size="$MB" \
  --set train.steps="$STEPS" --set schedule.warmup_steps=20 --set train.eval_every="$STEPS" \
  --set train.eval_tokens=262144 --set train.ckpt_every="$STEPS" --set train.log_every=10 \
  --set train.export_hf=false --set train.progress=false --set train.out_dir="$WORK/run" \
  --overwrite > "$OUT/train.log" 2>&1 || { echo "train failed"; tail -40 "$OUT/train.log"; }
[ -n "${MON:-}" ] && kill "$MON" || true
cp "$WORK/run/metrics.jsonl" "$OUT/" 2>/dev/null || true
$PY - "$OUT" "$PRESET" "$PAR" "$NPROC" "$COMPILE" <<'PY'
import csv, json, statistics, sys
from pathlib import Path
out, preset, par, nproc, comp = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "true"
rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][2:]  # past compile/warm-up
mem = out / "gpu_mem.csv"
peak = max((int(r[1].split()[0]) for r in list(csv.reader(mem.open()))[1:] if len(r) > 1), default=None) if mem.exists() else None
gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else "cpu"
line = (f"| {gpu} | {preset} | {nproc} x {par}, bf16{', compile' if comp else ''} | "
        f"{statistics.median(tps) if tps else float('nan'):,.0f} | {peak if peak is not None else '-'} MiB |")
(out / "scale.md").write_text("| device | model | parallel | median tokens/s | peak GPU memory |\n"
                              "| --- | --- | --- | --- | --- |\n" + line + "\n")
print((out / "scale.md").read_text())
PY
