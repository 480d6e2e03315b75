#!/usr/bin/env bash
# Evaluate a model / train.py checkpoint with test.py. Every setting is an environment variable:
#   model_name_or_path=... resume_from=runs/x/checkpoint-500 num_samples=1000 bash test.sh
# Extra arguments are passed on to test.py (e.g. bash test.sh --K 20 --max_new_tokens 256).
# With nothing configured it runs on the demo data and tiny model (build them with the demo script first).
set -euo pipefail
cd "$(dirname "$0")"

export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
dataset_path="${dataset_path:-demo/data/Video_Games_5_2021-1-2023-12}"
dataset_type="${dataset_type:-other}"              # movies | other
model_name_or_path="${model_name_or_path:-demo/tiny-qwen}"
resume_from="${resume_from:-}"                     # checkpoint dir, 'last', or empty for the base model
output_dir="${output_dir:-outputs/test_demo}"
num_samples="${num_samples:-100}"
max_len_per_item="${max_len_per_item:-64}"
user_window_size="${user_window_size:-10}"
mode="${mode:-greedy}"                             # greedy | rollout
gen_mode="${gen_mode:-top1}"                       # top1 | random | all (reasoning mode only)
PYTHON="${PYTHON:-python}"

resume_args=()
if [[ -n "$resume_from" ]]; then resume_args=(--resume_from "$resume_from"); fi

"$PYTHON" test.py \
    --model_name_or_path "$model_name_or_path" \
    --dataset_path "$dataset_path" \
    --dataset_type "$dataset_type" \
    "${resume_args[@]}" \
    --output_dir "$output_dir" \
    --num_samples "$num_samples" \
    --max_len_per_item "$max_len_per_item" \
    --user_window_size "$user_window_size" \
    --mode "$mode" \
    --gen_mode "$gen_mode" \
    "$@"
