"""models/rrec_models.py (the RRec baseline's model): the similarity settings (cosine/dot/L2 with temperature);
reasoning stops at the first <answer> and the user and item vectors are read there (right padding changes
neither); the token log-probs are the causal LM's own (Gemma-2's final logit soft-capping included). Upstream
behaviour of the RRec pipeline as a whole: tests/test_rrec.py."""
from __future__ import annotations

import math

import pytest
import torch

from tests.test_rrec import CAT, _example, _item_rows, tiny_model  # noqa: F401 (tiny_model: module fixture)


def test_similarity_settings():
    from models.rrec_models import RRecSettings

    u, v = torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0], [0.0, 1.0], [-3.0, -4.0]])
    assert RRecSettings().similarity(u, v)[0].tolist() == pytest.approx([50.0, 40.0, -50.0])  # cosine / 0.02
    raw = RRecSettings(similarity_normalization=False, similarity_temperature=1.0)
    assert raw.similarity(u, v)[0].tolist() == pytest.approx([50.0, 4.0, -25.0])
    assert RRecSettings(similarity_type="L2", similarity_temperature=1.0).similarity(u, v)[0].tolist() == \
        pytest.approx([0.0, -math.dist([0.6, 0.8], [0.0, 1.0]), -2.0], abs=1e-6)


def test_generation_stops_at_answer_and_vectors_are_read_there(tiny_model):  # noqa: F811 (fixture)
    """Reasoning stops at the first <answer> (a batch row that never writes it runs to --max_new_tokens); the
    user vector is the final hidden state after the final norm at the last token of that <answer>, the item
    vector at the last token of the pre-filled <answer>; right padding changes neither."""
    from transformers import LogitsProcessor

    from models.rrec_models import RRecModel
    from prompters.rrec_prompter import RRecPrompter

    model = RRecModel.load(str(tiny_model), device="cpu", dtype="fp32")
    tok = model.tokenizer
    p = RRecPrompter(tok, _item_rows(), CAT, user_window_size=3)

    def enc(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    scripts = [enc("I like RPGs. <answer>Zelda</answer> and more"), enc(" no tag here at all, none of it") * 2]
    prompt_len = {}

    class Scripted(LogitsProcessor):  # forces row b to write scripts[b % 2]
        def __call__(self, input_ids, scores):
            t = input_ids.shape[1] - prompt_len["n"]
            forced = torch.full_like(scores, float("-inf"))
            for b in range(input_ids.shape[0]):
                forced[b, scripts[b % 2][t]] = 0.0
            return forced

    generate = model.lm.generate

    def scripted_generate(input_ids, **kw):
        prompt_len["n"] = input_ids.shape[1]
        return generate(input_ids=input_ids, logits_processor=[Scripted()], **kw)

    model.lm.generate = scripted_generate
    exs = [_example(), {**_example(), "history_item_id": [4, 1, 2, 4]}]  # two prompt lengths: left padding
    prompts = [p.user_ids(e) for e in exs]
    texts, counts = model.generate_reasoning(prompts, 14, stop_token_ids=p.stop_token_ids())
    assert texts[0] == "I like RPGs. <answer>" and counts[0] == len(enc("I like RPGs. <answer>")) == 10
    assert counts[1] == 14 and texts[1] == tok.decode(scripts[1][:14]) and "<answer>" not in texts[1]

    seqs = [p.user_sequence_ids(e, t, pr)[0] for e, t, pr in zip(exs, texts, prompts)]
    seqs.append(p.item_ids(1))
    assert all(tok.decode(s).endswith("<answer>") for s in seqs)
    emb = model.embed_sequences(seqs, batch_size=3)  # one right-padded batch
    captured = {}
    hook = model.backbone().norm.register_forward_hook(lambda m, i, o: captured.update(out=o))
    try:
        for b, s in enumerate(seqs):
            with torch.no_grad():
                model.backbone()(input_ids=torch.tensor([s]))
            assert torch.allclose(emb[b], captured["out"][0, -1].float(), atol=1e-5), b
    finally:
        hook.remove()


@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_token_logprobs_are_the_models_own(tiny_model, family):  # noqa: F811 (fixture)
    """The token loss's log-probs are log_softmax of the causal LM's own logits at the completion tokens (for
    Gemma-2 after its final logit soft-capping, as upstream's Gemma2ForCausalLM forward gives them)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.abstract_models import load_tokenizer, pad_right
    from models.rrec_models import RRecModel, RRecSettings

    tok = load_tokenizer(tiny_model)
    torch.manual_seed(0)
    if family == "qwen2":
        lm = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    else:
        cfg = AutoConfig.for_model("gemma2", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                   final_logit_softcapping=0.5, pad_token_id=tok.pad_token_id)
        lm = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    model = RRecModel(lm, tok, RRecSettings(model_type="gemma" if family == "gemma2" else "qwen")).eval()
    seqs = [tok("I like RPGs. <answer>", add_special_tokens=False)["input_ids"],
            tok("Zelda <answer>", add_special_tokens=False)["input_ids"]]
    ids, mask = pad_right(seqs, tok.pad_token_id)
    lp_mask = torch.zeros_like(mask, dtype=torch.bool)
    lp_mask[0, 3:len(seqs[0])] = True
    lp_mask[1, 1:len(seqs[1])] = True
    with torch.no_grad():
        _, logps = model(ids, mask, lp_mask)
        want = []
        for b, s in enumerate(seqs):
            full = torch.log_softmax(lm(input_ids=torch.tensor([s])).logits[0].float(), -1)
            want += [full[t - 1, s[t]] for t in range(len(s)) if lp_mask[b, t]]
    assert torch.allclose(logps, torch.stack(want), atol=1e-5)
