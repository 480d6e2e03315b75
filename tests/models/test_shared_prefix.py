"""Shared-prefix scoring/generation must equal the naive per-prompt path (docs/performance.md)."""
from __future__ import annotations

import random

import pytest
import torch

from models.qwen_models import BinaryJudge, SamplingSettings
from models.shared_prefix import (
    generate_shared_prefix,
    packed_allowed,
    resolve_method,
    score_shared_prefix,
    user_chunks,
)
from prompters.binary_prompter import UserPrompt
from tests.fixtures.assets import build_tiny_qwen
from trainers.rl.pl import gumbel_topk_sample, pl_log_prob

TOL = 1e-4


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny_shared"))


_JUDGES: dict = {}


def get_judge(tiny_dir, impl: str) -> BinaryJudge:
    if impl not in _JUDGES:
        torch.manual_seed(0)
        j = BinaryJudge.load(str(tiny_dir), device="cpu", dtype="fp32", attn_implementation=impl, scoring_chunk_size=5)
        j.eval()
        _JUDGES[impl] = j
    return _JUDGES[impl]


def make_batch(seed: int, vocab: int, B: int, K: int, reasoning: bool = False) -> list[UserPrompt]:
    """Ragged prefixes and suffixes; random ids avoid the special tokens at the start of the vocab."""
    rng = random.Random(seed)
    batch = []
    for _ in range(B):
        prefix = [rng.randrange(3, vocab) for _ in range(rng.randint(4, 40))]
        suffixes = [[rng.randrange(3, vocab) for _ in range(rng.randint(2, 15))] for _ in range(K)]
        spans = None
        if reasoning:  # a reasoning span inside each suffix; some empty, one starting at 0
            spans = []
            for k, s in enumerate(suffixes):
                a = 0 if k == 0 else rng.randint(1, len(s) - 1)
                b = a if k == 1 else rng.randint(a + 1, len(s))
                spans.append((a, b))
        batch.append(UserPrompt(prefix_ids=prefix, suffix_ids=suffixes, candidates=list(range(K)), reasoning_spans=spans))
    return batch


def test_packed_mask_structure():
    # prefix of 2, candidate 1 of 2 tokens, candidate 2 of 1 token, 1 pad
    seg = torch.tensor([[0, 0, 1, 1, 2, -1]])
    m = packed_allowed(seg)[0, 0].int().tolist()
    assert m == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # candidate 2 sees the prefix, not candidate 1
        [0, 0, 0, 0, 0, 1],  # padding attends only to padding
    ]


@pytest.mark.parametrize("impl", ["prefix_split", "sdpa", "eager"])
@pytest.mark.parametrize("K", [1, 3, 7])
@pytest.mark.parametrize("method", ["packed", "cache"])
def test_scores_values_match_naive(tiny_dir, impl, K, method):
    judge = get_judge(tiny_dir, impl)
    batch = make_batch(K, judge.lm.config.vocab_size, B=4, K=K)
    with torch.no_grad():
        ref = judge.score_candidates(batch, scoring="naive", with_values=True)
        out = score_shared_prefix(judge, batch, with_values=True, method=method)
    assert out.scores.shape == (4, K) and out.values.shape == (4,)
    torch.testing.assert_close(out.scores, ref.scores, atol=TOL, rtol=0)
    torch.testing.assert_close(out.values, ref.values, atol=TOL, rtol=0)
    assert ref.scores.std() > 1e-3  # the comparison is not between constants


@pytest.mark.parametrize("impl", ["prefix_split", "sdpa"])
def test_dispatch_and_user_chunking(tiny_dir, impl):
    judge = get_judge(tiny_dir, impl)
    batch = make_batch(11, judge.lm.config.vocab_size, B=5, K=3)
    judge.shared_tokens_per_forward = 60  # forces one or two users per forward
    try:
        chunks = user_chunks(judge, batch, "packed")
        assert len(chunks) > 1 and sorted(i for c in chunks for i in c) == list(range(5))
        with torch.no_grad():
            out = judge.score_candidates(batch, scoring="shared", with_values=True)
    finally:
        judge.shared_tokens_per_forward = None
    with torch.no_grad():
        ref = judge.score_candidates(batch, scoring="naive", with_values=True)
    torch.testing.assert_close(out.scores, ref.scores, atol=TOL, rtol=0)
    torch.testing.assert_close(out.values, ref.values, atol=TOL, rtol=0)


