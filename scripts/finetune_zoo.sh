#!/usr/bin/env bash
# Fine-tune the shipped float ANNs for few time steps (issue 11), one run after another, resuming
# whatever a previous run left. Run files (network + optimiser state, rewritten every epoch) go to
# $RUNS (default ./runs, ignored by git); ship a finished one by copying it into
# src/spikeconverter/checkpoints/ (name: <model>-<dataset>-T<T>.snn).
# Usage: scripts/finetune_zoo.sh [model:T ...]    (default: resnet20:2 resnet20:3)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
BIN=${BIN:-.venv/bin}
mkdir -p "$RUNS"
jobs=("$@"); [ ${#jobs[@]} -gt 0 ] || jobs=(resnet20:2 resnet20:3)
for j in "${jobs[@]}"; do
  m=${j%:*}; T=${j#*:}
  OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} "$BIN/spikeconverter" ${THREADS:+--threads $THREADS} finetune \
    --model "$m" -T "$T" --epochs 4 --limit 2000 --out "$RUNS/$m-cifar10-T$T.snn" --resume --quiet
done
