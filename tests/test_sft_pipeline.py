"""The SFT chain (docs/sft.md) on the synthetic dataset and the tiny model, offline on CPU:

generate_prompts -> get_response_by_deepseek (real HTTP against fixtures/loopback_server.py, answering
correctly / wrongly / unparseably / with an API error by prompt id) -> process_sft_data -> train_sft ->
train.py starting from the SFT model, and LLaMA-Factory file consistency. The unit tests of
trainers/data/sft.py (match_ratio, drop counts, the prompt loss mask) are in tests/trainers/data/test_sft.py, the Yes/No
parser's in tests/prompters/test_answer_parsing.py.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prompters.answer_parsing import parse_yes_no
from tests.fixtures.scripts import load_script
from trainers.data.sft import (
    IGNORE_INDEX,
)

REPO = Path(__file__).resolve().parents[1]

CAT = "Video_Games"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "DEEPSEEK_API_KEY": "sk-test-SFT-SECRET"}


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert p.returncode == 0, f"{args[0]} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tests.fixtures.assets import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny") / "tiny-qwen")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    from fixtures.synthetic_amazon import build_processed_dataset

    return build_processed_dataset(tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("data"), CAT,
                                   n_users=120, n_items=80, n_subcats=3, min_items=10)


# ---------------------------------------------------------------------------------------------- unit checks


def _load_yaml(path: Path) -> dict:
    try:
        import yaml

        return yaml.safe_load(path.read_text())
    except ImportError:  # flat key: value file; enough for the fields checked here
        out = {}
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and ":" in line:
                k, v = line.split(":", 1)
                out[k.strip()] = v.split("#")[0].strip()
        return out


def test_shipped_llamafactory_files_come_from_the_one_definition():
    """sft_train/dataset_info.json is exactly what trainers.data.sft.dataset_info() renders, and sft.yaml trains on
    a registered dataset whose file is process_sft_data's default output."""
    from trainers.data.sft import dataset_info, render_dataset_info

    assert (REPO / "sft_train/dataset_info.json").read_text() == render_dataset_info(dataset_info())
    info = dataset_info()
    cfg = _load_yaml(REPO / "sft_train/sft.yaml")
    assert cfg["dataset"] in info and cfg["stage"] == "sft" and cfg["dataset_dir"] == "sft_train"
    assert cfg["finetuning_type"] in ("full", "lora") and cfg["template"] == "qwen"
    for key in ("model_name_or_path", "cutoff_len", "output_dir", "bf16", "do_train"):
        assert key in cfg
    process_sft_data = load_script("sft_train/process_sft_data.py")
    for fmt in ("alpaca", "sharegpt"):
        registered = info[f"ourrec_sft_{fmt}"]["file_name"]
        assert process_sft_data.default_output(fmt) == os.path.join(cfg["dataset_dir"], registered)


SFT_ROWS = [{"id": 0, "prompt": "p", "label": "Yes", "response": "Answer: Yes"},
            {"id": 1, "prompt": "q", "label": "No", "response": "Answer: No"}]


