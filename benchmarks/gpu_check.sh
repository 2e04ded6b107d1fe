#!/usr/bin/env bash
# Everything GPU-specific in one short run, for a session that is lent a GPU machine.
# Run from the repository root on that machine (Python there lacks zarr, grad-cam and ttach:
# carry them as wheels in .whl/, see docs/benchmarks.md), e.g. through the device tool:
#   bash benchmarks/gpu_check.sh            # CUDA, full settings, at most 520 s of steps (fits one 600 s call)
#   DEVICE=cpu SMALL=1 bash benchmarks/gpu_check.sh   # the same steps, tiny, to test the script
# Results go to $OUT (or ./gpu_out): one log per step; the exit code is the number of failed steps.
set -u
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
mkdir -p "$OUT"
failed=0

if [ -d .whl ] && ! python3 -c "import zarr, pytorch_grad_cam" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
if ! python3 -c "import attgmae.cli" 2>/dev/null; then
  # a plain (non-editable) install maps cli/ and pipelines/ under the attgmae namespace
  python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/attg . >/dev/null
  export PYTHONPATH=/tmp/attg:${PYTHONPATH:-}
fi

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*"
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    tail -n 25 "$OUT/$name.log"
  else
    echo "!! $name failed or timed out (rc=$?); last lines:"; tail -n 25 "$OUT/$name.log"
    failed=$((failed + 1))
  fi
}

if [ "$SMALL" = 1 ]; then
  step maps_methods 300 python3 benchmarks/maps_methods.py --device "$DEVICE" --images 8 \
    --reference_images 2 --batch_size 4 --workers 1
  step train 300 python3 benchmarks/train.py --device "$DEVICE" --steps 3 --warmup 1 \
    --batch_size 8 --loader_images 32 --workers 1 --no_compile
  step eval 300 python3 benchmarks/eval.py --device "$DEVICE"
  step generate 300 python3 benchmarks/generate.py --device "$DEVICE" --images 8 \
    --reference_images 2 --batch_size 4 --num_workers 1
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
  cat "$OUT/gpu.txt"
  step maps_methods 110 python3 benchmarks/maps_methods.py --device cuda --images 4096 \
    --batch_size 256 --reference_images 128 --workers 12
  step train 170 python3 benchmarks/train.py --device cuda --model mae_vit_large_patch16 \
    --batch_size 256 --steps 30 --loader_images 4096 --workers 16
  step eval 100 python3 benchmarks/eval.py --device cuda --full
  step generate 140 python3 benchmarks/generate.py --device cuda --images 8192 --batch_size 256 \
    --num_workers 12 --reference_images 256
fi
echo "failed steps: $failed"
exit "$failed"
