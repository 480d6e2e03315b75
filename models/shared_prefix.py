"""Shared-prefix scoring and generation for the binary judge (docs/performance.md).

The K judge prompts of one user are `prefix + suffix_k` with an identical
prefix (chat framing + the user's history). The naive path
(BinaryJudge._score_naive) runs all K full prompts; here the prefix is
computed once per user. Two equivalent methods:

* ``packed`` (default): one sequence per user, ``[prefix][cand_1]...[cand_K]``,
  with a block attention mask (every token of candidate k attends to the prefix
  and causally to candidate k only) and position ids that restart at
  ``len(prefix)`` for every candidate, so each candidate sees exactly the
  positions and context it has in its own prompt. Several users go in one
  forward, right-padded to a common length; padding tokens attend only to
  padding, so no softmax row is empty (no NaN) and no real token sees them.
  The mask is passed to the backbone as a prepared 4D mask, which transformers
  (masking_utils._preprocess_mask_arguments) forwards unchanged:
  - sdpa: boolean ``[U, 1, T, T]`` (True = attend);
  - eager: additive float mask (0 / dtype min), because eager *adds* the mask;
  - flex_attention: a ``BlockMask`` from ``create_block_mask`` (sparse blocks
    are skipped, so the K candidate blocks cost ~K*s^2 instead of (K*s)^2);
  - flash_attention_2 cannot take an arbitrary mask: a run with shared scoring never uses FA2 (the attention
    implementation is chosen once per run, models/abstract_models.resolve_attn_implementation), so rollout,
    update and checkpoint recompute all run the same mask-capable kernel.
* ``cache``: the prefix is run once with ``use_cache`` (left-padded across
  users), the DynamicCache is repeated K times along the batch and the K
  suffixes run as one right-padded batch against it with a 2D padding mask
  that has a hole between the left-padded prefix and the suffix. This needs no
  custom mask, so it is what ``auto`` picks under flash_attention_2 (FA2's
  varlen path unpads queries and keys from the 2D mask; the causal alignment is
  bottom-right, which is exactly "suffix token j sees prefix + suffix[:j+1]").
  It is differentiable (the cache tensors are part of the graph) but
  transformers drops the cache under gradient checkpointing, so with
  checkpointing + grad ``auto`` uses ``packed`` instead.

Both return the naive path's ScoreOutput (fp32 agreement to ~1e-5), and the
gradients flow through the shared prefix once (the sum of the K candidates'
contributions), which is what the PPO backward needs.

Memory: never materialises ``[tokens, vocab]`` logits. Scores use
``judge.yes_minus_no`` on gathered hidden states; reasoning log-probs call
``judge.token_logprob`` only at reasoning positions, in bounded chunks.

Chunking: the naive path puts ``judge.scoring_chunk_size`` prompts in a forward
(about ``scoring_chunk_size * max_prompt_len`` tokens). The shared path packs
users into one forward until the padded token count would exceed that same
budget (override with the judge attribute ``shared_tokens_per_forward``); one
user always fits, however long.

Generation (``generate_shared_prefix``): the prefix of each user is computed
once, the suffixes are run as one batch against it, and then a manual decode
loop samples all K*users rows together, stopping a row at an end-of-sequence
token or once its text contains ``prompts.ANSWER_PREFIX``. Under prefix_split
the cache is a ``SharedPrefixKV`` (each prefix stored once, static per-row
buffers, prefix and own-token attention merged by log-sum-exp); under any
other attention the prefix DynamicCache is repeated over the K rows (2D mask
with holes + explicit position ids).
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from models.abstract_models import AbstractRecModel, pad_left, pad_right
from models.packed_attention import (DECODE_KWARG, LAYOUT_KWARG, PREFIX_SPLIT, PackedLayout, SharedPrefixKV,
                                     build_layout, compute_dtype, flex_block_mask, flex_bucket, no_mask_mapping)
from prompters import prompts
from prompters.binary_prompter import UserPrompt

from models.judge_types import SamplingSettings, ScoreOutput

METHODS = ("auto", "packed", "cache")
_LOGPROB_CHUNK = 1024  # reasoning positions per log-softmax over the vocab


# ---- helpers ----------------------------------------------------------------------------------
def _attn_impl(judge) -> str:
    return getattr(judge.base_lm().config, "_attn_implementation", None) or "sdpa"


def _checkpointing_active(judge) -> bool:
    lm = judge.base_lm()
    on = getattr(lm, "is_activation_checkpointing", None)  # transformers >= 5.x name; older: is_gradient_checkpointing
    if on is None:
        on = getattr(lm, "is_gradient_checkpointing", False)
    return bool(on) and lm.training and torch.is_grad_enabled()


def resolve_method(judge, method: str = "auto") -> str:
    """auto -> packed (the attention implementation of a shared-scoring run always accepts the block mask)."""
    if method not in METHODS:
        raise ValueError(f"shared-prefix method {method!r}: must be one of {METHODS}")
    return "packed" if method == "auto" else method


def _mask_attention(judge) -> str:
    """The run's attention implementation, which must take a 4D block mask."""
    impl = _attn_impl(judge)
    if impl == "flash_attention_2":
        raise ValueError("shared-prefix packing needs a mask-capable attention implementation (sdpa, "
                         "flex_attention, eager); this model was loaded with flash_attention_2")
    return impl


