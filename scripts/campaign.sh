#!/usr/bin/env bash
# The CIFAR-10 flexnet16 training campaign (docs/campaign.md): one long run, trained in resumable chunks.
#
#   bash scripts/campaign.sh start     # start it, or resume it (from $CAMPAIGN_DIR, else from runs/ in the repo)
#   bash scripts/campaign.sh stop      # SIGTERM: checkpoint after the current step, then exit
#   bash scripts/campaign.sh save      # copy the newest resume state + metrics into runs/<run>/ (to commit)
#   bash scripts/campaign.sh status    # process, epochs done, newest checkpoint
#   bash scripts/campaign.sh unpack D  # merge a chunk trained elsewhere (scripts/campaign_gpu.sh's ckpt.tar and
#                                      # run.tar.gz in folder D) into the run folder, then `start` continues it
#   CAMPAIGN_THREADS=1 bash scripts/campaign.sh start   # while other jobs share the cores
#
# The run folder lives outside the work tree ($CAMPAIGN_DIR, default /work/campaign) and runs a snapshot of the
# committed code (git archive HEAD), so edits in the work tree never reach a running job.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${CAMPAIGN_DIR:-/work/campaign}"
RUN="${CAMPAIGN_RUN:-flexnet16-cifar10}"
DATA_DIR="${CAMPAIGN_DATA_DIR:-$REPO/../shared/data}"
NICE="${CAMPAIGN_NICE:--5}"  # ahead of interactive work on the shared cores
# Intra-op threads: all cores on a quiet machine; 1 while other jobs share the cores (OpenMP threads that wait
# for a descheduled sibling burn the time they would have saved).
THREADS="${CAMPAIGN_THREADS:-$(nproc)}"
mkdir -p "$DIR"

running() { [ -f "$DIR/train.pid" ] && kill -0 "$(cat "$DIR/train.pid")" 2>/dev/null; }

case "${1:-start}" in
  start)
    if running; then echo "already running (pid $(cat "$DIR/train.pid"))"; exit 0; fi
    rm -rf "$DIR/code" && mkdir -p "$DIR/code"
    git -C "$REPO" archive HEAD | tar -x -C "$DIR/code"
    if [ ! -f "$DIR/$RUN/args.json" ] && [ -f "$REPO/runs/$RUN/args.json" ]; then
      echo "restoring $RUN from $REPO/runs/$RUN"
      cp -r "$REPO/runs/$RUN" "$DIR/$RUN"
    fi
    cd "$DIR"
    if [ -f "$RUN/args.json" ]; then
      set -- --resume "$RUN" --data-dir "$DATA_DIR" --channels-last --ema-warmup --no-progress
    else
      set -- --model flexnet16 --data cifar10 --data-dir "$DATA_DIR" --img-size-schedule 20:0 32:0.6 --epochs 50 \
        --batch-augment --channels-last --ema --ema-decay 0.9995 --ema-warmup --smoothing 0.1 --track-test \
        --checkpoint-every 400 --keep-checkpoints 2 --output . --name "$RUN" --no-progress
    fi
    OMP_NUM_THREADS="$THREADS" PYTHONPATH="$DIR/code" nohup nice -n "$NICE" python code/scripts/train.py "$@" >> "$RUN.log" 2>&1 &
    echo $! > train.pid
    echo "training (pid $!): log $DIR/$RUN.log"
    ;;
  stop)
    if ! running; then echo "not running"; exit 0; fi
    pid="$(cat "$DIR/train.pid")"
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 2; done
    tail -n 3 "$DIR/$RUN.log"
    ;;
  save)
    newest="$(ls -d "$DIR/$RUN"/checkpoints/step_*[0-9] | sort | tail -n 1)"
    dest="$REPO/runs/$RUN"
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/checkpoints"
    cp "$DIR/$RUN"/{args.json,run_info.json} "$dest.tmp/"
    cp "$DIR/$RUN"/metrics.{csv,json} "$dest.tmp/" 2>/dev/null || true
    cp -r "$newest" "$dest.tmp/checkpoints/"
    [ -d "$DIR/$RUN/best" ] && cp -r "$DIR/$RUN/best" "$dest.tmp/"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
    echo "saved $(basename "$newest") to $dest"
    ;;
  status)
    if running; then echo "running (pid $(cat "$DIR/train.pid"))"; else echo "not running"; fi
    ls -d "$DIR/$RUN"/checkpoints/step_*[0-9] 2>/dev/null | tail -n 1
    grep '^epoch' "$DIR/$RUN.log" | tail -n 3 || true
    ;;
  unpack)
    if running; then echo "stop the local run first: its checkpoints would race the unpacked ones" >&2; exit 1; fi
    src="$(cd "${2:?usage: $0 unpack FOLDER}" && pwd)"
    tmp="$DIR/.unpack" && rm -rf "$tmp" && mkdir -p "$tmp"
    tar -xf "$src/ckpt.tar" -C "$tmp" && tar -xzf "$src/run.tar.gz" -C "$tmp"
    newest="$(ls -d "$tmp/$RUN"/checkpoints/step_*[0-9])"
    [ -d "$DIR/$RUN/checkpoints/$(basename "$newest")" ] || mv "$newest" "$DIR/$RUN/checkpoints/"
    rm -rf "$tmp/$RUN/checkpoints"
    cat "$tmp/$RUN.log" >> "$DIR/$RUN.log" && rm "$tmp/$RUN.log"
    cp -r "$tmp/$RUN/." "$DIR/$RUN/" && rm -rf "$tmp"
    echo "unpacked $(basename "$newest") into $DIR/$RUN"
    ;;
  *) echo "usage: $0 start|stop|save|status|unpack FOLDER" >&2; exit 2 ;;
esac
