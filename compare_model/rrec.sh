#!/usr/bin/env bash
# Train the R2ec ("RRec") baseline with RecPO, then evaluate it on our candidate sets.
# Defaults run the demo on a CPU in minutes; override any path/setting with environment variables:
#   DATASET_DIR=data/Video_Games_5_2017-1-2023-12 MODEL=Qwen2.5-3B-Instruct DEVICE=cuda MAX_STEPS=-1 \
#   REFERENCE_JSON=outputs/test/results.json NPROC=4 bash compare_model/rrec.sh
# Extra flags: TRAIN_ARGS="--learning_rate 1e-6" EVAL_ARGS="--full_ranking" bash compare_model/rrec.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
DATASET_DIR=${DATASET_DIR:-demo/data/Video_Games_5_2021-1-2023-12}
MODEL=${MODEL:-demo/tiny-qwen}
MODEL_TYPE=${MODEL_TYPE:-qwen}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/rrec}
EVAL_DIR=${EVAL_DIR:-$OUTPUT_DIR/eval}
DEVICE=${DEVICE:-auto}
NPROC=${NPROC:-1}
MAX_STEPS=${MAX_STEPS:-20}
GROUP_SIZE=${GROUP_SIZE:-4}
TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-4}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-32}
LEARNING_RATE=${LEARNING_RATE:-1e-4}
K=${K:-20}
K_EVAL=${K_EVAL:-$(( K < 10 ? K : 10 ))}  # K_eval may not exceed K
NUM_SAMPLES=${NUM_SAMPLES:-100}
SEED=${SEED:-42}
REFERENCE_JSON=${REFERENCE_JSON:-}

if [ "$NPROC" -gt 1 ]; then
  LAUNCH=(accelerate launch --num_processes "$NPROC")
else
  LAUNCH=("$PYTHON")
fi

"${LAUNCH[@]}" compare_model/train_rrec.py \
  --model_name_or_path "$MODEL" --dataset_dir "$DATASET_DIR" --output_dir "$OUTPUT_DIR" \
  --model_type "$MODEL_TYPE" --device "$DEVICE" --max_steps "$MAX_STEPS" --group_size "$GROUP_SIZE" \
  --train_batch_size "$TRAIN_BATCH_SIZE" --max_new_tokens "$MAX_NEW_TOKENS" --learning_rate "$LEARNING_RATE" \
  --warmup_steps 2 --K "$K" --K_eval "$K_EVAL" --num_eval_samples 32 --seed "$SEED" ${TRAIN_ARGS:-}

REF=()
if [ -n "$REFERENCE_JSON" ]; then REF=(--reference_json "$REFERENCE_JSON"); fi

"$PYTHON" compare_model/rrec.py \
  --checkpoint_path "$OUTPUT_DIR" --dataset_dir "$DATASET_DIR" --model_type "$MODEL_TYPE" --device "$DEVICE" \
  --num_samples "$NUM_SAMPLES" --K "$K" --K_eval "$K_EVAL" --max_new_tokens "$MAX_NEW_TOKENS" --seed "$SEED" \
  --output_dir "$EVAL_DIR" "${REF[@]}" ${EVAL_ARGS:-}
