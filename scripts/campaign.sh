#!/usr/bin/env bash
# The CIFAR-10 flexnet16 training campaign (docs/campaign.md): long runs, each trained in resumable chunks.
# $CAMPAIGN_RUN picks the run (and, for a fresh start, its recipe below):
#   flexnet16-cifar10                  the default tag: 20 px, then 32 px from 60 % of 50 epochs
#   flexnet16-cifar10-16px-alias-free  the alias-free tag: 40 epochs at 16 px with the alias-free regulariser
#
#   bash scripts/campaign.sh start     # start it, or resume it (from $CAMPAIGN_DIR, else from runs/ in the repo)
#   bash scripts/campaign.sh stop      # SIGTERM: checkpoint after the current step, then exit
#   bash scripts/campaign.sh save      # copy the newest resume state + metrics into runs/<run>/ (to commit)
#   bash scripts/campaign.sh status    # process, epochs done, newest checkpoint
#   bash scripts/campaign.sh chunk DATA OUT [SECONDS [train.py options]]
#                                      # on a GPU host: continue the saved run (runs/<run>/) for SECONDS (480),
#                                      # then pack its newest checkpoint (OUT/ckpt.tar) and the rest (OUT/run.tar.gz)
#   bash scripts/campaign.sh unpack D  # merge a chunk's ckpt.tar and run.tar.gz (in folder D) into the run folder,
#                                      # then `start` continues it
#   CAMPAIGN_THREADS=1 bash scripts/campaign.sh start   # while other jobs share the cores
#
# The run folder lives outside the work tree ($CAMPAIGN_DIR, default /work/campaign) and runs a snapshot of the
# committed code (git archive HEAD), so edits in the work tree never reach a running job. A chunk runs this
# checkout's code with $PYTHON (default python3) in $CAMPAIGN_CHUNK_DIR (default /tmp/campaign_chunk); a second
# chunk on the same host continues there in place when that copy is ahead of runs/.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${CAMPAIGN_DIR:-/work/campaign}"
RUN="${CAMPAIGN_RUN:-flexnet16-cifar10}"
DATA_DIR="${CAMPAIGN_DATA_DIR:-$REPO/../shared/data}"
NICE="${CAMPAIGN_NICE:--5}"  # ahead of interactive work on the shared cores
# Intra-op threads: all cores on a quiet machine; 1 while other jobs share the cores (OpenMP threads that wait
# for a descheduled sibling burn the time they would have saved).
THREADS="${CAMPAIGN_THREADS:-$(nproc)}"
# What every resume switches on: flags added after the run started (EMA warm-up from step 2,615) and log lines
# instead of progress bars. (channels_last ran from step 906 to 24,058: at 32 px, where 13 of 15 layers take the
# FFT path, NCHW is 1.09x faster; a fresh run's args.json keeps the flag it was started with.)
RESUME_FLAGS=(--ema-warmup --no-progress)

# A fresh run's recipe (a resumed run reads its own from args.json). Common to both: the paper's optimiser
# settings (train.py's defaults), in-memory batches, EMA with warm-up, label smoothing, test accuracy tracked.
case "$RUN" in
  flexnet16-cifar10) RECIPE=(--img-size-schedule 20:0 32:0.6 --epochs 50) ;;
  flexnet16-cifar10-16px-alias-free)
    RECIPE=(--img-size 16 --epochs 40 --alias-free 0.1 --alias-free-mask --alias-free-init) ;;
  *) RECIPE=() ;;
esac
PID_FILE="$DIR/$RUN.pid"
running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }
newest_checkpoint() { { ls -d "$1"/checkpoints/step_*[0-9] 2>/dev/null || true; } | sort | tail -n 1; }

