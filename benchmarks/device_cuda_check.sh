#!/usr/bin/env bash
# The cuda-fp16 profile end to end on a GPU machine (issue 17, goal 3), as one prepared script.
#
# Written for the GPU machine the `device` tool lends (python3 there holds torch with CUDA, onnx, pandas,
# scikit-learn, typer, rich; nothing can be downloaded). What it lacks travels with the working tree:
#   .whl/*.whl           optuna, pydantic, torch-pruning, plotly... (pip --target /tmp/site, no index)
#   $ORT_TARBALL         onnxruntime-gpu unpacked and tar.xz'd (default /tmp/ortgpu.tar.xz), unpacked into
#                        /tmp/site so that it shadows the machine's CPU-only onnxruntime
# On a machine where `pip install -e .[dev] onnxruntime-gpu` worked, run it with SKIP_INSTALL=1.
#
#   OUT=/some/folder [STEPS=12345] [TRIALS=N (default: the run's own budget)] [RUN_LIMIT_S=300] bash benchmarks/device_cuda_check.sh
#
# Steps (each under its own time limit, so that a slow one cannot eat the rest):
#   1. the machine: GPU, driver, torch, onnxruntime and its providers
#   2. the tests marked gpu (KD on CUDA in mixed precision; sessions on the GPU profiles)
#   3. bench_latency_repeatability: resnet18 fp16 against fp32 on cuda-fp16 in 3 fresh processes, at 32 and 96 px,
#      and again with the CUDA EP's prefer_nhwc
#   4. the one-click default run on --profile cuda-fp16 (teacher and KD on the GPU), then `show`
#   5. the same run at 96 px (12 trials)
# It writes its logs and the run's tables under $OUT.
set -u
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SITE=/tmp/site
if [ -z "${SKIP_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "pip install of .whl/ failed"; exit 1; }
  ORT_TARBALL=${ORT_TARBALL:-/tmp/ortgpu.tar.xz}
  if [ -f "$ORT_TARBALL" ]; then tar xJf "$ORT_TARBALL" -C "$SITE" || { echo "cannot unpack $ORT_TARBALL"; exit 1; }
  else echo "no $ORT_TARBALL: onnxruntime stays the machine's own (CPU only: the cuda-fp16 steps will skip)"; fi
  export PYTHONPATH="$SITE:$PWD"
fi
STEPS=${STEPS:-12345}
ac() { python3 -c 'import sys; from autocompress.cli import entry; sys.argv[0] = "autocompress"; entry()' "$@"; }
T0=$(date +%s)
step() { echo; echo "=== $1 (t=$(( $(date +%s) - T0 )) s)"; }

step "1. machine" | tee "$OUT/env.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  lscpu | grep -m1 "Model name"; nproc
  python3 -c 'import torch, onnxruntime as ort, onnx, optuna, torch_pruning
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
print("onnx", onnx.__version__, "optuna", optuna.__version__, "torch-pruning", torch_pruning.__version__)'
} 2>&1 | tee -a "$OUT/env.txt"

[[ $STEPS == *2* ]] && { step "2. tests marked gpu" | tee "$OUT/tests.log"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_hardware.py tests/test_distill.py 2>&1 \
  | tail -15 | tee -a "$OUT/tests.log"; }

[[ $STEPS == *3* ]] && { step "3. fp16 against fp32 on cuda-fp16, 3 fresh processes; again with prefer_nhwc" \
  | tee "$OUT/repeatability.log"
sed -e 's/^name: cuda-fp16/name: cuda-fp16-nhwc/' -e 's/provider_options: {device_id: 0}/provider_options: {device_id: 0, prefer_nhwc: 1}/' \
  hardware_profiles/cuda-fp16.yaml > /tmp/cuda-fp16-nhwc.yaml
for run in cuda-fp16:32 cuda-fp16:96 /tmp/cuda-fp16-nhwc.yaml:96; do
  prof=${run%:*} size=${run##*:}
  {
    echo "--- $prof, ${size} px" | tee -a "$OUT/repeatability.log"
    timeout 90 python3 benchmarks/bench_latency_repeatability.py --profile $prof --precision fp16 --procs 3 --size $size \
      --tag=-$(basename $prof .yaml)-$size 2>&1 | tail -7 | tee -a "$OUT/repeatability.log"
  }
done; }

[[ $STEPS == *4* ]] || exit 0
step "4. the default run on cuda-fp16" | tee "$OUT/run.log"
RUN=/tmp/cuda-run
rm -rf "$RUN"
timeout "${RUN_LIMIT_S:-300}" python3 -c 'import sys; from autocompress.cli import entry; sys.argv[0] = "autocompress"; entry()' \
  run --profile cuda-fp16 ${TRIALS:+--trials $TRIALS} --out "$RUN" 2>&1 | tee -a "$OUT/run.log" | tail -40
echo "run exit: ${PIPESTATUS[0]}" | tee -a "$OUT/run.log"
ac show "$RUN" 2>&1 | tee "$OUT/show.txt" | tail -30
for f in trials.csv front.csv; do [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/"; done

# 5. the same at 96 px: the 32-px model is launch-bound on a big GPU (every kernel finishes in microseconds), a
#    larger input is where width and fp16 can pay
[[ $STEPS == *5* ]] && { step "5. the default run at 96 px" | tee "$OUT/run96.log"
timeout "${RUN96_LIMIT_S:-150}" python3 -c 'import sys; from autocompress.cli import entry; sys.argv[0] = "autocompress"; entry()' \
  run --profile cuda-fp16 --image-size 96 --trials "${TRIALS96:-12}" --out /tmp/cuda-run96 2>&1 | tee -a "$OUT/run96.log" | tail -25
echo "run exit: ${PIPESTATUS[0]}" | tee -a "$OUT/run96.log"; }
step "done" | tee -a "$OUT/run.log"
