"""models/local_inference.py: batched greedy generation equals one prompt at a time; a finished prompt file is not
redone; an id range answers only its ids. (Its tools, run_qwen_sft*.py, are tested end to end in
tests/test_local_inference.py.)"""
from __future__ import annotations

from tests.test_local_inference import _prompts, tiny  # noqa: F401 (tiny: module fixture)


def test_batched_equals_single_greedy(tiny, tmp_path):  # noqa: F811 (fixture)
    """Left padding must not change greedy outputs: batch of 4 == one prompt at a time (fp32)."""
    from models.local_inference import LocalGenerator, run_prompt_file
    from foundation.files import read_jsonl

    gen = LocalGenerator(str(tiny), device="cpu", dtype="fp32")
    inp = _prompts(tmp_path / "p.jsonl", 6)
    run_prompt_file(str(tiny), str(inp), str(tmp_path / "a.jsonl"), batch_size=4, max_new_tokens=6,
                    generator=gen, show_progress=False)
    run_prompt_file(str(tiny), str(inp), str(tmp_path / "b.jsonl"), batch_size=1, max_new_tokens=6,
                    generator=gen, show_progress=False)
    a, b = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    assert [r["id"] for r in a] == list(range(6))
    assert [r["response"] for r in a] == [r["response"] for r in b]
    assert all(r["label"] == ("Yes" if r["id"] % 3 else "No") for r in a)
    # a finished file: a rerun writes nothing; an id range only answers its ids
    s = run_prompt_file(str(tiny), str(inp), str(tmp_path / "a.jsonl"), generator=gen, show_progress=False)
    assert s == {"total": 6, "skipped_done": 6, "written": 0}
    s = run_prompt_file(str(tiny), str(inp), str(tmp_path / "c.jsonl"), prompt_id_min=2, prompt_id_max=3,
                        max_new_tokens=2, generator=gen, show_progress=False)
    assert s["written"] == 2 and [r["id"] for r in read_jsonl(tmp_path / "c.jsonl")] == [2, 3]
