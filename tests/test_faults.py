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
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from foundation.errors import UserInputError

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
N_TEST_PY = 8


def _test_py_argv(assets, out) -> list[str]:
    model, data = assets
    return ["test.py", "--model_name_or_path", str(model), "--dataset_path", str(data), "--dataset_type", "other",
            "--K", str(K), "--K_eval", "3", "--num_samples", str(N_TEST_PY), "--batch_size", "1", "--device", "cpu",
            "--dtype", "fp32", "--output_dir", str(out), "--no_progress", "--max_len_per_item", "8",
            "--user_window_size", "3", "--print_every_text", "0"]


@pytest.fixture(scope="module")
def test_py_reference(assets, tmp_path_factory) -> dict:
    """The result JSON of an uninterrupted test.py run (the runs below are compared with it)."""
    out = tmp_path_factory.mktemp("test_py_ref")
    r = _run(_test_py_argv(assets, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_test_py_sigkill_then_rerun_equals_uninterrupted(assets, test_py_reference, tmp_path):
    out = tmp_path / "killed"
    ref = test_py_reference
    assert _kill_after(_test_py_argv(assets, out), out / "results.json.partial.jsonl", 2) < N_TEST_PY
    rerun = _run(_test_py_argv(assets, out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    got = json.loads((out / "results.json").read_text())
    _assert_same_samples(got["samples"], ref["samples"])
    assert got["metrics"] == ref["metrics"]
    assert not (out / "results.json.partial.jsonl").exists()
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


# =========================================================================== issue 27: signals, refused writes, locks
def _one_error_line(stderr: str, needle: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines and ": error:" in lines[-1] and needle in lines[-1], stderr[-3000:]
    assert sum(": error:" in ln for ln in lines) == 1, stderr[-3000:]


def test_test_py_sigint_while_loading_and_sigterm_mid_run_end_in_one_line_and_resume(assets, test_py_reference,
                                                                                     tmp_path):
    """Ctrl-C while the model loads, and SIGTERM (a scheduler's stop) while samples are being written: one line
    each (exit 130 / 143), no traceback; the rerun of the same command then ends equal to an uninterrupted run."""
    n, ref, out = N_TEST_PY, test_py_reference, tmp_path / "out"

    def argv(out):
        return _test_py_argv(assets, out)

    proc = subprocess.Popen([sys.executable, *argv(out)], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen = ""
    for line in proc.stderr:  # the attention line is printed while the model is being loaded
        seen += line
        if line.startswith("attention:"):
            proc.send_signal(signal.SIGINT)
            break
    seen += proc.stderr.read()
    assert proc.wait(timeout=120) == 130, seen
    _one_error_line(seen, "interrupted by SIGINT")

    partial = out / "results.json.partial.jsonl"
    proc = subprocess.Popen([sys.executable, *argv(out)], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            partial.exists() and partial.read_bytes().count(b"\n") >= 2):
        time.sleep(0.005)
    assert proc.poll() is None, "finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    _one_error_line(err, "interrupted by SIGTERM")
    assert 2 <= partial.read_bytes().count(b"\n") < n  # what was saved is kept

    r = _run(argv(out))
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr[-3000:]
    got = json.loads((out / "results.json").read_text())
    _assert_same_samples(got["samples"], ref["samples"])
    assert got["metrics"] == ref["metrics"]


WRITE_ERRNOS = ("ENOSPC", "EFBIG", "EACCES", "EROFS", "ELOOP", "ENOENT", "EDQUOT")


@pytest.mark.parametrize("name", WRITE_ERRNOS)
def test_a_refused_write_is_one_line_and_keeps_what_was_saved(name, tmp_path, monkeypatch):
    """The OS refusing a write (made to happen at fsync, after the bytes went out, the worst moment) inside the
    writers every script uses: one OutputError naming the path and the reason; the file holds what it held
    before (an atomic replace keeps the old file, an append is cut back to its last whole row); no temp file."""
    import errno

    from foundation.errors import OutputError
    from foundation.files import append_jsonl, atomic_write_text, iter_jsonl

    code = getattr(errno, name)
    result, rows = tmp_path / "results.json", tmp_path / "responses.jsonl"
    atomic_write_text(result, '{"old": 1}')
    append_jsonl(rows, [{"id": 0}])

    def refuse(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", refuse)
    for write, path in ((lambda: atomic_write_text(result, '{"new": 2}'), result),
                        (lambda: append_jsonl(rows, [{"id": 1, "text": "x" * 10000}]), rows)):
        with pytest.raises(OutputError) as e:
            write()
        msg = str(e.value)
        assert msg.startswith(f"cannot write {path}: ") and f"({name})" in msg and "\n" not in msg, msg
    monkeypatch.undo()
    assert result.read_text() == '{"old": 1}' and [r["id"] for r in iter_jsonl(rows)] == [0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["responses.jsonl", "results.json"]
    append_jsonl(rows, [{"id": 1}])  # the rerun continues where it stopped
    assert [r["id"] for r in iter_jsonl(rows)] == [0, 1]


def test_a_real_symlink_loop_and_a_file_as_parent_are_refused_before_writing(tmp_path):
    """Real operating-system faults, not simulated: an output under a symlink loop (ELOOP) or under a file
    (ENOTDIR) is refused by the output check in one line before anything runs; hit at write time it is one
    OutputError naming the path."""
    from foundation.errors import OutputError
    from foundation.files import atomic_write_text, check_output_path

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "a_file").write_text("x")
    for bad, needle in ((tmp_path / "loop" / "out", "ELOOP"), (tmp_path / "a_file" / "out", "is a file")):
        with pytest.raises(UserInputError, match=needle):
            check_output_path(bad, "--output_dir", kind="dir")
    with pytest.raises(OutputError, match=r"loop.*\(ELOOP\)"):
        atomic_write_text(tmp_path / "loop" / "results.json", "{}")


CHECKPOINT_UNDER_FSIZE = textwrap.dedent("""
    import resource, sys, torch
    from foundation.checkpoints import save_torch, write_checkpoint
    from foundation.errors import exit_on_user_error
    out, step, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with exit_on_user_error():
        if limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        write_checkpoint(out, step, lambda d: save_torch({"w": torch.zeros(200_000)}, d / "optimizer.pt"),
                         {"step": step}, {}, rank=0, barrier=lambda: None, save_total_limit=5)
    print("saved", step)
""")


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_earlier_ones(tmp_path):
    """A real EFBIG (RLIMIT_FSIZE below the checkpoint's size) while a checkpoint is written: one line naming the
    file, exit 1; the temp dir is gone, the earlier checkpoint is still complete and is what 'last' resumes from;
    the same save succeeds once there is room."""
    from foundation.checkpoints import checkpoint_problem, resolve_checkpoint

    run = tmp_path / "run"

    def save(step: int, limit: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", CHECKPOINT_UNDER_FSIZE, str(run), str(step), str(limit)],
                              cwd=REPO, capture_output=True, text=True, env=_env(), timeout=120)

    assert save(1, 0).returncode == 0
    r = save(2, 100_000)
    assert r.returncode == 1, r.stderr[-3000:]
    _one_error_line(r.stderr, "File too large (EFBIG)")
    assert "optimizer.pt" in r.stderr
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1"]
    assert checkpoint_problem(run / "checkpoint-1", training=True) is None
    assert resolve_checkpoint("last", run) == run / "checkpoint-1"
    assert save(2, 0).returncode == 0 and resolve_checkpoint("last", run) == run / "checkpoint-2"


def test_preprocess_under_a_file_size_limit_keeps_the_previous_dataset(assets, tmp_path):
    """preprocess.py whose dataset files outgrow the file size limit: one line naming the file, exit 1, no
    temporary directory left, and the dataset an earlier run wrote is untouched."""
    import hashlib
    import resource

    _, data = assets
    root = tmp_path / "data"
    shutil.copytree(data, root / data.name)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / data.name).rglob("*") if p.is_file()}
    raw = data.parent.parent / "raw"
    argv = ["preprocess.py", "--category", "Video_Games", "--K", "5", "--st_year", "2021", "--st_month", "1",
            "--ed_year", "2023", "--ed_month", "12", "--raw_dir", str(raw), "--data_root_dir", str(root),
            "--min_items", "10", "--overwrite_output_dir"]
    r = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=_env(), timeout=300,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000)))
    assert r.returncode == 1, r.stderr[-3000:]
    _one_error_line(r.stderr, "File too large (EFBIG)")
    assert str(root) in r.stderr.splitlines()[-1]
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [data.name]
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / data.name).rglob("*") if p.is_file()}
    assert after == before


