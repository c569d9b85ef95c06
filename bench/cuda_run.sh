#!/usr/bin/env bash
# The GPU check of emovec's transformers path (README "Which backend"): on a CUDA machine with
# emovec importable and the default model installed, (1) bench/cuda_check.py compares CUDA
# activations and steered generations with the CPU's, (2) a whole run of 171 emotions x
# PER_EMOTION stories is made on the GPU (writing, extraction, analyses, report) and timed.
# Outputs go to OUT_DIR: cuda_check.json/.log, run.log, and the run without its activations
# as run.tgz (split into 15 MB parts if larger).
#   bash bench/cuda_run.sh OUT_DIR [PER_EMOTION] [RUN_SECONDS]
set -uo pipefail
out=${1:?usage: bench/cuda_run.sh OUT_DIR [PER_EMOTION] [RUN_SECONDS]}
per=${2:-60}
budget=${3:-390}
run=/tmp/emovec-cuda-run
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
nvidia-smi -L
t=$(date +%s)
timeout 150 python3 bench/cuda_check.py --out "$out/cuda_check.json" >"$out/cuda_check.log" 2>&1
echo "cuda_check: rc $? in $(($(date +%s) - t)) s"
t=$(date +%s)
timeout "$budget" python3 -m emovec.cli run "$run" --per-emotion "$per" --n-neutral 300 --device cuda \
  --dtype float32 --gen-dtype bfloat16 --gen-batch-size 512 --extract-batch-size 128 >"$out/run.log" 2>&1
echo "emovec run (171 x $per on cuda): rc $? in $(($(date +%s) - t)) s"
tail -n 25 "$out/run.log"
tar czf /tmp/run.tgz --exclude=activations -C "$(dirname $run)" "$(basename $run)"
if [ "$(stat -c %s /tmp/run.tgz)" -gt 15000000 ]; then split -b 15000000 -d /tmp/run.tgz "$out/run.tgz.part"; else cp /tmp/run.tgz "$out/"; fi
ls -la "$out"