@pytest.mark.parametrize("impl,method", [("prefix_split", "packed"), ("sdpa", "packed"), ("sdpa", "cache")])
def test_reasoning_logprobs_match(tiny_dir, impl, method):
    judge = get_judge(tiny_dir, impl)
    batch = make_batch(5, judge.lm.config.vocab_size, B=3, K=4, reasoning=True)
    with torch.no_grad():
        ref = judge.score_candidates(batch, scoring="naive", with_token_logprobs=True)
        out = score_shared_prefix(judge, batch, with_token_logprobs=True, method=method)
    torch.testing.assert_close(out.token_logprobs, ref.token_logprobs, atol=TOL, rtol=0)
    torch.testing.assert_close(out.scores, ref.scores, atol=TOL, rtol=0)
    assert (ref.token_logprobs[:, 1] == 0).all() and (ref.token_logprobs[:, 0] < 0).all()


def _ppo_grads(judge, batch, scoring, method="auto"):
    judge.zero_grad(set_to_none=True)
    if scoring == "naive":
        out = judge.score_candidates(batch, scoring="naive", with_values=True, with_token_logprobs=True)
    else:
        out = score_shared_prefix(judge, batch, with_values=True, with_token_logprobs=True, method=method)
    g = torch.Generator().manual_seed(3)
    dev = out.scores.device
    ranking = gumbel_topk_sample(out.scores.detach().cpu(), generator=g).to(dev)
    adv = torch.linspace(-1.0, 1.0, len(batch), device=dev)
    logp = pl_log_prob(out.scores, ranking, temperature=0.7) + out.token_logprobs.sum(-1)
    loss = -(logp * adv).mean() + ((out.values - adv) ** 2).mean()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in judge.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl,method,ckpt", [("prefix_split", "packed", False), ("sdpa", "packed", False),
                                              ("eager", "packed", False), ("sdpa", "cache", False),
                                              ("prefix_split", "auto", True), ("sdpa", "auto", True),
                                              ("eager", "auto", True)])
def test_ppo_gradients_match(tiny_dir, impl, method, ckpt):
    judge = get_judge(tiny_dir, impl)
    batch = make_batch(7, judge.lm.config.vocab_size, B=3, K=3, reasoning=True)
    ref = _ppo_grads(judge, batch, "naive")
    if ckpt:
        judge.enable_gradient_checkpointing()
        judge.lm.train()  # checkpointing only acts in training mode (dropout is 0 in the tiny config)
    try:
        got = _ppo_grads(judge, batch, "shared", method)
    finally:
        if ckpt:
            (getattr(judge.lm, "activation_checkpointing_disable", None) or judge.lm.gradient_checkpointing_disable)()
            judge.lm.config.use_cache = True
            judge.lm.eval()
        judge.zero_grad(set_to_none=True)
    assert set(got) == set(ref) and any(n.startswith("value_head") for n in ref)
    assert "lm.model.embed_tokens.weight" in ref
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=TOL, rtol=1e-3, msg=lambda m: f"{n}: {m}")
    assert max(g.abs().max() for g in ref.values()) > 1e-4


