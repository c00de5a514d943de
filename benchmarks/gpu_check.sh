#!/usr/bin/env bash
# The GPU path, run by a maintainer on a Linux + NVIDIA machine: MLX's CUDA backend installed, the
# `gpu` tests, the inference and training benchmarks and the quickstart on mx.gpu. Everything it
# measures goes under benchmarks/results/gpu/ (JSON, logs, summary.json with examples/s and MFU).
#
#   bash benchmarks/gpu_check.sh                          # a machine with a package registry
#   WHEELS=/path/to/wheels bash benchmarks/gpu_check.sh   # without one: every wheel pip lacks
#   PEAK_TFLOPS=67 bash benchmarks/gpu_check.sh           # the GPU's fp32 peak, for MFU
#
# Knobs: RSG_DATA (../shared/rsg), MODEL_DIR (a converted Gemma-3-270M; converted here if unset),
# OUT (benchmarks/results/gpu), STEPS (default "tests bench train quickstart"), PYTHON (python3),
# DRY_RUN=1 (no install, no GPU check: the steps in the current environment, to try the script
# on any machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
RSG_DATA=${RSG_DATA:-../shared/rsg}
STEPS=${STEPS:-"tests bench train quickstart"}
mkdir -p "$OUT"
pip_args=()
if [ -n "${WHEELS:-}" ]; then pip_args=(--no-index --find-links "$WHEELS"); fi

if [ -z "${DRY_RUN:-}" ]; then
    # A venv that sees the image's packages (torch, transformers: the parity references).
    "${PYTHON:-python3}" -m venv --system-site-packages .venv-gpu
    # shellcheck disable=SC1091
    source .venv-gpu/bin/activate
    pip install -q "${pip_args[@]}" -e ".[cuda,demo]"
    # mlx-cpu (the Linux default) and mlx-cuda-13 both ship mlx/lib/libmlx.so: CUDA's goes last.
    mlx_version=$(python -c "import importlib.metadata as m; print(m.version('mlx'))")
    pip install -q "${pip_args[@]}" --force-reinstall --no-deps "mlx-cuda-13==$mlx_version"
    python - <<'PY'
import mlx.core as mx
assert mx.default_device() == mx.gpu, f"MLX's default device is {mx.default_device()}, not a GPU"
PY
fi  # DRY_RUN=1: the current environment and device, to check the script's steps anywhere
mlx-rsg info | tee "$OUT/info.txt"

step() { [[ " $STEPS " == *" $1 "* ]]; }
if step tests; then
    python -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.txt"
fi
if [ -z "${MODEL_DIR:-}" ] && { step bench || step train; }; then
    MODEL_DIR=$OUT/.gemma-3-270m
    [ -f "$MODEL_DIR/config.json" ] || mlx-rsg convert gemma-3-270m -o "$MODEL_DIR"
fi
if step bench; then
    python benchmarks/bench_inference.py --model "$MODEL_DIR" --runtimes mlx-stock,mlx,mlx-predict \
        --batch 32 --seq 128 --out "$OUT/inference.json"
fi
if step train; then
    python benchmarks/bench_train.py --model "$MODEL_DIR" --runtimes mlx,mlx-nocache \
        --batch 16 --batches 24 --out "$OUT/train.json"
fi
if step quickstart; then
    rm -rf "$OUT/.quickstart"
    /usr/bin/time -v mlx-rsg quickstart --data "$RSG_DATA" -o "$OUT/.quickstart" \
        > "$OUT/quickstart.txt" 2>&1 || { tail -20 "$OUT/quickstart.txt"; exit 1; }
    cp "$OUT/.quickstart/bench/bench.json" "$OUT/quickstart-bench.json"
fi
python benchmarks/gpu_summary.py "$OUT" ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"}
