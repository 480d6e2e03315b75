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
  Calls without a packed layout or a decode store (naive scoring) are plain SDPA.
  Reasoning generation under prefix_split decodes against a ``SharedPrefixKV``: each user's prefix keys/values
  stored once, each row's own tokens in a buffer preallocated for the whole generation (a static cache), every
  decode step attending to [prefix; own tokens] as two partial attentions merged by log-sum-exp (Hydragen), so a
  step reads each prefix once per user instead of once per candidate and nothing is concatenated per step.
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
DECODE_KWARG = "shared_prefix_kv"  # likewise: the SharedPrefixKV a generation forward reads and writes
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
    store: SharedPrefixKV | None = kwargs.pop(DECODE_KWARG, None)
    if kwargs.get("softcap") is not None:  # Gemma-2: resolve_attn_implementation picks eager for such models
        raise ValueError("prefix_split attention cannot apply attention-logit soft-capping; use eager")
    if store is not None:
        return store.attend(module.layer_idx, query, key, value, scaling), None
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


class SharedPrefixKV:
    """The KV cache of shared-prefix generation under prefix_split: U users, K rows (candidates) per user.

    Per layer it holds each user's prefix keys/values once, [U, H_kv, P, d], and every row's own tokens (its suffix,
    then what it generates) in a buffer allocated once for the whole generation, [U*K, H_kv, capacity, d]. A forward
    is either the prefix forward (right-padded [U, P]: causal SDPA, keys stored) or a rows forward ([U*K, L]: the new
    keys are written at the same buffer offset for every row, `valid` marks which of them are real tokens, so padded
    suffixes leave holes that are never attended). Query i of a row sees its user's prefix and its own valid tokens
    up to itself: for the suffix forward (L > 1) one SDPA call per user over [prefix; own tokens] with a boolean mask;
    for a decode step (L == 1) the prefix part is one batched product per user (its K*g query rows against the
    prefix read once) and the own-token part one per row, merged exactly through their log-sum-exps.

    Use: ``begin(L, valid)`` before each forward (prefix first), ``advance()`` after it."""

    def __init__(self, prefix_lens: torch.Tensor, K: int, capacity: int) -> None:
        self.prefix_lens, self.K, self.capacity = prefix_lens, int(K), int(capacity)
        self.U = int(prefix_lens.shape[0])
        self.prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.row_valid = torch.zeros((self.U * self.K, self.capacity), dtype=torch.bool, device=prefix_lens.device)
        self.written = 0  # buffer slots used by earlier rows forwards
        self.n_new = 0
        self.in_prefix = True

    def begin(self, n_new: int, valid: torch.Tensor | None = None) -> None:
        """Announce a forward of n_new tokens per row; valid [U*K, n_new] (rows forwards; default all real)."""
        self.n_new = int(n_new)
        if self.in_prefix:
            return
        if self.written + self.n_new > self.capacity:
            raise ValueError(f"SharedPrefixKV: {self.written + self.n_new} tokens per row exceed the capacity "
                             f"{self.capacity}")
        w, n = self.written, self.written + self.n_new
        self.row_valid[:, w:n] = True if valid is None else valid.to(torch.bool)
        # What query i (buffer slot w + i) of every row may see among its own slots; the same for every layer of
        # this forward, so built here once rather than in each layer's attention call.
        dev = self.row_valid.device
        self.own = self.row_valid[:, None, :n] & (torch.arange(n, device=dev)[None, :] <=
                                                   torch.arange(w, n, device=dev)[:, None])[None]  # [R, L, n]
        if self.n_new > 1:  # the suffix forward: per user, the mask over [prefix; own slots] of its K rows
            P = self.prefix_valid.shape[1]
            self.user_masks = [torch.cat([self.prefix_valid[u, None, None, :].expand(self.K, self.n_new, P),
                                          self.own[u * self.K:(u + 1) * self.K]], dim=2)[:, None]
                               for u in range(self.U)]  # [K, 1, L, P + n]; the prefix is never empty
        else:  # a decode step: the masked-out keys of the two partial attentions
            self.prefix_off = ~self.prefix_valid[:, None, None, :]  # [U, 1, 1, P]
            self.own_off = ~self.own[:, None, :, :]  # [R, 1, 1, n]

    def advance(self) -> None:
        if self.in_prefix:
            self.in_prefix = False
            p = int(self.prefix_lens.max())
            self.prefix_valid = torch.arange(p, device=self.prefix_lens.device)[None, :] < self.prefix_lens[:, None]
        else:
            self.written += self.n_new

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None) -> torch.Tensor:
        """query [B, H, L, d], key/value [B, H_kv, L, d] (RoPE applied) -> [B, L, H, d]."""
        dtype = compute_dtype(query.device, value.dtype)
        q, k, v = query.to(dtype), key.to(dtype), value.to(dtype)
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        if self.in_prefix:  # right-padded prefixes: causal attention is exact for every real token
            self.prefix[layer] = (k, v)
            return _sdpa(q, k, v, scale, is_causal=True).transpose(1, 2)
        if layer not in self.rows:
            R, Hkv, _, d = k.shape
            self.rows[layer] = (k.new_zeros((R, Hkv, self.capacity, d)), v.new_zeros((R, Hkv, self.capacity, d)))
        kr, vr = self.rows[layer]
        w, L = self.written, q.shape[2]
        kr[:, :, w:w + L], vr[:, :, w:w + L] = k, v
        n = w + L
        kp, vp = self.prefix[layer]
        if L > 1:
            return self._attend_per_user(q, kp, vp, kr[:, :, :n], vr[:, :, :n], scale)
        return self._attend_merged(q, kp, vp, kr[:, :, :n], vr[:, :, :n], scale)

    def _attend_per_user(self, q, kp, vp, kr, vr, scale) -> torch.Tensor:
        K = self.K
        out = []
        for u in range(self.U):
            rows = slice(u * K, (u + 1) * K)
            ks = torch.cat([kp[u:u + 1].expand(K, -1, -1, -1), kr[rows]], dim=2)
            vs = torch.cat([vp[u:u + 1].expand(K, -1, -1, -1), vr[rows]], dim=2)
            out.append(_sdpa(q[rows], ks, vs, scale, mask=self.user_masks[u]))
        return torch.cat(out).transpose(1, 2)

    def _attend_merged(self, q, kp, vp, kr, vr, scale) -> torch.Tensor:
        U, K = self.U, self.K
        R, H, _, d = q.shape
        Hkv = kp.shape[1]
        g = H // Hkv  # query head h reads key/value head h // g (transformers' repeat_kv order)
        neg = torch.finfo(torch.float32).min
        # prefix part: per user, its K*g query rows against the prefix keys, read once
        qp = q.view(U, K, Hkv, g, d).permute(0, 2, 1, 3, 4).reshape(U, Hkv, K * g, d)
        s1 = torch.matmul(qp, kp.transpose(-1, -2)).float() * scale  # [U, Hkv, K*g, P]
        s1 = s1.masked_fill(self.prefix_off, neg)
        lse1 = torch.logsumexp(s1, -1, keepdim=True)
        o1 = torch.matmul(torch.exp(s1 - lse1).to(vp.dtype), vp).float()
        o1 = o1.view(U, Hkv, K, g, d).permute(0, 2, 1, 3, 4).reshape(R, H, d)
        lse1 = lse1.view(U, Hkv, K, g).permute(0, 2, 1, 3).reshape(R, H, 1)
        # own part: every row against its own tokens
        qr = q.view(R, Hkv, g, d)
        s2 = torch.matmul(qr, kr.transpose(-1, -2)).float() * scale  # [R, Hkv, g, n]
        s2 = s2.masked_fill(self.own_off, neg)
        lse2 = torch.logsumexp(s2, -1, keepdim=True)
        o2 = torch.matmul(torch.exp(s2 - lse2).to(vr.dtype), vr).float().reshape(R, H, d)
        a = torch.sigmoid(lse1 - lse2.reshape(R, H, 1))  # the prefix's share of the softmax mass
        out = o2 + a * (o1 - o2)
        return out.to(q.dtype)[:, None]  # [R, 1, H, d]


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
