#!/usr/bin/env bash
# The GPU measurements of bench/RESULTS.md, cut into steps that each fit one device call (≤ 10 min).
#
#   bash bench/gpu_session.sh STEP [STEP ...]      (from the repository root, on the lent machine)
#
#   setup      install DALI from the staged parts (../shared/GPU.md) unless it imports already
#   data       generate + preshard a CelebA-sized synthetic set ($N images, train split 162,770)
#   tests      the whole test suite: on CUDA the kernels compile for real, DALI decodes with nvJPEG
#   loader     bench parts loader + loss (loader epochs capped at $LOADER_MAX_IMAGES images; DALI-GPU's
#              hardware-decoder share swept)
#   step       bench.train_step alone (no new variant after $STEP_BUDGET s; JSON rewritten per variant)
#   input      bench parts input + profile on the CelebA-sized split: a real epoch, NVML, trace
#   train      train.py for $TRAIN_EPOCHS epochs on that split (per-epoch images/s and GPU %)
#
# Each step runs what it needs first (data needs setup, the bench steps need data), so any step
# works on a fresh machine, only slower. Logs and JSON go to $OUT, which the device tool brings
# back; everything else (DALI, the data set) lives on the machine while it is held.
set -euo pipefail

OUT=${OUT:-bench_out/gpu}
DATA=${DATA:-$HOME/celeba-synthetic}
N=${N:-202599}
LOADER_MAX_IMAGES=${LOADER_MAX_IMAGES:-16384}
STEP_BUDGET=${STEP_BUDGET:-300}
TRAIN_EPOCHS=${TRAIN_EPOCHS:-2}
PY=${PY:-python3}
mkdir -p "$OUT"
# The machine's own Python holds torch/triton/torchvision; the project runs from the checkout.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

log() { echo "== $(date -u +%H:%M:%S) $*"; }

SETUP_DONE=0
step_setup() {  # every step calls it first; it runs once per invocation
  [ "$SETUP_DONE" = 1 ] && return
  if "$PY" -c 'import nvidia.dali, webdataset' 2>/dev/null; then
    log "DALI and webdataset already importable"
  elif [ -f .dali/install-dali ]; then
    bash .dali/install-dali
  else
    echo "DALI is not installed and .dali/install-dali was not carried: see ../shared/GPU.md" >&2
    return 2
  fi
  "$PY" - <<'EOF' | tee "$OUT/env.txt"
import torch, triton, nvidia.dali as dali
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, "dali", dali.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
EOF
  SETUP_DONE=1
}

step_data() {
  step_setup
  if [ -f "$DATA/shards/manifest.json" ]; then log "data: $DATA/shards already there"; return; fi
  log "data: $N synthetic images → $DATA"
  "$PY" -m pipeline.synthetic --out "$DATA/celeba" --n "$N" 2>&1 | tail -n 8
  "$PY" -m pipeline.preshard --celeba "$DATA/celeba" --out "$DATA/shards" 2>&1 | tail -n 12
  rm -rf "$DATA/celeba"  # the shards hold every image; the JPEG folder only doubles the disk use
}

step_tests() {
  step_setup
  "$PY" -m pytest -q -p no:cacheprovider -ra 2>&1 | tee "$OUT/pytest.log" | tail -n 25
}

bench() {  # bench NAME ARGS...: one suite call on the CelebA-sized shards, JSON + log into $OUT
  local name=$1; shift
  step_data
  "$PY" -m bench --shards "$DATA/shards" --out "$HOME/bench_out" --json "$OUT/$name.json" "$@" 2>&1 \
    | tee "$OUT/$name.log"
}

step_loader() { bench loader_loss --only loader loss --loader-max-images "$LOADER_MAX_IMAGES"; }
step_step() {  # the part alone: it rewrites its JSON after every variant, so a cut-short call keeps them
  step_setup
  "$PY" -m bench.train_step --budget "$STEP_BUDGET" --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.log"
}
step_input() {
  bench input_profile --only input profile
  gzip -c "$HOME/bench_out/trace.json" > "$OUT/trace.json.gz"
}
step_train() {
  step_data
  "$PY" train.py --data "$DATA/shards" --epochs "$TRAIN_EPOCHS" --out "$HOME/runs/celeba-size" 2>&1 \
    | tee "$OUT/train.log" | tail -n 40
  cp "$HOME/runs/celeba-size/training_log.png" "$OUT/" 2>/dev/null || true
}

[ $# -gt 0 ] || { sed -n '2,/^set /{/^#/p}' "$0"; exit 2; }
for s in "$@"; do
  case $s in
    setup|data|tests|loader|step|input|train) log "step $s"; "step_$s" ;;
    *) echo "unknown step: $s (setup data tests loader step input train)" >&2; exit 2 ;;
  esac
done
log "done: $*"
