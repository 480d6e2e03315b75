#!/usr/bin/env bash
# Train the R2ec ("RRec") baseline with RecPO (upstream's settings), then evaluate it on our candidate sets.
# Every setting is upstream R2ec's (launch_train.sh) except these demo-size ones, so that `bash compare_model/rrec.sh`
# with no variables finishes in minutes on a CPU with the demo's tiny model:
#   MAX_STEPS=20         upstream: -1 (3 epochs)
#   MAX_NEW_TOKENS=32    upstream: 640 reasoning tokens
#   NUM_EVAL_SAMPLES=32  upstream: -1 (the whole valid split at every evaluation)
#   EVAL_STEPS=10        upstream: -1 (floor(n_train / (3 * train_batch_size) / 8))
#   GRADIENT_CHECKPOINTING=--no-gradient_checkpointing   upstream: on (memory only; the numbers are the same)
# For the real thing, e.g.:
#   DATASET_DIR=data/Video_Games_5_2017-1-2023-12 MODEL=Qwen2.5-3B-Instruct MAX_STEPS=-1 MAX_NEW_TOKENS=640 \
#   NUM_EVAL_SAMPLES=-1 EVAL_STEPS=-1 GRADIENT_CHECKPOINTING=--gradient_checkpointing NPROC=4 \
#   REFERENCE_JSON=outputs/test/results.json bash compare_model/rrec.sh
# Extra flags: TRAIN_ARGS="--no-use_lora --learning_rate 1e-6" EVAL_ARGS="--full_ranking" bash compare_model/rrec.sh
# A rerun continues the training (RESTART=--resume_from auto) and the evaluation; RESTART=--overwrite_output_dir
# starts both afresh.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
DATASET_DIR=${DATASET_DIR:-demo/data/Video_Games_5_2021-1-2023-12}
MODEL=${MODEL:-demo/tiny-qwen}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/rrec}
EVAL_DIR=${EVAL_DIR:-$OUTPUT_DIR/eval}
DEVICE=${DEVICE:-auto}
NPROC=${NPROC:-1}
MAX_STEPS=${MAX_STEPS:-20}                # demo size (upstream -1: 3 epochs)
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-32}      # demo size (upstream 640)
NUM_EVAL_SAMPLES=${NUM_EVAL_SAMPLES:-32}  # demo size (upstream -1: whole valid split)
EVAL_STEPS=${EVAL_STEPS:-10}              # demo size (upstream -1)
GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:---no-gradient_checkpointing}  # demo speed, same numbers (upstream: on)
GROUP_SIZE=${GROUP_SIZE:-4}
TRAIN_BATCH_SIZE=${TRAIN_BATCH_SIZE:-4}
LEARNING_RATE=${LEARNING_RATE:-1e-5}
K=${K:-20}
K_EVAL=${K_EVAL:-$(( K < 10 ? K : 10 ))}  # K_eval may not exceed K
NUM_SAMPLES=${NUM_SAMPLES:-100}           # test examples rrec.py ranks
SEED=${SEED:-42}
REFERENCE_JSON=${REFERENCE_JSON:-}
RESTART=${RESTART:---resume_from auto}

if [ "$NPROC" -gt 1 ]; then
  LAUNCH=(accelerate launch --num_processes "$NPROC")
else
  LAUNCH=("$PYTHON")
fi

"${LAUNCH[@]}" compare_model/train_rrec.py \
  --model_name_or_path "$MODEL" --dataset_dir "$DATASET_DIR" --output_dir "$OUTPUT_DIR" --device "$DEVICE" \
  --max_steps "$MAX_STEPS" --max_new_tokens "$MAX_NEW_TOKENS" --num_eval_samples "$NUM_EVAL_SAMPLES" \
  --eval_steps "$EVAL_STEPS" --group_size "$GROUP_SIZE" --train_batch_size "$TRAIN_BATCH_SIZE" \
  --learning_rate "$LEARNING_RATE" --K "$K" --K_eval "$K_EVAL" --seed "$SEED" $GRADIENT_CHECKPOINTING \
  $RESTART ${TRAIN_ARGS:-}

REF=()
if [ -n "$REFERENCE_JSON" ]; then REF=(--reference_json "$REFERENCE_JSON"); fi
if [ "$RESTART" = "--overwrite_output_dir" ]; then REF+=(--overwrite_output_dir); fi

# the similarity and prompt settings (window, reasoning length) travel with the checkpoint
"${LAUNCH[@]}" compare_model/rrec.py \
  --checkpoint_path "$OUTPUT_DIR" --dataset_dir "$DATASET_DIR" --device "$DEVICE" --num_samples "$NUM_SAMPLES" \
  --K "$K" --K_eval "$K_EVAL" --seed "$SEED" --output_dir "$EVAL_DIR" "${REF[@]}" ${EVAL_ARGS:-}
