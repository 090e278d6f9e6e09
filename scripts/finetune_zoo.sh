#!/usr/bin/env bash
# Fine-tune the shipped float ANNs for few time steps (issue 11), one run after another, resuming
# whatever a previous run left. Run files (network + optimiser state, rewritten every epoch) go to
# $RUNS (default ./runs, ignored by git); ship a finished one by copying it into
# src/spikeconverter/checkpoints/ (name: <model>-<dataset>-T<T>.snn).
# Usage: scripts/finetune_zoo.sh [model:T[:extra finetune options] ...]
#   default: the recipes of the shipped networks (docs/training.md); extra options override the
#   defaults below (argparse keeps the last one given), e.g. "vgg16:2:--epochs 2".
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
BIN=${BIN:-.venv/bin}
mkdir -p "$RUNS"
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(resnet20:2 resnet20:3 vgg16:3 "vgg16:2:--epochs 3"
  "mobilenet_v2:3:--epochs 3 --distill 0.5 --train-limit 10000")  # MobileNet-v2: ~40 min per full epoch here
for j in "${jobs[@]}"; do
  IFS=: read -r m T extra <<< "$j"
  # shellcheck disable=SC2086  # extra holds several options
  OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} "$BIN/spikeconverter" ${THREADS:+--threads $THREADS} finetune \
    --model "$m" -T "$T" --epochs 4 --limit 2000 $extra --out "$RUNS/$m-cifar10-T$T.snn" --resume --quiet
done