def _pad_id(judge) -> int:
    tok = getattr(judge, "tokenizer", None)
    pid = getattr(tok, "pad_token_id", None) if tok is not None else None
    if pid is None:
        pid = getattr(judge.base_lm().config, "pad_token_id", None)
    return int(pid) if pid is not None else 0


def token_budget(judge, batch: Sequence[UserPrompt]) -> int:
    """Padded tokens per forward: the naive path's scoring_chunk_size * longest prompt, unless overridden."""
    override = getattr(judge, "shared_tokens_per_forward", None)
    if override:
        return int(override)
    longest = max(len(p.prefix_ids) + max(len(s) for s in p.suffix_ids) for p in batch)
    return max(1, int(judge.scoring_chunk_size)) * longest


def packed_length(p: UserPrompt) -> int:
    return len(p.prefix_ids) + sum(len(s) for s in p.suffix_ids)


def flat_layout(judge) -> bool:
    """Whether the run's attention lays users end to end in one row (prefix_split, flex) instead of one padded row
    per user (the dense-mask reference)."""
    return _attn_impl(judge) in (PREFIX_SPLIT, "flex_attention")


def user_chunks(judge, batch: Sequence[UserPrompt], method: str) -> list[list[int]]:
    """Consecutive groups of user indices whose forward fits the token budget (counting padding where there is)."""
    budget = token_budget(judge, batch)
    flat = method == "packed" and flat_layout(judge)
    chunks: list[list[int]] = []
    cur: list[int] = []
    cur_len = 0  # padded length per row (packed: per user; cache: per candidate row); flat: the row's length
    for i, p in enumerate(batch):
        if method == "packed":
            L, rows = packed_length(p), 1
        else:
            L, rows = len(p.prefix_ids) + max(len(s) for s in p.suffix_ids), p.K
        if flat:
            if cur and cur_len + L > budget:
                chunks.append(cur)
                cur, cur_len = [], 0
            cur.append(i)
            cur_len += L
            continue
        new_len = max(cur_len, L)
        if cur and new_len * rows * (len(cur) + 1) > budget:
            chunks.append(cur)
            cur, new_len = [], L
        cur.append(i)
        cur_len = new_len
    if cur:
        chunks.append(cur)
    return chunks


@dataclass
class _Gather:
    """Flat indices into a [N, H] hidden-state matrix for one chunk of users."""

    prefix_last: torch.Tensor  # [U]
    cand_last: torch.Tensor  # [U*K]
    lp_pos: torch.Tensor  # [M] predictor positions of reasoning tokens
    lp_tgt: torch.Tensor  # [M] the reasoning token ids
    lp_row: torch.Tensor  # [M] which (user, candidate) row u*K+k they belong to


def _reasoning_items(p: UserPrompt, k: int):
    """(t, token) for the reasoning tokens of candidate k: suffix index t is predicted from index t-1."""
    if not p.reasoning_spans:
        return []
    a, b = p.reasoning_spans[k]
    return [(t, p.suffix_ids[k][t]) for t in range(a, b)]


# ---- packed inputs: built once per chunk of users (numpy on the host), reused by every pass -------------------
@dataclass
class _Flat:
    """Users laid end to end in one flat sequence, as numpy arrays: what every packed layout is derived from."""

    ids: np.ndarray  # [N]
    pos: np.ndarray  # [N] position ids: a candidate's restart at its prefix length
    user_of: np.ndarray  # [N]
    seg: np.ndarray  # [N] 0 = prefix, k + 1 = candidate k
    user_start: np.ndarray  # [U]
    user_len: np.ndarray  # [U] packed length of each user
    prefix_last: np.ndarray  # [U] flat index of each prefix's last token
    cand_last: np.ndarray  # [U*K] flat index of each candidate's last token (the prefix's for an empty suffix)
    lp_pos: np.ndarray  # [M] flat index predicting each reasoning token
    lp_tgt: np.ndarray  # [M]
    lp_row: np.ndarray  # [M]


