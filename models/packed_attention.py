"""Attention for packed shared-prefix sequences: every user's prefix followed by its K candidate suffixes, several
users in one flat sequence (models/shared_prefix.py builds the layout).

Who attends to whom: a prefix token sees its user's earlier prefix tokens; a token of candidate k sees its user's
whole prefix and the earlier tokens of candidate k, never another candidate or another user. Three kernels compute
exactly that, chosen once per run through the model's attention implementation
(models/abstract_models.resolve_attn_implementation), so rollout, update and checkpoint recompute agree:

* ``prefix_split`` (registered here as a transformers attention implementation): the prefix/suffix split of
  Hydragen / Prefix Grouper. Per layer, one causal SDPA call over all users' prefixes (right-padded, no mask) and,
  per user, one SDPA call whose K query blocks attend to [the user's prefix keys; their own suffix keys] with a
  lower-right causal bias (torch.nn.attention.bias.causal_lower_right: no mask tensor is built). Nothing grows with
  the square of K: the only per-candidate memory is the K-fold view of the prefix keys/values inside one layer.
  Calls without a packed layout (naive scoring, generation) are plain SDPA.
* ``flex_attention``: torch's flex_attention with a BlockMask built (compiled) from segment offsets over the flat
  sequence, padded to a length bucket so that new lengths rarely recompile; masked tiles are skipped.
* ``sdpa`` / ``eager``: one row per user with a dense [U, 1, T, T] block mask (models/shared_prefix.packed_mask):
  the reference path, quadratic in K.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

PREFIX_SPLIT = "prefix_split"
LAYOUT_KWARG = "shared_prefix_layout"  # forwarded by transformers from the model call to every attention call
FLEX_BUCKET = 1024  # flex sequence lengths are padded to a multiple of this (bounded recompiles)


@dataclass
class PackedLayout:
    """Where each user's prefix and candidate tokens sit in the flat [1, N] sequence."""

    prefix_index: torch.Tensor  # [U, P_max] flat positions of each prefix (right-padded with a valid position)
    prefix_lens: list[int]
    suffix_index: list[torch.Tensor]  # per user [K, S_max_u] flat positions of each candidate (padded likewise)
    inverse: torch.Tensor  # [N] row of each flat position in cat(prefix rows, suffix rows of user 0, 1, ...)
    n_tokens: int


