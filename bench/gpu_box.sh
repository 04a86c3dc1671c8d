#!/usr/bin/env bash
# The runs that need a GPU machine (one GPU, 16 cores), in phases of < 10 minutes each.
#
#   NAS_BENCH_DATA=<copy of ../shared/data> NAS_BENCH_RESULTS=<dir> bash bench/gpu_box.sh PHASE
#
# Every collector is resumable (one JSON line per finished unit, finished units skipped), so a
# phase cut by its time limit continues where it stopped when run again with the same results.
# Phase "fidelity": the 10x proxy-fidelity reference (2M tokens, both seeds) on the GPU in four
# processes, and on the CPU cores the 400k-token rung and the item 4 table at the product's
# default budget (200k tokens, train only: latency is timed on the development machine).
set -u
phase=${1:?phase: fidelity | fidelity2 | throughput-slm}
limit=${LIMIT_S:-540}
: "${NAS_BENCH_RESULTS:?set NAS_BENCH_RESULTS}"
log=$NAS_BENCH_RESULTS/run.log
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 NAS_CACHE_DIR=${NAS_CACHE_DIR:-/tmp/nas-cache}
cd "$(dirname "$0")/.."
nvidia-smi -L >>"$log" 2>&1
python3 - >>"$log" 2>&1 <<'EOF'
# Warm the corpus caches once, and check the GPU batches equal the CPU ones.
import numpy as np, torch
from bench._util import corpus
from nas.proxy import _Batches
from nas.specs import ProxyBudget
for name in ("shakespeare", "wikitext", "stdlib"):
    print(name, corpus(name).description)
data, budget = corpus("shakespeare"), ProxyBudget(tokens=4096)
cpu = _Batches(data.train, budget, 3, torch.device("cpu"))
gpu = _Batches(data.train, budget, 3, torch.device("cuda"), budget.steps)
same = all(torch.equal(cpu.next()[0], gpu.next()[0].cpu()) for _ in range(budget.steps))
print("GPU batches equal CPU batches:", same, torch.__version__, torch.cuda.get_device_name())
EOF
run() { timeout "$limit" python3 "$@" >>"$log" 2>&1; }
case $phase in
fidelity)
  for k in 0 1 2 3; do
    run bench/collect_fidelity.py --kinds ref --ref 2000000 --ceiling-every 1 --device cuda \
      --shard $k/4 --worker gpu &
  done
  for k in 0 1 2; do
    run bench/collect_fidelity.py --kinds proxy --ladder 400000 --shard $k/3 --worker cpu400k &
  done
  for k in $(seq 0 7); do
    run bench/collect_table.py --tokens 200000 --table tiny_table_200k --train-only --shard $k/8 &
  done
  wait ;;
fidelity2)  # what phase fidelity left: seed 0 everywhere, seed 1 for every second candidate
  for k in $(seq 0 7); do
    run bench/collect_fidelity.py --kinds ref --ref 2000000 --ceiling-every 2 --device cuda \
      --shard $k/8 --worker gpu &
  done
  for k in 0 1 2 3 4; do
    run bench/bench_slm_findings.py --scale slm --device cuda --tokens "${SLM_TOKENS:-10000000}" \
      --shard $k/5 &
  done
  wait ;;
throughput-slm)  # the GPU's own numbers (alone on the GPU), then the slm-scale comparisons
  run bench/bench_throughput.py --device cuda --seconds 3 >"$NAS_BENCH_RESULTS/throughput_cuda.md"
  for k in 0 1 2 3 4; do
    run bench/bench_slm_findings.py --scale slm --device cuda --tokens "${SLM_TOKENS:-10000000}" \
      --shard $k/5 &
  done
  wait ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
ls -la "$NAS_BENCH_RESULTS"
