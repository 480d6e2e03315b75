"""trainers/evaluation.py, test.py, test.sh and tools/compare_results.py on the tiny model and synthetic data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainers.evaluation.judge import JudgeRankSettings as S
from trainers.evaluation.judge import evaluate_split, rank_examples
from trainers.evaluation.metrics import (
    metrics_from_ranks,
    paired_difference,
    per_sample_metric,
    rank_from_ranking,
    target_rank,
)
from trainers.evaluation.protocol import SANITY_ROWS, build_eval_items, sanity_rows
from foundation.errors import UserInputError, cli_message

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


def _prompter(judge, dataset, reasoning=False):
    from prompters.binary_prompter import BinaryPrompter

    return BinaryPrompter(judge.tokenizer, dataset.item_rows, "other", max_len_per_item=16, user_window_size=5,
                          reasoning=reasoning)


# ---- build_eval_items --------------------------------------------------------------------------------
def test_eval_items_candidates_valid_and_deterministic(dataset):
    items = build_eval_items(dataset, "test", 30, K, seed=7)
    assert len(items) == 30 and len({ex["interaction_id"] for ex, _ in items}) == 30
    for ex, cands in items:
        assert len(cands) == K == len(set(cands))
        assert ex["item_id"] in cands
        assert 0 not in cands and all(1 <= c <= dataset.n_items for c in cands)
        assert not set(ex["history_item_id"]) & (set(cands) - {ex["item_id"]})
    again = build_eval_items(dataset, "test", 30, K, seed=7)
    assert [(e["interaction_id"], c) for e, c in again] == [(e["interaction_id"], c) for e, c in items]
    # a subset is a prefix of the full seeded order, with the same candidates
    full = build_eval_items(dataset, "test", None, K, seed=7)
    assert len(full) == len(dataset.split("test"))
    assert [(e["interaction_id"], c) for e, c in full[:30]] == [(e["interaction_id"], c) for e, c in items]
    # the order is shuffled (not the chronological first rows) and depends on the seed
    other = build_eval_items(dataset, "test", 30, K, seed=8)
    assert [e["interaction_id"] for e, _ in other] != [e["interaction_id"] for e, _ in items]
    assert [e["interaction_id"] for e, _ in items] != list(dataset.split("test")["interaction_id"][:30])


def test_eval_items_from_reference(dataset):
    items = build_eval_items(dataset, "test", 10, K, seed=1)
    ref = {"samples": [{"interaction_id": e["interaction_id"], "target_item_id": e["item_id"], "candidates": c}
                       for e, c in reversed(items)]}
    got = build_eval_items(dataset, "test", None, K, seed=999, reference=ref)  # seed is irrelevant with a reference
    assert [(e["interaction_id"], c) for e, c in got] == [(e["interaction_id"], c) for e, c in reversed(items)]
    assert len(build_eval_items(dataset, "test", 3, K, seed=0, reference=ref)) == 3
    with pytest.raises(UserInputError, match="--K"):
        build_eval_items(dataset, "test", None, K + 1, seed=1, reference=ref)
    with pytest.raises(UserInputError, match="not in split"):
        build_eval_items(dataset, "valid", None, K, seed=1, reference=ref)
    with pytest.raises(UserInputError, match="--K"):
        build_eval_items(dataset, "test", 5, dataset.n_items + 5, seed=1)


# ---- rank_examples / sanity_rows ---------------------------------------------------------------------
def test_rank_examples_greedy_and_rollout(judge, dataset):
    items = build_eval_items(dataset, "test", 4, K, seed=3)
    prompter = _prompter(judge, dataset)
    seen = []
    greedy = rank_examples(judge, prompter, items, S(mode="greedy", batch_size=4, progress=False),
                           on_sample=seen.append)
    assert seen == greedy and len(greedy) == 4
    for s, (ex, cands) in zip(greedy, items):
        assert s["interaction_id"] == ex["interaction_id"] and s["candidates"] == cands and s["outputs"] == {}
        assert sorted(s["ranking"]) == sorted(cands)
        by_item = dict(zip(s["candidates"], s["scores"]))
        assert all(by_item[a] >= by_item[b] for a, b in zip(s["ranking"], s["ranking"][1:]))
        assert s["target_rank"] == target_rank(s["scores"], cands.index(ex["item_id"]))
        assert s["target_rank"] == rank_from_ranking(s["ranking"], ex["item_id"])
    # batch size does not change scores (beyond float noise)
    one = rank_examples(judge, prompter, items[:2], S(mode="greedy", batch_size=1, progress=False))
    np.testing.assert_allclose([s["scores"] for s in one], [s["scores"] for s in greedy[:2]], atol=1e-4)

    # rollout: seeded per interaction id, so it repeats and does not depend on batching or on the other items
    r1 = rank_examples(judge, prompter, items, S(mode="rollout", temperature=0.01, seed=5, batch_size=4,
                                                 progress=False))
    r2 = rank_examples(judge, prompter, items[2:], S(mode="rollout", temperature=0.01, seed=5, batch_size=1,
                                                     progress=False))
    assert [s["ranking"] for s in r1[2:]] == [s["ranking"] for s in r2]
    for s in r1:
        assert s["target_rank"] == rank_from_ranking(s["ranking"], s["target_item_id"])
    # at τ = 1000 the PL sample is (nearly) uniform: rankings must differ from greedy somewhere
    hot = rank_examples(judge, prompter, items, S(mode="rollout", temperature=1000.0, seed=5, progress=False))
    assert any(h["ranking"] != g["ranking"] for h, g in zip(hot, greedy))
    with pytest.raises(UserInputError, match="^mode 'beam': must be one of greedy|rollout") as e:
        rank_examples(judge, prompter, items, S(mode="beam", progress=False))
    assert cli_message(e.value).startswith("--mode 'beam'")  # the script names the flag


def test_rank_examples_reasoning_outputs(judge, dataset, capsys):
    items = build_eval_items(dataset, "test", 2, 3, seed=3)
    prompter = _prompter(judge, dataset, reasoning=True)
    all_ = rank_examples(judge, prompter, items, S(max_new_tokens=3, gen_mode="all", progress=True, print_every_text=1))
    for s in all_:
        assert [r["item_id"] for r in s["outputs"]["reasoning"]] == s["candidates"]
        assert all(0 <= r["n_tokens"] <= 3 and isinstance(r["text"], str) for r in s["outputs"]["reasoning"])
    top = rank_examples(judge, prompter, items, S(max_new_tokens=3, gen_mode="top1", progress=False))
    for s in top:
        assert [r["item_id"] for r in s["outputs"]["reasoning"]] == [s["ranking"][0]]
    # greedy decoding in greedy mode: the same texts and scores again
    np.testing.assert_allclose([s["scores"] for s in top], [s["scores"] for s in all_], atol=1e-5)
    assert "reasoning for" in capsys.readouterr().out  # print_every_text=1 shows every sample
    with pytest.raises(ValueError, match="reasoning"):
        rank_examples(judge, _prompter(judge, dataset), items, S(max_new_tokens=3, progress=False))


def test_sanity_rows_and_evaluate_split(judge, dataset):
    prompter = _prompter(judge, dataset)
    samples, metrics = evaluate_split(judge, prompter, dataset, "valid", 5, K, 3, seed=2,
                                      settings=S(progress=False, batch_size=5))
    assert metrics["n"] == 5 and "NDCG@3" in metrics and "NDCG@10" in metrics
    assert metrics == metrics_from_ranks([s["target_rank"] for s in samples], (1, 3, 5, 10))
    rows = sanity_rows(samples, dataset, seed=2)
    assert rows == sanity_rows(samples, dataset, seed=2)
    assert set(rows) == set(SANITY_ROWS) and all(m["n"] == 5 for m in rows.values())
    # DDP validation: rank 1 of 2 takes every second item of the same seeded list
    shard, m = evaluate_split(judge, prompter, dataset, "valid", 4, K, 3, seed=2, settings=S(progress=False),
                              rank=1, world_size=2)
    assert [s["interaction_id"] for s in shard] == [s["interaction_id"] for s in samples[1:4:2]] and m["n"] == 2


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
    assert f"+0.0000 (SE 0.0000), {want:+.4f} (SE {se:.4f}) | clear in 1 of 2" in margin
    assert margin.split()[1:4] == [f"{want / 2:+.4f}", "+-", f"{want / np.sqrt(2):.4f}"]
    for bad, needle in ((["x="], "NAME=FILE1"), ([f"a={full_run}", f"a={full_run}"], "given twice"),
                        ([str(full_run), "--names", "a", "b"], "--names")):
        r = _run([sys.executable, "tools/compare_results.py", *bad])
        assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_resume_with_other_candidates_is_refused(tmp_path):
    """test.py and compare_model/rrec.py resume through sharded_results: a saved sample whose candidates differ
    from this run's (another dataset, K or seed) must not be mixed into the new result file."""
    from accelerate import PartialState

    from trainers.evaluation.results import ResultWriter, sharded_results

    out = tmp_path / "results.json"
    ex = {"interaction_id": 7}
    w = ResultWriter(out, {"seed": 1}, resume=False)
    w.add({"interaction_id": 7, "user_id": "U7", "target_item_id": 3, "candidates": [3, 1, 2], "target_rank": 1,
           "ranking": [3, 1, 2], "scores": [0.9, 0.5, 0.1]})
    w.write()
    state = PartialState(cpu=True)
    with pytest.raises(UserInputError, match="saved sample 7 has other candidates.*--no_resume"):
        with sharded_results(state, out, {"seed": 1}, [(ex, [3, 2, 1])], False, 5, fresh_flag="--no_resume"):
            pass
    assert json.loads(out.read_text())["samples"][0]["candidates"] == [3, 1, 2]  # nothing was touched
    with sharded_results(state, out, {"seed": 1}, [(ex, [3, 1, 2])], False, 5) as (writer, order, todo, _):
        assert todo == [] and order == [7] and writer.done_ids == {7}
