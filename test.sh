#!/usr/bin/env bash
# Evaluate a model / train.py checkpoint with test.py. Every setting is an environment variable (the original
# README's names):
#   device output_dir dataset_path dataset_type model_name_or_path resume_from num_samples gen_mode
#   max_len_per_item user_window_size print_every_text      (+ mode K K_eval checkpoint_dir nproc)
#   model_name_or_path=... resume_from=runs/x/checkpoint-500 num_samples=1000 device=cuda:0 bash test.sh
# Extra arguments are passed on to test.py (e.g. bash test.sh --K 20 --max_new_tokens 256).
# With nothing configured it evaluates the newest checkpoint of the run `bash train.sh` makes by default (the demo),
# building the demo assets first if they are missing. Prompt settings (dataset_type, max_len_per_item,
# user_window_size, ...) come from the checkpoint's training arguments unless set here.
# device: cpu | cuda | cuda:N | a bare GPU index N. nproc=N shards the evaluation over N processes (one GPU each).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"

demo=0
if [[ -z "${dataset_path:-}" && -z "${model_name_or_path:-}" ]]; then demo=1; fi
dataset_path="${dataset_path:-demo/data/Video_Games_5_2021-1-2023-12}"
model_name_or_path="${model_name_or_path:-demo/tiny-qwen}"
if [[ $demo == 1 ]]; then
  "$PYTHON" tools/make_demo.py --out_dir demo --skip_existing --preprocess
  # the run `bash train.sh` writes with its defaults; its newest complete checkpoint
  default_run="outputs/ppo_$(basename "$model_name_or_path")_$(basename "$dataset_path")"
  if [[ -z "${resume_from:-}" && -z "${checkpoint_dir:-}" && -d $default_run ]]; then
    resume_from=last; checkpoint_dir=$default_run
  fi
fi
output_dir="${output_dir:-outputs/test_$(basename "$model_name_or_path")_$(basename "$dataset_path")}"
num_samples="${num_samples:-100}"
mode="${mode:-greedy}"                             # greedy | rollout
gen_mode="${gen_mode:-top1}"                       # top1 | random | all (reasoning mode only)
print_every_text="${print_every_text:-50}"
device="${device:-auto}"
[[ $device =~ ^[0-9]+$ ]] && device="cuda:$device"

args=(--model_name_or_path "$model_name_or_path" --dataset_path "$dataset_path" --output_dir "$output_dir"
      --num_samples "$num_samples" --mode "$mode" --gen_mode "$gen_mode" --print_every_text "$print_every_text"
      --device "$device")
# Set only when given: otherwise test.py takes them from the checkpoint's training arguments.
for var in dataset_type max_len_per_item user_window_size K K_eval resume_from checkpoint_dir; do
  if [[ -n "${!var:-}" ]]; then args+=("--$var" "${!var}"); fi
done

if [[ "${nproc:-1}" -gt 1 ]]; then
  exec "$PYTHON" -m accelerate.commands.launch --num_processes "$nproc" test.py "${args[@]}" "$@"
fi
exec "$PYTHON" test.py "${args[@]}" "$@"