def _flat(users: Sequence[UserPrompt], with_token_logprobs: bool) -> _Flat:
    U, K = len(users), users[0].K
    P = np.fromiter((len(p.prefix_ids) for p in users), dtype=np.int64, count=U)
    S = np.fromiter((len(s) for p in users for s in p.suffix_ids), dtype=np.int64, count=U * K).reshape(U, K)
    seg_len = np.concatenate([P[:, None], S], axis=1).reshape(-1)  # segments in flat order: prefix, candidates
    seg_start = np.concatenate([[0], np.cumsum(seg_len)[:-1]])
    N = int(seg_len.sum())
    ids = np.fromiter((t for p in users for s in (p.prefix_ids, *p.suffix_ids) for t in s), dtype=np.int64, count=N)
    within = np.arange(N) - np.repeat(seg_start, seg_len)
    pos0 = np.concatenate([np.zeros((U, 1), np.int64), np.repeat(P[:, None], K, 1)], axis=1).reshape(-1)
    starts = seg_start.reshape(U, K + 1)
    prefix_last = starts[:, 0] + P - 1
    row_start, row_len = starts[:, 1:].reshape(-1), S.reshape(-1)
    row_user = np.repeat(np.arange(U), K)
    cand_last = np.where(row_len > 0, row_start + row_len - 1, prefix_last[row_user])
    lp_pos = lp_tgt = lp_row = np.zeros(0, np.int64)
    if with_token_logprobs:
        spans = np.array([p.reasoning_spans[k] if p.reasoning_spans else (0, 0) for p in users for k in range(K)],
                         dtype=np.int64).reshape(-1, 2)
        n = spans[:, 1] - spans[:, 0]
        lp_row = np.repeat(np.arange(U * K), n)
        t = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + np.repeat(spans[:, 0], n)  # suffix index
        rs = np.repeat(row_start, n)
        lp_pos = np.where(t > 0, rs + t - 1, prefix_last[row_user][lp_row])
        lp_tgt = ids[rs + t]
    return _Flat(ids=ids, pos=within + np.repeat(pos0, seg_len),
                 user_of=np.repeat(np.repeat(np.arange(U), K + 1), seg_len),
                 seg=np.repeat(np.tile(np.arange(K + 1), U), seg_len), user_start=starts[:, 0], user_len=P + S.sum(1),
                 prefix_last=prefix_last, cand_last=cand_last, lp_pos=lp_pos, lp_tgt=lp_tgt, lp_row=lp_row)


def _tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def _gather(f: _Flat, device: torch.device, index: np.ndarray | None = None) -> _Gather:
    """The gather indices of f, its positions mapped through `index` (flat position -> row of the hidden states)."""
    at = (lambda a: a) if index is None else (lambda a: index[a])  # noqa: E731
    t = lambda a: _tensor(a, device)  # noqa: E731
    return _Gather(t(at(f.prefix_last)), t(at(f.cand_last)), t(at(f.lp_pos)), t(f.lp_tgt), t(f.lp_row))


def build_packed(users: Sequence[UserPrompt], pad_id: int, device: torch.device, with_token_logprobs: bool):
    """One right-padded row per user [U, T]: ids, position ids, segment ids (segment 0 = prefix, k+1 = candidate k,
    -1 = pad) and the gather indices into h.view(U*T, H)."""
    f = _flat(users, with_token_logprobs)
    U, T = len(users), int(f.user_len.max())
    dense = f.user_of * T + np.arange(len(f.ids)) - f.user_start[f.user_of]  # flat position -> row-major [U, T]
    ids = np.full(U * T, pad_id, np.int64)
    ids[dense] = f.ids
    # padding: distinct positions keep RoPE finite; never attended by real tokens
    pos = (np.arange(T)[None, :] - f.user_len[:, None]).reshape(-1)
    pos[dense] = f.pos
    seg = np.full(U * T, -1, np.int64)
    seg[dense] = f.seg
    shape = lambda a: _tensor(a.reshape(U, T), device)  # noqa: E731
    return shape(ids), shape(pos), shape(seg), _gather(f, device, dense)


def packed_allowed(seg: torch.Tensor) -> torch.Tensor:
    """Boolean [U, 1, T, T]: query i attends key j iff j <= i and (j is prefix and i is real, or same segment)."""
    T = seg.shape[1]
    ar = torch.arange(T, device=seg.device)
    causal = ar[None, :] <= ar[:, None]  # [T(q), T(kv)]
    sq, sk = seg[:, :, None], seg[:, None, :]
    allowed = causal[None] & (((sk == 0) & (sq >= 0)) | (sq == sk))
    return allowed[:, None]


