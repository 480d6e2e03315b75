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


def test_tiny_tokenizer_does_not_depend_on_where_the_repo_is(tmp_path):
    """The tokenizer (hence the demo model and every demo figure) is the same from any checkout path: its
    training texts are the prompt constants and the corpus, never a module's __file__."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    elsewhere = tmp_path / "another place" / "checkout"
    for name in ("foundation", "prompters", "models", "trainers", "fixtures"):
        shutil.copytree(repo / name, elsewhere / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(repo / "paths.py", elsewhere / "paths.py")
    code = ("import sys; from fixtures.tiny_model import build_tiny_tokenizer; "
            "import fixtures.tiny_model as t; assert t.__file__.startswith(sys.argv[2]), t.__file__; "
            "build_tiny_tokenizer(sys.argv[1], corpus=['Racing game', 'Puzzle box'])")
    texts = []
    for where, out in ((repo, tmp_path / "a"), (elsewhere, tmp_path / "b")):
        r = subprocess.run([sys.executable, "-c", code, str(out), str(where)], cwd=where, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        texts.append((out / "tokenizer.json").read_text())
    assert texts[0] == texts[1]
