"""Issue 7, faults: real SIGKILLs mid-run, then a rerun on the same output, must give the same result as an
uninterrupted run (no duplicated or missing samples); checkpoints cut short are never picked by 'last';
result files written under a kill always load.

Covered elsewhere, not repeated here: train.py kill/resume determinism (tests/test_train_resume.py) and the
compare_model/deepseek.py kill/resume against the slow loopback server
(tests/test_deepseek.py::test_killed_run_resumes_to_the_same_result).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
K = 5


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DEEPSEEK_API_KEY"}
    env.update({"PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    return env


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=_env(), timeout=300)


def _kill_after(argv: list[str], partial: Path, n_lines: int, timeout: float = 240) -> int:
    """Start the script, SIGKILL it once `partial` holds n_lines finished samples; return the lines seen."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if partial.exists() and partial.read_bytes().count(b"\n") >= n_lines:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished (or died) before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return partial.read_bytes().count(b"\n")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from tests.fixtures.assets import build_tiny_qwen
    from fixtures.synthetic_amazon import write_amazon_raw

    root = tmp_path_factory.mktemp("faults")
    model = build_tiny_qwen(root / "tiny")
    write_amazon_raw(root / "raw", category="Video_Games", n_users=120, n_items=60, n_subcats=3, seed=0)
    r = _run(["preprocess.py", "--category", "Video_Games", "--K", "5", "--st_year", "2021", "--st_month", "1",
              "--ed_year", "2023", "--ed_month", "12", "--raw_dir", str(root / "raw"), "--data_root_dir",
              str(root / "data"), "--min_items", "10"])
    assert r.returncode == 0, r.stderr[-2000:]
    return model, root / "data" / "Video_Games_5_2021-1-2023-12"


def _assert_same_samples(got: list[dict], ref: list[dict]) -> None:
    ids = [s["interaction_id"] for s in got]
    assert len(ids) == len(set(ids)), "duplicated samples"
    assert ids == [s["interaction_id"] for s in ref], "missing or reordered samples"
    for g, r in zip(got, ref):
        assert g["candidates"] == r["candidates"] and g["ranking"] == r["ranking"]
        assert g["target_rank"] == r["target_rank"]
        np.testing.assert_allclose(g["scores"], r["scores"], rtol=0, atol=1e-5)


def _kill_then_rerun(argv, tmp_path, n: int) -> tuple[dict, dict, subprocess.CompletedProcess]:
    """An uninterrupted run, and a run SIGKILLed after 2 samples then rerun on the same output:
    returns (reference JSON, resumed JSON, the rerun's process) after checking nothing was lost."""
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    r = _run(argv(ref_out))
    assert r.returncode == 0, r.stderr[-3000:]
    ref = json.loads((ref_out / "results.json").read_text())

    seen = _kill_after(argv(out), out / "results.json.partial.jsonl", 2)
    assert seen < n
    r = _run(argv(out))
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((out / "results.json").read_text())
    _assert_same_samples(got["samples"], ref["samples"])
    assert got["metrics"] == ref["metrics"]
    assert not (out / "results.json.partial.jsonl").exists()
    return ref, got, r


# ------------------------------------------------------------------------------------------- test.py
def test_test_py_sigkill_then_rerun_equals_uninterrupted(assets, tmp_path):
    model, data = assets
    n = 8

    def argv(out):
        return ["test.py", "--model_name_or_path", str(model), "--dataset_path", str(data), "--dataset_type", "other",
                "--K", str(K), "--K_eval", "3", "--num_samples", str(n), "--batch_size", "1", "--device", "cpu",
                "--dtype", "fp32", "--output_dir", str(out), "--no_progress", "--max_len_per_item", "8",
                "--user_window_size", "3", "--print_every_text", "0"]

    ref, got, rerun = _kill_then_rerun(argv, tmp_path, n)
    assert "resuming" in rerun.stdout
    assert got["sanity_rows"] == ref["sanity_rows"]
    # (a rerun with other settings is refused: tests/test_bad_input.py, test-existing-other-settings)


# ------------------------------------------------------------------------------------ compare_model/rrec.py
def test_rrec_py_sigkill_then_rerun_equals_uninterrupted(assets, tmp_path):
    model, data = assets
    n = 6

    def argv(out):
        return ["compare_model/rrec.py", "--checkpoint_path", str(model), "--dataset_dir", str(data), "--K", str(K),
                "--K_eval", "3", "--num_samples", str(n), "--batch_size", "1", "--device", "cpu", "--dtype", "fp32",
                "--output_dir", str(out), "--no_progress", "--max_new_tokens", "4"]

    ref, got, _ = _kill_then_rerun(argv, tmp_path, n)
    assert [s.get("outputs") for s in got["samples"]] == [s.get("outputs") for s in ref["samples"]]


# ------------------------------------------------------------------- checkpoints cut short, 'last', rotation
def _save_ckpt(judge, d: Path, complete: bool) -> None:
    judge.save(d)
    (d / "trainer_state.json").write_text(json.dumps({"step": int(d.name.split("-")[1])}))
    (d / "args.json").write_text("{}")  # what our trainers write beside trainer_state.json (HF's checkpoints do not)
    if complete:
        (d / "COMPLETE").write_text(d.name)