def _host() -> str:
    import socket

    return socket.gethostname()


MALFORMED_LOCKS = {
    "pid-text": {"pid": "abc"}, "pid-list": {"pid": [1]}, "pid-float": {"pid": 1.5}, "pid-bool": {"pid": True},
    "pid-null": {"pid": None}, "pid-zero": {"pid": 0}, "pid-negative": {"pid": -1}, "pid-huge": {"pid": 2 ** 40},
    "host-number": {"host": 5}, "started-list": {"started": [1]}, "not-an-object": [1, 2],
    "garbage": b"garbage\n", "empty": b"", "binary": bytes(range(256)), "nul-bytes": b"\0" * 64,
    "deep": b"[" * 100_000, "huge": b'{"pid": 1' + b" " * 1_000_000 + b"}",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_LOCKS))
def test_a_malformed_lock_file_is_garbage_not_a_traceback(name, tmp_path):
    """A lock file whose content is not what RunLock writes (wrong types, a pid os.kill would read as a process
    group, garbage, empty, binary, nested, huge) is garbage: taken over after a second look, never a traceback and
    never mistaken for a live run. A live run's lock is still refused in one line."""
    from foundation.files import RunLock

    content = MALFORMED_LOCKS[name]
    if isinstance(content, dict):
        content = json.dumps({"pid": 999_999, "host": _host(), "started": "now", **content}).encode()
    elif isinstance(content, list):
        content = json.dumps(content).encode()
    (tmp_path / ".lock").write_bytes(content)
    with RunLock(tmp_path) as lock:
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid() and lock.held
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": _host(), "started": "now"}))
    with pytest.raises(UserInputError, match="in use by another run"):
        RunLock(tmp_path).acquire()


def test_a_lock_path_that_is_a_directory_is_one_line(tmp_path):
    from foundation.files import RunLock

    (tmp_path / ".lock").mkdir()
    with pytest.raises(UserInputError, match="is a directory"):
        RunLock(tmp_path).acquire()
