#!/usr/bin/env bash
# The whole GPU check in one short run (one H200: 430 s of step limits), for a session lent a
# GPU machine. From the repository root there, through the device tool with `carry: [".whl"]`:
#   bash benchmarks/gpu_check.sh                      # CUDA, full settings
#   DEVICE=cpu SMALL=1 bash benchmarks/gpu_check.sh   # the same steps, tiny, to test the script
# Build .whl here first: `bash scripts/gpu_wheels.sh` (the device's Python 3.12 lacks zarr,
# numcodecs, donfig, google-crc32c, grad-cam and ttach).
#
# Every figure lands in $OUT/figures.jsonl the moment it is measured (benchmarks/figures.py), all
# output in $OUT/check.log, so a step killed by its limit loses nothing it measured. Steps run
# most important first; the summary (figure | target | pass/fail, and every target not measured)
# ends the output and $OUT/summary.txt. Exit code: the number of failed steps (2 when the
# packages are missing: nothing else runs).
set -u
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
PY=${PYTHON:-python3}
export BENCH_OUT=$OUT PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export BENCH_OUT=$OUT
LOG="$OUT/check.log"
: >"$LOG"
start=$SECONDS
failed=0

# ---- packages: the carried wheels, the project, then every import, in the first seconds.
# -P: the checks resolve imports as the steps do (PYTHONPATH, site-packages), not from the source
# tree in the current folder, whose attgmae/ lacks cli/ and pipelines/ (they install under it).
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
if ! $PY -P -c "import attgmae.cli" 2>/dev/null; then
  # a plain (non-editable) install maps cli/ and pipelines/ under the attgmae namespace
  $PY -m pip install -q --no-deps --no-build-isolation --target /tmp/attg . >>"$LOG" 2>&1 \
    && export PYTHONPATH=/tmp/attg:${PYTHONPATH:-}
fi
$PY -P - >"$OUT/imports.txt" 2>&1 <<'EOF'
import importlib
import sys

names = ("torch", "torchvision", "timm", "zarr", "numcodecs", "h5py", "cv2", "pytorch_grad_cam",
         "ttach", "scipy", "sklearn", "matplotlib", "safetensors", "tqdm", "threadpoolctl",
         "attgmae.cli.maps", "attgmae.pipelines.generate", "attgmae.pipelines.train")
missing = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - name every import that fails, then stop
        missing.append(f"{name} ({type(err).__name__}: {err})")
if missing:
    print("!! cannot import: " + "; ".join(missing))
    print("!! build the wheels on the dev box with `bash scripts/gpu_wheels.sh` and run this "
          "script with carry: ['.whl'] (docs/benchmarks.md, 'Running the GPU check')")
    sys.exit(2)
import attgmae
import torch

print(f"imports ok: torch {torch.__version__}, cuda {torch.cuda.is_available()}, attgmae from "
      f"{attgmae.__path__[0]}")
EOF
imports_rc=$?  # the check's own status (a pipe into tee would report tee's)
tee -a "$LOG" <"$OUT/imports.txt"
if [ "$imports_rc" != 0 ]; then
  echo "== stopped: the imports failed (rc=$imports_rc), no step ran" | tee -a "$LOG"
  exit 2
fi
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
fi
# Compiled graphs land here: a later compile of the same graph in this run reuses them.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/attg_inductor}

step() {  # step NAME LIMIT_S COMMAND...: run under a time limit, output to the log and the screen
  local name=$1 limit=$2 t0=$SECONDS
  shift 2
  echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: rc=$rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" = 0 ] || failed=$((failed + 1))
}

if [ "$SMALL" = 1 ]; then
  step train 120 $PY benchmarks/train.py --device "$DEVICE" --steps 2 --warmup 1 --batch_size 4 \
    --loader_images 16 --workers 1 --no_compile --part figures
  step generate 120 $PY benchmarks/generate.py --device "$DEVICE" --methods dino --images 4 \
    --batch_size 2 --chunk_rows 2 --reference_images 1 --agreement_images 2 --num_workers 1 \
    --decode_images 2
  step eval 60 $PY benchmarks/eval.py --device "$DEVICE" --small
  step train-end-to-end 120 $PY benchmarks/train.py --device "$DEVICE" --batch_size 4 \
    --loader_images 16 --workers 1 --no_compile --part end_to_end
  step finetune 60 $PY benchmarks/finetune.py --device "$DEVICE" --steps 1 --batch_size 2 \
    --loader_images 48 --workers 1
  step dense 60 $PY benchmarks/dense.py --device "$DEVICE" --steps 1 --batch_size 2 \
    --skip_data
else
  # Most important first, a cold compile late: the stage-2 figures that need no compile
  # (seconds), stage 1, evaluation, then the compiled guided ViT-L/16 end to end (a minute or
  # more of cold compilation), fine-tuning (compiled too), the dense tasks. 430 s of limits.
  step train 45 $PY benchmarks/train.py --device cuda --model mae_vit_large_patch16 \
    --batch_size 256 --steps 10 --loader_images 8192 --workers 15 --part figures
  step generate 110 $PY benchmarks/generate.py --device cuda --images 8192 --batch_size 256 \
    --reference_images 32 --agreement_images 256
  step eval 60 $PY benchmarks/eval.py --device cuda --full
  step train-end-to-end 110 $PY benchmarks/train.py --device cuda \
    --model mae_vit_large_patch16 --batch_size 256 --loader_images 8192 --workers 15 \
    --part end_to_end
  step finetune 60 $PY benchmarks/finetune.py --device cuda --model large --batch_size 64 \
    --steps 10 --compile --loader_images 2048 --workers 15
  step dense 45 $PY benchmarks/dense.py --device cuda --model large --steps 10 \
    --loader_images 512 --workers 15
fi

echo "== summary after $((SECONDS - start)) s, $failed failed step(s)" | tee -a "$LOG"
$PY benchmarks/summary.py "$OUT" | tee "$OUT/summary.txt"
exit "$failed"
