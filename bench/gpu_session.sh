#!/usr/bin/env bash
# The GPU measurement of bench/RESULTS.md, from the repository root of a machine with one GPU:
#
#   bash bench/gpu_session.sh quick [--budget SECONDS] [--out DIR] [--data DIR] [--no-overlap] [--dry-run]
#   bash bench/gpu_session.sh dali  [--budget SECONDS] [--out DIR] [--data DIR] [--dry-run]
#
# quick (≈ 6 min on an H100, 16 cores): kernel tests, graph breaks, loss, train-step grid, train.py
#   for 3 epochs on a synthetic set drawn in 90 s, the profiler's GPU idle share, torchvision's GPU
#   JPEG decode. It needs PyTorch with CUDA, Triton and torchvision; no DALI, no network. Where
#   webdataset does not import, it is installed from .wheels/ (bench/stage_wheels.sh quick: webdataset,
#   braceexpand, PyYAML, ≈ 0.9 MB; GPU_SESSION_WHEELS names another folder) into .wheels/site/, never
#   into the machine's own Python.
# dali (≈ 5 min): DALI-GPU decode swept (hw_decoder_load, hybrid_huffman_threshold, threads) and input
#   efficiency with DALI-GPU. Where DALI does not import, it is installed first from the parts that
#   bench/stage_wheels.sh dali made (≈ 250 MB), found in $DALI_PARTS (default ~/dali) or .dali/.
#
# Output: OUT (default bench_out/gpu-MODE) gets PART.json and PART.log as each part ends, and
# session.json; a part that would overrun --budget is skipped with a line saying so.
# --dry-run: every part at toy size on the machine at hand (a CPU will do) in under two minutes.
# PY picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
mode=${1:-}
case $mode in
  quick|dali) ;;
  *) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

missing() { ! "$PY" -c "import $1" 2>/dev/null; }

# webdataset and what it imports, from the carried wheels, where the machine lacks them
WHEELS=$(cd "${GPU_SESSION_WHEELS:-.wheels}" 2>/dev/null && pwd || echo "${GPU_SESSION_WHEELS:-.wheels}")
if missing webdataset; then
  site=$WHEELS/site
  wheels=()
  for pair in webdataset:webdataset braceexpand:braceexpand yaml:pyyaml; do
    mod=${pair%%:*} name=${pair##*:}
    if missing "$mod"; then
      whl=$(ls "$WHEELS/$name"-*.whl 2>/dev/null | head -n 1 || true)
      [ -n "$whl" ] || { echo "$mod does not import and $WHEELS has no $name wheel: run bash bench/stage_wheels.sh quick where there is network and copy .wheels/ here" >&2; exit 2; }
      wheels+=("$whl")
    fi
  done
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "${wheels[@]}"
    export PYTHONPATH="$site:$PYTHONPATH"
  else  # no pip: the wheels are zip files that import as they are (PyYAML falls back to pure Python)
    for w in "${wheels[@]}"; do export PYTHONPATH="$w:$PYTHONPATH"; done
  fi
  missing webdataset && { echo "webdataset still does not import after installing ${wheels[*]}" >&2; exit 2; }
  echo "installed from $WHEELS: ${wheels[*]##*/}"
fi

if [ "$mode" = dali ] && missing nvidia.dali && [[ " $* " != *" --dry-run "* ]]; then
  parts=${DALI_PARTS:-$HOME/dali}
  ls "$parts"/part-* >/dev/null 2>&1 || parts=.dali
  ls "$parts"/part-* >/dev/null 2>&1 || { echo "DALI does not import and no staged parts were found in ${DALI_PARTS:-$HOME/dali} or .dali/ (bench/stage_wheels.sh dali)" >&2; exit 2; }
  tmp=$(mktemp -d)
  cat "$parts"/part-* | tar -C "$tmp" -xf -
  # DALI joins the nvidia.* namespace beside PyTorch's CUDA libraries, so it goes into the same Python
  PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install -q --no-index --no-deps --no-compile "$tmp"/whl/*.whl
  rm -rf "$tmp"
  "$PY" -c 'import nvidia.dali as d, nvidia.dali.plugin.pytorch; print("DALI", d.__version__, "installed")'
fi

exec "$PY" -m bench.gpu_session "$@"
