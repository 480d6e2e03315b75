"""Attention for packed shared-prefix sequences: every user's prefix followed by its K candidate suffixes, several
users in one flat sequence (models/shared_prefix.py builds the layout).

Who attends to whom: a prefix token sees its user's earlier prefix tokens; a token of candidate k sees its user's
whole prefix and the earlier tokens of candidate k, never another candidate or another user. Three kernels compute
exactly that, chosen once per run through the model's attention implementation
(models/abstract_models.resolve_attn_implementation), so rollout, update and checkpoint recompute agree:

* ``prefix_split`` (registered here as a transformers attention implementation): the prefix/suffix split of
  Hydragen / Prefix Grouper. Per layer, two SDPA calls whatever the number of users: one causal call over all
  users' prefixes (right-padded, no mask), and one over all (user, candidate) rows, each row's queries (its suffix,
  padded to the longest suffix of the chunk) reading [its user's prefix keys; its own suffix keys] under one
  boolean mask (prefix padding hidden, causal inside the suffix) that the layout builds once and every layer and
  pass reuses. The g query heads that share a key/value head are stacked along the query axis, so the masked call
  is plain multi-head attention (SDPA with grouped-query heads and a mask leaves CUDA's memory-efficient kernel for
  the math fallback). Nothing grows with the square of K: the per-candidate memory is the K-fold gather of the
  prefix keys/values inside one layer.
  Calls without a packed layout or a decode store (naive scoring) are plain SDPA.
  Reasoning generation under prefix_split decodes against a ``SharedPrefixKV``: each user's prefix keys/values
  stored once, each row's own tokens in a buffer preallocated for the whole generation (a static cache), every
  decode step attending to [prefix; own tokens] as two partial attentions merged by log-sum-exp (Hydragen), so a
  step reads each prefix once per user instead of once per candidate and nothing is concatenated per step. A decode
  step has static shapes (it attends over the whole buffer under a mask, the write slot is a device tensor), so it
  can be captured in a CUDA graph (models/shared_prefix.py).
* ``flex_attention``: torch's flex_attention with a BlockMask built (compiled) from segment offsets over the flat
  sequence, padded to a length bucket so that new lengths rarely recompile; masked tiles are skipped.
* ``sdpa`` / ``eager``: one row per user with a dense [U, 1, T, T] block mask (models/shared_prefix.packed_mask):
  the reference path, quadratic in K.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PREFIX_SPLIT = "prefix_split"
LAYOUT_KWARG = "shared_prefix_layout"  # forwarded by transformers from the model call to every attention call
DECODE_KWARG = "shared_prefix_kv"  # likewise: the SharedPrefixKV a generation forward reads and writes
FLEX_BUCKET = 1024  # flex sequence lengths are padded to a multiple of this (bounded recompiles)
MASK_ALIGN = 16  # CUDA's memory-efficient SDPA wants the mask's row stride a multiple of this (else it pads per call)


@dataclass
class PackedLayout:
    """Where each user's prefix and candidate tokens sit in the flat [1, N] sequence, as the index tensors of the
    prefix_split kernel. R = U*K (user, candidate) rows, row r = u*K + k."""

    prefix_index: torch.Tensor  # [U, P_max] flat positions of each prefix (right-padded with its last position)
    suffix_index: torch.Tensor  # [R, S_max] flat positions of each row's suffix (padded likewise)
    row_prefix_len: torch.Tensor  # [R] real prefix tokens of row r's user
    inverse: torch.Tensor  # [N] row of each flat position in cat(prefix rows [U*P_max], suffix rows [R*S_max])
    n_tokens: int
    masks: dict = field(default_factory=dict, repr=False)  # (g, dtype) -> the suffix call's mask, built on first use

    def suffix_mask(self, groups: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [R, 1, groups*S_max, P_max + S_max] of the suffix call: query i of row r reads the real keys
        of its user's prefix and its own suffix keys 0..i. Built once per layout (every layer and pass reuses it)."""
        key = (groups, dtype)
        if key not in self.masks:
            P, S = self.prefix_index.shape[1], self.suffix_index.shape[1]
            j = torch.arange(P + S, device=self.prefix_index.device)
            i = torch.arange(S, device=j.device)
            allowed = torch.where(j < P, j[None, None, :] < self.row_prefix_len[:, None, None],
                                  (j - P)[None, :] <= i[:, None])  # [R, S, P + S]
            self.masks[key] = grouped_mask(allowed, groups, dtype)
        return self.masks[key]