def packed_mask(seg: torch.Tensor, attn_impl: str, dtype: torch.dtype):
    """The dense 4D mask of the one-row-per-user layout in the form the attention implementation expects."""
    allowed = packed_allowed(seg)
    if attn_impl == "sdpa":
        return allowed
    # eager (and any implementation that adds the mask to the scores): additive float mask
    m = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    return m.masked_fill_(~allowed, torch.finfo(dtype).min)


def build_flat(users: Sequence[UserPrompt], pad_id: int, device: torch.device, with_token_logprobs: bool,
               pad_to: int | None = None):
    """Users laid end to end in one row [1, N] (N padded to pad_to): ids, position ids, user and segment of every
    token (-1 = padding) and the gather indices into h.view(N, H)."""
    f = _flat(users, with_token_logprobs)
    N = len(f.ids)
    T = max(N, pad_to or N)
    fill = lambda a, pad: np.concatenate([a, np.full(T - N, pad, np.int64)])  # noqa: E731
    pos = np.concatenate([f.pos, np.arange(T - N)])  # padding: distinct positions keep RoPE finite
    return (_tensor(fill(f.ids, pad_id), device)[None], _tensor(pos, device)[None],
            _tensor(fill(f.user_of, -1), device), _tensor(fill(f.seg, -1), device), _gather(f, device))


@dataclass
class PackedInputs:
    """One packed forward of a chunk of users, everything but the weights: ids and position ids, what the attention
    implementation reads (prefix_split's PackedLayout, flex's BlockMask or the dense mask) and the gather indices of
    scores, values and reasoning log-probs."""

    ids: torch.Tensor
    pos: torch.Tensor
    gather: _Gather
    layout: PackedLayout | None = None  # prefix_split
    attention_mask: object = None  # flex: BlockMask; sdpa/eager: the dense [U, 1, T, T] mask


# Recent chunks' packed inputs, keyed by the users' tokens: the rollout's scoring pass builds them and every later
# pass over the same users (the reference model's, the PPO epochs') finds them here, whoever calls and however the
# prompt lists are rebuilt. Keyed by content, not identity, so an edited prompt can never get a stale layout. The
# index tensors are small; prefix_split's suffix masks are not (R x g*S_max x (P_max + S_max) in the compute dtype,
# ~0.45 GB at 16 users, K=20, Qwen2.5-3B in bf16), so only the MASKS_KEPT most recently used chunks keep theirs (a
# mask is rebuilt in a few ops).
PACKED_CACHE_SIZE = 16
MASKS_KEPT = 2
_packed_cache: OrderedDict = OrderedDict()


def clear_packed_cache() -> None:
    _packed_cache.clear()


def _content_key(users: Sequence[UserPrompt], with_token_logprobs: bool) -> tuple:
    return tuple((tuple(p.prefix_ids), tuple(map(tuple, p.suffix_ids)),
                  tuple(map(tuple, p.reasoning_spans)) if with_token_logprobs and p.reasoning_spans else None)
                 for p in users)


def packed_inputs(judge, users: Sequence[UserPrompt], with_token_logprobs: bool) -> PackedInputs:
    """The packed inputs of this chunk of users for the judge's attention implementation, built on first use and
    reused from then on (PACKED_CACHE_SIZE chunks kept)."""
    impl = _mask_attention(judge)
    dev, pad = judge.device, _pad_id(judge)
    dtype = compute_dtype(dev, judge.base_lm().dtype) if impl not in (PREFIX_SPLIT, "flex_attention") else None
    key = (impl, str(dev), pad, dtype, with_token_logprobs, _content_key(users, with_token_logprobs))
    hit = _packed_cache.get(key)
    if hit is not None:
        _packed_cache.move_to_end(key)
        _drop_old_masks()
        return hit
    if impl == PREFIX_SPLIT:
        ids, pos, _, _, g = build_flat(users, pad, dev, with_token_logprobs)
        layout = build_layout([len(p.prefix_ids) for p in users], [[len(s) for s in p.suffix_ids] for p in users],
                              dev)
        out = PackedInputs(ids, pos, g, layout=layout)
    elif impl == "flex_attention":
        N = sum(packed_length(p) for p in users)
        ids, pos, user_of, seg, g = build_flat(users, pad, dev, with_token_logprobs, pad_to=flex_bucket(N))
        out = PackedInputs(ids, pos, g, attention_mask=flex_block_mask(user_of, seg))
    else:  # dense block mask, one row per user (sdpa / eager): the reference path
        ids, pos, seg, g = build_packed(users, pad, dev, with_token_logprobs)
        out = PackedInputs(ids, pos, g, attention_mask=packed_mask(seg, impl, dtype))
    _packed_cache[key] = out
    while len(_packed_cache) > PACKED_CACHE_SIZE:
        _packed_cache.popitem(last=False)
    _drop_old_masks()
    return out


