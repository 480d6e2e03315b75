"""Answer a prompt JSONL with an SFT'd model (sft_train/train_sft.py or LLaMA-Factory output).

Same flags as tools/run_qwen_baseline.py (models/local_inference.py does the work); only the defaults differ.
Resumable: rerunning with the same --output_file skips ids already answered; --prompt_id_min/--prompt_id_max
select an id range (e.g. to split work across GPUs: one process per range and output file).
Score the output with tools/analyze_accuracy_for_run_qwen_sft.py.

python tools/run_qwen_sft.py --model_path outputs/sft --input_file sft_train/prompts_test.jsonl \
    --output_file outputs/sft_responses.jsonl --device cuda:0 --batch_size 16 --max_new_tokens 256
"""
from __future__ import annotations

from models.local_inference import inference_cli


def main(argv: list[str] | None = None) -> None:
    inference_cli(argv, __doc__, model_path="outputs/sft", input_file="sft_train/prompts_test.jsonl",
                  output_file="outputs/sft_responses.jsonl", max_new_tokens=256)


if __name__ == "__main__":
    main()
