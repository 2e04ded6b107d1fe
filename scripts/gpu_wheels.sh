#!/usr/bin/env bash
# Build .whl/: the packages the GPU machine's Python (3.12, Linux x86-64) lacks, as wheels to
# carry there (benchmarks/gpu_check.sh installs them). Binary wheels for the pure and compiled
# ones; grad-cam publishes no wheel, so pip builds one. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl zarr==3.1.6 numcodecs==0.16.5 donfig==0.8.1.post1 google-crc32c==1.7.1 ttach==0.0.3
$PY -m pip wheel -q --no-deps -w .whl grad-cam==1.5.7
ls -1 .whl
