#!/usr/bin/env bash
# One prepared GPU check (issue #6): on a CUDA machine with nothing but the payload it is given (no network),
# install the project's missing wheels, then
#   1. time the stage-2 step of supervised / mean teacher / DuSSS on the same network and batch (AMP, the
#      MoNuSeg bundle's sizes), with peak GPU memory and a torch.profiler table of mean teacher and DuSSS;
#   2. train the MoNuSeg bundle at the paper's size (224 px, ViT-B/16 stage 1, U-Net 32-512, AMP) for a fixed
#      number of epochs: stage 1 once per seed, then supervised-only, mean teacher and DuSSS at 25 % labels
#      for every seed, all runs side by side on the one GPU (benchmarks/monuseg_accuracy.py --budget gpu,
#      one process per run), and evaluate each student on the validation tiles;
#   3. collect the sweep (results.md / results.csv, learning curves and overlays) and print it, with the
#      stage-1 wall time and recall@1 and the peak GPU memory the whole sweep used.
#
# Prepare the payload here first (git-ignored, < 64 MiB):
#     python benchmarks/prepare_gpu_payload.py --monuseg ../shared/data/monuseg --out .device
# Then run, on the GPU machine, from the repository root:
#     bash benchmarks/gpu.sh [.device] [results_dir]
# Knobs (environment): SEEDS (0,1,2), METHODS (supervised,mean_teacher,dussss), RATIO (0.25), PRE_EPOCHS (20),
# EPOCHS (25; the bundle's is 100), SWEEP_TIMEOUT (330 s: runs still going then are stopped and the finished ones reported),
# DEVICE (cuda), STEP_ARGS (extra arguments of stage2_step_time.py), SWEEP_EXTRA (extra --extra items),
# SKIP_INSTALL=1 (use the installed packages), STEP_TIME=0 (skip part 1), SWEEP=0 (part 1 only).
# Measured on one H200 (docs/notebook/gpu_runs/2026-11-27_h200_session5.log): parts 2 and 3 took 209 s with these defaults
# (9 runs side by side, 19.5 GiB of GPU memory at most); part 1 takes about 2-3 minutes (5 processes start).
# Stage 1 runs with the text augmentation replaced by the identity: the cached text features only know the
# dataset's own sentences (the text encoder is frozen, so this changes nothing in the cost of a step).
set -uo pipefail
PAYLOAD=$(realpath "${1:-.device}")
OUT_DIR=${2:-${OUT:-/tmp/gpu_results}}
SEEDS=${SEEDS:-0,1,2}
METHODS=${METHODS:-supervised,mean_teacher,dussss}
RATIO=${RATIO:-0.25}
PRE_EPOCHS=${PRE_EPOCHS:-20}
EPOCHS=${EPOCHS:-25}
SWEEP_TIMEOUT=${SWEEP_TIMEOUT:-330}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/gpu_sweep}
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
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
T0=$(date +%s)

if [ "${STEP_TIME:-1}" = 1 ]; then
echo "== 1. stage-2 step time (same network and batch) =="
AMP=""; [ "$DEVICE" = cuda ] && AMP="--amp"
# the MoNuSeg bundle's sizes; STEP_ARGS come last, so they override
# shellcheck disable=SC2086,SC2206
STEP=(python3 benchmarks/stage2_step_time.py --device "$DEVICE" --size 224 --batch 16 --iters 30 $AMP
    --unet-channels 32 64 128 256 512 --vit-hidden 768 --vit-layers 12 --vit-heads 12 --embed-dim 512
    --decoder-channels 128 ${STEP_ARGS:-})
timeout 300 "${STEP[@]}" --profile "$OUT_DIR/profile_b16" 2>&1 | tee "$OUT_DIR/step_time.txt"
# cuBLASLt's addmm spends about 200 us of CPU per call in the ViT (docs/notebook/2026-11-27_benchmarks.md): DuSSS alone without it
DISABLE_ADDMM_CUDA_LT=1 timeout 100 "${STEP[@]}" --method dussss 2>&1 | tail -1 \
    | sed 's/^/DISABLE_ADDMM_CUDA_LT=1: /' | tee -a "$OUT_DIR/step_time.txt"
echo "(step time: $(( $(date +%s) - T0 )) s)"
fi

if [ "${SWEEP:-1}" != 1 ]; then echo "total: $(( $(date +%s) - T0 )) s"; exit 0; fi
echo "== 2. MoNuSeg at 224 px, ratio $RATIO, seeds $SEEDS, methods $METHODS: $PRE_EPOCHS + $EPOCHS epochs =="
TEXT="{\"_target_\": \"dussss_monai.networks.CachedTextEncoder\", \"state\": \"$PAYLOAD/text_cache.pt\"}"
SWEEP=(python3 benchmarks/monuseg_accuracy.py --budget gpu --dataset_dir "$PAYLOAD/monuseg" --workdir "$WORK"
    --ratios "$RATIO" --pretrain_epochs "$PRE_EPOCHS" --epochs "$EPOCHS" --overlay_images 4
    --extra "vlm_def#text_encoder=$TEXT" --extra 'pretrain:text_augmenter=$lambda texts: list(texts)'
    --extra num_workers=0)
# shellcheck disable=SC2206
EXTRA=(${SWEEP_EXTRA:-})
(while sleep 2; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null; done) \
    > "$WORK/gpu_memory_used.txt" &
SAMPLER=$!
T1=$(date +%s)
PIDS=()
for SEED in ${SEEDS//,/ }; do
    for METHOD in ${METHODS//,/ }; do
        OMP_NUM_THREADS=2 timeout "$SWEEP_TIMEOUT" "${SWEEP[@]}" "${EXTRA[@]}" --seeds "$SEED" --methods "$METHOD" \
            > "$WORK/sweep_${METHOD}_seed${SEED}.log" 2>&1 &
        PIDS+=($!)
    done
done
for P in "${PIDS[@]}"; do wait "$P" || echo "a sweep process exited with status $? (see $WORK/sweep_*.log)"; done
kill "$SAMPLER" 2>/dev/null
echo "(sweep: $(( $(date +%s) - T1 )) s for every run side by side)"
grep -h -E "validation Dice|FAILED" "$WORK"/sweep_*.log

echo "== 3. results =="
OMP_NUM_THREADS=8 timeout "${COLLECT_TIMEOUT:-120}" "${SWEEP[@]}" "${EXTRA[@]}" --seeds "$SEEDS" --methods "$METHODS" --report_only \
    > "$WORK/collect.log" 2>&1 || { echo "collect exited with $?:"; grep -A12 "^failed:" "$WORK/collect.log"; }
cat "$WORK/results.md" 2>/dev/null
if [ -s "$WORK/gpu_memory_used.txt" ]; then
    echo "peak GPU memory used by the whole sweep (all runs at once): $(sort -n "$WORK/gpu_memory_used.txt" | tail -1) MiB"
fi
for F in "$WORK"/pretrain/*/stage1_done.json; do
    [ -f "$F" ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-2], 'stage 1: %.0f s wall (start-up, $PRE_EPOCHS epochs, validation)' % d['seconds'])" "$F"
done
cp "$WORK"/results.md "$WORK"/results.csv "$WORK"/*.png "$OUT_DIR"/ 2>/dev/null
tar czf "$OUT_DIR/logs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.nii*' --exclude='*overlay*' . 2>/dev/null
echo "total: $(( $(date +%s) - T0 )) s"
