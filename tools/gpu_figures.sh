#!/usr/bin/env bash
# The README's GPU figures in one run on one CUDA GPU (~8 minutes on an H200), every stage logged to $FIG_DIR:
#   1. tests/test_gpu.py: every packing backend equals the naive path on CUDA (fp32, gradients, checkpointing)
#   2. tools/benchmark.py on the Qwen2.5-3B shape, K=20 and 100: scoring, a PPO update, reasoning generation
#   3. train.py, 20 PL-PPO steps on a random Qwen2.5-3B-shaped model (K=20, --scoring shared,
#      --gradient_checkpointing, bf16 autocast over fp32 master weights), full fine-tune and LoRA: s/step, peak
#      memory, MFU. The run is stopped (SIGKILL) after its 20th step record so no 37 GB checkpoint is written.
#   4. compare_model/train_rrec.py, a few RecPO steps on a random Qwen2.5-0.5B shape with LoRA (upstream defaults
#      except the named demo sizes): s/step, peak memory
#   5. tests/test_gpu_training.py: the shipped accelerate configs (DDP, FSDP2, LoRA) train in bf16 mixed precision
# A failed stage does not stop the next; LIMIT_<stage>=seconds bounds one stage (default STAGE_TIMEOUT=300), and
# FIG_TAR=file.tgz keeps a tarball of $FIG_DIR up to date after every stage. Scale down for a dry run on a CPU:
#   SHAPE=small RREC_SHAPE=tiny KS="5 10" PPO_STEPS=3 FIG_DIR=/tmp/fig bash tools/gpu_figures.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FIG=${FIG_DIR:-outputs/gpu_figures}
SHAPE=${SHAPE:-qwen2.5-3b}
RREC_SHAPE=${RREC_SHAPE:-qwen2.5-0.5b}
KS=${KS:-20 100}
PPO_STEPS=${PPO_STEPS:-20}
RREC_STEPS=${RREC_STEPS:-6}
WORK=${WORK_DIR:-/tmp/ourrec_gpu}
STAGE_TIMEOUT=${STAGE_TIMEOUT:-300}
ONLY=${ONLY:-assets gpu_tests ppo_full ppo_lora benchmark rrec summary gpu_training}  # stages to run, in file order
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$FIG" "$WORK"
DATA=demo/data/Video_Games_5_2021-1-2023-12

stage() {  # name, command...: run with a time limit (LIMIT_<name> or STAGE_TIMEOUT), log to $FIG/name.log
  local name=$1; shift
  case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
  local t0=$SECONDS limit_var="LIMIT_$name"
  local limit=${!limit_var:-$STAGE_TIMEOUT}
  echo "== $name: $*"
  if declare -F "$1" > /dev/null; then "$@" > "$FIG/$name.log" 2>&1; else timeout "$limit" "$@" > "$FIG/$name.log" 2>&1; fi
  echo "== $name: rc=$? in $((SECONDS - t0)) s"
  tail -n "${TAIL:-25}" "$FIG/$name.log"
  [ -z "${FIG_TAR:-}" ] || tar czf "$FIG_TAR" -C "$FIG" .  # everything so far, in one file
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  $PY -c "import torch, transformers, accelerate, peft; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__)"; } | tee "$FIG/env.txt"

# demo data + random-weight models of the published shapes (the prompts use the demo tokenizer's ids)
stage assets bash -c "$PY tools/make_demo.py --out_dir demo --skip_existing --preprocess && \
  { [ $SHAPE = small ] || $PY tools/make_demo.py --out_dir $WORK --skip_existing --model_shape $SHAPE; } && \
  { [ $RREC_SHAPE = tiny ] || $PY tools/make_demo.py --out_dir $WORK --skip_existing --model_shape $RREC_SHAPE; }"
BIG=$WORK/$SHAPE-random
[ "$SHAPE" = small ] && BIG=demo/tiny-qwen
RBIG=$WORK/$RREC_SHAPE-random
[ "$RREC_SHAPE" = tiny ] && RBIG=demo/tiny-qwen

stage gpu_tests $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py ${GPU_TEST_FILTER:+-k "$GPU_TEST_FILTER"}

