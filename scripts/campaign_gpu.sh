#!/usr/bin/env bash
# Continue the campaign's committed run (runs/<run>/, written by `campaign.sh save`) on a GPU host for a fixed
# time, then pack what comes back: the newest checkpoint (ckpt.tar) and the rest of the run folder (run.tar.gz:
# metrics, best weights, the final summary, the log). `campaign.sh unpack <folder>` merges them into the run folder.
#
#   bash scripts/campaign_gpu.sh DATA_DIR OUT_DIR [SECONDS]     # default 480 s, then SIGTERM -> checkpoint
#
# The host needs torch, timm, accelerate, huggingface_hub and safetensors; the code runs from this checkout
# ($PYTHON, default python3).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
RUN="${CAMPAIGN_RUN:-flexnet16-cifar10}"
DATA_DIR="$(cd "$1" && pwd)"; OUT="$(mkdir -p "$2" && cd "$2" && pwd)"; LIMIT="${3:-480}"
RUNS="${CAMPAIGN_RUNS:-$REPO/runs}"  # where `campaign.sh save` put the resume state
WORK="${CAMPAIGN_GPU_DIR:-/tmp/campaign_gpu}"
WORKERS="${CAMPAIGN_WORKERS:-8}"  # evaluation loaders (the training batches are augmented in memory)
rm -rf "$WORK" && mkdir -p "$WORK" && cp -r "$RUNS/$RUN" "$WORK/$RUN"
cd "$WORK"
# timeout sends SIGTERM: the trainer finishes its step, writes a checkpoint and exits (-k: kill 90 s later)
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout -s TERM -k 90 "$LIMIT" "${PYTHON:-python3}" "$REPO/scripts/train.py" \
  --resume "$RUN" --data-dir "$DATA_DIR" --channels-last --ema-warmup --no-progress --workers "$WORKERS" \
  2>&1 | tee -a "$RUN.log" || echo "train.py exited with status ${PIPESTATUS[0]}"
newest="$(ls -d "$RUN"/checkpoints/step_*[0-9] | sort | tail -n 1)"
tar -cf "$OUT/ckpt.tar" "$newest"
tar -czf "$OUT/run.tar.gz" --exclude="$RUN/checkpoints" "$RUN" "$RUN.log"
echo "packed $(basename "$newest") into $OUT"
