#!/usr/bin/env bash
# One GPU window, the same every time (DEVELOPERS.md, "A timed GPU run"): versions, the CUDA checks, one speed row
# of the full model, then training of the full model until a deadline, with the state and the export written
# to $OUT. Run from the repository root with the training pack at .data/t291.npz and Set5 at .data/Set5.
#
#   bash benchmarks/gpu_window.sh                          # on a machine with a GPU (OUT: where results go)
#   DRY=1 OUT=/tmp/window bash benchmarks/gpu_window.sh    # the dry run on a CPU: a small model, a few steps
#
# Settings (environment):
#   TRAIN_MINUTES  the training's share of the window (default 6; the dry run 3: a CPU builds the patch bank slowly);
#   STEPS          the cosine's length; by default fitted to TRAIN_MINUTES from the steps/s of a short probe run
#                  (PROBE_STEPS, default 60), so the window ends at the low learning rate where a cosine gains
#                  most (docs/training.md), instead of stopping early in a long schedule;
#   INIT           weights to start from: state/drcn.safetensors when it exists, else the bundled drcn-lite
#                  widened to F=256 by splitting its channels (drcn train --widen split: the same function
#                  within 0.003 dB, 37.1 dB at Set5 x2 from the first step, where a run from
#                  scratch needs tens of thousands of steps to get there); INIT=none starts from scratch. A run
#                  from weights keeps alpha at 0 (the final output's loss only), as every continuation of
#                  drcn-lite did; from scratch it decays as the paper's recipe does;
#   BATCH          patches per step (default 64);
#   EMA            the --ema decay (default 0.999);
#   LR             the cosine's peak learning rate (default: drcn train's, 2e-4).
# The dry run trains F=72 from drcn-lite (widened as a window widens it) and only loads state/drcn.safetensors,
# which is F=256. A step that fails does not stop the run (its other results are still written), but the script
# then exits non-zero, so a dry run with a broken step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
OUT=${OUT:?set OUT to the folder the results are written into}
mkdir -p "$OUT"
DRY=${DRY:-0}
STEPS=${STEPS:-}
PROBE_STEPS=${PROBE_STEPS:-60}
BATCH=${BATCH:-64}
EMA=${EMA:-0.999}
INIT=${INIT:-}
if [[ -z "$INIT" ]]; then
  if [[ "$DRY" == 1 ]]; then INIT=drcn-lite  # the dry run's F=72 cannot start from the F=256 state
  elif [[ -f state/drcn.safetensors ]]; then INIT=state/drcn.safetensors; else INIT=drcn-lite; fi
fi
if [[ "$INIT" == none ]]; then INIT=; fi

log() { echo "== $(date -u +%H:%M:%S) $*"; }
FAILED=()
fail() { echo "$1 FAILED"; FAILED+=("$1"); }

log "versions"
python - <<'PY'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version(), "| devices", torch.cuda.device_count())
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"

if [[ "$DRY" == 1 ]]; then
  DEVICE=cpu; QUICK=--quick; FEATURES=72; SPEED_ARGS=(--random 8 --sizes 64 --precisions fp32 --models drcn-lite)
  TRAIN_MINUTES=${TRAIN_MINUTES:-3}; BATCH=4; PROBE_STEPS=12; VAL_EVERY=20; CHECKPOINT_EVERY=10; LOG_EVERY=4
else
  DEVICE=cuda; QUICK=; FEATURES=256; SPEED_ARGS=(--random 256 --sizes 1024 2048 --precisions bf16 --models drcn-lite)
  TRAIN_MINUTES=${TRAIN_MINUTES:-6}; VAL_EVERY=2000; CHECKPOINT_EVERY=1000; LOG_EVERY=100
fi
RECIPE_ARGS=()
if [[ -n "$INIT" ]]; then RECIPE_ARGS=(--alpha-decay 0); fi
if [[ -n "${LR:-}" ]]; then RECIPE_ARGS+=(--lr "$LR"); fi
COMMON=(--pack .data/t291.npz --device "$DEVICE" --features "$FEATURES" --recursions 16 --batch-size "$BATCH"
        --quiet --overwrite)