def _process(tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        load_script("sft_train/process_sft_data.py").main(
            ["--input_file", str(_write_jsonl(tmp_path / "responses.jsonl", SFT_ROWS)), *args])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt"])
@pytest.mark.parametrize("system", [None, "be brief"])
def test_records_have_exactly_the_registered_columns(fmt, system, tmp_path, capsys):
    """Issue 15: LLaMA-Factory reads every column dataset_info.json maps (KeyError: 'system' when a record lacks
    one). For both formats, with and without --system, the records carry exactly the registered columns, and the
    dataset_info.json written next to them equals the shipped registration."""
    out_dir = tmp_path / "data"
    out = out_dir / f"ourrec_sft_{fmt}.json"
    code, text = _process(tmp_path, capsys, "--output_file", str(out), "--format", fmt,
                          *(["--system", system] if system else []))
    assert code == 0, text
    assert f"dataset_dir: {out_dir}  dataset: ourrec_sft_{fmt}" in text
    info = json.loads((out_dir / "dataset_info.json").read_text())
    shipped = json.loads((REPO / "sft_train/dataset_info.json").read_text())
    assert info == {f"ourrec_sft_{fmt}": shipped[f"ourrec_sft_{fmt}"]}
    entry = info[f"ourrec_sft_{fmt}"]
    recs = json.loads(out.read_text())
    assert len(recs) == 2
    for rec in recs:
        assert set(rec) == set(entry["columns"].values())
        assert rec[entry["columns"]["system"]] == (system or "")
        if fmt == "sharegpt":
            turns = rec[entry["columns"]["messages"]]
            assert {k for t in turns for k in t} == {entry["tags"]["role_tag"], entry["tags"]["content_tag"]}
            tags = entry["tags"]
            assert [t[tags["role_tag"]] for t in turns] == [tags["user_tag"], tags["assistant_tag"]]
        else:
            assert rec["input"] == "" and rec["output"].startswith("Answer:")


def test_dataset_info_is_merged_and_foreign_files_are_refused(tmp_path, capsys):
    out_dir = tmp_path / "LLaMA-Factory-data"
    out_dir.mkdir()
    (out_dir / "dataset_info.json").write_text(json.dumps({"alpaca_en": {"file_name": "alpaca_en.json"}}))
    code, text = _process(tmp_path, capsys, "--output_file", str(out_dir / "judge.json"), "--format", "sharegpt")
    assert code == 0, text
    assert "dataset: judge" in text
    info = json.loads((out_dir / "dataset_info.json").read_text())
    assert info["alpaca_en"] == {"file_name": "alpaca_en.json"}  # the other entries are kept
    assert info["judge"]["file_name"] == "judge.json" and info["judge"]["formatting"] == "sharegpt"
    # an output that is not SFT data, or a broken dataset_info.json: one line, nothing touched
    for target, info_text in ((out_dir / "dataset_info.json", None), (tmp_path / "ok" / "x.json", "{broken")):
        if info_text is not None:
            target.parent.mkdir()
            (target.parent / "dataset_info.json").write_text(info_text)
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        code, text = _process(tmp_path, capsys, "--output_file", str(target))
        assert code == 2 and len(text.strip().splitlines()) == 1 and "--output_file" in text
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(importlib.util.find_spec("llamafactory") is None, reason="LLaMA-Factory is not installed")
@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt"])
@pytest.mark.parametrize("system", [None, "be brief"])
def test_llamafactory_loads_our_data(fmt, system, tiny, tmp_path, capsys):
    """LLaMA-Factory's own dataset loader (its test helper: dataset_info.json parsing, format conversion,
    tokenisation with its qwen template) on our output, exactly as `llamafactory-cli train sft.yaml` reads it."""
    from llamafactory.train.test_utils import load_dataset_module

    out_dir = tmp_path / "data"
    code, text = _process(tmp_path, capsys, "--output_file", str(out_dir / f"ourrec_sft_{fmt}.json"), "--format",
                          fmt, *(["--system", system] if system else []))
    assert code == 0, text
    module = load_dataset_module(stage="sft", do_train=True, model_name_or_path=str(tiny), finetuning_type="full",
                                 dataset=f"ourrec_sft_{fmt}", dataset_dir=str(out_dir), template="qwen",
                                 cutoff_len=512, overwrite_cache=True, output_dir=str(tmp_path / "lf_out"),
                                 report_to="none")
    train = module["train_dataset"]
    assert len(train) == len(SFT_ROWS)
    from models.abstract_models import load_tokenizer

    tok = load_tokenizer(tiny)
    for ex, row in zip(train, SFT_ROWS):
        answer = tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])
        assert row["response"] in answer and row["prompt"] in tok.decode(ex["input_ids"])


def _llamafactory_cli() -> str | None:
    """llamafactory-cli: OURREC_LLAMAFACTORY_CLI (an installation in its own environment: its pinned transformers
    and peft differ from ours), else one on PATH."""
    import shutil

    return os.environ.get("OURREC_LLAMAFACTORY_CLI") or shutil.which("llamafactory-cli")


