#!/usr/bin/env bash
# The prepared GPU check (issue 43), on a CUDA machine with nothing but the payload it is given (no network):
#   1. the stage-2 step time of supervised, mean teacher and DuSSS on the same network and batch, with peak memory
#      (benchmarks/stage2_step_time.py, the MoNuSeg bundle's sizes, AMP);
#   2. the MoNuSeg table of docs/results.md at a GPU length: the plain U-Net reference and the bundle's supervised,
#      mean-teacher and DuSSS runs (benchmarks/monuseg_table.py, the current recipe), one process per seed and
#      method side by side, stage 1 trained once first; then one table of every run (monuseg_table.py --collect).
#
# Prepare the payload here first (git-ignored, < 64 MiB):
#     python benchmarks/prepare_gpu_payload.py --monuseg ../shared/data/monuseg \
#         --reference ../shared/reference/plain_unet_monuseg.py --out .device
# Then, on the GPU machine, from the repository root:
#     bash benchmarks/gpu.sh [.device] [results_dir]
# Knobs (environment): SEEDS (0,1,2), METHODS (reference,supervised,mean_teacher,dussss), RATIO (0.25),
# EPOCHS (48: 1200 iterations of the bundle's 25), REFERENCE_ITERS (1200), TABLE_TIMEOUT (420 s),
# STEP_TIME=0 (skip part 1), TABLE=0 (part 1 only), DRY_RUN=1 (print the commands of part 2, run nothing),
# SKIP_INSTALL=1 (use the installed packages), DEVICE (cuda), STEP_ARGS / TABLE_ARGS (extra arguments).
# The text encoder reads the sentences' features from the payload (text_cache.pt): the text model's wheel (84 MB)
# does not fit in it; so stage 1 runs without its text augmentation (the cache knows the dataset's sentences only).
set -uo pipefail
PAYLOAD=$(realpath "${1:-.device}")
OUT_DIR=${2:-${OUT:-/tmp/gpu_results}}
SEEDS=${SEEDS:-0,1,2}
METHODS=${METHODS:-reference,supervised,mean_teacher,dussss}
RATIO=${RATIO:-0.25}
EPOCHS=${EPOCHS:-48}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/gpu_table}
mkdir -p "$OUT_DIR" "$WORK"
OUT_DIR=$(realpath "$OUT_DIR")
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$PAYLOAD"/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)

if [ "${STEP_TIME:-1}" = 1 ] && [ "${DRY_RUN:-0}" != 1 ]; then
    echo "== 1. stage-2 step time (same network and batch) =="
    AMP=""; [ "$DEVICE" = cuda ] && AMP="--amp"
    # shellcheck disable=SC2086
    timeout 300 python3 benchmarks/stage2_step_time.py --device "$DEVICE" --size 256 --batch 16 --iters 30 $AMP \
        --unet-channels 32 64 128 256 512 --embed-dim 64 --decoder-channels 32 ${STEP_ARGS:-} 2>&1 \
        | tee "$OUT_DIR/step_time.txt"
fi
if [ "${TABLE:-1}" != 1 ]; then echo "total: $(( $(date +%s) - T0 )) s"; exit 0; fi

echo "== 2. MoNuSeg, ratio $RATIO, seeds $SEEDS, $EPOCHS epochs of 25 iterations: $METHODS =="
TEXT="{\"_target_\": \"dussss_monai.networks.CachedTextEncoder\", \"state\": \"$PAYLOAD/text_cache.pt\"}"
DRY=(); [ "${DRY_RUN:-0}" = 1 ] && DRY=(--dry_run)
# shellcheck disable=SC2206
TABLE=(python3 benchmarks/monuseg_table.py --dataset_dir "$PAYLOAD/monuseg" --ratio "$RATIO"
    --reference "$PAYLOAD/plain_unet_monuseg.py" "--reference_extra=--iterations=${REFERENCE_ITERS:-1200}"
    --stage1_dir "$WORK/stage1" --stage1_extra "vlm_def#text_encoder=$TEXT"
    --stage1_extra 'text_augmenter=$lambda texts: list(texts)' 
    --extra "max_epochs=$EPOCHS" --extra "early_stop_patience=$EPOCHS" --extra "vlm_def#text_encoder=$TEXT"
    ${TABLE_ARGS:-} "${DRY[@]}")
case ",$METHODS," in *,dussss*) "${TABLE[@]}" --workdir "$WORK/stage1_only" --stage1_only || exit 1 ;; esac
PIDS=(); DIRS=()
for SEED in ${SEEDS//,/ }; do
    for METHOD in ${METHODS//,/ }; do
        DIR="$WORK/${METHOD}_seed$SEED"; DIRS+=("$DIR")
        timeout "${TABLE_TIMEOUT:-420}" "${TABLE[@]}" --workdir "$DIR" --seeds "$SEED" --methods "$METHOD" \
            > "$WORK/${METHOD}_seed$SEED.log" 2>&1 &
        PIDS+=($!)
    done
done
for P in "${PIDS[@]}"; do wait "$P" || echo "a table process exited with status $? (see $WORK/*.log)"; done
if [ "${DRY_RUN:-0}" = 1 ]; then cat "$WORK"/*_seed*.log; exit 0; fi
python3 benchmarks/monuseg_table.py --collect "${DIRS[@]}" --workdir "$WORK" | tee "$OUT_DIR/results.md"
tar czf "$OUT_DIR/logs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.png' . 2>/dev/null
echo "total: $(( $(date +%s) - T0 )) s"