def compute_dtype(device: torch.device, fallback: torch.dtype) -> torch.dtype:
    """The dtype attention runs in: autocast's under mixed precision (fp32 master weights), else `fallback` (the
    weights' dtype)."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else fallback


def build_layout(prefix_lens: Sequence[int], suffix_lens: Sequence[Sequence[int]], device: torch.device) -> PackedLayout:
    """The layout of users laid end to end: user u = prefix (prefix_lens[u]) then its candidates in order."""
    U = len(prefix_lens)
    P_max = max(prefix_lens)
    pre = torch.zeros((U, P_max), dtype=torch.long)
    sufs: list[torch.Tensor] = []
    start = 0
    for u, (P, lens) in enumerate(zip(prefix_lens, suffix_lens)):
        pre[u, :P] = torch.arange(start, start + P)
        pre[u, P:] = start + P - 1
        start += P
        S = max(lens)
        s = torch.zeros((len(lens), S), dtype=torch.long)
        for k, n in enumerate(lens):
            s[k, :n] = torch.arange(start, start + n)
            s[k, n:] = start + n - 1 if n else start
            start += n
        sufs.append(s)
    N = start
    # Rows emitted by the kernel: all users' padded prefix rows [U * P_max], then each user's padded suffix rows.
    inverse = torch.empty(N, dtype=torch.long)
    for u, P in enumerate(prefix_lens):
        inverse[pre[u, :P]] = u * P_max + torch.arange(P)
    offset = U * P_max
    for s, lens in zip(sufs, suffix_lens):
        S = s.shape[1]
        for k, n in enumerate(lens):
            inverse[s[k, :n]] = offset + k * S + torch.arange(n)
        offset += s.numel()
    return PackedLayout(prefix_index=pre.to(device), prefix_lens=list(prefix_lens),
                        suffix_index=[s.to(device) for s in sufs], inverse=inverse.to(device), n_tokens=N)


def _sdpa(q, k, v, scale, mask=None, is_causal=False):
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=gqa)


def prefix_split_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           **kwargs) -> tuple[torch.Tensor, None]:
    """A transformers attention function: query [1, H, N, d], key/value [1, H_kv, N, d] -> ([1, N, H, d], None)."""
    layout: PackedLayout | None = kwargs.pop(LAYOUT_KWARG, None)
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1 or query.shape[2] != layout.n_tokens:
        raise ValueError(f"prefix_split attention expects one flat sequence of {layout.n_tokens} tokens, got "
                         f"{tuple(query.shape)}")
    H, d = query.shape[1], query.shape[3]
    # Under autocast with fp32 master weights RoPE leaves q, k in fp32 while v is bf16; SDPA with a CausalBias is
    # dispatched before autocast would cast them, so cast here to what autocast would have used.
    dtype = compute_dtype(query.device, value.dtype)
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (query, key, value))  # [N, heads, d]
    pre = layout.prefix_index
    kp, vp = k[pre].transpose(1, 2), v[pre].transpose(1, 2)  # [U, H_kv, P_max, d]
    out_pre = _sdpa(q[pre].transpose(1, 2), kp, vp, scaling, is_causal=True)  # right padding: real rows exact
    rows = [out_pre.transpose(1, 2).reshape(-1, H, d)]
    for u, sidx in enumerate(layout.suffix_index):
        K, S = sidx.shape
        P = layout.prefix_lens[u]
        ks = torch.cat([kp[u:u + 1, :, :P].expand(K, -1, -1, -1), k[sidx].transpose(1, 2)], dim=2)
        vs = torch.cat([vp[u:u + 1, :, :P].expand(K, -1, -1, -1), v[sidx].transpose(1, 2)], dim=2)
        # Query j of a candidate sees the P prefix keys and its own keys 0..j: causal aligned to the bottom right.
        out = _sdpa(q[sidx].transpose(1, 2), ks, vs, scaling, mask=_lower_right(S, P + S))
        rows.append(out.transpose(1, 2).reshape(-1, H, d))
    return torch.cat(rows)[layout.inverse].unsqueeze(0), None


@lru_cache(maxsize=4096)
def _lower_right(q_len: int, kv_len: int):
    from torch.nn.attention.bias import causal_lower_right

    return causal_lower_right(q_len, kv_len)


def register_prefix_split() -> None:
    """Make ``attn_implementation="prefix_split"`` known to transformers (idempotent). Ordinary calls get SDPA's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PREFIX_SPLIT, prefix_split_attention)
    if PREFIX_SPLIT not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(PREFIX_SPLIT, sdpa_mask)


def no_mask_mapping(config) -> dict:
    """attention_mask for a packed prefix_split forward: transformers builds no mask (the layout is the mask)."""
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    return {t: None for t in types | {"full_attention"}}


# ---- flex_attention ------------------------------------------------------------------------------------------
def flex_bucket(n: int) -> int:
    return max(FLEX_BUCKET, int(math.ceil(n / FLEX_BUCKET)) * FLEX_BUCKET)


def flex_block_mask(user_of: torch.Tensor, segment_of: torch.Tensor):
    """BlockMask over a flat padded sequence: user_of / segment_of [N_pad] (-1 = padding, segment 0 = prefix,
    k + 1 = candidate k). Padding attends to earlier padding only, so no row is empty."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, kv):
        same_user = user_of[q] == user_of[kv]
        visible = (segment_of[kv] == 0) | (segment_of[kv] == segment_of[q])
        return (kv <= q) & same_user & visible

    n = user_of.shape[0]
    return create_block_mask(mask_mod, 1, None, n, n, device=user_of.device, _compile=True)
