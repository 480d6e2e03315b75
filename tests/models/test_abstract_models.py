"""models/abstract_models.py: an adapter we save records its base model portably (save_lm, portable_model_ref), so
plain peft loads it from any working directory. Attention-implementation choices (resolve_attn_implementation,
attention_softcap) are tested with the scoring paths they serve in tests/models/test_shared_prefix.py."""
from __future__ import annotations

import json
import shutil

from tests.test_third_party_models import tiny  # noqa: F401 (module fixture)


def test_our_adapter_records_a_base_that_plain_peft_finds_from_elsewhere(tiny, tmp_path, monkeypatch):  # noqa: F811 (fixture)
    """A judge trained on a base given as a relative path (`--model_name_or_path demo/tiny-qwen`) saves an adapter
    that AutoPeftModelForCausalLM loads from another working directory (offline: a relative name would be taken
    for a hub id)."""
    from peft import AutoPeftModelForCausalLM

    from models.abstract_models import LoraSettings
    from models.qwen_models import BinaryJudge

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tiny.parent)
    judge = BinaryJudge.load(tiny.name, device="cpu", dtype="fp32", lora=LoraSettings(r=4, target_modules=["q_proj"]))
    judge.save(tmp_path / "adapter")
    recorded = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(tiny.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    lm = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"))
    assert lm.peft_config["default"].r == 4
    shutil.rmtree(tmp_path / "adapter")
