#!/usr/bin/env bash
# The CIFAR-10 flexnet16 training campaign (docs/campaign.md): long runs, each trained in resumable chunks.
# $CAMPAIGN_RUN picks the run (and, for a fresh start, its recipe below):
#   flexnet16-cifar10                  the default tag: 20 px, then 32 px from 60 % of 50 epochs
#   flexnet16-cifar10-16px-alias-free  the alias-free tag: 60 epochs at 16 px with the alias-free regulariser
#   flexnet16-cifar10-16px-alias-free-2  its second cosine: 60 more epochs at 16 px from that run's best weights
#                                      (as saved in runs/; `then` saves a finished run before the next one starts)
#
#   bash scripts/campaign.sh start     # start it, or resume it (from $CAMPAIGN_DIR, else from runs/ in the repo)
#   bash scripts/campaign.sh stop      # SIGTERM: checkpoint after the current step, then exit
#   bash scripts/campaign.sh save      # copy the newest resume state + metrics into runs/<run>/ (to commit)
#   bash scripts/campaign.sh commit    # save, then commit runs/<run>/ alone (while it trains: a session cut short
#                                      # keeps what it trained up to here; other changes in the tree stay out)
#   bash scripts/campaign.sh status    # process, epochs done, newest checkpoint
#   bash scripts/campaign.sh then NEXT # when this run finishes (not when it is stopped), start run NEXT
#   bash scripts/campaign.sh export [export_hub.py options]
#                                      # publish the run's best/ weights to hub_configs/<tag> and its sha256 to
#                                      # default_cfgs (pauses a running run while it measures: about 6 min)
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
# `export` publishes to TAG, measured at EXPORT_SIZES; SUMMARY, HARDWARE and NOTE (what the card's train command
# alone does not say) describe the run. export_hub.py adds which epoch and weights were selected, and on what.
JPEG_NOTE="The data is a JPEG q75 (4:2:0) copy of CIFAR-10; a CIFAR ResNet-44 loses about 3 points on it compared \
with the original files."
HARDWARE="2 CPU cores (shared machine)"; NOTE="(\`scripts/campaign.sh\`)"; TARGET_NOTE=""
RUNS="${CAMPAIGN_RUNS:-$REPO/runs}"  # committed resume states: `save` writes them, a new machine starts from them
INIT=""  # weights a fresh run starts from (--initial-checkpoint), when its recipe has them
case "$RUN" in
  flexnet16-cifar10)
    RECIPE=(--img-size-schedule 20:0 32:0.6 --epochs 50)
    TAG=flexnet16.cifar10; EXPORT_SIZES=(--img-size 32)
    HARDWARE="2 CPU cores (shared machine), epochs 20-28 on one NVIDIA H200"
    NOTE="(\`scripts/campaign.sh\`; \`--channels-last\` from step 906 to step 24,058 and \`--ema-warmup\` from \
step 2,615, switched by resume flags)"
    SUMMARY="FlexNet-16 (671,650 parameters) on CIFAR-10 at 32x32 px from the project's training campaign \
(docs/campaign.md): one 50-epoch schedule, epochs 1-30 at 20 px and 31-50 at 32 px, the kernels resampled at the \
switch. Trained on 2 CPU cores, with epochs 20-28 on one NVIDIA H200."
    TARGET_NOTE="The paper reports 92.2 % after 350 epochs at 32 px (original files, best test epoch); the \
campaign's target for this tag is 90.2 %." ;;
  flexnet16-cifar10-16px-alias-free)
    RECIPE=(--img-size 16 --epochs 60 --alias-free 0.1 --alias-free-mask --alias-free-init)
    TAG=flexnet16.cifar10_16px_alias_free; EXPORT_SIZES=(--img-size 16 24 32 --test-img-size 32)
    SUMMARY="Alias-free FlexNet-16 (671,650 parameters) trained on CIFAR-10 at 16x16 px with the alias-free \
regulariser on the kernel nets and the masks (paper section 4), from a band-limited start, in the project's training \
campaign (docs/campaign.md); meant to be evaluated at higher resolutions too (24 and 32 px measured below)."
    TARGET_NOTE="The paper reports 86.5 % at 16 px for the alias-free FlexNet-16 (original files); the \
campaign's target for this tag is 84 % at 16 px with a 16 -> 32 px drop no worse than -3.3 points." ;;
  flexnet16-cifar10-16px-alias-free-2)
    # The first run's EMA flattened out below the target while its lr decayed (docs/campaign.md); a second cosine
    # from its best weights at half the peak lr trains on, with a fresh optimiser and EMA.
    INIT="$RUNS/flexnet16-cifar10-16px-alias-free/best"
    RECIPE=(--initial-checkpoint "$INIT" --img-size 16 --epochs 60 --lr 0.005 --warmup-epochs 2 \
      --alias-free 0.1 --alias-free-mask)
    TAG=flexnet16.cifar10_16px_alias_free; EXPORT_SIZES=(--img-size 16 24 32 --test-img-size 32)
    SUMMARY="Alias-free FlexNet-16 (671,650 parameters) trained on CIFAR-10 at 16x16 px with the alias-free \
regulariser on the kernel nets and the masks (paper section 4), in the project's training campaign \
(docs/campaign.md): a 60-epoch run from a band-limited start, then a second 60-epoch cosine (half the peak \
learning rate) from its best weights; meant to be evaluated at higher resolutions too (24 and 32 px measured below)."
    NOTE="(\`scripts/campaign.sh\`; the second of two runs: the first, \`--img-size 16 --epochs 60 --alias-free 0.1 \
--alias-free-mask --alias-free-init\`, gave the initial weights; the training cost below counts the second run only)"
    TARGET_NOTE="The paper reports 86.5 % at 16 px for the alias-free FlexNet-16 (original files); the \
campaign's target for this tag is 84 % at 16 px with a 16 -> 32 px drop no worse than -3.3 points." ;;
  *) RECIPE=() ;;