def _drop_old_masks() -> None:
    for key, x in list(_packed_cache.items())[:-MASKS_KEPT]:
        if x.layout is not None:
            x.layout.masks.clear()  # rebuilt lazily by the layout
        elif isinstance(x.attention_mask, torch.Tensor):
            del _packed_cache[key]  # the dense [U, 1, T, T] mask is the entry's bulk: the entry is rebuilt on next use


def _packed_forward(judge, users: Sequence[UserPrompt], with_token_logprobs: bool):
    x = packed_inputs(judge, users, with_token_logprobs)
    body = judge.backbone()
    if x.layout is not None:
        h = body(input_ids=x.ids, attention_mask=no_mask_mapping(body.config), position_ids=x.pos, use_cache=False,
                 **{LAYOUT_KWARG: x.layout}).last_hidden_state
    else:
        h = body(input_ids=x.ids, attention_mask=x.attention_mask, position_ids=x.pos, use_cache=False).last_hidden_state
    return h.reshape(-1, h.shape[-1]), x.gather


# ---- cache method -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(forward_cls: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(forward_cls.forward).parameters else "past_key_values"


def _cache_kwarg(body) -> str:
    """The KV-cache argument of the backbone's forward: `cache` (transformers >= 5.2x) or `past_key_values`
    (looked up once per model class, not at every decode step)."""
    return _cache_kwarg_of(type(body))


def _run_with_cache(body, cache, **inputs):
    """A forward that appends to `cache` in place (DynamicCache), whichever name this transformers gives it."""
    return body(**inputs, use_cache=True, **{_cache_kwarg(body): cache})


def _prefix_cache(judge, users: Sequence[UserPrompt]):
    """Left-padded prefix forward with a DynamicCache: (cache, prefix mask [U, P], prefix lens [U], h_last [U, H])."""
    from transformers import DynamicCache

    dev = judge.device
    ids, mask = pad_left([p.prefix_ids for p in users], _pad_id(judge))
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
    cache = DynamicCache(config=judge.base_lm().config)
    out = _run_with_cache(judge.backbone(), cache, input_ids=ids, attention_mask=mask, position_ids=pos)
    return cache, mask, mask.sum(-1), out.last_hidden_state[:, -1]


def _suffix_batch(users: Sequence[UserPrompt], pad_id: int):
    """Right-padded suffix ids [U*K, S], their mask and lengths."""
    ids, mask = pad_right([s for p in users for s in p.suffix_ids], pad_id)  # one masked slot if all are empty
    return ids, mask, mask.sum(-1)


def _run_suffixes(judge, users: Sequence[UserPrompt]):
    """Prefix once, cache repeated K times, suffixes as one batch. Returns what decoding / scoring needs."""
    dev = judge.device
    K = users[0].K
    cache, pmask, plens, h_prefix = _prefix_cache(judge, users)
    cache.batch_repeat_interleave(K)
    sids, smask, slens = _suffix_batch(users, _pad_id(judge))
    sids, smask, slens = sids.to(dev), smask.to(dev), slens.to(dev)
    rows_plen = plens.repeat_interleave(K)
    S = sids.shape[1]
    pos = rows_plen[:, None] + torch.arange(S, device=dev)[None, :]
    mask = torch.cat([pmask.repeat_interleave(K, 0), smask], dim=1)  # hole between prefix and suffix padding
    out = _run_with_cache(judge.backbone(), cache, input_ids=sids, attention_mask=mask, position_ids=pos)
    return cache, mask, rows_plen, slens, h_prefix, out.last_hidden_state


def _cache_forward(judge, users: Sequence[UserPrompt], with_token_logprobs: bool):
    U, K = len(users), users[0].K
    _, _, _, slens, h_prefix, hs = _run_suffixes(judge, users)
    S, H = hs.shape[1], hs.shape[2]
    flat = torch.cat([h_prefix, hs.reshape(-1, H)], dim=0)  # row u: prefix last of user u; then U + r*S + t
    dev = judge.device
    cand_last = U + torch.arange(U * K, device=dev) * S + slens - 1
    lp_pos, lp_tgt, lp_row = [], [], []
    if with_token_logprobs:
        for u, p in enumerate(users):
            for k in range(K):
                r = u * K + k
                for t, tok in _reasoning_items(p, k):
                    lp_pos.append(U + r * S + t - 1 if t > 0 else u)
                    lp_tgt.append(tok)
                    lp_row.append(r)
    as_t = lambda x: torch.tensor(x, dtype=torch.long, device=dev)  # noqa: E731
    g = _Gather(torch.arange(U, device=dev), cand_last, as_t(lp_pos), as_t(lp_tgt), as_t(lp_row))
    return flat, g


