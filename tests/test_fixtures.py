"""The offline tiny Qwen2 and its tokenizer behave like a real HF checkpoint."""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.fixtures.assets import build_tiny_qwen


def test_tiny_qwen_loads_through_auto_classes_and_generates(tmp_path):
    d = build_tiny_qwen(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    assert model.config.model_type == "qwen2"
    text = tok.apply_chat_template([{"role": "user", "content": "Racing game?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    # special tokens are single ids, not split into bytes
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids["input_ids"][0].tolist()
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert len(tok(" Yes", add_special_tokens=False)["input_ids"]) == 1
    assert len(tok(" No", add_special_tokens=False)["input_ids"]) == 1
    # round trip of ordinary text through the byte-level BPE
    s = "Super Racing Turbo 3 &amp; friends"
    assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s


def test_tiny_qwen_is_seeded(tmp_path):
    a = AutoModelForCausalLM.from_pretrained(build_tiny_qwen(tmp_path / "a", seed=1))
    b = AutoModelForCausalLM.from_pretrained(build_tiny_qwen(tmp_path / "b", seed=1))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
