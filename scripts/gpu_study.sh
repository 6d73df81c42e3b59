#!/usr/bin/env bash
# One GPU session (H100/H200, 16 CPU cores): run from the repo root with the prepared
# default data in ./data (docs, shards, tokenizer, prepared-*.json). Writes under $OUT
# (default runs/gpu_out):
#   throughput_130m.json  1-GPU bf16 time per outer step, AdamW vs Nexus (130m)
#   gpu_130m.tgz          130m AdamW vs Nexus, seeds 0 1 (metrics, configs, report)
#   cpu_study.tgz         `nexus study` on the CPU cores (nano), run dirs + reports
# Uses the machine's own torch/transformers (PYTHONPATH=src; no install).
set -uo pipefail
OUT="${OUT:-runs/gpu_out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PY:-python3}"
CPU_WORKERS="${CPU_WORKERS:-14}"
STUDY_STEPS="${STUDY_STEPS:-100}"
BUDGET="${BUDGET:-540}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

# CPU study in the background on the CPU cores
( timeout $((BUDGET - 20)) $PY -m nexus_optim.cli study --out runs/study --workers "$CPU_WORKERS" \
    --steps "$STUDY_STEPS" > "$OUT/study.log" 2>&1 ) &
STUDY=$!

# GPU: throughput table, then 130m AdamW vs Nexus, 2 seeds
timeout 120 $PY benchmarks/train_throughput.py --device cuda --presets 130m --pairs 3 --steps 5 \
    --micro-batch 16 --seq-len 512 --json "$OUT/throughput_130m.json" > "$OUT/throughput_130m.txt" 2>&1
for seed in 0 1; do
  for opt in adamw nexus; do
    timeout $((BUDGET - SECONDS - 25)) $PY -m nexus_optim.cli train --config configs/130m.yaml \
      --set optim.name=$opt --set train.seed=$seed --set train.out_dir=runs/130m/${opt}_seed$seed \
      --set train.progress=false --set train.threads=2 > "$OUT/130m_${opt}_$seed.log" 2>&1
  done
done
$PY -m nexus_optim.cli compare runs/130m/*_seed* --out runs/130m/report > "$OUT/compare_130m.log" 2>&1
tar czf "$OUT/gpu_130m.tgz" --exclude=checkpoints --exclude=tb runs/130m
wait $STUDY
tar czf "$OUT/cpu_study.tgz" --exclude=checkpoints --exclude=tb runs/study
ls -la "$OUT"