def test_last_skips_truncated_checkpoints(assets, tmp_path, capsys):
    import test as test_script
    from models.qwen_models import load_judge_from_checkpoint
    from foundation.checkpoints import resolve_checkpoint, rotate_checkpoints

    model, data = assets
    judge = load_judge_from_checkpoint(str(model), device="cpu", dtype="fp32", attn_implementation="sdpa")
    run = tmp_path / "run"
    _save_ckpt(judge, run / "checkpoint-2", complete=True)
    _save_ckpt(judge, run / "checkpoint-4", complete=True)
    _save_ckpt(judge, run / "checkpoint-6", complete=False)  # killed before the marker
    (run / ".tmp-checkpoint-8").mkdir()  # killed while assembling
    (run / ".tmp-checkpoint-8" / "config.json").write_text("{")

    assert resolve_checkpoint("last", run) == run / "checkpoint-4"
    assert resolve_checkpoint(str(run), run) == run / "checkpoint-4"  # a run directory: its newest complete one
    data_out = test_script.main(["--model_name_or_path", str(model), "--dataset_path", str(data), "--K", str(K),
                                 "--K_eval", "3", "--num_samples", "2", "--device", "cpu", "--output_dir",
                                 str(run / "eval"), "--no_progress", "--resume_from", "last",
                                 "--max_len_per_item", "8", "--user_window_size", "3"])
    assert data_out["meta"]["checkpoint"].endswith("checkpoint-4")
    assert "skipping incomplete" in capsys.readouterr().err

    # Rotation keeps the newest complete ones and clears the debris of killed saves.
    _save_ckpt(judge, run / "checkpoint-10", complete=True)
    rotate_checkpoints(run, 2)
    left = sorted(p.name for p in run.iterdir() if p.name.startswith(("checkpoint-", ".tmp")))
    assert left == ["checkpoint-10", "checkpoint-4", "checkpoint-6"]  # the incomplete one is never counted

    # An explicit incomplete checkpoint is a one-line error for the trainers.
    from foundation.errors import UserInputError

    with pytest.raises(UserInputError, match="COMPLETE"):
        resolve_checkpoint(str(run / "checkpoint-6"), run)


# ------------------------------------------------------------------- result files under a real SIGKILL
WRITER = textwrap.dedent("""
    from trainers.evaluation.results import ResultWriter
    w = ResultWriter({path!r}, {{"seed": 1}}, resume=True, flush_every=3)
    start = len(w.samples)
    for i in range(start, 100000):
        w.add({{"interaction_id": i, "user_id": "u", "target_item_id": 1, "candidates": list(range(500)),
                "scores": [0.123456789] * 500, "ranking": list(range(500)), "target_rank": 1 + i % 7,
                "outputs": {{"text": "x" * 20000}}}})  # long lines: kills land mid-write
""")


def test_result_writer_survives_sigkill(tmp_path):
    from trainers.evaluation.results import ResultWriter, load_result_json
    from foundation.files import iter_jsonl

    path = tmp_path / "res.json"
    partial = Path(str(path) + ".partial.jsonl")
    code = WRITER.format(repo=str(REPO), path=str(path))
    for round_ in range(2):  # kill, then kill the resumed writer too
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=_env())
        deadline = time.time() + 60
        want = 40 * (round_ + 1)
        while time.time() < deadline and not (partial.exists() and partial.read_bytes().count(b"\n") >= want):
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Readers never see a half record: the JSON is whole, the log's torn tail (if any) is ignored.
        data = load_result_json(path)
        logged = [int(s["interaction_id"]) for s in iter_jsonl(partial)]
        assert logged == list(range(len(logged)))
        assert {int(s["interaction_id"]) for s in data["samples"]} <= set(logged)
    w = ResultWriter(path, {"seed": 1})
    ids = sorted(w.samples)
    assert ids == list(range(len(ids))) and len(ids) >= 80  # nothing lost, nothing twice


# ------------------------------------------------------------------- damaged saved rows (issue 14)
def test_test_py_rerun_recomputes_damaged_saved_rows(assets, tmp_path):
    """Rows of a killed run that a rerun cannot use (a rank that is not a number, no candidates, another run's
    garbage) are reported and recomputed: the rerun ends equal to an uninterrupted run instead of crashing after
    all the work (and again on every rerun) or putting a wrong rank into the metrics."""
    model, data = assets
    out = tmp_path / "out"
    argv = ["test.py", "--model_name_or_path", str(model), "--dataset_path", str(data), "--dataset_type", "other",
            "--K", str(K), "--K_eval", "3", "--num_samples", "4", "--batch_size", "1", "--device", "cpu",
            "--dtype", "fp32", "--output_dir", str(out), "--no_progress", "--max_len_per_item", "8",
            "--user_window_size", "3", "--print_every_text", "0"]
    r = _run(argv)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = json.loads((out / "results.json").read_text())
    rows = [dict(s) for s in ref["samples"]]
    rows[1]["target_rank"], rows[2]["candidates"], rows[3]["scores"] = "x", None, [0.5]
    (out / "results.json").write_text(json.dumps({**ref, "samples": []}))
    (out / "results.json.partial.jsonl").write_text("".join(json.dumps(s) + "\n" for s in rows) + "[1, 2]\n")
    r = _run(argv)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("it will be recomputed") == 3 and "resuming" in r.stdout
    got = json.loads((out / "results.json").read_text())
    _assert_same_samples(got["samples"], ref["samples"])
    assert got["metrics"] == ref["metrics"]
