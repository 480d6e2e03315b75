"""trainers/sft_trainer.py's own pieces (train_sft's whole run is tests/test_sft_pipeline.py's): the SFT data file
read as a JSON list or as JSONL, refused in one line naming --data_file when it is missing, empty, not a list or
holds a bad record; and HF Trainer's log rows turned into metrics.jsonl records with the keys every trainer shares."""
from __future__ import annotations

import json

import pytest

from foundation.errors import UserInputError
from trainers.sft_trainer import load_records, metrics_record

RECORDS = [{"instruction": "Is it a match?", "input": "", "output": "Answer: Yes"},
           {"conversations": [{"from": "human", "value": "Is it a match?"}, {"from": "gpt", "value": "Answer: No"}]}]


def test_records_are_read_from_a_json_list_or_jsonl(tmp_path):
    as_list, as_lines = tmp_path / "sft.json", tmp_path / "sft.jsonl"
    as_list.write_text(json.dumps(RECORDS, indent=1))
    as_lines.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert load_records(str(as_list)) == RECORDS
    assert load_records(str(as_lines)) == RECORDS


@pytest.mark.parametrize("content, needle", [
    (None, "file not found; run sft_train/process_sft_data.py first"),
    ("[]", "no records"),
    ('{"instruction": "a", "output": "b"\n', "malformed JSONL line"),
    ("[1, 2", "invalid JSON"),
    (json.dumps([RECORDS[0], {"instruction": "a", "output": ""}]), "record 1 'output' is empty"),
    (json.dumps([{"prompt": "a"}]), "record 0 has neither alpaca"),
])
def test_bad_data_files_are_one_line_naming_the_flag(tmp_path, content, needle):
    path = tmp_path / "sft.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserInputError) as e:
        load_records(str(path))
    msg = str(e.value)
    assert msg.startswith(f"--data_file {path}") and needle in msg and "\n" not in msg


def test_hf_log_rows_become_records_with_the_shared_keys():
    rec = metrics_record(12, 0.5, 3.14159, {"loss": 0.7, "learning_rate": 2e-5, "grad_norm": 1.5})
    assert rec == {"step": 12, "epoch": 0.5, "wall_time_s": 3.142, "loss": 0.7, "lr": 2e-5, "grad_norm": 1.5}
    summary = metrics_record(20, 1.0, 9.0, {"train_runtime": 9.0, "train_loss": 0.4})  # HF's final row
    assert summary == {"step": 20, "epoch": 1.0, "wall_time_s": 9.0, "train_runtime": 9.0, "train_loss": 0.4}
