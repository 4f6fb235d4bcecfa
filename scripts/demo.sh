#!/usr/bin/env bash
# The README's first command: a real, short job on built-in defaults (a few minutes on 2 CPU cores).
# Trains flexnet8 at 16 px with the alias-free penalty and band-limited kernel nets at the start
# (--alias-free-init: the smaller 16 -> 32 px drop in the README's table; the printed train loss includes the
# penalty) on 8,000 CIFAR-10 training images (the offline JPEG copy, ../shared/data/cifar10_jpg_q75.tar.gz,
# decoded once into ~/.cache/flexconv_zoo) for 2 epochs, then
# evaluates the exported weights at 16, 24 and 32 px on 2,000 test images: the paper's
# "train at 16 px, test at higher resolution" protocol, printed as a table (+ CSV/JSON/PNG in the run folder).
set -euo pipefail
# One intra-op thread: on a shared 2-core machine two OpenMP threads stall each other (measured 10x slower).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cd "$(dirname "$0")/.."
RUN_NAME="${RUN_NAME:-demo-flexnet8-16px-$(date +%Y%m%d-%H%M%S)}"
python scripts/train.py --model flexnet8 --data cifar10 --img-size 16 --alias-free --alias-free-init \
    --train-subset 8000 --eval-subset 2000 --epochs 2 --output runs --name "$RUN_NAME" "$@"
# Extra options go to train.py; the data folder (--data-dir DIR or --data-dir=DIR) to validate.py as well.
DATA_DIR=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) DATA_DIR=(--data-dir "$2"); shift ;;
    --data-dir=*) DATA_DIR=("$1") ;;
  esac
  shift
done
python scripts/validate.py --checkpoint "runs/$RUN_NAME" --data cifar10 --split test --subset 2000 \
    --img-size 16 24 32 "${DATA_DIR[@]}"