run_ppo() {  # name, extra train.py flags: time PPO_STEPS steps, then stop the run without a checkpoint
  local name=$1; shift
  local out=$WORK/ppo_$name
  rm -rf "$out"
  $PY train.py --model_name_or_path "$BIG" --dataset_path "$DATA" --dataset_type other --K 20 --K_eval 10 \
    --batch_size 4 --rankings_per_user 4 --ppo_epochs 2 --scoring shared --gradient_checkpointing \
    --max_len_per_item 64 --user_window_size 10 --lr_actor 1e-6 --max_steps 100000 --save_every 100000 \
    --print_every 0 --eval_every 0 --no_plot --output_dir "$out" "$@" &
  local pid=$! n=0 t0=$SECONDS
  local limit_var="LIMIT_ppo_$name"
  while kill -0 $pid 2>/dev/null && [ $((SECONDS - t0)) -lt "${!limit_var:-$STAGE_TIMEOUT}" ]; do
    n=$( (wc -l < "$out/metrics.jsonl") 2>/dev/null || echo 0)
    [ "$n" -ge "$PPO_STEPS" ] && break
    sleep 1
  done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  cp "$out/metrics.jsonl" "$FIG/ppo_${name}_metrics.jsonl" 2>/dev/null
  echo "stopped after $n step records"
}
stage ppo_full run_ppo full
stage ppo_lora run_ppo lora --use_lora --lora_r 16 --lora_alpha 32 --lr_actor 1e-5

BENCH_SHAPE=$SHAPE
stage benchmark $PY tools/benchmark.py --shape "$BENCH_SHAPE" --Ks $KS --mode all --gradient_checkpointing \
  --users 4 --repeats "${BENCH_REPEATS:-2}" --warmup 1 --naive_max_K 20 --gen_tokens "${GEN_TOKENS:-32}" \
  ${BENCH_BACKENDS:+--backends $BENCH_BACKENDS} --quiet --json_out "$FIG/benchmark.json"

stage rrec $PY compare_model/train_rrec.py --model_name_or_path "$RBIG" --dataset_dir "$DATA" \
  --output_dir "$WORK/rrec" --overwrite_output_dir --max_steps "$RREC_STEPS" --max_new_tokens 128 \
  --num_eval_samples 16 --eval_steps 100000 --no-eval_on_start --gradient_checkpointing --no-progress
cp "$WORK/rrec/metrics.jsonl" "$FIG/rrec_metrics.jsonl" 2>/dev/null

# one summary: s/step (median over steps 2..), tokens/s, peak memory, MFU as train.py logs it (models/flops.py)
stage summary $PY - "$FIG" <<'EOF'
import json, statistics, sys
from pathlib import Path
fig = Path(sys.argv[1])
for run in ("full", "lora"):
    f = fig / f"ppo_{run}_metrics.jsonl"
    if not f.exists():
        print(run, "no metrics"); continue
    recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip() and "step_seconds" in x]
    steady = recs[1:] or recs
    s = statistics.median(r["step_seconds"] for r in steady)
    tok = statistics.median(r["tokens_per_s"] for r in steady)
    mem = max(r.get("peak_mem_gb", 0.0) for r in recs)
    line = (f"PPO {run}: {len(recs)} steps, {s:.2f} s/step (median of steps 2..), {tok:,.0f} tokens/s, "
            f"peak {mem:.1f} GB")
    for key, fmt in (("tflops_per_s", "{:.0f} model TFLOP/s"), ("mfu", "MFU {:.1%}")):
        if all(key in r for r in steady):  # metrics of a train.py that logs them
            line += ", " + fmt.format(statistics.median(r[key] for r in steady))
    print(line)
f = fig / "rrec_metrics.jsonl"
if f.exists():
    recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip() and "step_seconds" in x]
    if recs:
        s = statistics.median(r["step_seconds"] for r in recs[1:] or recs)
        mem = max(r.get("peak_mem_gb", 0.0) for r in recs)
        gen = statistics.mean(r.get("generated_tokens", 0) for r in recs)
        print(f"RRec (train_rrec.py, LoRA): {len(recs)} steps, {s:.2f} s/step (median of steps 2..), "
              f"peak {mem:.1f} GB, {gen:.0f} generated tokens per rollout on average")
EOF

TAIL=15 stage gpu_training $PY -m pytest -q -x -p no:cacheprovider tests/test_gpu_training.py
echo "figures in $FIG"
