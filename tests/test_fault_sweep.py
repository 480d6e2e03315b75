"""Issue 27, the adversarial sweep kept in the project: one case per class of fault the sweep found, on CPU, in a
few seconds each (the whole file well under a minute). Every case failed on the code before the fix (checked on
the commit the issue was filed against); the classes' full coverage lives in the suites named per case.

    1 silent damage: a weight tensor missing from a model directory        (test_damaged_artifacts.py, bad_input)
    2 silent damage: ratings outside 1..5, titles without a visible char   (trainers/data/test_amazon*.py)
    3 unbounded work / secrets: redaction time, URL-encoded keys           (foundation/test_errors.py)
    4 operating-system errors: a refused write, a malformed lock file      (test_faults.py)
    5 signals: Ctrl-C / SIGTERM in every long-running script               (test_faults.py)
    6 pathological JSON: nesting and size limits                           (test_bad_input.py)
    7 flags: integer domains (seeds) at parse time, in every script        (test_bad_input.py)
    8 borderline: a BOM in the rating CSV, "is a file" for a directory     (trainers/data/test_amazon.py, test_bad_input.py)
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

import pytest

from foundation.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**{k: v for k, v in os.environ.items() if k != "DEEPSEEK_API_KEY"}, "PYTHONPATH": str(REPO)}


def _one_error_line(stderr: str, *needles: str) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr and len(lines) == 1 and "error:" in lines[0], stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------ 1 silent init
def test_1_a_missing_weight_tensor_is_named_not_initialised_at_random(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from models.abstract_models import load_causal_lm

    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path)
    load_causal_lm(tmp_path, torch.device("cpu"), torch.float32, "sdpa")  # intact (tied lm_head absent): loads
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["model.layers.0.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserInputError) as e:
        load_causal_lm(tmp_path, torch.device("cpu"), torch.float32, "sdpa")
    assert "model.layers.0.mlp.up_proj.weight is missing from" in str(e.value)
    assert str(tmp_path / "model.safetensors") in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ 2 values
def test_2_ratings_outside_the_range_and_invisible_titles_are_dropped_by_name(tmp_path):
    from trainers.data.amazon_interactions import load_interactions
    from trainers.data.amazon_items import load_items

    csv = tmp_path / "ratings.csv"
    csv.write_text("user_id,parent_asin,rating,timestamp\n" + "".join(
        f"u{i},A,{r},1650000000000\n" for i, r in enumerate(["5", "1.0", "4.5", "0", "99", "-1", "1e308"])))
    x = load_interactions(csv, reviews_jsonl=False)
    assert len(x) == 3 and x.dropped["rating_out_of_range"] == 4 and sorted(x.rating) == [1.0, 4.5, 5.0]
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps({"parent_asin": a, "title": t, "price": 1.0}) + "\n"
                            for a, t in (("A", "A game"), ("Z", "\u200b\u200b \u200b"), ("Y", "\u2060\u0301"))))
    items, dropped, counts = load_items(meta)
    assert list(items) == ["A"] and dropped == {"Z": "invisible_title", "Y": "invisible_title"}
    assert counts["invisible_title"] == 2


# ------------------------------------------------------------------------------------------------ 3 redaction
def test_3_redaction_is_linear_and_covers_url_encoded_keys():
    from foundation.errors import redact

    key = "sk-adv-0123456789abcdef777"

    def on_alarm(*_):
        raise TimeoutError("redaction of 1 MB did not finish: super-linear")

    text = "a" * 1_000_000  # a long run of key characters: the old masked-key regex backtracked quadratically
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(10)
    try:
        t0 = time.perf_counter()
        text.count("\0")
        scan = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert redact(text, key) == text
        took = time.perf_counter() - t0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert took < 20_000 * max(scan, 1e-5), f"redaction {took / scan:.0f}x a plain scan"
    pct = "".join(f"%{ord(c):02x}" for c in key)
    assert redact(f"url?key={pct}&x=1", key) == "url?key=***&x=1"
    assert redact(f"q={key[:9]}+{key[9:]}", key) == "q=***"


# ------------------------------------------------------------------------------------------------ 4 OS errors
REFUSED_APPEND = textwrap.dedent("""
    import resource, sys
    from foundation.errors import exit_on_user_error
    from foundation.files import append_jsonl
    with exit_on_user_error():
        append_jsonl(sys.argv[1], [{"id": 0}])
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        append_jsonl(sys.argv[1], [{"id": 1, "text": "x" * 100_000}])
""")


def test_4_a_refused_write_is_one_line_exit_1_and_a_malformed_lock_is_garbage(tmp_path):
    rows = tmp_path / "responses.jsonl"
    r = subprocess.run([sys.executable, "-c", REFUSED_APPEND, str(rows)], cwd=REPO, capture_output=True, text=True,
                       env=_env(), timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    _one_error_line(r.stderr, f"cannot write {rows}", "File too large (EFBIG)")
    assert rows.read_text() == '{"id": 0}\n'  # cut back to the last whole row: a rerun appends after it

    from foundation.files import RunLock

    (tmp_path / ".lock").write_text(json.dumps({"pid": "abc", "host": "h", "started": "now"}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


# ------------------------------------------------------------------------------------------------ 5 signals
LONG_LOAD = textwrap.dedent("""
    import time
    from foundation.errors import exit_on_user_error
    with exit_on_user_error():
        print("loading", flush=True)
        time.sleep(60)