esac
PID_FILE="$DIR/$RUN.pid"
SAVED="$RUNS/$RUN"
running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }
newest_checkpoint() { { ls -d "$1"/checkpoints/step_*[0-9] 2>/dev/null || true; } | sort | tail -n 1; }

case "${1:-start}" in
  start)
    if running; then echo "already running (pid $(cat "$PID_FILE"))"; exit 0; fi
    if [ ! -f "$DIR/$RUN/args.json" ] && [ ! -f "$SAVED/args.json" ] && [ ${#RECIPE[@]} -eq 0 ]; then
      echo "no run $RUN in $DIR or $SAVED, and no recipe to start one (see the top of $0)" >&2; exit 1
    fi
    if [ ! -f "$DIR/$RUN/args.json" ] && [ ! -f "$SAVED/args.json" ] && [ -n "$INIT" ] && [ ! -d "$INIT" ]; then
      echo "$RUN starts from $INIT, which does not exist: save the run it continues first" \
        "(CAMPAIGN_RUN=<that run> $0 save)" >&2; exit 1
    fi
    mkdir -p "$DIR"
    code="$DIR/code-$RUN"  # one snapshot per run: starting one run never pulls the code from under another
    rm -rf "$code" && mkdir -p "$code"
    git -C "$REPO" archive HEAD | tar -x -C "$code"
    if [ ! -f "$DIR/$RUN/args.json" ] && [ -f "$SAVED/args.json" ]; then
      echo "restoring $RUN from $SAVED"
      cp -r "$SAVED" "$DIR/$RUN"
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
  save|commit)
    newest="$(newest_checkpoint "$DIR/$RUN")"
    [ -n "$newest" ] || { echo "no checkpoint in $DIR/$RUN" >&2; exit 1; }
    rm -rf "$SAVED.tmp" && mkdir -p "$SAVED.tmp/checkpoints"
    cp "$DIR/$RUN"/{args.json,run_info.json} "$SAVED.tmp/"
    cp "$DIR/$RUN"/{metrics.csv,metrics.json,summary.json} "$SAVED.tmp/" 2>/dev/null || true  # summary: finished runs
    cp -r "$newest" "$SAVED.tmp/checkpoints/"
    [ -d "$DIR/$RUN/best" ] && cp -r "$DIR/$RUN/best" "$SAVED.tmp/"
    rm -rf "$SAVED" && mv "$SAVED.tmp" "$SAVED"
    echo "saved $(basename "$newest") to $SAVED"
    if [ "$1" = commit ]; then
      # Only this run's folder goes into the commit (`-- .` in it), whatever else is staged or edited.
      git -C "$SAVED" add -A .
      if git -C "$SAVED" diff --cached --quiet -- .; then echo "nothing new to commit in $SAVED"
      else git -C "$SAVED" commit -q -m "campaign: $RUN resume state $(basename "$newest")" -- . && \
        echo "committed $(git -C "$SAVED" log -1 --format='%h %s')"; fi
    fi
    ;;
  status)
    if running; then echo "running (pid $(cat "$PID_FILE"))"; else echo "not running"; fi
    newest_checkpoint "$DIR/$RUN"
    grep '^epoch' "$DIR/$RUN.log" | tail -n 3 || true
    ;;
  then)
    next="${2:?usage: $0 then NEXT_RUN}"
    running || { echo "$RUN is not training: start $next with CAMPAIGN_RUN=$next $0 start" >&2; exit 1; }
    # A watcher: when the trainer exits, a finished run (train.py wrote summary.json) starts the next one; a run
    # that was stopped (SIGTERM, a crash) does not, so `stop` + `save` never chain by surprise.
    nohup bash -c 'while kill -0 "$1" 2>/dev/null; do sleep "$6"; done
      if [ -f "$2/summary.json" ]; then echo "$5 finished: saving it, then starting $3"
        CAMPAIGN_RUN="$5" bash "$4" save || echo "saving $5 failed"; CAMPAIGN_RUN="$3" bash "$4" start
      else echo "$5 stopped before its end: $3 not started"; fi' \
      watcher "$(cat "$PID_FILE")" "$DIR/$RUN" "$next" "$REPO/scripts/campaign.sh" "$RUN" "${CAMPAIGN_POLL:-30}" \
      >> "$DIR/$RUN.log" 2>&1 &
    echo "$next starts when $RUN finishes (watcher pid $!, messages in $DIR/$RUN.log)"
    ;;
  export)
    [ -n "${TAG:-}" ] || { echo "run $RUN has no tag to export to (see the top of $0)" >&2; exit 1; }
    [ -f "$DIR/$RUN/best/model.safetensors" ] || { echo "no best/ weights in $DIR/$RUN yet" >&2; exit 1; }
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/$RUN"  # a copy: the run may replace best/ at its next epoch end
    cp "$DIR/$RUN"/{args.json,run_info.json,metrics.json,metrics.csv} "$tmp/$RUN/" && cp -r "$DIR/$RUN/best" "$tmp/$RUN/"
    if running; then  # measuring shares the cores with training: pause it, and resume it whatever happens
      pid="$(cat "$PID_FILE")"; kill -STOP "$pid"; trap 'kill -CONT "$pid"; rm -rf "$tmp"' EXIT
    fi
    cd "$REPO"
    old_sha="$(python -c "import sys, timm, flexconv_zoo; from flexconv_zoo.loading import weights_sha256; \
