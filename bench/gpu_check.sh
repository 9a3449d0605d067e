#!/usr/bin/env bash
# The GPU path end to end. On a machine with an NVIDIA GPU, from anywhere in the repository:
#
#     bash bench/gpu_check.sh
#
# 1. Installs into .venv-gpu (Python 3.11, `PYTHON=python3.11` by default): the exactly pinned torch, whose Linux
#    wheel on PyPI is the CUDA build, then Lethe. A second run reuses it. `--python PATH` skips the install and uses
#    an interpreter that already has both (e.g. .venv/bin/python).
# 2. Runs bench/gpu_check.py: stops at once, exit 2, when torch sees no CUDA device; else builds (or reuses) the
#    tiny world under .lethe-gpu/ (CPU, a minute or two), starts `lethe serve` with LETHE_DEVICE=cuda (API and
#    worker on the GPU), files one forget request, waits for it to be trained, verified and served, and prints
#    training s, verification s and /v1/vqa p50 ms; exit 1 unless the module forgets (active, held-out leak at
#    most 5% of what the reference model leaked).
#
# Budget: about 8 minutes on an H200 with the install (torch's CUDA wheels are the bulk of it), 3 without.
# `--cpu` runs the same path on the CPU (LETHE_DEVICE=cpu), for a machine without a GPU: it shows the script works,
# not how fast the GPU is. Any other argument goes to bench/gpu_check.py (e.g. --json bench/results/gpu-check.json).
set -euo pipefail
cd "$(dirname "$0")/.."

python=""
args=()
while (($#)); do
  case "$1" in
    --python) python="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

if [[ -z "$python" ]]; then
  python=.venv-gpu/bin/python
  [[ -x "$python" ]] || "${PYTHON:-python3.11}" -m venv .venv-gpu
  started=$SECONDS
  "$python" -m pip install --quiet --upgrade pip
  # torch first and exactly pinned: a looser requirement resolves to another build.
  "$python" -m pip install --quiet "torch==2.13.0"
  "$python" -m pip install --quiet -e .
  echo "gpu_check: installed into .venv-gpu in $((SECONDS - started)) s"
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" bench/gpu_check.py "${args[@]}"
