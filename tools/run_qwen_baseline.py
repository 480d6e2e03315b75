"""Answer a prompt JSONL with the base (not fine-tuned) instruct model: the zero-shot baseline.

Same flags as tools/run_qwen_sft.py (models/local_inference.py does the work); only the defaults differ.
Resumable: rerunning with the same --output_file skips ids already answered.
Score the output with tools/analyze_accuracy_for_run_qwen_sft.py.

python tools/run_qwen_baseline.py --model_path models_hub/Qwen2.5-3B-Instruct \
    --input_file sft_train/prompts_test.jsonl --output_file outputs/baseline_responses.jsonl --batch_size 16
"""
from __future__ import annotations

from models.local_inference import inference_cli


def main(argv: list[str] | None = None) -> None:
    inference_cli(argv, __doc__, model_path="Qwen2.5-3B-Instruct", input_file="sft_train/prompts_test.jsonl",
                  output_file="outputs/baseline_responses.jsonl", max_new_tokens=256)


if __name__ == "__main__":
    main()
