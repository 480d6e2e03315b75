#!/usr/bin/env bash
# Evaluate a model / train.py checkpoint with test.py. Every setting is an environment variable (the original
# README's names):
#   device output_dir dataset_path dataset_type model_name_or_path resume_from num_samples gen_mode
#   max_len_per_item user_window_size print_every_text      (+ mode K K_eval checkpoint_dir nproc scoring)
#   model_name_or_path=... resume_from=runs/x/checkpoint-500 num_samples=1000 device=cuda:0 bash test.sh
# Extra arguments are passed on to test.py (e.g. bash test.sh --K 20 --max_new_tokens 256).
# With nothing configured it evaluates the demo's newest trained checkpoint: of $OUT/train (what `bash setup.sh demo`
# and demo.sh train; OUT as in demo.sh, default outputs/demo) and of the run `bash train.sh` makes by default,
# whichever was saved last; with neither, the untrained base model. One line on stderr says which and why. The demo
# assets are built first if they are missing. Prompt settings (dataset_type, max_len_per_item, user_window_size,
# ...) come from the checkpoint's training arguments unless set here.
# device: cpu | cuda | cuda:N | a bare GPU index N. nproc=N shards the evaluation over N processes (one GPU each).
# scoring: auto (default: shared-prefix scoring where it is exact for the model, printed) | naive | shared.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python}"

demo=0
if [[ -z "${dataset_path:-}" && -z "${model_name_or_path:-}" ]]; then demo=1; fi
dataset_path="${dataset_path:-demo/data/Video_Games_5_2021-1-2023-12}"
model_name_or_path="${model_name_or_path:-demo/tiny-qwen}"
if [[ $demo == 1 ]]; then
  "$PYTHON" tools/make_demo.py --out_dir demo --skip_existing --preprocess
  if [[ -z "${resume_from:-}" && -z "${checkpoint_dir:-}" ]]; then
    # the demo's training runs: demo.sh's (setup.sh demo) and the one `bash train.sh` writes with its defaults
    runs=("${OUT:-outputs/demo}/train" "outputs/ppo_$(basename "$model_name_or_path")_$(basename "$dataset_path")")
    newest=""
    for run in "${runs[@]}"; do
      for marker in "$run"/checkpoint-*/COMPLETE; do
        if [[ -f $marker ]] && [[ -z $newest || $marker -nt $newest ]]; then newest=$marker; fi
      done
    done
    if [[ -n $newest ]]; then
      resume_from=$(dirname "$newest")
      echo "test.sh: evaluating $resume_from, the newest complete checkpoint of the demo's training runs" \
           "(${runs[*]}); set resume_from=PATH to evaluate another" >&2
    else
      echo "test.sh: no trained checkpoint in ${runs[*]}: evaluating the untrained base model $model_name_or_path" \
           "(bash setup.sh demo or bash train.sh trains one)" >&2
    fi
  fi
elif [[ -z "${resume_from:-}" && -z "${checkpoint_dir:-}" ]]; then
  echo "test.sh: evaluating $model_name_or_path as it is (no resume_from or checkpoint_dir set)" >&2
fi
output_dir="${output_dir:-outputs/test_$(basename "$model_name_or_path")_$(basename "$dataset_path")}"
num_samples="${num_samples:-100}"
mode="${mode:-greedy}"                             # greedy | rollout
gen_mode="${gen_mode:-top1}"                       # top1 | random | all (reasoning mode only)
print_every_text="${print_every_text:-50}"
device="${device:-auto}"
scoring="${scoring:-auto}"
[[ $device =~ ^[0-9]+$ ]] && device="cuda:$device"

args=(--model_name_or_path "$model_name_or_path" --dataset_path "$dataset_path" --output_dir "$output_dir"
      --num_samples "$num_samples" --mode "$mode" --gen_mode "$gen_mode" --print_every_text "$print_every_text"
      --device "$device" --scoring "$scoring")
# Set only when given: otherwise test.py takes them from the checkpoint's training arguments.
for var in dataset_type max_len_per_item user_window_size K K_eval resume_from checkpoint_dir; do
  if [[ -n "${!var:-}" ]]; then args+=("--$var" "${!var}"); fi
done

if [[ "${nproc:-1}" -gt 1 ]]; then
  exec "$PYTHON" -m accelerate.commands.launch --num_processes "$nproc" test.py "${args[@]}" "$@"
fi
exec "$PYTHON" test.py "${args[@]}" "$@"