# ---- public: scoring --------------------------------------------------------------------------
def score_shared_prefix(judge: AbstractRecModel, batch: Sequence[UserPrompt], with_values: bool = False,
                        with_token_logprobs: bool = False, method: str = "auto",
                        sampling: "SamplingSettings | None" = None) -> "ScoreOutput":
    """Same ScoreOutput as BinaryJudge._score_naive, computing each user's prefix once. Differentiable."""

    B, K = len(batch), batch[0].K
    method = resolve_method(judge, method)
    if method == "cache" and _checkpointing_active(judge):
        method = "packed"  # transformers drops the KV cache inside checkpointed layers
    scores, values, tok_lp = [], [], []
    for idx in user_chunks(judge, batch, method):
        users = [batch[i] for i in idx]
        if method == "packed":
            flat, g = _packed_forward(judge, users, with_token_logprobs)
        else:
            flat, g = _cache_forward(judge, users, with_token_logprobs)
        scores.append(judge.yes_minus_no(flat[g.cand_last]).view(len(users), K))
        if with_values:
            values.append(judge.value_head(flat[g.prefix_last]))
        if with_token_logprobs:
            acc = torch.zeros(len(users) * K, dtype=torch.float32, device=flat.device)
            for a in range(0, g.lp_pos.numel(), _LOGPROB_CHUNK):
                sl = slice(a, a + _LOGPROB_CHUNK)
                lp = judge.token_logprob(flat[g.lp_pos[sl]], g.lp_tgt[sl], sampling)
                acc = acc.index_add(0, g.lp_row[sl], lp.float())
            tok_lp.append(acc.view(len(users), K))
    out = ScoreOutput(scores=torch.cat(scores).view(B, K))
    if with_values:
        out.values = torch.cat(values).view(B)
    if with_token_logprobs:
        out.token_logprobs = torch.cat(tok_lp).view(B, K)
    return out


# ---- public: generation -----------------------------------------------------------------------
def _eos_ids(judge) -> set[int]:
    ids: set[int] = set()
    gc = getattr(judge.base_lm(), "generation_config", None)
    e = getattr(gc, "eos_token_id", None) if gc is not None else None
    if e is None:
        e = getattr(getattr(judge, "tokenizer", None), "eos_token_id", None)
    if isinstance(e, int):
        ids.add(e)
    elif e is not None:
        ids.update(int(x) for x in e)
    return ids


class _StopString:
    """Detects prompts.ANSWER_PREFIX in a row's generated text; only decodes when the new token could end it."""

    def __init__(self, tokenizer, stop: str = prompts.ANSWER_PREFIX) -> None:
        self.tok, self.stop = tokenizer, stop
        self.last_char = stop[-1]
        self.window = len(tokenizer(stop, add_special_tokens=False)["input_ids"]) + 2 if tokenizer is not None else 0
        self._piece: dict[int, bool] = {}

    def may_end(self, t: int) -> bool:
        if t not in self._piece:
            self._piece[t] = self.last_char in self.tok.decode([t])
        return self._piece[t]

    def hit(self, generated: list[int], end: int | None = None) -> bool:
        """Whether generated[:end] ends with a token that completes the stop string."""
        end = len(generated) if end is None else end
        if self.tok is None or end <= 0 or not self.may_end(generated[end - 1]):
            return False
        return self.stop in self.tok.decode(generated[max(0, end - self.window):end])


GEN_CHECK_EVERY = 8  # decode steps between host-side stop checks (sampled tokens are identical either way)


