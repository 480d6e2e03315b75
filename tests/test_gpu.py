"""GPU-only checks (skipped without CUDA): every packing backend equals the naive path on CUDA (fp32: scores,
values, reasoning log-probs and gradients to 1e-4, with and without gradient checkpointing), bf16 inference, and
FlashAttention-2 for naive scoring when installed, generation (shared-prefix decode) against HF generate and the
repeated-prefix cache, decoding replayed from a CUDA graph against the eager step, and prefix_split's kernels without
the math SDPA fallback."""
import importlib.util

import pytest
import torch

from tests.models.test_shared_prefix import _ppo_grads, make_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = 1e-4
BACKENDS = ["prefix_split", "flex_attention", "sdpa", "eager"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tests.fixtures.assets import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny_gpu"))


def _judge(tiny_dir, attn, dtype="fp32"):
    from models.qwen_models import BinaryJudge

    torch.manual_seed(0)
    j = BinaryJudge.load(str(tiny_dir), device="cuda", dtype=dtype, attn_implementation=attn, packed_mask=True,
                         scoring_chunk_size=5)
    return j.eval()


@pytest.mark.parametrize("attn", BACKENDS)
def test_packed_backends_match_naive_fp32(tiny_dir, attn):
    judge = _judge(tiny_dir, attn)
    assert judge.lm.config._attn_implementation == attn
    batch = make_batch(5, judge.lm.config.vocab_size, B=4, K=6, reasoning=True)
    with torch.no_grad():
        ref = judge.score_candidates(batch, scoring="naive", with_values=True, with_token_logprobs=True)
        out = judge.score_candidates(batch, scoring="shared", with_values=True, with_token_logprobs=True)
    torch.testing.assert_close(out.scores, ref.scores, atol=TOL, rtol=0)
    torch.testing.assert_close(out.values, ref.values, atol=TOL, rtol=0)
    torch.testing.assert_close(out.token_logprobs, ref.token_logprobs, atol=TOL, rtol=0)
    assert ref.scores.std() > 1e-3


@pytest.mark.parametrize("attn", ["prefix_split", "flex_attention"])
@pytest.mark.parametrize("ckpt", [False, True])
def test_packed_gradients_match_naive_fp32(tiny_dir, attn, ckpt):
    judge = _judge(tiny_dir, attn)
    batch = make_batch(7, judge.lm.config.vocab_size, B=3, K=4, reasoning=True)
    ref = _ppo_grads(judge, batch, "naive")
    if ckpt:
        judge.enable_gradient_checkpointing()
        judge.lm.train()
    got = _ppo_grads(judge, batch, "shared")
    assert set(got) == set(ref)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=TOL, rtol=1e-3, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("attn", ["prefix_split", "sdpa", "flash_attention_2"])
def test_bf16_inference_close_to_naive(tiny_dir, attn):
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn not installed (pip install -r requirements-gpu.txt)")
    from models.qwen_models import BinaryJudge

    packed = attn != "flash_attention_2"  # FA2 serves naive scoring only
    judge = BinaryJudge.load(str(tiny_dir), device="cuda", attn_implementation=attn, packed_mask=packed)
    assert judge.lm.dtype == torch.bfloat16 and judge.attn_implementation == attn
    batch = make_batch(3, judge.lm.config.vocab_size, B=3, K=5)
    with torch.no_grad():
        naive = judge.score_candidates(batch, scoring="naive", with_values=True)
        other = judge.score_candidates(batch, scoring="shared" if packed else "naive", with_values=True)
    torch.testing.assert_close(naive.scores, other.scores, atol=5e-2, rtol=5e-2)


def test_generation_greedy_shared_equals_hf_generate_on_cuda(tiny_dir):
    from models.qwen_models import SamplingSettings
    from models.shared_prefix import generate_shared_prefix

    judge = _judge(tiny_dir, "prefix_split")
    batch = make_batch(13, judge.lm.config.vocab_size, B=3, K=4)
    pad = judge.tokenizer.pad_token_id
    ref = judge._generate_naive(batch, 12, False, SamplingSettings())
    got = generate_shared_prefix(judge, batch, max_new_tokens=12, do_sample=False)
    strip = lambda s: [t for t in s if t != pad]  # noqa: E731
    assert [[strip(g) for g in u] for u in got] == [[strip(g) for g in u] for u in ref]


@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-4), ("bf16", 5e-2)])
@torch.no_grad()
def test_shared_prefix_kv_decode_equals_repeated_cache_on_cuda(tiny_dir, dtype, tol):
    """prefix_split decoding (each prefix stored once, static buffers, log-sum-exp merge) against the repeated-prefix
    DynamicCache decode of the same weights, step by step."""
    from models.shared_prefix import _RepeatedPrefixCache, _SharedPrefixCache

    ref, shared = _judge(tiny_dir, "sdpa", dtype), _judge(tiny_dir, "prefix_split", dtype)
    batch = make_batch(41, ref.lm.config.vocab_size, B=3, K=4)
    a, b = _RepeatedPrefixCache(ref, batch, 8), _SharedPrefixCache(shared, batch, 8)
    torch.testing.assert_close(b.h_last.float(), a.h_last.float(), atol=tol, rtol=tol)
    g = torch.Generator().manual_seed(3)
    for t in range(8):
        tok = torch.randint(3, 200, (12,), generator=g).cuda()
        torch.testing.assert_close(b.step(tok, t).float(), a.step(tok, t).float(), atol=tol, rtol=tol)


