#!/usr/bin/env bash
# The GPU benchmark: the four detectors (and the lighter-head GridCLIP) at 800x1333 on one GPU, in
# float32 and with AMP (float16 autocast), with training steps (GridCLIP: teacher on the fly, cached
# teacher, no image-level alignment) and the embedded default's training step. About 5 minutes on
# one recent GPU (budget: under 8).
#
#   bash tools/benchmark_gpu.sh            # writes docs/benchmark_gpu_{fp32,amp}.{json,md}
#   OUT=/tmp/gpu bash tools/benchmark_gpu.sh
#
# Each .md is the benchmark's markdown tables; add them to docs/benchmarks.md ("GPU") with the date
# and the GPU's name (both are in the .json).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python
    [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python  # the environment `make setup` makes
fi
OUT=${OUT:-docs}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "tools/benchmark_gpu.sh: $PYTHON cannot import torch (run make setup, or set PYTHON)" >&2
    exit 2
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "tools/benchmark_gpu.sh: no CUDA device is visible to $PYTHON" \
        "(torch.cuda.is_available() is False); on a CPU run:" \
        "python tools/benchmark.py --size 640 640 --dtype fp32,bf16" >&2
    exit 2
fi
mkdir -p "$OUT"
common=(--device cuda --size 800 1333 --batch 8 --repeats 20 --warmup 3)
echo "float32 ..." >&2
"$PYTHON" tools/benchmark.py "${common[@]}" --json "$OUT/benchmark_gpu_fp32.json" \
    > "$OUT/benchmark_gpu_fp32.md.tmp"
mv "$OUT/benchmark_gpu_fp32.md.tmp" "$OUT/benchmark_gpu_fp32.md"
echo "AMP (float16 autocast) ..." >&2
"$PYTHON" tools/benchmark.py "${common[@]}" --amp --no-embedded \
    --json "$OUT/benchmark_gpu_amp.json" > "$OUT/benchmark_gpu_amp.md.tmp"
mv "$OUT/benchmark_gpu_amp.md.tmp" "$OUT/benchmark_gpu_amp.md"
echo "wrote $OUT/benchmark_gpu_fp32.{json,md} and $OUT/benchmark_gpu_amp.{json,md}" >&2
