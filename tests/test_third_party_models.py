"""Models made elsewhere go in: a PEFT adapter in LLaMA-Factory's layout (adapter_config.json +
adapter_model.safetensors + tokenizer, its HF checkpoint-N beside it, no heads.safetensors) and a plain full model
directory evaluate with test.py, compare_model/rrec.py and the local inference tools; errors name the path given
(adapters we save record a base that resolves from any working directory: tests/models/test_abstract_models.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.fixtures.scripts import run_main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from tests.fixtures.assets import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny") / "tiny-qwen")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from fixtures.synthetic_amazon import build_processed_dataset

    return build_processed_dataset(tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("data"), "Video_Games",
                                   n_users=60, n_items=40, n_subcats=3, min_items=10)


@pytest.fixture(scope="module")
def lf_adapter(tiny, tmp_path_factory) -> Path:
    """What `llamafactory-cli train ... finetuning_type=lora` writes, built with peft itself: the adapter and the
    tokenizer in the output dir, a HF Trainer checkpoint-N inside it, no value head anywhere."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("llamafactory") / "lora_out"
    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny)),
                        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():  # a trained adapter: lora_B is no longer zero
        gen = torch.Generator().manual_seed(0)
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    for d in (out, out / "checkpoint-2"):
        lm.save_pretrained(str(d))
        AutoTokenizer.from_pretrained(str(tiny)).save_pretrained(str(d))
    (out / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert not list(out.rglob("heads.safetensors"))
    return out


def _test_py(tmp_path, monkeypatch, capsys, *args):
    return run_main("test.py", ["--dataset_path", str(args[0]), "--K", "4", "--K_eval", "3", "--num_samples", "3",
                                "--device", "cpu", "--no_progress", *args[1:]], monkeypatch, capsys)


def _scores(out: Path) -> list:
    return [x for s in json.loads((out / "results.json").read_text())["samples"] for x in s["scores"]]


def test_test_py_takes_a_llamafactory_adapter_and_a_full_model(tiny, dataset, lf_adapter, tmp_path, monkeypatch,
                                                               capsys):
    base = tmp_path / "base"
    code, _, err = _test_py(tmp_path, monkeypatch, capsys, dataset, "--model_name_or_path", str(tiny),
                            "--output_dir", str(base))
    assert code == 0, err
    for name, extra in (("resume", ["--model_name_or_path", str(tiny), "--resume_from", str(lf_adapter)]),
                        ("as_model", ["--model_name_or_path", str(lf_adapter)]),  # its recorded base
                        ("ckpt", ["--model_name_or_path", str(tiny), "--resume_from",
                                  str(lf_adapter / "checkpoint-2")])):
        code, _, err = _test_py(tmp_path, monkeypatch, capsys, dataset, *extra, "--output_dir", str(tmp_path / name))
        assert code == 0, f"{name}: {err}"
    assert _scores(tmp_path / "resume") == _scores(tmp_path / "as_model") == _scores(tmp_path / "ckpt")
    assert _scores(tmp_path / "resume") != _scores(base)  # the adapter is applied

    # a full model saved by someone else (no heads.safetensors) as --resume_from
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    full = tmp_path / "full_model"
    AutoPeftModelForCausalLM.from_pretrained(str(lf_adapter)).merge_and_unload().save_pretrained(str(full))
    AutoTokenizer.from_pretrained(str(tiny)).save_pretrained(str(full))
    code, _, err = _test_py(tmp_path, monkeypatch, capsys, dataset, "--model_name_or_path", str(tiny),
                            "--resume_from", str(full), "--output_dir", str(tmp_path / "full"))
    assert code == 0, err
    assert _scores(tmp_path / "full") == pytest.approx(_scores(tmp_path / "resume"), abs=1e-4)

    # a directory with checkpoints but no model: the error names the path given, not 'last'
    junk = tmp_path / "not_a_model"
    (junk / "checkpoint-1").mkdir(parents=True)
    code, _, err = _test_py(tmp_path, monkeypatch, capsys, dataset, "--resume_from", str(junk),
                            "--output_dir", str(tmp_path / "junk"))
    last = err.strip().splitlines()[-1]  # after the warning about the skipped checkpoint-1
    assert code == 2 and last.startswith(f"test.py: error: --resume_from {junk}: neither a model directory"), err


def test_rrec_py_and_local_inference_take_a_llamafactory_adapter(tiny, dataset, lf_adapter, tmp_path, monkeypatch,
                                                                 capsys):
    code, _, err = run_main("compare_model/rrec.py", [
        "--checkpoint_path", str(lf_adapter), "--dataset_dir", str(dataset), "--K", "4", "--num_samples", "2",
        "--max_new_tokens", "2", "--user_window_size", "3", "--device", "cpu", "--no_progress",
        "--output_file", str(tmp_path / "rrec.json")], monkeypatch, capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "rrec.json").read_text())["meta"]
    assert meta["model"] == str(lf_adapter) and meta["checkpoint_kind"].startswith("foreign PEFT adapter")

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": 0, "label": "Yes", "prompt": "Will the user like Racing games?"}) + "\n")
    code, _, err = run_main("tools/run_qwen_sft.py", [
        "--model_path", str(lf_adapter), "--input_file", str(prompts), "--output_file", str(tmp_path / "r.jsonl"),
        "--device", "cpu", "--max_new_tokens", "3"], monkeypatch, capsys)
    assert code == 0 and len((tmp_path / "r.jsonl").read_text().splitlines()) == 1, err
    code, out, err = run_main("tools/run_qwen_sft_once.py", [
        "--model_dir", str(tiny), "--resume_from", str(lf_adapter), "--device", "cpu", "--max_new_tokens", "3",
        "--prompt", "Yes or No?"], monkeypatch, capsys)
    assert code == 0 and "[parsed answer:" in out and f"weights from {lf_adapter})" in err, err


