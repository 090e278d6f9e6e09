#!/usr/bin/env bash
# Train the shipped checkpoints, one at a time, resuming whatever a previous run left.
# Run files (weights + optimizer state, rewritten every epoch) go to $RUNS (default ./runs, ignored
# by git); finished weights are exported into the package's checkpoints folder.
# Usage: scripts/train_zoo.sh [model ...]
#   models: resnet20 vgg16 mobilenet_v2 (CIFAR-10; the default) and resnet34-imagenette,
#   mobilenet_v2-imagenette (Imagenette at 128 px, float32: on the 2-core dev box bf16 autocast is
#   ~17x slower than float32 for these convs, ~22 min per ResNet-34 epoch on one thread)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
PY=${PY:-.venv/bin/python}
mkdir -p "$RUNS"
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(resnet20 vgg16 mobilenet_v2)
for m in "${models[@]}"; do
  case $m in
    resnet20)     args=(--epochs 90 --lr 0.1 --weight-decay 5e-4);;
    vgg16)        args=(--epochs 20 --lr 0.05 --weight-decay 5e-4 --half);;
    mobilenet_v2) args=(--epochs 30 --lr 0.1 --weight-decay 4e-5 --half);;
    resnet34-imagenette) args=(--image-size 128 --epochs 24 --lr 0.1 --weight-decay 5e-4
                               --label-smoothing 0.1 --batch-size 64 --no-bf16 --half);;
    mobilenet_v2-imagenette) args=(--image-size 128 --epochs 30 --lr 0.1 --weight-decay 4e-5
                                   --label-smoothing 0.1 --batch-size 64 --no-bf16 --half);;
    *) echo "unknown model $m"; exit 2;;
  esac
  arch=${m%-imagenette}
  ds=cifar10; [ "$arch" != "$m" ] && ds=imagenette
  OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} "$PY" -m spikeconverter.cli ${THREADS:+--threads $THREADS} train \
    --model "$arch" --dataset "$ds" "${args[@]}" --seed 0 \
    --out "$RUNS/$arch-$ds.safetensors" --resume \
    --export "src/spikeconverter/checkpoints/$arch-$ds.safetensors"
done