def compute_dtype(device: torch.device, fallback: torch.dtype) -> torch.dtype:
    """The dtype attention runs in: autocast's under mixed precision (fp32 master weights), else `fallback` (the
    weights' dtype)."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else fallback


def build_layout(prefix_lens: Sequence[int], suffix_lens: Sequence[Sequence[int]], device: torch.device) -> PackedLayout:
    """The layout of users laid end to end: user u = prefix (prefix_lens[u]) then its candidates in order (the same
    K for every user). Index arithmetic in numpy on the host, then one copy per tensor to the device."""
    P = np.asarray(prefix_lens, dtype=np.int64)
    S = np.asarray(suffix_lens, dtype=np.int64).reshape(len(P), -1)  # [U, K]
    U, K = S.shape
    seg = np.concatenate([P[:, None], S], axis=1).reshape(-1)  # segment lengths in flat order: prefix, candidates
    start = np.concatenate([[0], np.cumsum(seg)[:-1]]).reshape(U, K + 1)
    N = int(seg.sum())
    P_max, S_max = int(P.max()), max(1, int(S.max()))
    pre = start[:, :1] + np.minimum(np.arange(P_max)[None, :], P[:, None] - 1)  # padding repeats the last position
    row_start, row_len = start[:, 1:].reshape(-1), S.reshape(-1)
    suf = row_start[:, None] + np.minimum(np.arange(S_max)[None, :], np.maximum(row_len - 1, 0)[:, None])
    suf = np.minimum(suf, N - 1)  # an empty last suffix points past the end: any valid position does (never read)
    row_user = np.repeat(np.arange(U), K)
    # Kernel output rows: all users' padded prefix rows [U * P_max], then every (user, candidate) row's [S_max].
    base = np.concatenate([np.arange(U)[:, None] * P_max, U * P_max + np.arange(U * K).reshape(U, K) * S_max],
                          axis=1).reshape(-1)
    within = np.arange(N) - np.repeat(start.reshape(-1), seg)
    inverse = np.repeat(base, seg) + within
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    return PackedLayout(prefix_index=as_t(pre), suffix_index=as_t(suf),
                        row_prefix_len=as_t(P[row_user]), inverse=as_t(inverse), n_tokens=N)


def grouped_mask(allowed: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B, 1, groups*Lq, Lk] (0 / dtype min) for grouped_sdpa from allowed [B, Lq, Lk] (True = may
    attend), its rows stored MASK_ALIGN-aligned so that CUDA's memory-efficient kernel takes it as it is."""
    B, Lq, Lk = allowed.shape
    store = torch.zeros((B, 1, groups * Lq, -(-Lk // MASK_ALIGN) * MASK_ALIGN), dtype=dtype, device=allowed.device)
    m = store[..., :Lk]
    m.masked_fill_(~allowed[:, None].expand(B, groups, Lq, Lk).reshape(B, 1, groups * Lq, Lk),
                   torch.finfo(dtype).min)
    return m


def grouped_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                 scale: float | None) -> torch.Tensor:
    """Masked attention for grouped-query heads: q [B, H, Lq, d], k/v [B, H_kv, Lk, d], mask from grouped_mask ->
    [B, H, Lq, d]. The g = H / H_kv query heads that read one key/value head (transformers' repeat_kv order) are
    stacked along the query axis, so the call is multi-head attention over H_kv heads: no K/V copy per query head,
    and CUDA's memory-efficient kernel applies (it takes a mask but not grouped heads)."""
    B, H, Lq, d = q.shape
    Hkv = k.shape[1]
    out = F.scaled_dot_product_attention(q.reshape(B, Hkv, (H // Hkv) * Lq, d), k, v, attn_mask=mask, scale=scale)
    return out.view(B, H, Lq, d)


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
    # Under autocast with fp32 master weights RoPE leaves q, k in fp32 while v is bf16; SDPA is dispatched before
    # autocast would cast them, so cast here to what autocast would have used.
    dtype = compute_dtype(query.device, value.dtype)
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (query, key, value))  # [N, heads, d]
    pre, suf = layout.prefix_index, layout.suffix_index
    kp, vp = k[pre].transpose(1, 2), v[pre].transpose(1, 2)  # [U, H_kv, P_max, d]
    out_pre = _sdpa(q[pre].transpose(1, 2), kp, vp, scaling, is_causal=True)  # right padding: real rows exact
    U, Hkv, P, _ = kp.shape
    R, S = suf.shape
    # Row r = u*K + k reads [user u's prefix; its own suffix]: the prefix repeated K times by expand (its gradient
    # is a sum over the K rows, not a scatter), then the suffix keys.
    rows_of = lambda pk, t: torch.cat([pk[:, None].expand(U, R // U, Hkv, P, d).reshape(R, Hkv, P, d),  # noqa: E731
                                       t[suf].transpose(1, 2)], dim=2)
    out = grouped_sdpa(q[suf].transpose(1, 2), rows_of(kp, k), rows_of(vp, v),
                       layout.suffix_mask(H // Hkv, dtype), scaling)  # [R, H, S_max, d]
    rows = torch.cat([out_pre.transpose(1, 2).reshape(-1, H, d), out.transpose(1, 2).reshape(R * S, H, d)])
    return rows[layout.inverse].unsqueeze(0), None


class SharedPrefixKV:
    """The KV cache of shared-prefix generation under prefix_split: U users, K rows (candidates) per user.

    Per layer it holds each user's prefix keys/values once, [U, H_kv, P, d], and every row's own tokens (its suffix,
    then what it generates) in a buffer allocated once for the whole generation, [U*K, H_kv, capacity, d]. A forward
    is the prefix forward (right-padded [U, P]: causal SDPA, keys stored), the suffix forward ([U*K, L]: written at
    buffer slots 0..L-1, `valid` marks the real tokens so padded suffixes leave holes that are never attended; one
    masked SDPA call over all rows reading [their user's prefix; own slots]) or a decode step (one token per row).

    A decode step has static shapes and no host work: the new keys are written at the slot held in the device
    tensor ``slot``, and the step attends over the whole buffer under a mask (slots up to ``slot`` that hold real
    tokens), the prefix part as one batched product per user (its K*g query rows against the prefix, read once) and
    the own-token part one per row, merged exactly through their log-sum-exps. So the step can be replayed from a
    CUDA graph.

    Use: ``begin(L, valid)`` before the prefix and the suffix forward, ``advance()`` after each; then
    ``start_decode()`` once, and around every decode forward ``begin_step()`` / ``end_step()``."""

    def __init__(self, prefix_lens: torch.Tensor, K: int, capacity: int) -> None:
        self.prefix_lens, self.K, self.capacity = prefix_lens, int(K), int(capacity)
        self.U = int(prefix_lens.shape[0])
        dev = prefix_lens.device
        self.row_user = torch.arange(self.U, device=dev).repeat_interleave(self.K)
        self.prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.row_valid = torch.zeros((self.U * self.K, self.capacity), dtype=torch.bool, device=dev)
        self.written = 0  # buffer slots used by the suffix forward
        self.n_new = 0
        self.in_prefix = True
        self.decoding = False
        self.slot = torch.zeros((), dtype=torch.long, device=dev)  # decode: the slot this step writes
        self._masks: dict = {}

    def begin(self, n_new: int, valid: torch.Tensor | None = None) -> None:
        """Announce a prefix or suffix forward of n_new tokens per row; valid [U*K, n_new] (default all real)."""
        if self.decoding:
            raise RuntimeError("SharedPrefixKV: decode steps go through begin_step()")
        self.n_new = int(n_new)
        if self.in_prefix:
            return
        if self.written + self.n_new > self.capacity:
            raise ValueError(f"SharedPrefixKV: {self.written + self.n_new} tokens per row exceed the capacity "
                             f"{self.capacity}")
        w, n = self.written, self.written + self.n_new
        self.row_valid[:, w:n] = True if valid is None else valid.to(torch.bool)
        # What query i (slot w + i) of every row may read: its user's real prefix keys and its own real slots up to
        # itself. The same for every layer of this forward: built here once, its grouped form on the first layer.
        dev = self.row_valid.device
        own = self.row_valid[:, None, :n] & (torch.arange(n, device=dev)[None, :] <=
                                             torch.arange(w, n, device=dev)[:, None])[None]  # [R, L, n]
        P = self.prefix_valid.shape[1]
        self.allowed = torch.cat([self.prefix_valid[self.row_user, None, :].expand(-1, self.n_new, P), own], dim=2)
        self._masks = {}

    def advance(self) -> None:
        if self.in_prefix:
            self.in_prefix = False
            p = int(self.prefix_lens.max())
            self.prefix_valid = torch.arange(p, device=self.prefix_lens.device)[None, :] < self.prefix_lens[:, None]
        else:
            self.written += self.n_new

    def start_decode(self) -> None:
        """After the suffix forward: every later forward is one token per row, written at slot ``slot``."""
        if self.in_prefix or not self.rows:
            raise RuntimeError("SharedPrefixKV: decoding starts after the prefix and the suffix forward")
        self.decoding = True
        self.n_new = 1
        self.row_valid[:, self.written:] = True  # every decode slot will hold a real token once written
        self.slot.fill_(self.written)
        self.slots = torch.arange(self.capacity, device=self.slot.device)
        self.prefix_off = ~self.prefix_valid[:, None, None, :]  # [U, 1, 1, P]
        self.steps = 0  # host-side count, only for the capacity check of eager steps

    def begin_step(self) -> None:
        """Before a decode forward (device work only): the own-token mask of this step's slot."""
        if self.steps >= self.capacity - self.written:
            raise ValueError(f"SharedPrefixKV: decode step {self.steps + 1} exceeds the capacity {self.capacity}")
        self.own_off = ~(self.row_valid & (self.slots <= self.slot))[:, None, None, :]  # [R, 1, 1, capacity]

    def end_step(self) -> None:
        self.slot += 1
        self.steps += 1

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None) -> torch.Tensor:
        """query [B, H, L, d], key/value [B, H_kv, L, d] (RoPE applied) -> [B, L, H, d]."""
        dtype = compute_dtype(query.device, value.dtype)
        q, k, v = query.to(dtype), key.to(dtype), value.to(dtype)
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        if self.in_prefix:  # right-padded prefixes: causal attention is exact for every real token
            self.prefix[layer] = (k, v)
            return _sdpa(q, k, v, scale, is_causal=True).transpose(1, 2)
        kp, vp = self.prefix[layer]
        if self.decoding:
            kr, vr = self.rows[layer]
            kr.index_copy_(2, self.slot.view(1), k)
            vr.index_copy_(2, self.slot.view(1), v)
            return self._attend_merged(q, kp, vp, kr, vr, scale)
        if layer not in self.rows:
            R, Hkv, _, d = k.shape
            self.rows[layer] = (k.new_zeros((R, Hkv, self.capacity, d)), v.new_zeros((R, Hkv, self.capacity, d)))
        kr, vr = self.rows[layer]
        w, L = self.written, q.shape[2]
        kr[:, :, w:w + L], vr[:, :, w:w + L] = k, v
        n = w + L
        g = q.shape[1] // k.shape[1]
        if (g, dtype) not in self._masks:
            self._masks[(g, dtype)] = grouped_mask(self.allowed, g, dtype)
        ks = torch.cat([kp[self.row_user], kr[:, :, :n]], dim=2)
        vs = torch.cat([vp[self.row_user], vr[:, :, :n]], dim=2)
        return grouped_sdpa(q, ks, vs, self._masks[(g, dtype)], scale).transpose(1, 2)

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
        # own part: every row against its own slots (the whole buffer, masked: static shapes)
        qr = q.view(R, Hkv, g, d)
        s2 = torch.matmul(qr, kr.transpose(-1, -2)).float() * scale  # [R, Hkv, g, capacity]
        s2 = s2.masked_fill(self.own_off, neg)
        lse2 = torch.logsumexp(s2, -1, keepdim=True)
        o2 = torch.matmul(torch.exp(s2 - lse2).to(vr.dtype), vr).float().reshape(R, H, d)
        a = torch.sigmoid(lse1 - lse2.reshape(R, H, 1))  # the prefix's share of the softmax mass
        out = o2 + a * (o1 - o2)
        return out.to(q.dtype)[:, None]  # [R, 1, H, d]


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