print(weights_sha256(timm.models.get_pretrained_cfg(sys.argv[1]).to_dict()))" "$TAG")"
    OMP_NUM_THREADS="$THREADS" python scripts/export_hub.py "$tmp/$RUN" --weights best/model.safetensors --tag "$TAG" \
      --dataset cifar10 --dataset-name "CIFAR-10 (JPEG q75 copy)" "${EXPORT_SIZES[@]}" --flip-tta \
      --output "hub_configs/$TAG" --overwrite --hardware "$HARDWARE" --summary "$SUMMARY" --limitation "$JPEG_NOTE" \
      ${TARGET_NOTE:+--limitation "$TARGET_NOTE"} --command-note "$NOTE" "${@:2}"
    new_sha="$(sha256sum "hub_configs/$TAG/model.safetensors" | cut -d' ' -f1)"
    grep -q "$old_sha" flexconv_zoo/models/flexnet.py && sed -i "s/$old_sha/$new_sha/" flexconv_zoo/models/flexnet.py
    grep -q "$new_sha" flexconv_zoo/models/flexnet.py || { echo "record $new_sha for $TAG in default_cfgs" >&2; exit 1; }
    echo "published $TAG ($new_sha); update the README table and docs/campaign.md, then run" \
      "python -m pytest tests/test_hub.py tests/test_packaging.py tests/test_models.py"
    ;;
  chunk)
    data_dir="$(cd "${2:?usage: $0 chunk DATA_DIR OUT_DIR [SECONDS [train.py options]]}" && pwd)"
    out="$(mkdir -p "${3:?usage: $0 chunk DATA_DIR OUT_DIR [SECONDS [train.py options]]}" && cd "$3" && pwd)"
    limit="${4:-480}"; shift $(( $# < 4 ? $# : 4 ))
    work="${CAMPAIGN_CHUNK_DIR:-/tmp/campaign_chunk}"
    [ -f "$SAVED/args.json" ] || { echo "no saved run in $SAVED: run \`$0 save\` and commit first" >&2; exit 1; }
    here="$(newest_checkpoint "$work/$RUN")"; there="$(newest_checkpoint "$SAVED")"
    if [ -n "$here" ] && [[ "$(basename "$here")" > "$(basename "$there")" ]]; then
      echo "continuing in place from $(basename "$here") (ahead of the saved $(basename "$there"))"
    else
      rm -rf "$work" && mkdir -p "$work" && cp -r "$SAVED" "$work/$RUN"
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
  *) echo "usage: $0 start|stop|save|commit|status|then NEXT|export|chunk DATA OUT [SECONDS]|unpack FOLDER" >&2; exit 2 ;;
esac