def test_flash_attention_2_never_gets_the_block_mask(tiny_dir):
    """FA2 cannot take the block mask, and the attention implementation is chosen once per run: a shared-scoring
    run never loads FA2 (refused with one line), and a model that has it refuses to pack instead of switching
    kernels mid-run (checkpoint recompute would then run another kernel than the forward). Exercised on CPU by
    relabelling the config."""
    from models.abstract_models import resolve_attn_implementation
    from foundation.errors import UserInputError

    with pytest.raises(UserInputError, match="flash_attention_2: cannot run shared-prefix scoring"):
        resolve_attn_implementation("flash_attention_2", torch.device("cpu"), torch.bfloat16, packed_mask=True)
    assert resolve_attn_implementation("auto", torch.device("cpu"), torch.float32, packed_mask=True) == "prefix_split"
    judge = get_judge(tiny_dir, "sdpa")
    batch = make_batch(23, judge.lm.config.vocab_size, B=3, K=3)
    cfg = judge.lm.config
    cfg._attn_implementation = "flash_attention_2"
    try:
        with torch.no_grad(), pytest.raises(ValueError, match="mask-capable"):
            score_shared_prefix(judge, batch, with_values=True, method="packed")
        assert cfg._attn_implementation == "flash_attention_2"  # nothing switched behind the run's back
    finally:
        cfg._attn_implementation = "sdpa"
    assert resolve_method(judge) == "packed"


def _strip_pad(seq, pad):
    seq = list(seq)
    while seq and seq[-1] == pad:
        seq.pop()
    return seq


@pytest.mark.parametrize("impl", ["sdpa", "eager", "prefix_split"])
def test_generate_greedy_matches_hf_generate(tiny_dir, impl):
    judge = get_judge(tiny_dir, impl)
    batch = make_batch(13, judge.lm.config.vocab_size, B=2, K=3)
    pad = judge.tokenizer.pad_token_id
    ref = judge._generate_naive(batch, 10, False, SamplingSettings())
    got = generate_shared_prefix(judge, batch, max_new_tokens=10, do_sample=False)
    assert len(got) == 2 and all(len(g) == 3 for g in got)
    for u in range(2):
        for k in range(3):
            assert _strip_pad(got[u][k], pad) == _strip_pad(ref[u][k], pad), (u, k)
            assert 1 <= len(got[u][k]) <= 10
    # and the public entry point builds the same reasoning prompts
    a = judge.generate_reasoning(batch, 10, do_sample=False, scoring="naive")
    b = judge.generate_reasoning(batch, 10, do_sample=False, scoring="shared")
    assert [p.suffix_ids for p in a] == [p.suffix_ids for p in b]
    assert [p.reasoning_spans for p in a] == [p.reasoning_spans for p in b]


@pytest.mark.parametrize("impl", ["sdpa", "prefix_split"])
def test_generate_after_an_empty_suffix_continues_the_prefix(tiny_dir, impl):
    """A row whose suffix is empty decodes from the prefix's last token, like HF generate on the prefix alone."""
    judge = get_judge(tiny_dir, impl)
    batch = make_batch(53, judge.lm.config.vocab_size, B=2, K=3)
    batch[1].suffix_ids[2] = []
    pad = judge.tokenizer.pad_token_id
    ref = judge._generate_naive(batch, 6, False, SamplingSettings())
    got = generate_shared_prefix(judge, batch, max_new_tokens=6, do_sample=False)
    assert [[_strip_pad(g, pad) for g in u] for u in got] == [[_strip_pad(g, pad) for g in u] for u in ref]


def test_generate_sampling_seeded_and_stops(tiny_dir):
    judge = get_judge(tiny_dir, "sdpa")
    batch = make_batch(17, judge.lm.config.vocab_size, B=3, K=2)
    torch.manual_seed(1)
    a = generate_shared_prefix(judge, batch, max_new_tokens=6, do_sample=True, sampling=SamplingSettings(1.3, 20))
    torch.manual_seed(1)
    b = generate_shared_prefix(judge, batch, max_new_tokens=6, do_sample=True, sampling=SamplingSettings(1.3, 20))
    assert a == b
    assert all(1 <= len(g) <= 6 for user in a for g in user)
    eos = judge.tokenizer.eos_token_id
    for user in a:  # a row stops right after an end token
        for g in user:
            assert eos not in g[:-1]
    assert generate_shared_prefix(judge, batch, max_new_tokens=0) == [[[], []]] * 3