""")
# A server whose Ctrl-C is its normal way to stop (it stops cleanly, exit 0) needs no handler.
NOT_LONG_RUNNING = {"tools/loopback_llm_server.py"}


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_5_a_signal_ends_a_script_in_one_line(sig, status):
    """The one home (foundation.errors.exit_on_user_error): Ctrl-C or SIGTERM while a script loads or works is one
    line and 128 + the signal, and every long-running script's main body runs inside it."""
    proc = subprocess.Popen([sys.executable, "-c", LONG_LOAD], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "loading"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status, err
    _one_error_line(err, f"interrupted by {signal.Signals(sig).name}")
    from tests.test_cli_help import SCRIPTS

    homes = ("exit_on_user_error", ".script_errors()", "inference_cli")  # the latter two enter it (the API
    # scripts through trainers/evaluation/options.py: ApiClientOptions.script_errors)
    without = [s for s in SCRIPTS if s not in NOT_LONG_RUNNING and not any(h in (REPO / s).read_text() for h in homes)]
    assert not without, f"scripts whose Ctrl-C would print a traceback: {without}"


# ------------------------------------------------------------------------------------------------ 6 JSON
def test_6_deeply_nested_or_oversized_json_is_one_line(tmp_path):
    from trainers.evaluation.results import load_result_json

    deep = tmp_path / "reference.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserInputError, match=r"--reference_json .*reference.json: .*nested deeper than") as e:
        load_result_json(deep)
    assert "\n" not in str(e.value)
    from foundation.files import JsonLimitError, read_json

    (tmp_path / "nested.json").write_text(json.dumps({"samples": []} | {"meta": json.loads("[" * 500 + "]" * 500)}))
    with pytest.raises(JsonLimitError, match="nested deeper than 100 levels"):
        read_json(tmp_path / "nested.json")  # parses, but a recursive consumer could still overflow on it
    with pytest.raises(JsonLimitError, match="more than the 100 bytes"):
        read_json(tmp_path / "nested.json", max_bytes=100)


# ------------------------------------------------------------------------------------------------ 7 flags
def test_7_every_seed_flag_refuses_values_numpy_cannot_take_at_parse_time():
    from tests.test_cli_help import SCRIPTS, _all_parsers, get_parser

    checked, failures = [], []
    for script in SCRIPTS:
        with pytest.MonkeyPatch.context() as mp:  # get_parser may patch argparse to capture the parser
            top = get_parser(script, mp)
        for parser in _all_parsers(top):
            for action in parser._actions:
                if action.dest != "seed":
                    continue
                checked.append(script)
                for bad in ("-1", str(2 ** 32)):
                    try:
                        parser.parse_args([action.option_strings[0], bad] + _required_args(parser))
                        failures.append(f"{script}: {action.option_strings[0]} {bad} accepted")
                    except SystemExit as e:
                        if e.code != 2:
                            failures.append(f"{script}: {bad}: exit {e.code}")
    assert len(checked) >= 10 and not failures, "\n".join(failures)


def _required_args(parser) -> list[str]:
    """Dummy values of a parser's required flags, so only the flag under test can fail."""
    out = []
    for a in parser._actions:
        if a.required and a.option_strings:
            out += [a.option_strings[0], "x"]
    return out


# ------------------------------------------------------------------------------------------------ 8 borderline
def test_8_a_bom_csv_is_read_and_a_file_given_for_a_directory_says_so(tmp_path):
    from trainers.data.amazon_interactions import load_interactions
    from trainers.data.dataset import load_processed_dataset

    csv = tmp_path / "ratings.csv"
    csv.write_bytes(b"\xef\xbb\xbfuser_id,parent_asin,rating,timestamp\nu1,A,5.0,1650000000000\n")
    assert len(load_interactions(csv, reviews_jsonl=False)) == 1
    with pytest.raises(UserInputError, match=r"--dataset_path .*ratings.csv: is a file, expected a directory"):
        load_processed_dataset(csv)
