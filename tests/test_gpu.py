"""GPU-only checks (skipped without CUDA): bf16 scoring, SDPA / FlashAttention-2 shared-prefix paths."""
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _batch(judge, n_users=3, K=5, seed=0):
    from prompters.binary_prompter import UserPrompt

    g = torch.Generator().manual_seed(seed)
    V = judge.lm.config.vocab_size
    out = []
    for u in range(n_users):
        prefix = torch.randint(5, V, (40 + 7 * u,), generator=g).tolist()
        suffixes = [torch.randint(5, V, (6 + k,), generator=g).tolist() for k in range(K)]
        out.append(UserPrompt(prefix_ids=prefix, suffix_ids=suffixes, candidates=list(range(1, K + 1))))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_bf16_shared_matches_naive(tmp_path, attn):
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn not installed (pip install -r requirements-gpu.txt)")
    from models.qwen_models import BinaryJudge
    from tests.fixtures.assets import build_tiny_qwen

    judge = BinaryJudge.load(str(build_tiny_qwen(tmp_path / "m")), device="cuda", attn_implementation=attn)
    assert judge.dtype_ == torch.bfloat16 and judge.attn_implementation == attn
    batch = _batch(judge)
    with torch.no_grad():
        naive = judge.score_candidates(batch, scoring="naive", with_values=True)
        shared = judge.score_candidates(batch, scoring="shared", with_values=True)
    assert torch.allclose(naive.scores, shared.scores, atol=5e-2, rtol=5e-2)
    assert torch.allclose(naive.values, shared.values, atol=5e-2, rtol=5e-2)