@pytest.mark.skipif(_llamafactory_cli() is None, reason="LLaMA-Factory is not installed (OURREC_LLAMAFACTORY_CLI)")
def test_llamafactory_cli_trains_with_the_shipped_yaml_on_cpu(tiny, tmp_path, capsys):
    """docs/distributed.md's CPU command, `llamafactory-cli train sft_train/sft.yaml bf16=false` (+ this test's model,
    data and length), trains a few steps on our SFT data, and its output is a train.py --model_name_or_path."""
    rows = [{"id": i, "prompt": f"The user bought Racing games. Will the user like item {i}?",
             "label": "Yes" if i % 2 else "No", "response": f"Answer: {'Yes' if i % 2 else 'No'}"} for i in range(8)]
    capsys.readouterr()
    load_script("sft_train/process_sft_data.py").main(
        ["--input_file", str(_write_jsonl(tmp_path / "responses.jsonl", rows)), "--output_file",
         str(tmp_path / "data" / "ourrec_sft_alpaca.json"), "--format", "alpaca"])
    out = tmp_path / "lf_out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    if extra:  # what the caller put on the path for that environment, without this repository
        env["PYTHONPATH"] = os.pathsep.join(extra)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", WANDB_DISABLED="true")
    r = subprocess.run([_llamafactory_cli(), "train", "sft_train/sft.yaml", "bf16=false",
                        f"model_name_or_path={tiny}", f"dataset_dir={tmp_path / 'data'}", f"output_dir={out}",
                        "max_steps=2", "save_steps=2", "logging_steps=1", "cutoff_len=256",
                        "preprocessing_num_workers=1"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file

    from models.abstract_models import check_model_dir

    check_model_dir(out)
    before, after = load_file(str(tiny / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before if k in after)


# ---------------------------------------------------------------------------------------------- the chain
def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _kind(i: int) -> str:
    """What the loopback API answers for prompt id i."""
    return ("right", "right_think", "right", "wrong", "unparseable", "api_error")[i % 6]


def _api_answers(prompts: list[dict]):
    """A responder for LoopbackAPI keyed by the user message (each prompt text maps to one label/id)."""
    by_prompt = {r["prompt"]: r for r in prompts}

    def responder(req: dict, n: int):
        user = [m["content"] for m in req["messages"] if m["role"] == "user"][-1]
        r = by_prompt[user]
        lab, other = r["label"], "No" if r["label"] == "Yes" else "Yes"
        k = _kind(r["id"])
        if k == "right":
            return f"The history suggests the user's taste.\nAnswer: {lab}"
        if k == "right_think":
            return {"content": f"Answer: {lab}", "reasoning_content": f"Maybe {other.lower()}, but overall {lab}."}
        if k == "wrong":
            return f"Answer: {other}"
        if k == "unparseable":
            return "I cannot decide from this history."
        return {"status": 400, "content": "invalid request"}  # a client error: recorded, not retried

    return responder


def _get_responses(prompts_file: Path, out: Path, prompts: list[dict]) -> None:
    from fixtures.loopback_server import LoopbackAPI

    script = REPO / "sft_train/get_response_by_deepseek.py"
    with LoopbackAPI(_api_answers(prompts)) as api:
        args = [str(script.relative_to(REPO)), "--input_file", str(prompts_file), "--output_file", str(out),
                "--api_base", api.url, "--model", "loopback-model", "--max_retries", "1", "--concurrency", "2",
                "--timeout", "20", "--backoff_base", "0.01", "--no_progress"]
        _run(*args)
        assert all(r["headers"].get("authorization") == "Bearer sk-test-SFT-SECRET" for r in api.requests)
    assert "sk-test-SFT-SECRET" not in out.read_text()


def _script(name: str):
    """Import sft_train/<name>.py (its main(argv) runs in-process: saves a second interpreter's import time)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"sft_{name}", REPO / "sft_train" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_full_chain(tiny, dataset_dir, tmp_path, capsys):
    from foundation.files import read_jsonl

    prompts_file, resp, sft_json = tmp_path / "prompts.jsonl", tmp_path / "resp.jsonl", tmp_path / "sft.json"
    _script("generate_prompts").main(["--dataset_dir", str(dataset_dir), "--num_samples", "24",
         "--match_ratio", "0.5", "--tokenizer", str(tiny), "--output_file", str(prompts_file), "--reasoning",
         "--max_len_per_item", "12", "--user_window_size", "3", "--K", "8"])
    prompts = read_jsonl(prompts_file)
    assert len(prompts) == 24 and all("Answer: Yes" in r["prompt"] for r in prompts)  # reasoning instruction

    _get_responses(prompts_file, resp, prompts)
    responses = {int(r["id"]): r for r in read_jsonl(resp)}
    assert sorted(responses) == list(range(24))
    for i, r in responses.items():
        assert r["label"] == prompts[i]["label"]
        assert bool(r.get("error")) == (_kind(i) == "api_error")

    capsys.readouterr()
    _script("process_sft_data").main(["--input_file", str(resp), "--output_file", str(sft_json),
                                      "--format", "alpaca", "--keep_reasoning"])
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    kinds = [_kind(i) for i in range(24)]
    assert counts == {"kept": kinds.count("right") + kinds.count("right_think"), "wrong": kinds.count("wrong"),
                      "unparseable": kinds.count("unparseable"), "api_error": kinds.count("api_error"), "empty": 0}
    recs = json.loads(sft_json.read_text())
    kept_ids = [i for i in range(24) if _kind(i).startswith("right")]
    assert [r["instruction"] for r in recs] == [prompts[i]["prompt"] for i in kept_ids]
    assert all(parse_yes_no(r["output"]) == prompts[i]["label"] for r, i in zip(recs, kept_ids))
    assert all(r["output"].startswith("<think>\nMaybe") for r, i in zip(recs, kept_ids) if _kind(i) == "right_think")

    sft_out = tmp_path / "sft_model"
    _script("train_sft").main(["--model_name_or_path", str(tiny), "--data_file", str(sft_json),
                               "--output_dir", str(sft_out), "--max_steps", "2", "--per_device_train_batch_size", "2",
                               "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--max_length", "256",
                               "--save_steps", "1", "--logging_steps", "1", "--device", "cpu"])
    logs = read_jsonl(sft_out / "metrics.jsonl")
    assert [l["step"] for l in logs if "loss" in l] == [1, 2] and all(math.isfinite(l["loss"]) for l in logs if "loss" in l)
    # the keys every trainer's metrics.jsonl shares (trainers/base_trainer.py): HF's learning_rate is lr
    assert all(0 <= l["lr"] <= 1e-3 and l["wall_time_s"] >= 0 and "learning_rate" not in l
               for l in logs if "loss" in l)
    assert (sft_out / "checkpoint-2").is_dir() and (sft_out / "config.json").is_file()
    got = json.loads((sft_out / "sft_args.json").read_text())["distribution"]
    assert (got["mode"], got["processes"], got["mixed_precision"]) == ("single process", 1, "no")
    from safetensors.torch import load_file

    before, after = load_file(str(tiny / "model.safetensors")), load_file(str(sft_out / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before)  # the SFT really updated the weights

    # the SFT'd model is a valid --model_name_or_path for train.py
    rl = tmp_path / "rl"
    _run("train.py", "--model_name_or_path", str(sft_out), "--dataset_path", str(dataset_dir), "--K", "4",
         "--K_eval", "4", "--batch_size", "2", "--max_steps", "1", "--ppo_epochs", "1", "--output_dir", str(rl),
         "--num_valid_samples", "4", "--no_plot", "--max_len_per_item", "12", "--user_window_size", "3",
         "--print_every", "0", "--device", "cpu")
    rows = read_jsonl(rl / "metrics.jsonl")
    assert rows and rows[0]["step"] == 1

    # LoRA: the SFT run saves an adapter (naming its base), which train.py continues to train as its model
    lora_out = tmp_path / "sft_lora"
    _script("train_sft").main(["--model_name_or_path", str(tiny), "--data_file", str(sft_json),
                               "--output_dir", str(lora_out), "--max_steps", "2", "--per_device_train_batch_size", "2",
                               "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--max_length", "256",
                               "--save_steps", "10", "--logging_steps", "1", "--device", "cpu", "--use_lora",
                               "--lora_r", "4"])
    from models.abstract_models import is_adapter_dir

    assert is_adapter_dir(lora_out) and not (lora_out / "model.safetensors").exists()
    assert json.loads((lora_out / "adapter_config.json").read_text())["r"] == 4
    _run("train.py", "--model_name_or_path", str(lora_out), "--dataset_path", str(dataset_dir), "--K", "4",
         "--K_eval", "4", "--batch_size", "2", "--max_steps", "1", "--ppo_epochs", "1", "--output_dir",
         str(tmp_path / "rl_lora"), "--num_valid_samples", "4", "--no_plot", "--max_len_per_item", "12",
         "--user_window_size", "3", "--print_every", "0", "--device", "cpu")
    assert is_adapter_dir(tmp_path / "rl_lora" / "checkpoint-1")


def test_generate_prompts_model_type_family_and_output_check(tiny, dataset_dir, tmp_path, monkeypatch, capsys):
    """The original README's `--model_type qwen` names a model family, resolved through paths.py (here to the tiny
    model by its per-model variable); it renders the same prompts as the directory itself. An existing output that
    is not a prompt file is refused untouched."""
    gen = _script("generate_prompts")
    common = ["--dataset_dir", str(dataset_dir), "--num_samples", "6", "--max_len_per_item", "8",
              "--user_window_size", "3", "--K", "6"]
    monkeypatch.setenv("OURREC_MODEL_QWEN2_5_3B_INSTRUCT", str(tiny))
    gen.main([*common, "--model_type", "qwen", "--output_file", str(tmp_path / "a.jsonl")])
    gen.main([*common, "--model_type", str(tiny), "--output_file", str(tmp_path / "b.jsonl")])
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    gen.main([*common, "--model_type", "Qwen", "--output_file", str(tmp_path / "a.jsonl")])  # a rerun replaces it
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"id": 1, "response": "an answer file, not prompts"}\n')
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        gen.main([*common, "--model_type", "qwen", "--output_file", str(notes)])
    assert e.value.code == 2 and "not a prompt file" in capsys.readouterr().err
    assert notes.read_text() == '{"id": 1, "response": "an answer file, not prompts"}\n'
    monkeypatch.delenv("OURREC_MODEL_QWEN2_5_3B_INSTRUCT")
    monkeypatch.setenv("OURREC_MODEL_ROOT", str(tmp_path / "no_models"))
    with pytest.raises(SystemExit) as e:
        gen.main([*common, "--model_type", "gemma", "--output_file", str(tmp_path / "c.jsonl")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--model_type gemma" in err and "gemma-2-2b-it" in err
