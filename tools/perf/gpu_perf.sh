#!/usr/bin/env bash
# The GPU-efficiency figures of the PL-PPO step in one device call of at most 8 minutes (one CUDA GPU), every stage
# under its own time limit (the limits sum to 475 s), every result a JSON file in OUT:
#   env        the card, torch/transformers versions, bf16 GEMM TFLOP/s and copy bandwidth   -> env.json
#   assets     demo data + a random Qwen2.5-3B-shaped model (bf16 safetensors) in WORK
#   step_bs4   train.py's step as shipped (K=20, 4 users, 2 PPO epochs, --scoring shared, checkpointing, fp32 master
#              weights under bf16 autocast, fused AdamW: --adamw_implementation auto on CUDA): train.py's
#              per-phase times (time_*_s), GPU busy fraction, MFU/HFU                    -> step_bs4.json
#   step_bs16_fused  the same with 16 users per step (fused AdamW named explicitly)      -> step_bs16_fused.json
#   decode     reasoning generation: shared-prefix decoder eager vs CUDA graph vs HF generate -> decode_*.json
#   flex       flex_attention compile (first call) and timing beside prefix_split, score + train -> flex.json
#   summary    the headline figures of every JSON                                         -> summary.json
# A failed or timed-out stage does not stop the next (the JSONs written so far stay); logs go to OUT/logs.tgz.
#
#   bash tools/perf/gpu_perf.sh [--out DIR] [--smoke]       (OUT: --out, else $OUT, else /tmp/perf_out)
#   ONLY="decode flex" bash tools/perf/gpu_perf.sh           (a subset, e.g. on a still-warm machine: assets in WORK)
# --smoke runs every stage on tiny shapes in seconds (CPU is fine: graph and flex rows are then absent).
# The image may lack `datasets`: wheels carried in .whl/ are installed into /tmp/site (no network needed).
set -u
cd "$(dirname "$0")/../.."
SMOKE=0
OUT=${OUT:-/tmp/perf_out}
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "gpu_perf.sh: unknown argument $1 (use --out DIR, --smoke)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/perf_work}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OUT
mkdir -p "$OUT" "$WORK" "$OUT/logs"
LIMITS="env=15 assets=120 step_bs4=95 step_bs16_fused=110 decode=65 flex=70"  # seconds; sum <= 480
total=0; for kv in $LIMITS; do total=$((total + ${kv#*=})); done
[ $total -le 480 ] || { echo "gpu_perf.sh: stage limits sum to $total s > 480 s" >&2; exit 2; }
echo "stage limits: $LIMITS (total $total s)"

stage() {  # name command...: run under the stage's limit (ONLY selects stages), log to OUT/logs/name.log
  local name=$1 lim t0=$SECONDS; shift
  case " ${ONLY:-env assets step_bs4 step_bs16_fused decode flex summary} " in *" $name "*) ;; *) return 0 ;; esac
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
else
  MODEL=$WORK/qwen2.5-3b-random
  SHAPE_FLAGS="--model_shape qwen2.5-3b"
  STEP="--K 20 --warmup 2 --steps 3"; BS4=4; BS16=16
  DECODE="--shape qwen2.5-3b --users 4 --K 20 --tokens 32 --steps 20 --repeats 2"
  FLEX="--shape qwen2.5-3b --Ks 20 --mode both --users 4 --repeats 2 --warmup 1 --naive_max_K 1 \
    --gradient_checkpointing --backends flex_attention prefix_split"
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
stage assets $PY tools/make_demo.py --out_dir "$WORK" --skip_existing --preprocess $SHAPE_FLAGS
stage step_bs4 $PY tools/perf/step_profile.py --model "$MODEL" --data "$DATA" --batch_size $BS4 $STEP --tag bs4
stage step_bs16_fused $PY tools/perf/step_profile.py --model "$MODEL" --data "$DATA" --batch_size $BS16 $STEP \
  --fused_adamw --tag bs16_fused
stage decode $PY tools/perf/decode_probe.py $DECODE
stage flex $PY tools/benchmark.py $FLEX --quiet --json_out "$OUT/flex.json"
stage summary $PY tools/perf/summarize.py "$OUT"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
echo "results in $OUT"
