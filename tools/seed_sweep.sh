#!/usr/bin/env bash
# Train the judge once per (advantage estimator, training seed), evaluate every final model on the valid and the
# test split (test.py: the same K=20 candidates for every run), and print one table per split with the mean +- std
# over seeds and each seed's paired SE (tools/compare_results.py). Choose settings on the valid table only.
#
#   bash tools/seed_sweep.sh                                   # the demo: critic, rloo, grpo x seeds 1 2 3
#   ESTIMATORS="critic grpo" SEEDS="1 2" OUT=outputs/sweep bash tools/seed_sweep.sh --max_steps 100
#
# Every train.sh variable (dataset_path, model_name_or_path, max_steps, ...) is honoured; extra arguments go to
# train.py. Reruns continue: train.sh resumes each run from its newest checkpoint, test.py keeps finished samples.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
ESTIMATORS=${ESTIMATORS:-critic rloo grpo}
SEEDS=${SEEDS:-1 2 3}
OUT=${OUT:-outputs/seed_sweep}
NUM_SAMPLES=${NUM_SAMPLES:-0}  # examples per split; 0 = all
DATA=${dataset_path:-demo/data/Video_Games_5_2021-1-2023-12}
BASE=${model_name_or_path:-demo/tiny-qwen}
PAIRED=${PAIRED:-}  # a row name (an estimator) to print margins for

for est in $ESTIMATORS; do
  for seed in $SEEDS; do
    run=$OUT/${est}_seed$seed
    echo "== train: --advantage_estimator $est --seed $seed -> $run/train"
    output_dir=$run/train ADVANTAGE_ESTIMATOR=$est SEED=$seed bash train.sh "$@"
    for split in valid test; do
      "$PYTHON" test.py --model_name_or_path "$BASE" --resume_from "$run/train/final" --dataset_path "$DATA" \
        --split "$split" --num_samples "$NUM_SAMPLES" --K 20 --K_eval 10 --scoring auto --no_progress \
        --print_every_text 0 --output_dir "$run/test_$split" > "$run/test_$split.log"
    done
  done
done

for split in valid test; do
  groups=()
  for est in $ESTIMATORS; do
    files=()
    for seed in $SEEDS; do files+=("$OUT/${est}_seed$seed/test_$split/results.json"); done
    groups+=("$est=$(IFS=,; echo "${files[*]}")")
  done
  echo "== $split split: NDCG/HR of the final models (mean over seeds), K=20 candidates"
  "$PYTHON" tools/compare_results.py "${groups[@]}" ${PAIRED:+--paired "$PAIRED"}
done
