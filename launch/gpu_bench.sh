#!/usr/bin/env bash
# One GPU, under 5 minutes: train-step MFU of T5 v1.1 large in bfloat16 (inputs 512, targets
# 114) with each attention implementation. MFU counts matmul FLOPs only (plan.py's formula)
# against the GPU's dense bf16 peak from accounting.PEAK_FLOPS (H100/H200: 989 TFLOP/s),
# which bench uses for any device kind that table knows, and against a bf16 matmul it
# measures there. Then tests/test_attention_bf16.py checks cuDNN, XLA and folded attention in
# bfloat16 on this GPU against the float32 reference (where pytest is installed).
#   launch/gpu_bench.sh [BATCH] [STEPS] [--config.x=v ...]   (extra flags go to each bench run)
# PYTHON picks the interpreter (default .venv/bin/python). No CPU backend is started
# (JAX_PLATFORMS=cuda unless set), so no CPU-only XLA flag is set either.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
batch=${1:-32}
steps=${2:-10}
shift $(( $# < 2 ? $# : 2 ))
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
for impl in cudnn xla folded einsum; do
  echo "== attention_impl=$impl"
  "$python" -m t5x_lite.bench \
    --config=configs/t5_v1_1_bf16.py:large --config.model.attention_impl="$impl" \
    --config.train.batch_size="$batch" --steps="$steps" --train_only "$@" || echo "attention_impl=$impl failed"
done
if "$python" -c 'import pytest' 2>/dev/null; then
  echo "== bfloat16 attention on this GPU vs the float32 reference (tests/test_attention_bf16.py)"
  "$python" -m pytest -q -s -p no:cacheprovider tests/test_attention_bf16.py \
    | grep -E 'errors|logits|passed|failed|skipped|Error' || echo "attention tests failed"
fi
