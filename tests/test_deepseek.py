"""compare_model/deepseek.py end to end against a real loopback OpenAI-compatible server (the answer parser's unit tests are in
tests/prompters/test_answer_parsing.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fixtures.loopback_server as lb

REPO = Path(__file__).resolve().parents[1]

KEY = "sk-test-SECRET123"
K = 6
STYLES = ("good", "garbage", "titles", "fenced", "partial")

# ------------------------------------------------------------------------------------------------ the parser


# ------------------------------------------------------------------------------------ a small processed dataset

SUBS = ["Racing", "Puzzle", "Horror", "Farming"]
ADJ = ["Turbo", "Silent", "Golden", "Iron", "Neon", "Royal", "Wild", "Lost", "Grand", "Epic"]


def _titles() -> list[str]:
    return [f"{a} {s} Saga" for s in SUBS for a in ADJ]  # 40 unique titles


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A DatasetDict in preprocess.py's layout (docs/data.md): 40 items, 8 valid and 10 test examples."""
    import random

    from datasets import Dataset, DatasetDict

    rng = random.Random(0)
    titles = _titles()
    info = [{"parent_asin": "pad_asin", "item_id": 0, "title": "pad_title", "main_category": "", "average_rating": 0.0,
             "rating_number": 0, "features": [], "description": [], "price": 0.0, "store": "", "categories": [],
             "details": "{}"}]
    for i, t in enumerate(titles, 1):
        info.append({"parent_asin": f"A{i:04d}", "item_id": i, "title": t, "main_category": "Video Games",
                     "average_rating": 4.0, "rating_number": i, "features": [f"{t.split()[1]} fun"],
                     "description": [f"A {t.split()[1].lower()} game with many levels"], "price": 9.99,
                     "store": "S", "categories": ["Video Games"], "details": "{}"})
    split_rows = {}
    iid = 0
    for split, n in (("train", 30), ("valid", 8), ("test", 10)):
        rows = []
        for _ in range(n):
            hist = rng.sample(range(1, len(titles) + 1), 6)
            target = rng.choice([x for x in range(1, len(titles) + 1) if x not in hist])
            ts = sorted(rng.sample(range(10_000, 90_000), 7))
            rows.append({"user_id": f"U{iid:03d}", "item_asins": [f"A{h:04d}" for h in hist],
                         "item_asin": f"A{target:04d}", "history_item_id": hist, "item_id": target,
                         "history_item_title": [titles[h - 1] for h in hist], "item_title": titles[target - 1],
                         "history_rating": [float(rng.choice([3, 4, 5])) for _ in hist], "rating": 5.0,
                         "history_timestamp": ts[:-1], "timestamp": ts[-1], "interaction_id": iid})
            iid += 1
        split_rows[split] = Dataset.from_list(rows)
    dd = DatasetDict({**split_rows, "item_info": Dataset.from_list(info)})
    path = tmp_path_factory.mktemp("ds") / "Video_Games_5_2021-1-2023-12"
    dd.save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def oracle(data_dir):
    """history text -> (target title, answer style): the server's knowledge of the truth."""
    from prompters.api_prompter import ApiRankingPrompter
    from trainers.data.dataset import load_processed_dataset

    ds = load_processed_dataset(data_dir)
    pr = ApiRankingPrompter(ds.item_rows)
    table = {}
    for split in ("valid", "test"):
        for n, ex in enumerate(ds.split(split).to_list()):
            table[pr.history_text(ex)] = (ex["item_title"], STYLES[n % len(STYLES)], int(ex["interaction_id"]))
    return table


def make_responder(oracle: dict, delay: float = 0.0):
    def responder(req, n):
        prompt = lb.prompt_text(req)
        target, style, _ = next(v for k, v in oracle.items() if k in prompt)
        titles = lb.parse_prompt_candidates(prompt)
        assert len(titles) == K, prompt
        order = lb.order_target_first(titles, target)
        content = {"good": lambda: lb.good_answer(order), "garbage": lambda: lb.garbage_answer(order),
                   "titles": lambda: lb.titles_answer(order, titles), "fenced": lambda: lb.fenced_answer(order),
                   "partial": lambda: lb.partial_answer(order, 2)}[style]()
        return {"content": content, "reasoning_content": "thinking...", "delay": delay}

    return responder


