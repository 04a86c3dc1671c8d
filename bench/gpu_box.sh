#!/usr/bin/env bash
# The runs that need a GPU machine (one GPU, 16 cores), in phases of < 10 minutes each.
#
#   NAS_BENCH_DATA=<copy of ../shared/data> NAS_BENCH_RESULTS=<dir> NAS_BENCH_COMMIT=<commit> \
#     bash bench/gpu_box.sh PHASE
#
# Results land in <dir>/<study>/ as in bench/results/ (copy them back as they are); this
# script's own log is <dir>/gpu_box/gpu_box.log. NAS_BENCH_COMMIT names the commit in every row
# where the machine has no git checkout. Every collector is resumable (one JSON line per finished
# unit, finished units skipped), so a phase cut by its time limit continues where it stopped when
# run again with the same results.
# Phase "smoke": every GPU entry point in its --smoke mode (seconds; results in a temp folder).
# Phase "fidelity": the 10x proxy-fidelity reference (2M tokens, both seeds) on the GPU in four
# processes, and on the CPU cores the 400k-token rung and the item 4 exact tabular benchmark
# (bench/spaces/tabular.yaml, 8 shards, each pinned to its own core; every row is timed on the
# core that trains it, next to 7 training neighbours: retime on a quiet machine before trusting
# the latencies).
set -u
phase=${1:?phase: smoke | fidelity | fidelity2 | throughput-slm}
limit=${LIMIT_S:-540}
: "${NAS_BENCH_RESULTS:?set NAS_BENCH_RESULTS}"
mkdir -p "$NAS_BENCH_RESULTS/gpu_box" "$NAS_BENCH_RESULTS/throughput"
log=$NAS_BENCH_RESULTS/gpu_box/gpu_box.log
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 NAS_CACHE_DIR=${NAS_CACHE_DIR:-/tmp/nas-cache}
cd "$(dirname "$0")/.."
nvidia-smi -L >>"$log" 2>&1
run() { timeout "$limit" python3 -m "$@" >>"$log" 2>&1; }
if [ "$phase" = smoke ]; then
  status=0
  for cmd in "bench.bench_throughput --smoke --device cuda" \
             "bench.collect_fidelity --smoke --device cuda" \
             "bench.bench_slm_findings --smoke --device cuda"; do
    # shellcheck disable=SC2086
    run $cmd && echo "ok   $cmd" || { echo "FAIL $cmd (see $log)"; status=1; }
  done
  exit $status
fi
python3 - >>"$log" 2>&1 <<'PY'
# Warm the corpus caches once, and check the GPU batches equal the CPU ones.
import numpy as np, torch
from bench.common import corpus
from nas.proxy import _Batches
from nas.specs import ProxyBudget
for name in ("shakespeare", "wikitext", "stdlib"):
    print(name, corpus(name).description)
data, budget = corpus("shakespeare"), ProxyBudget(tokens=4096)
cpu = _Batches(data.train, budget, 3, torch.device("cpu"))
gpu = _Batches(data.train, budget, 3, torch.device("cuda"), budget.steps)
same = all(torch.equal(cpu.next()[0], gpu.next()[0].cpu()) for _ in range(budget.steps))
print("GPU batches equal CPU batches:", same, torch.__version__, torch.cuda.get_device_name())
PY
case $phase in
fidelity)
  for k in 0 1 2 3; do
    run bench.collect_fidelity --kinds ref --ref 2000000 --ceiling-every 1 --device cuda \
      --shard $k/4 --worker gpu &
  done
  for k in 0 1 2; do
    run bench.collect_fidelity --kinds proxy --ladder 400000 --shard $k/3 --worker cpu400k &
  done
  for k in $(seq 0 7); do
    run bench.collect_tabular --shard $k/8 &
  done
  wait ;;
fidelity2)  # what phase fidelity left: seed 0 everywhere, seed 1 for every second candidate
  for k in $(seq 0 7); do
    run bench.collect_fidelity --kinds ref --ref 2000000 --ceiling-every 2 --device cuda \
      --shard $k/8 --worker gpu &
  done
  for k in 0 1 2 3 4; do
    run bench.bench_slm_findings --scale slm --device cuda --tokens "${SLM_TOKENS:-10000000}" \
      --shard $k/5 &
  done
  wait ;;
throughput-slm)  # the GPU's own numbers (alone on the GPU), then the slm-scale comparisons
  timeout "$limit" python3 -m bench.bench_throughput --device cuda --seconds 3 \
    >"$NAS_BENCH_RESULTS/throughput/throughput_cuda.md" 2>>"$log"
  for k in 0 1 2 3 4; do
    run bench.bench_slm_findings --scale slm --device cuda --tokens "${SLM_TOKENS:-10000000}" \
      --shard $k/5 &
  done
  wait ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
ls -laR "$NAS_BENCH_RESULTS"