@torch.no_grad()
def generate_shared_prefix(judge: AbstractRecModel, batch: Sequence[UserPrompt], max_new_tokens: int,
                           do_sample: bool = True, sampling: "SamplingSettings | None" = None) -> list[list[list[int]]]:
    """Per user, per candidate: the generated token ids (up to and including the stop token).

    The prefix KV cache of a user is computed once and shared by its K rows; users are batched so that a decode
    step holds at most max(K, judge.generation_batch_rows) rows, independent of the scoring chunk size.
    Sampling follows `sampling` exactly (temperature, top-k, top-p; no other logits processor), greedy otherwise.
    """

    if not batch:
        return []
    sampling = sampling or SamplingSettings()
    K = batch[0].K
    pad = _pad_id(judge)
    eos = _eos_ids(judge)
    stopper = _StopString(getattr(judge, "tokenizer", None))
    rows = int(getattr(judge, "generation_batch_rows", 256))
    users_per_chunk = max(1, rows // max(K, 1))
    results: list[list[list[int]]] = []
    for c0 in range(0, len(batch), users_per_chunk):
        users = list(batch[c0:c0 + users_per_chunk])
        results.extend(_generate_chunk(judge, users, max_new_tokens, do_sample, sampling, pad, eos, stopper))
    return results


def _first_stop(tokens: list[int], start: int, eos: set[int], stopper: _StopString) -> int | None:
    """Index just past the first end token or completed stop string at or after `start`, else None."""
    for i in range(start, len(tokens)):
        if tokens[i] in eos or stopper.hit(tokens, i + 1):
            return i + 1
    return None


def _rows_last_hidden(hs: torch.Tensor, slens: torch.Tensor, h_prefix: torch.Tensor, K: int) -> torch.Tensor:
    """Each row's hidden state at its last real token: the suffix's last, or the prefix's when the suffix is empty."""
    rows = torch.arange(hs.shape[0], device=hs.device)
    h = hs[rows, (slens - 1).clamp_min(0)]
    return torch.where((slens > 0)[:, None], h, h_prefix.repeat_interleave(K, 0).to(h.dtype))


class _RepeatedPrefixCache:
    """Decoding state for any attention implementation: the prefix DynamicCache repeated over each user's K rows,
    a 2D mask with holes (grown into a preallocated buffer) and explicit position ids."""

    def __init__(self, judge, users: Sequence[UserPrompt], max_new_tokens: int) -> None:
        self.body = judge.backbone()
        self.cache, mask, rows_plen, slens, h_prefix, hs = _run_suffixes(judge, users)
        self.h_last = _rows_last_hidden(hs, slens, h_prefix, users[0].K)
        self.width = mask.shape[1]
        self.mask = torch.zeros((hs.shape[0], self.width + max_new_tokens), dtype=mask.dtype, device=mask.device)
        self.mask[:, :self.width] = mask
        self.next_pos = rows_plen + slens

    def step(self, tok: torch.Tensor, t: int) -> torch.Tensor:
        """Feed the t-th generated token of every row; the next hidden states [R, H]."""
        self.mask[:, self.width + t] = 1
        out = _run_with_cache(self.body, self.cache, input_ids=tok[:, None],
                              attention_mask=self.mask[:, :self.width + t + 1], position_ids=self.next_pos[:, None])
        self.next_pos = self.next_pos + 1
        return out.last_hidden_state[:, -1]


class _SharedPrefixCache:
    """Decoding state under prefix_split: a SharedPrefixKV (each prefix stored once, static per-row buffers). A
    decode step is static (fixed shapes, write slot and positions in device tensors, no host sync): what
    _CudaGraphStep captures."""

    static = True

    def __init__(self, judge, users: Sequence[UserPrompt], max_new_tokens: int) -> None:
        dev, pad, K = judge.device, _pad_id(judge), users[0].K
        self.body = judge.backbone()
        self.no_mask = no_mask_mapping(self.body.config)
        ids, pmask = pad_right([p.prefix_ids for p in users], pad)
        plens, P = pmask.sum(-1), ids.shape[1]
        sids, smask, slens = _suffix_batch(users, pad)
        S = sids.shape[1]
        plens, sids, smask, slens = plens.to(dev), sids.to(dev), smask.to(dev), slens.to(dev)
        self.kv = SharedPrefixKV(plens, K, S + max_new_tokens)
        hp = self._forward(ids.to(dev), torch.arange(P, device=dev)[None].expand(len(users), -1))
        h_prefix = hp[torch.arange(len(users), device=dev), plens - 1]
        rows_plen = plens.repeat_interleave(K)
        hs = self._forward(sids, rows_plen[:, None] + torch.arange(S, device=dev)[None, :], valid=smask)
        self.h_last = _rows_last_hidden(hs, slens, h_prefix, K)
        self.next_pos = rows_plen + slens  # [R] position of the token each row feeds next (updated in place)
        self.kv.start_decode()

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        self.kv.begin(ids.shape[1], valid)
        out = self.body(input_ids=ids, attention_mask=self.no_mask, position_ids=pos, use_cache=False,
                        **{DECODE_KWARG: self.kv})
        self.kv.advance()
        return out.last_hidden_state

    def step(self, tok: torch.Tensor, t: int | None = None) -> torch.Tensor:
        """Feed one token per row, tok [R]; the next hidden states [R, H]. `t` is unused (the slot is on device)."""
        self.kv.begin_step()
        out = self.body(input_ids=tok[:, None], attention_mask=self.no_mask, position_ids=self.next_pos[:, None],
                        use_cache=False, **{DECODE_KWARG: self.kv})
        self.kv.end_step()
        self.next_pos += 1
        return out.last_hidden_state[:, -1]


class _DecodeLoop:
    """The device side of decoding, in static buffers: the last token of every row, the generated tokens, which rows
    are done and the next column to fill. ``emit(h)`` samples the next token from hidden states h (greedy or
    SamplingSettings.sample: no host sync) and writes it; ``step()`` feeds the last token to the model and emits the
    next. Under prefix_split a step has static shapes and touches no host state, so it can be captured."""

    def __init__(self, judge, state, R: int, max_new_tokens: int, do_sample: bool, sampling: SamplingSettings,
                 pad: int, eos: set[int]) -> None:
        dev = judge.device
        self.judge, self.state, self.do_sample, self.sampling, self.pad = judge, state, do_sample, sampling, pad
        self.tok = torch.full((R,), pad, dtype=torch.long, device=dev)
        self.gen = torch.full((R, max_new_tokens), pad, dtype=torch.long, device=dev)
        self.done = torch.zeros(R, dtype=torch.bool, device=dev)
        self.col = torch.zeros((), dtype=torch.long, device=dev)
        self.eos = torch.tensor(sorted(eos), dtype=torch.long, device=dev) if eos else None
        self.t = 0  # host-side step count: the repeated-prefix cache's mask column (static steps ignore it)

    def emit(self, h: torch.Tensor) -> None:
        logits = self.judge.output_logits(h)
        tok = self.sampling.sample(logits) if self.do_sample else logits.argmax(-1)
        tok = torch.where(self.done, self.pad, tok)
        self.tok.copy_(tok)
        self.gen.index_copy_(1, self.col.view(1), tok[:, None])
        self.col += 1
        if self.eos is not None:
            self.done |= (tok[:, None] == self.eos[None, :]).any(-1)

    def step(self) -> None:
        self.emit(self.state.step(self.tok, self.t))
        self.t += 1


class _CudaGraphStep:
    """Runs a static step (fixed shapes, no host sync, all state in device tensors) eagerly for `warmup` calls on a
    side stream, then captures it once in a CUDA graph and replays the graph for every later call: one launch per
    decode step instead of one per op. Under autocast the warm-up has filled the autocast weight-cast cache, which
    the graph then reads (the cache lives as long as the caller's autocast region, which holds the whole call)."""

    def __init__(self, fn, warmup: int = 2) -> None:
        self.fn, self.warmup, self.calls = fn, warmup, 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        if self.calls < self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.fn()
            torch.cuda.current_stream().wait_stream(side)
            self.calls += 1
            return
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):  # records the step without running it
            self.fn()
        self.graph.replay()