log "CUDA checks"
python benchmarks/cuda_checks.py --device "$DEVICE" $QUICK --json "$OUT/checks.json" || fail "CUDA checks"

if [[ "$DRY" == 1 && -f state/drcn.safetensors ]]; then
  log "the window's starting weights"
  python -c "from drcn_cli.weights.files import load_weights; print(load_weights('state/drcn.safetensors')[0].config)" \
    || fail "loading state/drcn.safetensors"
fi

log "speed row"
python benchmarks/speed.py --device "$DEVICE" --repeats 3 --no-end-to-end "${SPEED_ARGS[@]}" | tee "$OUT/speed.txt" \
  || fail "speed row"

# a machine may keep ignored folders between calls: a failed run must not hand back an earlier run's files
rm -rf .checkpoints/probe .checkpoints/window
INIT_ARGS=()
if [[ -n "$INIT" ]]; then INIT_ARGS=(--init "$INIT"); fi
if [[ -z "$STEPS" ]]; then
  log "probe: $PROBE_STEPS steps to measure steps/s"
  probe_start=$(date +%s.%N)
  python -m drcn_cli train "${COMMON[@]}" "${INIT_ARGS[@]}" --steps 1000000 --stop-at "$PROBE_STEPS" \
    --log-every $(( PROBE_STEPS / 6 > 0 ? PROBE_STEPS / 6 : 1 )) --checkpoint-every 0 \
    --out .checkpoints/probe.safetensors --checkpoint-dir .checkpoints/probe 2>&1 | tail -3 || fail "probe"
  probe_wall=$(python -c "import time; print(time.time() - $probe_start)")
  # steps/s after the probe's first log row (cuDNN's search and the first launches excluded); the probe's
  # start-up (imports, CUDA, the patch bank) is what the run's own start-up will cost
  STEPS=$(python benchmarks/fit_steps.py .checkpoints/probe/log.csv --minutes "$TRAIN_MINUTES" --wall "$probe_wall") \
    || { STEPS=20000; echo "no fitted length: --steps $STEPS"; }
fi
TRAIN_ARGS=(--steps "$STEPS" --val-every "$VAL_EVERY" --checkpoint-every "$CHECKPOINT_EVERY" --log-every "$LOG_EVERY"
            --time-limit "$TRAIN_MINUTES" --ema "$EMA")
log "training F=$FEATURES${INIT:+ from $INIT}: ${TRAIN_ARGS[*]} ${RECIPE_ARGS[*]}"
python -m drcn_cli train "${COMMON[@]}" --val .data/Set5 "${INIT_ARGS[@]}" "${TRAIN_ARGS[@]}" "${RECIPE_ARGS[@]}" \
  --out "$OUT/drcn.safetensors" --checkpoint-dir .checkpoints/window 2>&1 | tail -5 || fail "training"
# What comes back (at most 8 files): checks.json, speed.txt, the best validated export (drcn.safetensors), the
# latest weights (last.safetensors) and their moving average (last-ema.safetensors), and the log. The next window
# starts from one of them with --init (INIT=...), so the optimiser moments (14 MB for F=256) need not be kept.
cp .checkpoints/window/model.safetensors "$OUT/last.safetensors" 2>/dev/null || true
cp .checkpoints/window/ema.safetensors "$OUT/last-ema.safetensors" 2>/dev/null || true
cp .checkpoints/window/log.csv "$OUT/log.csv" 2>/dev/null || true
if [[ -n "$INIT" && -f "$OUT/last.safetensors" ]]; then  # did the split copies move apart? (at 1e-5 they did not)
  log "split copies of the latest weights"
  python benchmarks/split_copies.py "$OUT/last.safetensors" 2>&1 | tail -7 || fail "split_copies"
fi
log "done"; ls -la "$OUT"
if (( ${#FAILED[@]} )); then log "FAILED: ${FAILED[*]}"; exit 1; fi
