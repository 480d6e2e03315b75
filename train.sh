#!/usr/bin/env bash
# PL-PPO training launcher. With nothing configured: the tiny demo model on the demo data, on the CPU, building the
# demo assets first if they are missing. Every variable below can be set from the environment, e.g.
#   CUDA_VISIBLE_DEVICES=0,1 model_name_or_path=Qwen2.5-3B-Instruct dataset_path=data/Video_Games_5_2021-1-2023-12 bash train.sh
# Extra arguments are passed through to train.py (e.g. bash train.sh --use_lora --gradient_checkpointing).
# ADVANTAGE_ESTIMATOR (or advantage_estimator) = critic|rloo|grpo and SEED (or seed) pick train.py's
# --advantage_estimator and --seed (tools/seed_sweep.sh runs several of each). scoring = auto (default: shared-prefix
# scoring where it is exact for the model, printed) | naive | shared.
#
# Distribution (GPU runs go through `accelerate launch`, one process per visible GPU per node):
#   ACCELERATE_CONFIG  ddp (default) | fsdp | zero2 | zero3 | a path: configs/accelerate/<name>.yaml. fsdp and zero*
#                      always go through accelerate launch (also with one process); fsdp runs on a CPU too
#                      (device=cpu nproc_per_node=2 ACCELERATE_CONFIG=fsdp bash train.sh), zero* needs CUDA GPUs.
#   NNODES=1 NODE_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500   several nodes: run this script on every node
#                                                                  with the same values but its own NODE_RANK
#   nproc_per_node     processes per node (default: the number of visible GPUs)
# Restarts: every run passes --resume_from auto, so rerunning the same command (after a crash, a kill or a
# preemption; SIGTERM makes train.py save a checkpoint and exit) continues from the newest complete checkpoint
# and a fresh output dir starts from step 0. Nothing is ever deleted unless you pass --overwrite_output_dir.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python}
demo=0
if [[ -z "${dataset_path:-}" && -z "${model_name_or_path:-}" ]]; then demo=1; fi

# Demo defaults (tiny model, synthetic data, CPU, a few minutes) vs. defaults for real runs. The demo uses
# the settings of tests/test_learning.py: lr 3e-4 with 4 PPO epochs was the steadiest in a sweep (higher
# rates peak, then fall back). Scoring (both): auto = shared-prefix scoring where it is exact for the model (the
# tiny Qwen2 and Qwen2.5: yes; it halves the demo's step time, and the README's GPU table has it ~5x faster per
# step), printed by train.py.
if [[ $demo == 1 ]]; then
  d_K=10; d_batch=32; d_lr_actor=3e-4; d_lr_critic=1e-3; d_steps=200; d_mlen=1; d_win=3; d_device=cpu
  set -- --ppo_epochs 4 --scoring_chunk_size 160 --eval_every 50 --num_valid_samples 100 "$@"
else
  # The README's starting points for a real run: lr_actor 1e-6 for a full fine-tune (every weight moves), 1e-5 for
  # LoRA adapters (they start at zero and are scaled by alpha / r), the settings of the measured H200 runs.
  d_K=20; d_batch=4; d_lr_actor=1e-6; d_lr_critic=1e-4; d_steps=-1; d_mlen=64; d_win=10; d_device=auto
  for a in "$@"; do if [[ $a == --use_lora ]]; then d_lr_actor=1e-5; fi; done
fi
dataset_path=${dataset_path:-demo/data/Video_Games_5_2021-1-2023-12}
dataset_type=${dataset_type:-other}
model_name_or_path=${model_name_or_path:-demo/tiny-qwen}
output_dir=${output_dir:-outputs/ppo_$(basename "$model_name_or_path")_$(basename "$dataset_path")}
max_len_per_item=${max_len_per_item:-$d_mlen}
user_window_size=${user_window_size:-$d_win}
print_every=${print_every:-50}
save_every=${save_every:-100}
token_log_path=${token_log_path:-$output_dir/token_lengths.jsonl}
batch_size=${batch_size:-$d_batch}
K=${K:-$d_K}
K_eval=${K_eval:-10}
eval_K=${eval_K:-20}
advantage_estimator=${advantage_estimator:-${ADVANTAGE_ESTIMATOR:-critic}}
seed=${seed:-${SEED:-42}}
lr_actor=${lr_actor:-$d_lr_actor}
lr_critic=${lr_critic:-$d_lr_critic}
max_steps=${max_steps:-$d_steps}
device=${device:-$d_device}
scoring=${scoring:-auto}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-ddp}

config=$ACCELERATE_CONFIG
[[ -f $config ]] || config=configs/accelerate/$ACCELERATE_CONFIG.yaml
[[ -f $config ]] || { echo "train.sh: ACCELERATE_CONFIG=$ACCELERATE_CONFIG: no such config (ddp|fsdp|zero2|zero3 or a file)" >&2; exit 2; }
sharded=0
grep -Eq '^distributed_type: *(FSDP|DEEPSPEED)' "$config" && sharded=1
if [[ $device == cpu ]] && grep -Eq '^distributed_type: *DEEPSPEED' "$config"; then
  echo "train.sh: ACCELERATE_CONFIG=$ACCELERATE_CONFIG is DeepSpeed, which needs CUDA GPUs; on a CPU use fsdp (sharded) or ddp" >&2
  exit 2
fi

if [[ $demo == 1 ]]; then
  "$PYTHON" tools/make_demo.py --out_dir demo --skip_existing --preprocess  # seconds; nothing if present
fi

if [[ $device == cpu ]]; then
  nproc=1
elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=',' read -ra gpus <<< "$CUDA_VISIBLE_DEVICES"; nproc=${#gpus[@]}
elif command -v nvidia-smi >/dev/null 2>&1; then
  nproc=$(nvidia-smi -L | wc -l)
else
  nproc=1
fi
[[ $nproc -lt 1 ]] && nproc=1
nproc=${nproc_per_node:-$nproc}

resume=(--resume_from auto)
for a in "$@"; do
  if [[ $a == --resume_from || $a == --overwrite_output_dir ]]; then resume=(); fi
done

args=(--dataset_path "$dataset_path" --dataset_type "$dataset_type" --model_name_or_path "$model_name_or_path"
      --output_dir "$output_dir" --max_len_per_item "$max_len_per_item" --user_window_size "$user_window_size"
      --print_every "$print_every" --save_every "$save_every" --token_log_path "$token_log_path"
      --batch_size "$batch_size" --K "$K" --K_eval "$K_eval" --eval_K "$eval_K" --lr_actor "$lr_actor"
      --lr_critic "$lr_critic" --max_steps "$max_steps" --device "$device"
      --advantage_estimator "$advantage_estimator" --seed "$seed" --scoring "$scoring" "${resume[@]}")

if [[ $nproc -gt 1 || $NNODES -gt 1 || $sharded == 1 ]]; then
  exec "$PYTHON" -m accelerate.commands.launch --config_file "$config" --num_machines "$NNODES" \
    --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
    --num_processes $((nproc * NNODES)) train.py "${args[@]}" "$@"
else
  exec "$PYTHON" train.py "${args[@]}" "$@"
fi
