#!/usr/bin/env bash
# Train the shipped CIFAR-10 checkpoints, one at a time, resuming whatever a previous run left.
# Run files (weights + optimizer state, rewritten every epoch) go to $RUNS (default /work/runs,
# outside the checkout); finished weights are exported into the package's checkpoints folder.
# Usage: scripts/train_zoo.sh [model ...]     (default: resnet20 vgg16 mobilenet_v2)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-/work/runs}
PY=${PY:-.venv/bin/python}
mkdir -p "$RUNS"
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(resnet20 vgg16 mobilenet_v2)
for m in "${models[@]}"; do
  case $m in
    resnet20)     args=(--epochs 90 --lr 0.1 --weight-decay 5e-4);;
    vgg16)        args=(--epochs 20 --lr 0.05 --weight-decay 5e-4 --half);;
    mobilenet_v2) args=(--epochs 30 --lr 0.1 --weight-decay 4e-5 --half);;
    *) echo "unknown model $m"; exit 2;;
  esac
  OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} "$PY" -m spikeconverter.cli train ${THREADS:+--threads $THREADS} --model "$m" --dataset cifar10 "${args[@]}" --seed 0 \
    --out "$RUNS/$m-cifar10.safetensors" --resume \
    --export "src/spikeconverter/checkpoints/$m-cifar10.safetensors"
done
