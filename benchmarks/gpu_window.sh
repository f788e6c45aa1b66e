#!/usr/bin/env bash
# One GPU window, the same every time (DEVELOPERS.md, "GPU windows"): versions, the CUDA checks, one speed row
# of the full model, then training of the full model until a deadline, with the state and the export written
# to $OUT. Run from the repository root with the training pack at .data/t291.npz and Set5 at .data/Set5.
#
#   bash benchmarks/gpu_window.sh                          # on the GPU machine ($OUT set by the caller)
#   DRY=1 OUT=/tmp/window bash benchmarks/gpu_window.sh    # the dry run on a CPU: tiny model, a few steps
#
# Settings (environment): TRAIN_MINUTES (default 6), STEPS (the schedule's length, default 30000),
# INIT (weights to start from, default state/drcn.safetensors when it exists; INIT=drcn-lite starts from the
# bundled drcn-lite widened to F=256, the same function), BATCH (default 64), EMA (the --ema decay, default
# 0.999: a window stops while the lr is still high, where the moving average scores better than the last weights).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
OUT=${OUT:?set OUT to the folder whose files come back}
mkdir -p "$OUT"
DRY=${DRY:-0}
TRAIN_MINUTES=${TRAIN_MINUTES:-6}
STEPS=${STEPS:-30000}
BATCH=${BATCH:-64}
EMA=${EMA:-0.999}
INIT=${INIT:-}
if [[ -z "$INIT" && -f state/drcn.safetensors ]]; then INIT=state/drcn.safetensors; fi

log() { echo "== $(date -u +%H:%M:%S) $*"; }

log "versions"
python - <<'PY'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version(), "| devices", torch.cuda.device_count())
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"

if [[ "$DRY" == 1 ]]; then
  DEVICE=cpu; QUICK=--quick; FEATURES=8; SPEED_ARGS=(--random 8 --sizes 64 --precisions fp32 --models drcn-lite)
  TRAIN_ARGS=(--steps 6 --batch-size 4 --val-every 3 --checkpoint-every 3 --log-every 3 --time-limit 2 --ema "$EMA")
else
  DEVICE=cuda; QUICK=; FEATURES=256; SPEED_ARGS=(--random 256 --sizes 1024 2048 --precisions bf16 --models drcn-lite)
  TRAIN_ARGS=(--steps "$STEPS" --batch-size "$BATCH" --val-every 2000 --checkpoint-every 1000 --log-every 100
              --time-limit "$TRAIN_MINUTES" --ema "$EMA")
fi

log "CUDA checks"
python benchmarks/cuda_checks.py --device "$DEVICE" $QUICK --json "$OUT/checks.json" || echo "some checks FAILED"

log "speed row"
python benchmarks/speed.py --device "$DEVICE" --repeats 3 --no-end-to-end "${SPEED_ARGS[@]}" | tee "$OUT/speed.txt"

log "training F=$FEATURES${INIT:+ from $INIT}: ${TRAIN_ARGS[*]}"
INIT_ARGS=()
if [[ -n "$INIT" ]]; then INIT_ARGS=(--init "$INIT"); fi
python -m drcn_cli train --pack .data/t291.npz --val .data/Set5 --device "$DEVICE" --features "$FEATURES" \
  --recursions 16 "${INIT_ARGS[@]}" "${TRAIN_ARGS[@]}" --quiet --overwrite \
  --out "$OUT/drcn.safetensors" --checkpoint-dir .checkpoints/window 2>&1 | tail -5 || echo "training FAILED"
# What comes back (at most 8 files): checks.json, speed.txt, the best validated export (drcn.safetensors), the
# latest weights (last.safetensors) and their moving average (last-ema.safetensors), and the log. The next window
# starts from one of them with --init (INIT=...), so the optimiser moments (14 MB for F=256) need not come back.
cp .checkpoints/window/model.safetensors "$OUT/last.safetensors" 2>/dev/null || true
cp .checkpoints/window/ema.safetensors "$OUT/last-ema.safetensors" 2>/dev/null || true
cp .checkpoints/window/log.csv "$OUT/log.csv" 2>/dev/null || true
log "done"; ls -la "$OUT"
