#!/usr/bin/env bash
# The project's one GPU device script: the GPU figures of docs/performance.md and the README, in sets of stages that
# each fit one device call of at most 8 minutes (one CUDA GPU), every stage under its own time limit (a set's limits
# sum to <= 480 s), every result a JSON file in OUT.
#
# --set step (default): the GPU efficiency of the PL-PPO step
#   env        the card, torch/transformers versions, bf16 GEMM TFLOP/s and copy bandwidth   -> env.json
#   assets     demo data + a random Qwen2.5-3B-shaped model (bf16 safetensors) in WORK
#   step_bs4   train.py's step as shipped (K=20, 4 users, 2 PPO epochs, --scoring shared, checkpointing, fp32 master
#              weights under bf16 autocast, fused AdamW: --adamw_implementation auto on CUDA): train.py's
#              per-phase times (time_*_s), GPU busy fraction, MFU/HFU, peak memory        -> step_bs4.json
#   step_bs16_fused  the same with 16 users per step (fused AdamW named explicitly)      -> step_bs16_fused.json
#   decode     reasoning generation: shared-prefix decoder eager vs CUDA graph vs HF generate -> decode_*.json
#   flex       flex_attention compile (first call) and timing beside prefix_split, score + train -> flex.json
#   summary    the headline figures of every JSON                                         -> summary.json
# --set figures: the rest of the README's GPU figures
#   env, assets (also a random Qwen2.5-0.5B-shaped model for RRec)
#   step_lora  the step_bs4 step with LoRA r=16, alpha 32, lr 1e-5 (the README's LoRA row) -> step_lora.json
#   benchmark  tools/benchmark.py on the Qwen2.5-3B shape, K=20 and 100: scoring, a PPO update, generation, naive vs
#              prefix_split vs sdpa (docs/performance.md's component table)             -> benchmark.json
#   rrec       compare_model/train_rrec.py, a few RecPO steps with LoRA on the 0.5B shape: s/step, peak memory
#                                                                                         -> rrec_metrics.jsonl
#   summary
# --set tests: the GPU test files (pytest's last lines in the log; rc in the stage line)
#   env, gpu_tests (tests/test_gpu.py: every packing backend equals the naive path on CUDA), gpu_training
#   (tests/test_gpu_training.py: the shipped accelerate configs train in bf16 mixed precision)
# A failed or timed-out stage does not stop the next (the JSONs written so far stay); logs go to OUT/logs.tgz.
#
#   bash tools/perf/gpu_perf.sh [--set step|figures|tests] [--out DIR] [--smoke]   (OUT: --out, else $OUT, else
#                                                                                    /tmp/perf_out)
#   ONLY="decode flex" bash tools/perf/gpu_perf.sh    (a subset of the set, e.g. on a still-warm machine: assets
#                                                     in WORK)
# --smoke runs every stage on tiny shapes in seconds (CPU is fine: graph and flex rows are then absent, the GPU test
# files skip).
# The image may lack `datasets`: wheels carried in .whl/ are installed into /tmp/site (no network needed).
set -u
cd "$(dirname "$0")/../.."
SMOKE=0
SET=step
OUT=${OUT:-/tmp/perf_out}
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1 ;;
    --out) OUT=$2; shift ;;
    --set) SET=${2:-}; shift ;;
    *) echo "gpu_perf.sh: unknown argument $1 (use --set step|figures|tests, --out DIR, --smoke)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/perf_work}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT
mkdir -p "$OUT" "$WORK" "$OUT/logs"
case $SET in  # the stages of each set, in order, and their limits in seconds (sum <= 480; summary has none)
  step) STAGES="env assets step_bs4 step_bs16_fused decode flex summary"
        LIMITS="env=15 assets=120 step_bs4=95 step_bs16_fused=110 decode=65 flex=70" ;;
  figures) STAGES="env assets step_lora benchmark rrec summary"
           LIMITS="env=15 assets=150 step_lora=95 benchmark=160 rrec=60" ;;
  tests) STAGES="env gpu_tests gpu_training"
         LIMITS="env=15 gpu_tests=200 gpu_training=260" ;;
  *) echo "gpu_perf.sh: --set ${SET:-(empty)}: unknown set (step, figures or tests)" >&2; exit 2 ;;