def test_from_model_wraps_an_in_memory_lm(tiny_dir):
    base = get_judge(tiny_dir, "sdpa")
    judge = BinaryJudge.from_model(base.lm, base.tokenizer, device="cpu", scoring_chunk_size=3)
    assert (judge.yes_id, judge.no_id) == (base.yes_id, base.no_id) and judge.attn_implementation == "sdpa"
    judge.value_head.load_state_dict(base.value_head.state_dict())
    batch = make_batch(29, base.lm.config.vocab_size, B=2, K=3)
    with torch.no_grad():
        a = base.score_candidates(batch, scoring="naive", with_values=True)
        b = judge.score_candidates(batch, scoring="shared", with_values=True)
    torch.testing.assert_close(b.scores, a.scores, atol=TOL, rtol=0)
    torch.testing.assert_close(b.values, a.values, atol=TOL, rtol=0)


@pytest.mark.parametrize("impl", ["prefix_split", "sdpa"])
def test_mixed_precision_fp32_weights_under_bf16_autocast(tiny_dir, impl):
    """The training precision (fp32 master weights, bf16 autocast) runs the packed path forward and backward: RoPE
    leaves q/k in fp32 while v is bf16, which SDPA's causal-bias dispatch refuses unless the kernel casts."""
    judge = get_judge(tiny_dir, impl)
    batch = make_batch(31, judge.lm.config.vocab_size, B=3, K=4, reasoning=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = judge.score_candidates(batch, scoring="naive", with_values=True, with_token_logprobs=True)
        out = judge.score_candidates(batch, scoring="shared", with_values=True, with_token_logprobs=True)
    torch.testing.assert_close(out.scores, ref.scores, atol=5e-2, rtol=5e-2)
    judge.zero_grad(set_to_none=True)
    (out.scores.sum() + out.token_logprobs.sum()).backward()
    grads = [p.grad for p in judge.lm.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    judge.zero_grad(set_to_none=True)


def _decoders(tiny_dir, batch, max_new_tokens):
    from models.shared_prefix import _RepeatedPrefixCache, _SharedPrefixCache

    ref, shared = get_judge(tiny_dir, "sdpa"), get_judge(tiny_dir, "prefix_split")
    shared.load_state_dict(ref.state_dict())
    return _RepeatedPrefixCache(ref, batch, max_new_tokens), _SharedPrefixCache(shared, batch, max_new_tokens)


@torch.no_grad()
def test_shared_prefix_kv_decode_equals_repeated_cache(tiny_dir):
    """Under prefix_split, decoding reads each prefix once (stored once per user) from buffers allocated once, and
    every step's hidden states equal the repeated-prefix DynamicCache path's (ragged prefixes and suffixes, GQA)."""
    batch = make_batch(41, get_judge(tiny_dir, "sdpa").lm.config.vocab_size, B=3, K=4)
    ref, shared = _decoders(tiny_dir, batch, 6)
    torch.testing.assert_close(shared.h_last, ref.h_last, atol=1e-5, rtol=0)
    kv = shared.kv
    k0, _ = kv.rows[0]
    assert kv.prefix[0][0].shape[0] == 3 and k0.shape[0] == 12  # prefixes: one per user; buffers: one per row
    ptr = k0.data_ptr()
    g = torch.Generator().manual_seed(3)
    for t in range(6):
        tok = torch.randint(3, 200, (12,), generator=g)
        torch.testing.assert_close(shared.step(tok, t), ref.step(tok, t), atol=1e-5, rtol=0)
    assert kv.rows[0][0].data_ptr() == ptr  # static: written in place, never reallocated or concatenated
    with pytest.raises(ValueError, match="capacity"):
        shared.step(tok, 6)


def test_shared_prefix_kv_sampling_and_autocast(tiny_dir):
    """Sampling draws the same tokens as the repeated-cache path for the same seed, and the training precision
    (fp32 weights under bf16 autocast) decodes to the same hidden states within bf16 tolerance."""
    sdpa, split = get_judge(tiny_dir, "sdpa"), get_judge(tiny_dir, "prefix_split")
    split.load_state_dict(sdpa.state_dict())
    batch = make_batch(43, sdpa.lm.config.vocab_size, B=2, K=5)
    sampling = SamplingSettings(1.3, 20)
    torch.manual_seed(5)
    a = generate_shared_prefix(sdpa, batch, max_new_tokens=9, do_sample=True, sampling=sampling)
    torch.manual_seed(5)
    b = generate_shared_prefix(split, batch, max_new_tokens=9, do_sample=True, sampling=sampling)
    assert a == b and len({tuple(g) for user in b for g in user}) > 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref, shared = _decoders(tiny_dir, batch, 3)
        tok = torch.randint(3, 200, (10,))
        h_ref, h = ref.step(tok, 0), shared.step(tok, 0)
    assert h.dtype == h_ref.dtype and torch.isfinite(h).all()
    torch.testing.assert_close(h.float(), h_ref.float(), atol=5e-2, rtol=5e-2)


@pytest.fixture(scope="module")
def gemma2_dir(tiny_dir, tmp_path_factory):
    """A saved Gemma-2 model (attention-logit soft-capping) with the tiny tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.abstract_models import load_tokenizer

    tok = load_tokenizer(str(tiny_dir))
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("gemma2", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                               attn_logit_softcapping=2.0, pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("gemma2")
    lm = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # attention logits well past the cap, so that ignoring it changes the scores (by ~0.2)
        for name, w in lm.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                w.mul_(30)
    lm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_attention_softcap_model_gets_a_kernel_that_applies_it(gemma2_dir):
    """SDPA-based kernels (prefix_split, sdpa) cannot cap attention logits: auto picks eager for such a model
    (shared scoring too) and an explicit SDPA kernel is refused with one line, so scores are the model's own."""
    from transformers import AutoModelForCausalLM

    from models.abstract_models import attention_softcap, resolve_attn_implementation
    from models.rrec_models import RRecModel
    from foundation.errors import UserInputError

    assert attention_softcap(gemma2_dir) == 2.0
    cpu = torch.device("cpu")
    assert resolve_attn_implementation("auto", cpu, torch.float32, packed_mask=True, softcap=2.0) == "eager"
    assert resolve_attn_implementation("auto", cpu, torch.float32, softcap=2.0) == "eager"
    for impl in ("prefix_split", "sdpa"):
        with pytest.raises(UserInputError, match=f"attn_implementation {impl}: .*attn_logit_softcapping=2"):
            BinaryJudge.load(str(gemma2_dir), device="cpu", dtype="fp32", attn_implementation=impl, packed_mask=True)
    judge = BinaryJudge.load(str(gemma2_dir), device="cpu", dtype="fp32", packed_mask=True).eval()
    assert judge.attn_implementation == "eager"
    batch = make_batch(47, judge.lm.config.vocab_size, B=2, K=3)
    with torch.no_grad():
        naive = judge.score_candidates(batch, scoring="naive")
        shared = judge.score_candidates(batch, scoring="shared")
        # the reference: the causal LM's own eager forward of one full prompt
        ref_lm = AutoModelForCausalLM.from_pretrained(gemma2_dir, attn_implementation="eager").eval()
        ids = torch.tensor([batch[0].full_ids(1)])
        logits = ref_lm(input_ids=ids).logits[0, -1].float()
    torch.testing.assert_close(shared.scores, naive.scores, atol=TOL, rtol=0)
    want = logits[judge.yes_id] - logits[judge.no_id]
    torch.testing.assert_close(naive.scores[0, 1], want, atol=TOL, rtol=0)
    # the cap matters here (without it the scores differ), and the prefix_split kernel refuses it if forced
    attn = [m for m in judge.lm.modules() if hasattr(m, "attn_logit_softcapping")]
    try:
        for m in attn:
            m.attn_logit_softcapping = None
        with torch.no_grad():
            uncapped = judge.score_candidates(batch, scoring="naive")
    finally:
        for m in attn:
            m.attn_logit_softcapping = 2.0
    assert (uncapped.scores - naive.scores).abs().max() > 0.05
    from models.packed_attention import register_prefix_split

    register_prefix_split()
    judge.lm.config._attn_implementation = "prefix_split"
    try:
        with torch.no_grad(), pytest.raises(ValueError, match="soft-capping"):
            judge.score_candidates(batch, scoring="shared")
    finally:
        judge.lm.config._attn_implementation = "eager"
    # the RRec baseline's loader too (it used to pick sdpa, which transformers refuses for Gemma-2 at run time)
    rrec = RRecModel.load(str(gemma2_dir), device="cpu", dtype="fp32")
    assert rrec.base_lm().config._attn_implementation == "eager"


def test_scoring_auto_resolves_once_to_the_exact_fast_path(tiny_dir, gemma2_dir, capsys):
    """--scoring auto (issue 28): shared for a Qwen2 judge (prefix_split, exact), naive for a Gemma-2 model (its
    sliding-window layers and attention soft-capping are not applied by the packed mask on the fast kernel), each
    decision printed in one line; explicit modes pass through; a forward never sees auto."""
    from foundation.errors import UserInputError
    from models.qwen_models import _announce_scoring, _auto_scoring, resolve_scoring

    _announce_scoring.cache_clear()
    assert resolve_scoring("auto", str(tiny_dir), device="cpu") == "shared"
    err = capsys.readouterr().err.splitlines()
    assert err == ["scoring: shared (auto: qwen2: the shared prefix is computed once per user (prefix_split))"]
    assert resolve_scoring("auto", str(gemma2_dir), device="cpu") == "naive"
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("scoring: naive (auto: gemma2 has sliding-window attention")
    for explicit in ("naive", "shared"):
        assert resolve_scoring(explicit, str(gemma2_dir), device="cpu") == explicit
    assert capsys.readouterr().err == ""  # only auto prints
    with pytest.raises(UserInputError, match="--scoring 'fast': must be one of auto|naive|shared"):
        resolve_scoring("fast", str(tiny_dir))

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    qwen = {"model_type": "qwen2", "num_hidden_layers": 2}
    assert _auto_scoring(qwen, "auto", cpu)[0] == "shared"
    assert _auto_scoring(qwen, "sdpa", cpu)[0] == "shared"  # the dense-mask reference, exact
    assert _auto_scoring(qwen, "flash_attention_2", cuda)[0] == "naive"  # FA2 takes no block mask
    assert _auto_scoring(qwen, "flex_attention", cpu)[0] == "naive"
    assert _auto_scoring(qwen, "flex_attention", cuda)[0] == "shared"
    windowed = {**qwen, "use_sliding_window": True, "sliding_window": 64, "max_window_layers": 0}
    assert _auto_scoring(windowed, "auto", cpu)[0] == "naive"
    # soft-capping alone (no window): naive under auto attention (eager + dense mask), shared when eager is asked for
    capped = {"model_type": "gemma2", "sliding_window": None, "attn_logit_softcapping": 2.0}
    assert _auto_scoring(capped, "auto", cpu) == ("naive", "gemma2 caps its attention logits, so shared would run "
                                                           "eager attention with a dense mask instead of prefix_split")
    assert _auto_scoring(capped, "eager", cpu)[0] == "shared"
    assert _auto_scoring({"model_type": "my_custom_lm"}, "auto", cpu)[0] == "naive"

    judge = get_judge(tiny_dir, "sdpa")
    with pytest.raises(ValueError, match="resolve it with models.qwen_models.resolve_scoring"):
        judge.score_candidates(make_batch(3, judge.lm.config.vocab_size, B=1, K=2), scoring="auto")
