#!/usr/bin/env bash
# One prepared GPU check: on a CUDA machine with nothing but the payload it is given (no network), install
# the project's missing wheels, then train stage 1 and stage 2 of the MoNuSeg bundle at the paper's size
# (224 px, ViT-B/16, AMP) for a fixed number of epochs, and print throughput, peak GPU memory and
# validation Dice; then time the stage-2 step of DuSSS / mean teacher / supervised on the same batch.
#
# Prepare the payload here first (git-ignored, < 64 MiB):
#     python benchmarks/prepare_gpu_payload.py --monuseg ../shared/data/monuseg --out .device
# Then run, on the GPU machine, from the repository root:
#     bash benchmarks/gpu.sh [.device] [results_dir]
# Budget: under 8 minutes on one H100. Stage 1 runs with the text augmentation replaced by the identity:
# the cached text features only know the dataset's own sentences (the text encoder is frozen, so this
# changes nothing in the cost of a step).
set -euo pipefail
PAYLOAD=${1:-.device}
OUT_DIR=${2:-${OUT:-/tmp/gpu_results}}
PRE_EPOCHS=${PRE_EPOCHS:-30}
EPOCHS=${EPOCHS:-40}
mkdir -p "$OUT_DIR"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$PAYLOAD"/wheels/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name(0))"

B=bundles/dussss_monuseg/configs
ROOT=/tmp/gpu_bundle
TEXT="{'_target_': 'dussss_monai.networks.CachedTextEncoder', 'state': '$PAYLOAD/text_cache.pt'}"
COMMON=(--dataset_dir "$PAYLOAD/monuseg" --bundle_root "$ROOT" --num_workers 8 --log_iterations False)

t0=$(date +%s)
python3 -m monai.bundle run training --config_file $B/pretrain.json "${COMMON[@]}" \
    --vlm_def#text_encoder "$TEXT" --text_augmenter '$lambda texts: list(texts)' --max_epochs "$PRE_EPOCHS" --batch_size 24 \
    > "$OUT_DIR/pretrain.log" 2>&1 || { tail -30 "$OUT_DIR/pretrain.log"; exit 1; }
t1=$(date +%s)
grep -E "Metrics --" "$OUT_DIR/pretrain.log" | tail -2
echo "stage 1: $PRE_EPOCHS epochs x 24 pairs in $((t1 - t0)) s (incl. start-up and validation)"

for METHOD in dussss mean_teacher supervised; do
    s=$(date +%s)
    python3 -m monai.bundle run training --config_file $B/train.json "${COMMON[@]}" \
        --vlm_def#text_encoder "$TEXT" --method $METHOD --max_epochs "$EPOCHS" \
        --ckpt_dir "$ROOT/models_$METHOD" --vlm_checkpoint "$ROOT/models/vlm.pt" \
        > "$OUT_DIR/train_$METHOD.log" 2>&1 || { tail -30 "$OUT_DIR/train_$METHOD.log"; exit 1; }
    e=$(date +%s)
    echo "stage 2 $METHOD: $EPOCHS epochs in $((e - s)) s; $(grep 'val_mean_dice best value' "$OUT_DIR/train_$METHOD.log" | tail -1 | sed 's/.*INFO - //')"
done

python3 benchmarks/stage2_step_time.py --device cuda --size 224 --batch 16 --iters 30 --amp \
    --unet-channels 32 64 128 256 512 --vit-hidden 768 --vit-layers 12 --vit-heads 12 2>&1 | tail -8
nvidia-smi --query-gpu=memory.used --format=csv,noheader
