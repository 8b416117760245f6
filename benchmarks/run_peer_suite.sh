#!/usr/bin/env bash
# The whole peer comparison (issue 7), one task after another, in one session. Run by hand:
#     bash benchmarks/run_peer_suite.sh [task ...]      # tasks: digits-mobilenet digits-custom digits25-mobilenet digits-resnet18
# Each task: the one-click search (K trials) and a random search (same space without its seeds), then
# bench_peers.py re-measures both fronts and the peers side by side. digits25-mobilenet (the harder task)
# also runs sampler seeds 1 and 2 and random search at 3K trials for the hypervolume comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY benchmarks/make_digits_subset.py --train-fraction 0.25 --out benchmarks/work/digits25.npz
K=${K:-24}
task_flags() {
  case "$1" in
    digits-mobilenet) echo "--model mobilenet_v3_small" ;;
    digits-custom) echo "--model benchmarks/models/custom_cnn.py:custom_cnn" ;;
    digits25-mobilenet) echo "--model mobilenet_v3_small --data benchmarks/work/digits25.npz" ;;
    digits-resnet18) echo "--model resnet18" ;;
    *) echo "unknown task $1" >&2; exit 2 ;;
  esac
}
for task in "${@:-digits-mobilenet digits-custom digits25-mobilenet digits-resnet18}"; do
  for t in $task; do
    flags=$(task_flags "$t")
    if [ "$t" = digits25-mobilenet ]; then
      $PY benchmarks/bench_hv.py --task "$t" --trials "$K" --seeds 0 1 2 --random-factor 3 -- $flags
    else
      $PY benchmarks/bench_hv.py --task "$t" --trials "$K" --seeds 0 --random-factor 1 -- $flags
    fi
    $PY benchmarks/bench_peers.py --task "$t" --run "benchmarks/work/hv-$t/autocompress-s0" \
        --random "benchmarks/work/hv-$t/random-s0" --random-first "$K"
  done
done
