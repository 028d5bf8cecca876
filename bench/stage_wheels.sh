#!/usr/bin/env bash
# Stage the wheels that bench/gpu_session.sh installs on a GPU machine without network.
# Run it from the repository root on any machine with network, then copy the result over:
#
#   bash bench/stage_wheels.sh quick   # .wheels/: webdataset, braceexpand, PyYAML (≈ 0.9 MB)
#   bash bench/stage_wheels.sh dali    # .dali/part-*: DALI for CUDA 13 and its needs (≈ 250 MB) in 55 MiB parts
#
# The wheels are for the GPU machine's Python (PYVER, default 3.12) on Linux x86-64, whatever runs
# this script. `quick`'s wheels travel with the working tree (.wheels/ is git-ignored, so copy it
# along); gpu_session.sh installs them only where webdataset does not import. DALI's parts go to
# ~/dali on the GPU machine (one part per transfer where transfers are limited to ~64 MiB), and
# `bash bench/gpu_session.sh dali` joins and installs them before it measures.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-quick}
PY=${PY:-python3}
PYVER=${PYVER:-3.12}
plat=(--only-binary=:all: --python-version "$PYVER" --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
get() { "$PY" -m pip download -q --no-deps "${plat[@]}" -d "$1" "${@:2}"; }

case $what in
  quick)
    rm -rf .wheels && mkdir -p .wheels
    # webdataset imports braceexpand and yaml at import time; the rest of its needs (numpy) the machine has
    get .wheels webdataset==1.0.2 braceexpand==0.1.7 pyyaml==6.0.3
    ls -l .wheels
    echo "$(ls .wheels/*.whl | wc -l) wheels, $(du -ck .wheels/*.whl | tail -1 | cut -f1) KB: copy .wheels/ with the working tree"
    ;;
  dali)
    rm -rf .dali && mkdir -p .dali/whl
    for p in nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-libnvcomp-cu13==5.3.0.16 \
             nvidia-nvjpeg nvidia-nvjpeg2k-cu13 nvidia-nvtiff-cu13 astunparse gast optree nvtx makefun \
             'libcst~=1.8' webdataset==1.0.2 braceexpand==0.1.7 pyyaml==6.0.3; do
      get .dali/whl "$p"
    done
    mb=$(du -cm .dali/whl/*.whl | tail -1 | cut -f1)
    tar -C .dali -cf - whl | split -b 55M - .dali/part-
    rm -rf .dali/whl
    n=$(ls .dali/part-* | wc -l)
    ls -l .dali
    echo "$mb MB of wheels in $n parts of ≤ 55 MiB: copy each .dali/part-* to ~/dali on the GPU machine,"
    echo "then run: bash bench/gpu_session.sh dali"
    ;;
  *) echo "usage: bash bench/stage_wheels.sh quick|dali" >&2; exit 2 ;;
esac