case "${1:-start}" in
  start)
    if running; then echo "already running (pid $(cat "$PID_FILE"))"; exit 0; fi
    if [ ! -f "$DIR/$RUN/args.json" ] && [ ! -f "$REPO/runs/$RUN/args.json" ] && [ ${#RECIPE[@]} -eq 0 ]; then
      echo "no run $RUN in $DIR or $REPO/runs, and no recipe to start one (see the top of $0)" >&2; exit 1
    fi
    mkdir -p "$DIR"
    code="$DIR/code-$RUN"  # one snapshot per run: starting one run never pulls the code from under another
    rm -rf "$code" && mkdir -p "$code"
    git -C "$REPO" archive HEAD | tar -x -C "$code"
    if [ ! -f "$DIR/$RUN/args.json" ] && [ -f "$REPO/runs/$RUN/args.json" ]; then
      echo "restoring $RUN from $REPO/runs/$RUN"
      cp -r "$REPO/runs/$RUN" "$DIR/$RUN"
    fi
    cd "$DIR"
    if [ -f "$RUN/args.json" ]; then
      set -- --resume "$RUN" --data-dir "$DATA_DIR" "${RESUME_FLAGS[@]}"
    else
      set -- --model flexnet16 --data cifar10 --data-dir "$DATA_DIR" "${RECIPE[@]}" --batch-augment --channels-last \
        --ema --ema-decay 0.9995 --ema-warmup --smoothing 0.1 --track-test --checkpoint-every 400 \
        --keep-checkpoints 2 --output . --name "$RUN" --no-progress
    fi
    OMP_NUM_THREADS="$THREADS" PYTHONPATH="$code" nohup nice -n "$NICE" python "$code/scripts/train.py" "$@" \
      >> "$RUN.log" 2>&1 &
    echo $! > "$PID_FILE"
    echo "training (pid $!): log $DIR/$RUN.log"
    ;;
  stop)
    if ! running; then echo "not running"; exit 0; fi
    pid="$(cat "$PID_FILE")"
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 2; done
    tail -n 3 "$DIR/$RUN.log"
    ;;
  save)
    newest="$(newest_checkpoint "$DIR/$RUN")"
    [ -n "$newest" ] || { echo "no checkpoint in $DIR/$RUN" >&2; exit 1; }
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
    if running; then echo "running (pid $(cat "$PID_FILE"))"; else echo "not running"; fi
    newest_checkpoint "$DIR/$RUN"
    grep '^epoch' "$DIR/$RUN.log" | tail -n 3 || true
    ;;
  chunk)
    data_dir="$(cd "${2:?usage: $0 chunk DATA_DIR OUT_DIR [SECONDS [train.py options]]}" && pwd)"
    out="$(mkdir -p "${3:?usage: $0 chunk DATA_DIR OUT_DIR [SECONDS [train.py options]]}" && cd "$3" && pwd)"
    limit="${4:-480}"; shift $(( $# < 4 ? $# : 4 ))
    saved="${CAMPAIGN_RUNS:-$REPO/runs}/$RUN"  # where `save` put the resume state
    work="${CAMPAIGN_CHUNK_DIR:-/tmp/campaign_chunk}"
    [ -f "$saved/args.json" ] || { echo "no saved run in $saved: run \`$0 save\` and commit first" >&2; exit 1; }
    here="$(newest_checkpoint "$work/$RUN")"; there="$(newest_checkpoint "$saved")"
    if [ -n "$here" ] && [[ "$(basename "$here")" > "$(basename "$there")" ]]; then
      echo "continuing in place from $(basename "$here") (ahead of the saved $(basename "$there"))"
    else
      rm -rf "$work" && mkdir -p "$work" && cp -r "$saved" "$work/$RUN"
    fi
    cd "$work" && : > "$RUN.log"  # each pack carries this chunk's log lines only: unpack appends them
    # timeout sends SIGTERM: the trainer finishes its step, writes a checkpoint and exits (-k: kill 90 s later).
    # --workers: evaluation loaders (training batches are augmented in memory; per-image eval transforms are not)
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout -s TERM -k 90 "$limit" "${PYTHON:-python3}" \
      "$REPO/scripts/train.py" --resume "$RUN" --data-dir "$data_dir" "${RESUME_FLAGS[@]}" \
      --workers "${CAMPAIGN_WORKERS:-8}" "$@" 2>&1 | tee -a "$RUN.log" || echo "train.py exited with status ${PIPESTATUS[0]}"
    newest="$(newest_checkpoint "$RUN")"
    tar -cf "$out/ckpt.tar" "$newest"
    tar -czf "$out/run.tar.gz" --exclude="$RUN/checkpoints" "$RUN" "$RUN.log"
    echo "packed $(basename "$newest") into $out"
    ;;
  unpack)
    if running; then echo "stop the local run first: its checkpoints would race the unpacked ones" >&2; exit 1; fi
    src="$(cd "${2:?usage: $0 unpack FOLDER}" && pwd)"
    tmp="$DIR/.unpack" && rm -rf "$tmp" && mkdir -p "$tmp"
    tar -xf "$src/ckpt.tar" -C "$tmp" && tar -xzf "$src/run.tar.gz" -C "$tmp"
    newest="$(newest_checkpoint "$tmp/$RUN")"
    [ -d "$DIR/$RUN/checkpoints/$(basename "$newest")" ] || mv "$newest" "$DIR/$RUN/checkpoints/"
    rm -rf "$tmp/$RUN/checkpoints"
    cat "$tmp/$RUN.log" >> "$DIR/$RUN.log" && rm "$tmp/$RUN.log"
    cp -r "$tmp/$RUN/." "$DIR/$RUN/" && rm -rf "$tmp"
    echo "unpacked $(basename "$newest") into $DIR/$RUN"
    ;;
  *) echo "usage: $0 start|stop|save|status|chunk DATA OUT [SECONDS]|unpack FOLDER" >&2; exit 2 ;;
esac