def _use_cuda_graph(judge, state, steps: int) -> bool:
    """Decode steps replayed from a CUDA graph: on CUDA, under prefix_split, unless judge.decode_cuda_graph is False,
    and when there are steps left to replay after the warm-up and the capture."""
    return (judge.device.type == "cuda" and getattr(state, "static", False)
            and getattr(judge, "decode_cuda_graph", True) and steps > GRAPH_WARMUP_STEPS + 1)


GRAPH_WARMUP_STEPS = 2


def _generate_chunk(judge, users, max_new_tokens, do_sample, sampling, pad, eos, stopper):
    K = users[0].K
    R = len(users) * K
    if max_new_tokens <= 0:
        return [[[] for _ in range(K)] for _ in users]
    state_cls = _SharedPrefixCache if _attn_impl(judge) == PREFIX_SPLIT else _RepeatedPrefixCache
    state = state_cls(judge, users, max_new_tokens)
    loop = _DecodeLoop(judge, state, R, max_new_tokens, do_sample, sampling, pad, eos)
    loop.emit(state.h_last)
    step = _CudaGraphStep(loop.step, GRAPH_WARMUP_STEPS) if _use_cuda_graph(judge, state, max_new_tokens - 1) \
        else loop.step
    ends: list[int | None] = [None] * R  # generated length of each row once it has stopped
    scanned = [0] * R
    n = 1  # tokens generated per row so far
    while True:
        # Stop strings need the text: check on the host every few steps only (one sync), then cut exactly.
        if n % GEN_CHECK_EVERY == 0 or n == max_new_tokens:
            host = loop.gen[:, :n].tolist()
            for r in range(R):
                if ends[r] is None:
                    e = _first_stop(host[r], scanned[r], eos, stopper)
                    scanned[r] = n
                    if e is not None:
                        ends[r] = e
            loop.done.copy_(torch.tensor([e is not None for e in ends]))
            if all(e is not None for e in ends):
                break
        if n == max_new_tokens:
            break
        step()
        n += 1
    host = loop.gen[:, :n].tolist()
    gens = [host[r][:ends[r] if ends[r] is not None else n] for r in range(R)]
    return [gens[u * K:(u + 1) * K] for u in range(len(users))]