def run_script(args, env_key: str | None = KEY, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DEEPSEEK_API_KEY"}
    env.update({"PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "NO_PROXY": "127.0.0.1,localhost"})
    if env_key:
        env["DEEPSEEK_API_KEY"] = env_key
    return subprocess.run([sys.executable, "compare_model/deepseek.py", *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=240, **kw)


def base_args(api, data_dir, out, *extra):
    return ["--dataset_dir", str(data_dir), "--api_base", api.url, "--output_dir", str(out), "--K", str(K),
            "--K_eval", "3", "--test_samples", "0", "--concurrency", "3", "--backoff_base", "0.01",
            "--backoff_max", "0.05", "--timeout", "10", "--seed", "7", *extra]


def assert_no_key(out_dir: Path, *texts: str) -> None:
    for p in out_dir.rglob("*"):
        if p.is_file():
            assert KEY not in p.read_text(errors="replace"), p
    for t in texts:
        assert KEY not in t


def expected_rank(style: str) -> tuple[int, str]:
    return {"good": (1, "ok"), "titles": (1, "ok"), "fenced": (1, "ok"), "partial": (1, "partial"),
            "garbage": (K, "unparseable")}[style]


@pytest.fixture(scope="session")
def full_run(data_dir, oracle, tmp_path_factory):
    """One uninterrupted run (valid + test passes) with 429s at the start."""
    out = tmp_path_factory.mktemp("full") / "out"
    with lb.LoopbackAPI(make_responder(oracle)).fail_first(3, 429) as api:
        r = run_script(base_args(api, data_dir, out))
        assert r.returncode == 0, r.stderr[-3000:]
        return out, r, list(api.auth_headers), api.calls


def test_full_run_every_sample_recorded_and_counted(full_run, oracle):
    out, r, auth, calls = full_run
    assert calls == 8 + 10 + 3  # every example asked once, plus the three 429s retried
    assert set(auth) == {f"Bearer {KEY}"}
    for name, n in (("", 10), ("_valid", 8)):
        data = json.loads((out / f"results{name}.json").read_text())
        resp = [json.loads(x) for x in (out / f"responses{name}.jsonl").read_text().splitlines()]
        assert len(data["samples"]) == n and len({s["interaction_id"] for s in data["samples"]}) == n
        assert sorted(x["id"] for x in resp) == sorted(s["interaction_id"] for s in data["samples"])
        assert all(x["reasoning_content"] == "thinking..." and not x.get("error") for x in resp)
        by_iid = {v[2]: v[1] for v in oracle.values()}
        counts = {"ok": 0, "partial": 0, "unparseable": 0}
        for s in data["samples"]:
            rank, status = expected_rank(by_iid[s["interaction_id"]])
            assert (s["target_rank"], s["outputs"]["parse_status"]) == (rank, status)
            assert len(s["candidates"]) == K and sorted(s["ranking"]) == sorted(s["candidates"])
            assert s["target_item_id"] in s["candidates"]
            counts[status] += 1
        m = data["metrics"]
        assert (m["parse_ok"], m["parse_partial"], m["parse_unparseable"], m["api_errors"]) == (
            counts["ok"], counts["partial"], counts["unparseable"], 0)
        assert m["parse_unparseable"] > 0 and m["parse_partial"] > 0 and m["n"] == n
        assert m["HR@1"] == pytest.approx((n - counts["unparseable"]) / n)
        assert set(data["sanity_rows"]) == {"random", "popularity", "content-tfidf"} == set(data["sanity_ranks"])
        assert data["meta"]["split"] == ("test" if name == "" else "valid") and data["meta"]["K"] == K
        assert "api_key" not in data["meta"]
    assert_no_key(out, r.stdout, r.stderr)
    assert "unparseable" in r.stdout


def _comparable(data: dict) -> dict:
    meta = {k: v for k, v in data["meta"].items() if k not in ("output_dir", "test_only", "api_base")}
    return {"meta": meta, "metrics": data["metrics"], "sanity_rows": data["sanity_rows"], "samples": data["samples"]}


def test_killed_run_resumes_to_the_same_result(full_run, data_dir, oracle, tmp_path):
    """SIGKILL after a few answers, rerun: no duplicate or missing sample, same result JSON as uninterrupted."""
    out = tmp_path / "out"
    with lb.LoopbackAPI(make_responder(oracle, delay=0.25)) as api:
        proc = subprocess.Popen([sys.executable, "compare_model/deepseek.py",
                                 *base_args(api, data_dir, out, "--test_only", "--concurrency", "2")],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1",
                                     "NO_PROXY": "127.0.0.1,localhost", "DEEPSEEK_API_KEY": KEY})
        resp = out / "responses.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if resp.exists() and len(resp.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n_before = len(resp.read_text().splitlines())
        assert 3 <= n_before < 10
        calls_before = api.calls
        r = run_script(base_args(api, data_dir, out, "--test_only"))
        assert r.returncode == 0, r.stderr[-3000:]
        assert api.calls - calls_before <= 10 - n_before + 2  # only the missing ones (+ the ones in flight)
    resp_rows = [json.loads(x) for x in resp.read_text().splitlines()]
    assert sorted(x["id"] for x in resp_rows) == sorted({x["id"] for x in resp_rows}) and len(resp_rows) == 10
    resumed = json.loads((out / "results.json").read_text())
    full = json.loads((full_run[0] / "results.json").read_text())
    a, b = _comparable(resumed), _comparable(full)
    assert a["meta"] == b["meta"], {k: (a["meta"].get(k), b["meta"].get(k)) for k in set(a["meta"]) | set(b["meta"])
                                    if a["meta"].get(k) != b["meta"].get(k)}
    assert a == b
    assert not (out / "results.json.partial.jsonl").exists()
    assert_no_key(out, r.stdout, r.stderr)


def test_json_mode_uses_reference_candidates(full_run, data_dir, oracle, tmp_path):
    ref_path = full_run[0] / "results.json"
    ref = json.loads(ref_path.read_text())
    # Reorder the reference: the baseline must follow the file, item for item and in its order.
    ref["samples"] = ref["samples"][::-1]
    ref_file = tmp_path / "ref.json"
    ref_file.write_text(json.dumps(ref))
    out = tmp_path / "out"
    with lb.LoopbackAPI(make_responder(oracle)) as api:
        args = base_args(api, data_dir, out, "--candidate_mode", "json", "--candidate_json_path", str(ref_file))
        # No --K and --test_samples: json mode takes K from the reference and ranks all of its samples.
        drop = {"--K", "--test_samples"}
        r = run_script([a for i, a in enumerate(args) if not (a in drop or (i > 0 and args[i - 1] in drop))])
        assert r.returncode == 0, r.stderr[-3000:]
        assert api.calls == len(ref["samples"])
    data = json.loads((out / "results.json").read_text())
    assert [s["interaction_id"] for s in data["samples"]] == [s["interaction_id"] for s in ref["samples"]]
    assert [s["candidates"] for s in data["samples"]] == [s["candidates"] for s in ref["samples"]]
    assert data["meta"]["K"] == K and not (out / "results_valid.json").exists()


def test_api_errors_are_recorded_then_retried_on_rerun(data_dir, oracle, tmp_path):
    out = tmp_path / "out"
    good = make_responder(oracle)
    state = {"down": True}

    def responder(req, n):
        return {"status": 503, "content": f"down {KEY}"} if state["down"] else good(req, n)

    with lb.LoopbackAPI(responder) as api:
        args = base_args(api, data_dir, out, "--test_only", "--max_retries", "1")
        r = run_script(args)
        # every request failed: the failures are saved, but the run is not a result (exit 1, one line)
        assert r.returncode == 1, r.stderr[-3000:]
        err = [x for x in r.stderr.splitlines() if x.startswith("deepseek.py: error:")]
        assert len(err) == 1 and "every request of the test (10 requests) split failed" in err[0]
        data = json.loads((out / "results.json").read_text())
        assert data["metrics"]["api_errors"] == 10 and data["metrics"]["HR@1"] == 0.0
        assert all(s["target_rank"] == K for s in data["samples"])
        assert_no_key(out, r.stdout, r.stderr)
        state["down"] = False
        r = run_script(args)
        assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["metrics"]["api_errors"] == 0 and len(data["samples"]) == 10
    assert len((out / "responses.jsonl").read_text().splitlines()) == 10


def test_missing_key_and_bad_flags_exit_2(data_dir, tmp_path):
    r = run_script(["--dataset_dir", str(data_dir), "--output_dir", str(tmp_path / "o"), "--api_base",
                    "http://127.0.0.1:9/v1"], env_key=None)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "DEEPSEEK_API_KEY" in r.stderr
    r = run_script(["--dataset_dir", str(data_dir), "--candidate_mode", "json"])
    assert r.returncode == 2 and "--candidate_json_path" in r.stderr
    r = run_script(["--dataset_dir", str(tmp_path / "nope"), "--api_key", KEY])
    assert r.returncode == 2 and "--dataset_dir" in r.stderr and KEY not in r.stderr + r.stdout
    r = subprocess.run([sys.executable, "compare_model/deepseek.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--candidate_mode" in r.stdout and "--test_only" in r.stdout


# ------------------------------------------------------------ run_r1's dataset mode, damaged files, secrets
def test_run_r1_dataset_mode_ranks_the_reference_candidates(full_run, data_dir, oracle, tmp_path, monkeypatch,
                                                            capsys):
    """The original README's `tools/run_r1.py --dataset_dir ... --test_samples N`, here on a result JSON's
    candidates: the same evaluation as deepseek.py (identical samples and metrics on identical answers)."""
    from tests.fixtures.scripts import run_main

    ref = full_run[0] / "results.json"
    out = tmp_path / "r1"
    with lb.LoopbackAPI(make_responder(oracle)) as api:
        code, stdout, err = run_main("tools/run_r1.py", ["--dataset_dir", str(data_dir), "--reference_json", str(ref),
                                     "--output_dir", str(out), "--api_base", api.url, "--K_eval", "3", "--seed", "7",
                                     "--no_progress", "--backoff_base", "0.01"], monkeypatch, capsys, key=KEY)
        assert code == 0, err
        assert {r["json"]["model"] for r in api.requests} == {"deepseek-reasoner"}
    r1, ds = json.loads((out / "results.json").read_text()), json.loads(ref.read_text())
    assert [s["candidates"] for s in r1["samples"]] == [s["candidates"] for s in ds["samples"]]
    assert [s["target_rank"] for s in r1["samples"]] == [s["target_rank"] for s in ds["samples"]]
    assert r1["metrics"] == ds["metrics"] and r1["meta"]["script"] == "tools/run_r1.py"
    rows = [json.loads(x) for x in (out / "responses.jsonl").read_text().splitlines()]
    assert all(r["reasoning_content"] == "thinking..." for r in rows) and not (out / "results_valid.json").exists()
    code, _, err = run_main("tools/run_r1.py", ["--test_samples", "5"], monkeypatch, capsys, key=KEY)
    assert code == 2 and "--dataset_dir" in err and "--input_file" in err


def test_damaged_result_files_are_rebuilt_from_the_answers(full_run, data_dir, oracle, tmp_path, monkeypatch, capsys):
    """Malformed rows in results.json.partial.jsonl (bad JSON, a sample without its fields) and a partial last
    answer line: the rerun rebuilds the result from the answers, equal to the uninterrupted run."""
    import shutil

    from tests.fixtures.scripts import run_main

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(full_run[0] / "responses.jsonl", out / "responses.jsonl")
    full = json.loads((full_run[0] / "results.json").read_text())
    (out / "results.json.partial.jsonl").write_text('{"interaction_id": 3}\nnot json at all\n'
                                                    + json.dumps(full["samples"][0]) + "\n")
    with open(out / "responses.jsonl", "a") as f:
        f.write('{"id": 12345, "content": "cut by a ki')
    with lb.LoopbackAPI(make_responder(oracle)) as api:
        code, _, err = run_main("compare_model/deepseek.py", base_args(api, data_dir, out, "--test_only"), monkeypatch,
                                capsys, key=KEY)
        assert code == 0, err
        assert api.calls == 0  # every answer was there
    assert _comparable(json.loads((out / "results.json").read_text())) == _comparable(full)
    assert not (out / "results.json.partial.jsonl").exists()
    (out / "results.json").write_text('{"meta": {"K": ')
    with lb.LoopbackAPI(make_responder(oracle)) as api:
        code, _, err = run_main("compare_model/deepseek.py", base_args(api, data_dir, out, "--test_only",
                                "--no_progress"), monkeypatch, capsys, key=KEY)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "delete" in err


def test_rejected_key_and_echoed_key(data_dir, oracle, tmp_path, monkeypatch, capsys):
    """A rejected key: exit 2, one line, no result or answer file. A server echoing the key (and a masked form)
    into answers, reasoning and model names: neither reaches a file or the output of deepseek.py/run_r1.py."""
    from tests.fixtures.scripts import run_main

    out = tmp_path / "out"
    with lb.LoopbackAPI(make_responder(oracle), require_key="another-key") as api:
        code, stdout, err = run_main("compare_model/deepseek.py", base_args(api, data_dir, out, "--no_progress"),
                                     monkeypatch, capsys, key=KEY)
        assert api.calls <= 6
    assert code == 2 and len(err.strip().splitlines()) == 1 and "rejected the key" in err
    assert not out.exists() or not any(out.iterdir())

    key, masked = "sk-adv-0123456789SECRETabc777", "sk-adv-****777"
    good = make_responder(oracle)

    def echo(req, n):
        auth = req["_headers"]["authorization"]
        ans = good(req, n)
        raw = auth.split()[-1]  # reformatted as a hostile server might: other case, spaced out, broken over lines
        reformatted = f"{raw.upper()} {' '.join(raw)} {raw[:9]}\n{raw[9:]}"
        return {**ans, "content": f"{ans['content']}\n(key {auth} = {masked})", "model": f"m-{auth}",
                "reasoning_content": f"{auth} {masked} {reformatted}"}

    texts = []
    with lb.LoopbackAPI(echo) as api:
        for script, extra in (("compare_model/deepseek.py", ["--test_only"]), ("tools/run_r1.py", [])):
            args = [a for a in base_args(api, data_dir, tmp_path / script.split("/")[-1], *extra)]
            code, stdout, err = run_main(script, args, monkeypatch, capsys, key=key)
            assert code == 0, err
            texts += [stdout, err]
        assert {r["headers"]["authorization"] for r in api.requests} == {f"Bearer {key}"}
    for p in tmp_path.rglob("*"):
        if p.is_file():
            texts.append(p.read_text())
    assert any("(key Bearer *** = ***)" in t for t in texts)
    assert not [t for t in texts if key in t or masked in t or "secret" in t.lower() or "S E C R E T" in t]


def test_overwrite_with_a_rejected_key_keeps_the_earlier_answers(full_run, data_dir, oracle, tmp_path, monkeypatch,
                                                                  capsys):
    """--overwrite_output_dir discards the earlier answers only once the new run has answers of its own: a rejected
    key (or any failure before the first answer) leaves them where they were."""
    from tests.fixtures.scripts import run_main

    src = full_run[0]
    out = tmp_path / "out"
    shutil.copytree(src, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with lb.LoopbackAPI(make_responder(oracle), require_key="another-key") as api:
        code, _, err = run_main("compare_model/deepseek.py", base_args(api, data_dir, out, "--test_only",
                                "--no_progress", "--overwrite_output_dir"), monkeypatch, capsys, key=KEY)
    assert code == 2 and "rejected the key" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
