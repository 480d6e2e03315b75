"""Baseline: ask an OpenAI-compatible chat API (DeepSeek by default) to rank each example's K candidates.

    DEEPSEEK_API_KEY=sk-... python compare_model/deepseek.py --dataset_dir data/Video_Games_5_2021-1-2023-12 \
        --test_samples 200 --K 20 --output_dir outputs/deepseek --test_only
    # the exact candidates test.py ranked:
    python compare_model/deepseek.py --dataset_dir ... --candidate_mode json \
        --candidate_json_path outputs/test/results.json --output_dir outputs/deepseek_json

The prompt (prompters/api_prompter.py) shows the user's last --user_window_size history items with ratings and
the candidates numbered 1..K; the answer is parsed robustly (prompters/answer_parsing.py). Partial answers rank
the missing candidates after the named ones, unparseable answers and requests that failed after all retries
rank the target last; all are counted in the metrics (parse_ok / parse_partial / parse_unparseable /
api_errors), none stops the run. A split in which every request failed is still saved, but the run then exits 1
with one line (such a table ranks every target last: it is not a result).

Candidates: --candidate_mode random samples them as test.py does (trainers.evaluation.protocol.build_eval_items
with --K and --seed: the same seed gives the same candidates as test.py); --candidate_mode json (the default
when --candidate_json_path is given) ranks exactly the candidates of --candidate_json_path (a result JSON from
test.py or another baseline), in its order.

Outputs in --output_dir: responses.jsonl (raw answers, one row per interaction id, written as they arrive) and
results.json (the result JSON of docs/evaluation.md, with the random/popularity/content-tfidf sanity rows; rebuilt
from responses.jsonl on every run). Rerunning with the same --output_dir resumes: answered ids are not asked again
(failed ones are, unless --no_retry_errors); an answer saved for another prompt or other candidates is refused
(--redo_changed asks it again). A key the API rejects (401/403) stops the run with one line, recording nothing.

--test_only: the seed script evaluated a validation pass before the test pass; this one does too by default
(--test_samples examples of the valid split into responses_valid.jsonl / results_valid.json), and
--test_only skips it (and the API cost). --candidate_mode json always evaluates only the reference's split.

The key comes from --api_key or DEEPSEEK_API_KEY and is never written to any file or log.
"""
from __future__ import annotations

from foundation.config import build_parser as options_parser
from foundation.config import config_from_args
from trainers.evaluation.options import DeepseekOptions


def build_parser():
    """The flags: one per DeepseekOptions field (trainers/evaluation/options.py)."""
    return options_parser(DeepseekOptions, description=__doc__)


def main(argv: list[str] | None = None) -> None:
    opts = config_from_args(DeepseekOptions, build_parser().parse_args(argv), validate=False)
    with opts.script_errors():
        opts.validate()
        from trainers.evaluation.api import run_api_evaluation

        run_api_evaluation(opts, "compare_model/deepseek.py", with_valid_pass=not opts.test_only)


if __name__ == "__main__":
    main()
