"""foundation/files.py: JSONL rows appended whole, a killed writer's partial last line ignored by readers and cut
before the next append, a malformed line named by file and line, atomic JSON replaces, answer files validated."""
from __future__ import annotations

import json

import pytest

from foundation.errors import UserInputError
from foundation.files import (
    append_jsonl,
    atomic_write_json,
    iter_jsonl,
    read_answer_rows,
    read_json,
    read_jsonl,
    repair_jsonl_tail,
)


def test_appends_survive_a_partial_last_line(tmp_path):
    log = tmp_path / "sub" / "rows.jsonl"
    append_jsonl(log, [{"step": 1}, {"step": 2, "text": "é\n"}])
    append_jsonl(log, [{"step": 3}])
    assert read_jsonl(log) == [{"step": 1}, {"step": 2, "text": "é\n"}, {"step": 3}]
    with open(log, "a") as f:
        f.write('{"step": 4, "te')  # a kill mid-write
    assert [r["step"] for r in iter_jsonl(log)] == [1, 2, 3]
    with pytest.raises(UserInputError, match=r"rows.jsonl:4: malformed JSONL line"):
        read_jsonl(log, tolerate_partial_tail=False)
    repair_jsonl_tail(log)
    append_jsonl(log, [{"step": 4}])
    assert [r["step"] for r in read_jsonl(log)] == [1, 2, 3, 4]
    assert log.read_text().endswith('{"step": 4}\n')


def test_a_malformed_line_is_named_unless_skipped(tmp_path, capsys):
    log = tmp_path / "rows.jsonl"
    log.write_text('{"a": 1}\n[1, 2]\n\n{"a": 3}\n')
    with pytest.raises(UserInputError) as e:
        read_jsonl(log, flag="--input_file")
    assert str(e.value).startswith(f"--input_file {log}:2: malformed JSONL line (not a JSON object)")
    assert read_jsonl(log, skip_bad_lines=True) == [{"a": 1}, {"a": 3}]
    assert f"{log}:2: skipping" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="file not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_atomic_json_replaces_the_whole_file(tmp_path):
    p = tmp_path / "state.json"
    atomic_write_json(p, {"step": 1, "nested": [1, {"x": "ü"}]})
    atomic_write_json(p, {"step": 2})
    assert read_json(p) == {"step": 2} and json.loads(p.read_text()) == {"step": 2}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["state.json"]  # no temp file left beside it


def test_answer_rows_keep_a_killed_runs_partial_row_apart(tmp_path):
    out = tmp_path / "answers.jsonl"
    assert read_answer_rows(out) == ([], False)
    out.write_text('{"id": 1, "content": "a"}\n{"id": 2, "error": "timeout"}\n{"id": 3, "cont')
    assert read_answer_rows(out) == ([{"id": 1, "content": "a"}, {"id": 2, "error": "timeout"}], True)
    out.write_text('{"id": 1, "content": "a"}\n{"id": 2, "content": "b"}')  # complete, only lacks its newline
    assert read_answer_rows(out) == ([{"id": 1, "content": "a"}, {"id": 2, "content": "b"}], False)
    out.write_text('{"id": 1, "content": "a"}\n{"user": 5}\n')
    with pytest.raises(UserInputError, match=r"answers.jsonl:2: not a row of an answer file"):
        read_answer_rows(out)
