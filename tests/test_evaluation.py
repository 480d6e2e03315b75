"""test.py, test.sh and tools/compare_results.py on the tiny model and synthetic data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainers.evaluation.metrics import (
    metrics_from_ranks,
    paired_difference,
    per_sample_metric,
)
from trainers.evaluation.protocol import SANITY_ROWS, build_eval_items, sanity_rows

REPO = Path(__file__).resolve().parents[1]

K = 5


def _run(cmd, env: dict | None = None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tests.fixtures.assets import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny") / "tiny-qwen")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    from fixtures.synthetic_amazon import write_amazon_raw

    root = tmp_path_factory.mktemp("amazon")
    write_amazon_raw(root / "raw", category="Video_Games", n_users=120, n_items=80, seed=0)
    r = _run([sys.executable, "preprocess.py", "--category", "Video_Games", "--K", "5", "--st_year", "2021",
              "--st_month", "1", "--ed_year", "2023", "--ed_month", "12", "--raw_dir", str(root / "raw"),
              "--data_root_dir", str(root / "data"), "--min_items", "20"])
    assert r.returncode == 0, r.stderr[-2000:]
    return root / "data" / "Video_Games_5_2021-1-2023-12"


@pytest.fixture(scope="session")
def dataset(data_dir):
    from trainers.data.dataset import load_processed_dataset

    return load_processed_dataset(data_dir)


@pytest.fixture(scope="session")
def judge(tiny_model):
    from models.qwen_models import load_judge_from_checkpoint

    return load_judge_from_checkpoint(str(tiny_model), device="cpu", dtype="fp32", attn_implementation="sdpa")


# ---- test.py end to end ------------------------------------------------------------------------------
def _args(tiny_model, data_dir, out, *extra):
    return ["--model_name_or_path", str(tiny_model), "--dataset_path", str(data_dir), "--dataset_type", "other",
            "--K", str(K), "--K_eval", "3", "--num_samples", "6", "--batch_size", "2", "--max_len_per_item", "16",
            "--user_window_size", "5", "--output_dir", str(out), "--device", "cpu", "--print_every_text", "0",
            "--no_progress", *extra]


@pytest.fixture(scope="session")
def full_run(tiny_model, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "full"
    r = _run([sys.executable, "test.py", *_args(tiny_model, data_dir, out)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(name in r.stdout for name in SANITY_ROWS) and "NDCG@10" in r.stdout
    return out / "results.json"


def test_test_py_writes_valid_results(full_run, dataset):
    data = json.loads(full_run.read_text())
    assert not full_run.with_name("results.json.partial.jsonl").exists()
    assert data["meta"]["K"] == K and data["meta"]["seed"] == 42 and data["meta"]["split"] == "test"
    samples = data["samples"]
    assert len(samples) == 6 and len({s["interaction_id"] for s in samples}) == 6
    items = build_eval_items(dataset, "test", 6, K, seed=42)
    assert [s["interaction_id"] for s in samples] == [e["interaction_id"] for e, _ in items]
    assert [s["candidates"] for s in samples] == [c for _, c in items]
    assert data["metrics"] == metrics_from_ranks([s["target_rank"] for s in samples], (1, 3, 5, 10))
    assert set(data["sanity_rows"]) == set(SANITY_ROWS) == set(data["sanity_ranks"])
    assert data["sanity_rows"]["popularity"]["n"] == 6
    assert data["sanity_rows"] == sanity_rows(samples, dataset, 42, (1, 3, 5, 10))
    assert all(set(r) == {str(s["interaction_id"]) for s in samples} for r in data["sanity_ranks"].values())


def test_test_py_resumes_after_kill(full_run, tiny_model, data_dir, tmp_path, capsys):
    import test as test_script

    full = json.loads(full_run.read_text())["samples"]
    out = tmp_path / "resumed"
    out.mkdir()
    kept = [dict(s) for s in full[:3]]
    kept[1]["scores"] = [123.0] * K  # a marker: a recomputed sample would lose it
    lines = [json.dumps(s) + "\n" for s in kept]
    (out / "results.json.partial.jsonl").write_text("".join(lines) + json.dumps(full[3])[:40])  # torn last line
    data = test_script.main(_args(tiny_model, data_dir, out))
    assert "resuming" in capsys.readouterr().out
    got = json.loads((out / "results.json").read_text())["samples"]
    assert got == data["samples"]
    assert [s["interaction_id"] for s in got] == [s["interaction_id"] for s in full]  # same order, no duplicates
    assert got[1]["scores"] == [123.0] * K  # the finished samples were kept, not recomputed
    for g, f in zip(got[3:], full[3:]):
        assert g["candidates"] == f["candidates"] and g["ranking"] == f["ranking"]
        assert g["target_rank"] == f["target_rank"]
        np.testing.assert_allclose(g["scores"], f["scores"], atol=1e-4)
    assert not (out / "results.json.partial.jsonl").exists()

    # a rerun into the same directory with another seed is refused; --overwrite_output_dir is the way out
    with pytest.raises(SystemExit) as e:
        test_script.main(_args(tiny_model, data_dir, out, "--seed", "1"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--overwrite_output_dir" in err and "seed" in err


def test_resume_from_last_checkpoint(judge, tiny_model, data_dir, tmp_path):
    import test as test_script

    run = tmp_path / "run"
    judge.save(run / "checkpoint-3")
    judge.save(run / "checkpoint-7")
    (run / "checkpoint-7" / "model.safetensors").unlink()  # interrupted save, no weights: must be skipped
    data = test_script.main(_args(tiny_model, data_dir, run / "test", "--resume_from", "last", "--num_samples", "2"))
    assert data["meta"]["checkpoint"].endswith("checkpoint-3") and len(data["samples"]) == 2


# ---- bad input: one line, exit 2 ---------------------------------------------------------------------
@pytest.mark.parametrize("change,needle", [
    ({"--dataset_path": "/nonexistent/data"}, "--dataset_path"),
    ({"--dataset_type": "books"}, "--dataset_type"),
    ({"--K_eval": "9"}, "--K_eval"),
    ({"--user_window_size": "0"}, "--user_window_size"),
    ({"--max_len_per_item": "0"}, "--max_len_per_item"),
    ({"--K": "500"}, "--K"),
    ({"--mode": "beam"}, "--mode"),
    ({"--temperature": "0"}, "--temperature 0.0: must be > 0"),
    ({"--gen_top_p": "2"}, "--gen_top_p 2.0: must be in (0, 1]"),
    ({"--model_name_or_path": "NOTOK"}, "tokenizer"),
    ({"--resume_from": "INCOMPLETE"}, "--resume_from"),
    ({"--resume_from": "last"}, "no complete checkpoint"),
    ({"--reference_json": "/nonexistent.json"}, "--reference_json"),
])
def test_test_py_bad_input(change, needle, tiny_model, data_dir, tmp_path, capsys):
    import test as test_script

    args = _args(tiny_model, data_dir, tmp_path / "out")
    if change.get("--model_name_or_path") == "NOTOK":
        d = tmp_path / "notok"
        d.mkdir()
        shutil.copy(tiny_model / "config.json", d / "config.json")
        change = {"--model_name_or_path": str(d)}
    if change.get("--resume_from") == "INCOMPLETE":
        d = tmp_path / "ckpt"
        shutil.copytree(tiny_model, d)  # a model dir without weights (the value head is not needed to evaluate)
        (d / "model.safetensors").unlink()
        change = {"--resume_from": str(d)}
    for flag, value in change.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    with pytest.raises(SystemExit) as e:
        test_script.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    # one error line, the last (a flag outside its domain is refused by argparse, which prints its usage first)
    lines = err.splitlines()
    assert sum("error:" in ln for ln in lines) == 1 and "error:" in lines[-1] and needle in lines[-1], err


def test_test_py_script_exit_code_and_help(tiny_model, data_dir, tmp_path):
    r = _run([sys.executable, "test.py", *_args(tiny_model, data_dir, tmp_path, "--dataset_type", "books")])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--dataset_type" in r.stderr
    r = _run([sys.executable, "test.py", "--help"])
    assert r.returncode == 0 and "--resume_from" in r.stdout


def test_test_sh_runs(tiny_model, data_dir, tmp_path):
    env = {"dataset_path": str(data_dir), "model_name_or_path": str(tiny_model), "output_dir": str(tmp_path / "sh"),
           "num_samples": "2", "max_len_per_item": "8", "user_window_size": "3", "PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": ""}
    r = _run(["bash", "test.sh", "--K", "4", "--K_eval", "2", "--device", "cpu", "--no_progress"], env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "sh" / "results.json").read_text())
    assert len(data["samples"]) == 2 and data["meta"]["user_window_size"] == 3 and data["meta"]["K"] == 4


# ---- tools/compare_results.py ------------------------------------------------------------------------
def test_compare_results(full_run, tmp_path):
    r = _run([sys.executable, "tools/compare_results.py", str(full_run), str(full_run), "--names", "a", "b"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["method", "a", "b", *SANITY_ROWS]
    m = metrics_from_ranks([s["target_rank"] for s in json.loads(full_run.read_text())["samples"]])
    assert f"{m['NDCG@10']:.4f}" in lines[1] and lines[1].split()[1:] == lines[2].split()[1:]

    # a baseline with other ranks but the same candidate sets (order shuffled) is accepted
    data = json.loads(full_run.read_text())
    for s in data["samples"]:
        s["candidates"] = s["candidates"][::-1]
        s["target_rank"] = 1
    same = tmp_path / "same.json"
    same.write_text(json.dumps(data))
    r = _run([sys.executable, "tools/compare_results.py", str(full_run), str(same), "--markdown"])
    assert r.returncode == 0 and "| 1.0000 |" in r.stdout and r.stdout.startswith("| method |")

    # --paired: the margin of one row over each other row, with its paired SE, sanity rows included
    r = _run([sys.executable, "tools/compare_results.py", str(full_run), str(same), "--names", "a", "perfect",
              "--paired", "perfect"])
    assert r.returncode == 0, r.stderr
    margins = {ln.split()[0]: ln.split()[1:] for ln in r.stdout.split("minus each method")[1].splitlines()[1:]}
    assert set(margins) == {"a", *SANITY_ROWS}
    ours = per_sample_metric([s["target_rank"] for s in json.loads(full_run.read_text())["samples"]])
    want, se = paired_difference(np.ones_like(ours), ours)
    assert margins["a"][:3] == [f"{want:+.4f}", "SE", f"{se:.4f}"]
    r = _run([sys.executable, "tools/compare_results.py", str(full_run), "--paired", "nobody"])
    assert r.returncode == 2 and "--paired" in r.stderr

    # one changed candidate -> refused in one line
    data["samples"][0]["candidates"][0] = 10 ** 6
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    r = _run([sys.executable, "tools/compare_results.py", str(full_run), str(bad)])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "same candidates" in r.stderr


def test_compare_results_several_training_seeds(full_run, tmp_path):
    """One method's result files of several training seeds: the table shows their mean, a block the mean +- std
    over seeds, --paired one margin and paired SE per seed; a repeated --names entry and NAME=FILE1,FILE2 agree."""
    data = json.loads(full_run.read_text())
    for s in data["samples"]:
        s["target_rank"] = 1  # a second "seed" that ranks every target first
    perfect = tmp_path / "seed2.json"
    perfect.write_text(json.dumps(data))
    base = per_sample_metric([s["target_rank"] for s in json.loads(full_run.read_text())["samples"]])
    m1 = float(base.mean())
    by_names = _run([sys.executable, "tools/compare_results.py", str(full_run), str(perfect), str(full_run),
                     "--names", "ours", "ours", "base", "--paired", "ours"])
    assert by_names.returncode == 0, by_names.stderr
    by_groups = _run([sys.executable, "tools/compare_results.py", f"ours={full_run},{perfect}", f"base={full_run}",
                      "--paired", "ours"])
    assert by_groups.returncode == 0, by_groups.stderr
    assert by_names.stdout == by_groups.stdout
    out = by_names.stdout
    table = {ln.split()[0]: ln.split()[1:] for ln in out.split("\n\n")[0].splitlines()[1:]}
    assert table["ours"][2] == f"{(m1 + 1) / 2:.4f}" and table["base"][2] == f"{m1:.4f}"  # NDCG@10 column
    spread = [ln for ln in out.splitlines() if ln.strip().startswith("ours ") and "seeds:" in ln]
    assert spread and f"{(m1 + 1) / 2:.4f} +- {abs(1 - m1) / np.sqrt(2):.4f}  (2 seeds: {m1:.4f}, 1.0000)" in spread[0]
    margin = [ln for ln in out.split("minus each method")[1].splitlines() if ln.strip().startswith("base ")][0]
    want, se = paired_difference(np.ones_like(base), base)
    assert f"+0.0000 (SE 0.0000), {want:+.4f} (SE {se:.4f}) | better in 1, worse in 0 of 2" in margin
    assert margin.split()[1:4] == [f"{want / 2:+.4f}", "+-", f"{want / np.sqrt(2):.4f}"]
    for bad, needle in ((["x="], "NAME=FILE1"), ([f"a={full_run}", f"a={full_run}"], "given twice"),
                        ([str(full_run), "--names", "a", "b"], "--names")):
        r = _run([sys.executable, "tools/compare_results.py", *bad])
        assert r.returncode == 2 and needle in r.stderr, r.stderr
