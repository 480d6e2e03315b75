"""models/packed_attention.py: the prefix_split kernel over a packed layout computes what dense attention under the
shared-prefix block mask computes (a candidate token sees its user's prefix and its own earlier tokens, never another
candidate or another user), forward and backward, with grouped-query heads, ragged lengths and an empty candidate.
The kernel inside a model, against the naive per-prompt path: tests/models/test_shared_prefix.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.packed_attention import LAYOUT_KWARG, build_layout, prefix_split_attention

PREFIX_LENS = [5, 2, 7]
SUFFIX_LENS = [[3, 1, 4], [2, 0, 5], [1, 6, 2]]  # K = 3 candidates per user, one of them empty
H, H_KV, D = 4, 2, 8


def _block_mask_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense SDPA over the flat sequence under the block mask written out from its definition -> [1, N, H, d]."""
    user, segment = [], []
    for u, (p, suffixes) in enumerate(zip(PREFIX_LENS, SUFFIX_LENS)):
        user += [u] * p
        segment += [0] * p
        for c, n in enumerate(suffixes):
            user += [u] * n
            segment += [c + 1] * n
    user, segment = torch.tensor(user), torch.tensor(segment)
    pos = torch.arange(len(user))
    allowed = ((user[:, None] == user[None, :]) & (pos[None, :] <= pos[:, None])
               & ((segment[None, :] == 0) | (segment[None, :] == segment[:, None])))
    g = H // H_KV
    out = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=allowed)
    return out.transpose(1, 2)


def test_prefix_split_equals_dense_block_mask_attention():
    layout = build_layout(PREFIX_LENS, SUFFIX_LENS, torch.device("cpu"))
    n = sum(PREFIX_LENS) + sum(map(sum, SUFFIX_LENS))
    assert layout.n_tokens == n
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, H, n, D, generator=gen, requires_grad=True)
    k, v = (torch.randn(1, H_KV, n, D, generator=gen, requires_grad=True) for _ in range(2))

    out, _ = prefix_split_attention(torch.nn.Module(), q, k, v, None, scaling=D ** -0.5, **{LAYOUT_KWARG: layout})
    ref = _block_mask_attention(q, k, v)
    assert out.shape == (1, n, H, D)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # the prefix keys/values are shared by K rows: their gradient is the sum over those rows
    w = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    want = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for got_g, want_g in zip(grads, want):
        torch.testing.assert_close(got_g, want_g, atol=1e-5, rtol=0)

    # the suffix mask is built once per layout; every later layer and pass reuses it
    (mask,) = layout.masks.values()
    prefix_split_attention(torch.nn.Module(), q, k, v, None, scaling=D ** -0.5, **{LAYOUT_KWARG: layout})
    assert len(layout.masks) == 1 and next(iter(layout.masks.values())) is mask