esac
total=0; for kv in $LIMITS; do total=$((total + ${kv#*=})); done
[ $total -le 480 ] || { echo "gpu_perf.sh: stage limits sum to $total s > 480 s" >&2; exit 2; }
echo "set $SET: stage limits: $LIMITS (total $total s)"

stage() {  # name command...: run under the stage's limit (ONLY selects stages), log to OUT/logs/name.log
  local name=$1 lim t0=$SECONDS; shift
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac                     # not in this set
  case " ${ONLY:-$STAGES} " in *" $name "*) ;; *) return 0 ;; esac
  lim=$(for kv in $LIMITS; do [ "${kv%%=*}" = "$name" ] && echo "${kv#*=}"; done)
  echo "== $name (limit ${lim:-none} s)"
  if [ -n "$lim" ]; then timeout "$lim" "$@" > "$OUT/logs/$name.log" 2>&1; else "$@" > "$OUT/logs/$name.log" 2>&1; fi
  echo "== $name: rc=$? in $((SECONDS - t0)) s"
  grep -v -i "warn" "$OUT/logs/$name.log" | tail -n 2
}

$PY -c "import datasets" 2>/dev/null || { [ -d .whl ] && $PY -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"; }

DATA=$WORK/data/Video_Games_5_2021-1-2023-12
if [ $SMOKE = 1 ]; then
  MODEL=$WORK/tiny-qwen
  SHAPE_FLAGS=""
  STEP="--K 5 --warmup 1 --steps 1"; BS4=2; BS16=4
  DECODE="--shape tiny --users 2 --K 5 --tokens 8 --history_items 3 --tokens_per_item 8 --steps 4 --repeats 1"
  FLEX="--quick --mode score --backends prefix_split"
  RMODEL=$MODEL; RREC="--max_steps 2 --max_new_tokens 8 --num_eval_samples 4"
  BENCH="--quick --mode both --backends prefix_split"
else
  MODEL=$WORK/qwen2.5-3b-random
  SHAPE_FLAGS="--model_shape qwen2.5-3b"
  STEP="--K 20 --warmup 2 --steps 3"; BS4=4; BS16=16
  DECODE="--shape qwen2.5-3b --users 4 --K 20 --tokens 32 --steps 20 --repeats 2"
  FLEX="--shape qwen2.5-3b --Ks 20 --mode both --users 4 --repeats 2 --warmup 1 --naive_max_K 1 \
    --gradient_checkpointing --backends flex_attention prefix_split"
  RMODEL=$WORK/qwen2.5-0.5b-random; RREC="--max_steps 6 --max_new_tokens 128 --num_eval_samples 16"
  BENCH="--shape qwen2.5-3b --Ks 20 100 --mode all --gradient_checkpointing --users 4 --repeats 2 --warmup 1 \
    --naive_max_K 20 --gen_tokens 32 --backends prefix_split sdpa"
fi

stage env $PY - <<'EOF'
import json, os, time
import torch, transformers
res = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.cuda.is_available()}
if torch.cuda.is_available():
    res["device"] = torch.cuda.get_device_name()
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
    for _ in range(3): a @ b
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): a @ b
    torch.cuda.synchronize(); res["bf16_gemm_tflops"] = 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12
    x = torch.empty(2**28, device="cuda"); y = torch.empty_like(x); y.copy_(x); torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10): y.copy_(x)
    torch.cuda.synchronize(); res["copy_tb_s"] = 10 * 2 * x.numel() * 4 / (time.perf_counter() - t) / 1e12
open(os.path.join(os.environ["OUT"], "env.json"), "w").write(json.dumps(res, indent=1))
print(json.dumps(res))
EOF
if [ $SET = figures ] && [ $SMOKE = 0 ]; then  # RRec's stage runs a 0.5B shape (upstream trains 2-3B with LoRA)
  stage assets bash -c "$PY tools/make_demo.py --out_dir '$WORK' --skip_existing --preprocess $SHAPE_FLAGS && \
    $PY tools/make_demo.py --out_dir '$WORK' --skip_existing --model_shape qwen2.5-0.5b"
else
  stage assets $PY tools/make_demo.py --out_dir "$WORK" --skip_existing --preprocess $SHAPE_FLAGS
fi
stage step_bs4 $PY tools/perf/step_profile.py --model "$MODEL" --data "$DATA" --batch_size $BS4 $STEP --tag bs4
stage step_bs16_fused $PY tools/perf/step_profile.py --model "$MODEL" --data "$DATA" --batch_size $BS16 $STEP \
  --fused_adamw --tag bs16_fused
stage decode $PY tools/perf/decode_probe.py $DECODE
stage flex $PY tools/benchmark.py $FLEX --quiet --json_out "$OUT/flex.json"
# --set figures
stage step_lora $PY tools/perf/step_profile.py --model "$MODEL" --data "$DATA" --batch_size $BS4 $STEP --tag lora \
  -- --use_lora --lora_r 16 --lora_alpha 32 --lr_actor 1e-5
stage benchmark $PY tools/benchmark.py $BENCH --quiet --json_out "$OUT/benchmark.json"
stage rrec $PY compare_model/train_rrec.py --model_name_or_path "$RMODEL" --dataset_dir "$DATA" \
  --output_dir "$WORK/rrec" --overwrite_output_dir $RREC --eval_steps 100000 --no-eval_on_start \
  --gradient_checkpointing --no-progress
case " $STAGES " in
  *" rrec "*) [ -f "$WORK/rrec/metrics.jsonl" ] && cp "$WORK/rrec/metrics.jsonl" "$OUT/rrec_metrics.jsonl" ;;
esac
# --set tests
stage gpu_tests $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py
stage gpu_training $PY -m pytest -q -x -p no:cacheprovider tests/test_gpu_training.py
stage summary $PY tools/perf/summarize.py "$OUT" --set "$SET"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
echo "results in $OUT"