def _graph_replays(monkeypatch) -> list[int]:
    """Count the CUDA-graph replays of shared-prefix decoding (so a test knows the graph path ran)."""
    from models import shared_prefix

    replays: list[int] = []
    real = shared_prefix._CudaGraphStep.__call__

    def counted(self):
        if self.graph is not None:
            replays.append(1)
        return real(self)

    monkeypatch.setattr(shared_prefix._CudaGraphStep, "__call__", counted)
    return replays


@pytest.mark.parametrize("dtype,autocast", [("fp32", False), ("bf16", False), ("fp32", True)])
@torch.no_grad()
def test_decode_cuda_graph_replay_equals_eager(tiny_dir, monkeypatch, dtype, autocast):
    """prefix_split decoding replayed from a CUDA graph (static step: device write slot, masked full buffer, sampling
    on the device) gives the eager step's tokens, greedy and sampled with the same seed, in fp32, bf16 and the
    trainer's precision (fp32 weights under bf16 autocast, whose weight-cast cache the graph reads)."""
    from contextlib import nullcontext

    from models.qwen_models import SamplingSettings
    from models.shared_prefix import generate_shared_prefix

    judge = _judge(tiny_dir, "prefix_split", dtype)
    batch = make_batch(61, judge.lm.config.vocab_size, B=3, K=4)
    replays = _graph_replays(monkeypatch)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if autocast else nullcontext
    for do_sample in (False, True):
        got = {}
        for graph in (False, True):
            judge.decode_cuda_graph = graph
            torch.manual_seed(4)
            with ctx():
                got[graph] = generate_shared_prefix(judge, batch, max_new_tokens=20, do_sample=do_sample,
                                                    sampling=SamplingSettings(1.2, 30, 0.95))
        assert got[True] == got[False], do_sample
    judge.decode_cuda_graph = True
    assert len(replays) > 10  # the graph path ran (20 tokens: 2 eager warm-up steps, then replays)


def test_prefix_split_needs_no_math_fallback(tiny_dir):
    """bf16 scoring and its backward run with the math SDPA backend disabled: the batched suffix call (one mask,
    grouped query heads) gets the memory-efficient kernel, the prefix call flash."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from models.qwen_models import BinaryJudge

    judge = BinaryJudge.load(str(tiny_dir), device="cuda", attn_implementation="prefix_split", packed_mask=True)
    batch = make_batch(67, judge.lm.config.vocab_size, B=3, K=5, reasoning=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        out = judge.score_candidates(batch, scoring="shared", with_values=True, with_token_logprobs=True)
        (out.scores.sum() + out.token_logprobs.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in judge.lm.parameters() if p.grad is not None)
