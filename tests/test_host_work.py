"""Host work of the shared-prefix paths, counted on CPU (foundation/op_count.py): the ops a pass launches do not grow
with the number of users, the packed layout is built once and reused by every pass over the same users, and a
decode step is static (the same ops on the same shapes at every step) with no host sync, so that CUDA can replay it
from a graph (tests/test_gpu.py checks the replay)."""
from __future__ import annotations

import copy

import pytest
import torch

from foundation.op_count import OpCounter, no_host_sync
from models import packed_attention, shared_prefix
from models.qwen_models import SamplingSettings
from tests.fixtures.assets import build_tiny_qwen
from tests.models.test_shared_prefix import get_judge, make_batch

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny_host_work"))


@pytest.fixture
def one_forward(tiny_dir):
    """The prefix_split judge with every user of a batch in one forward."""
    judge = get_judge(tiny_dir, "prefix_split")
    judge.shared_tokens_per_forward = 10 ** 6
    yield judge
    judge.shared_tokens_per_forward = None


def _attention_counter(monkeypatch) -> list[OpCounter]:
    """Wrap the registered prefix_split kernel: one OpCounter per attention call (per layer)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls: list[OpCounter] = []
    kernel = packed_attention.prefix_split_attention

    def counted(*a, **k):
        with OpCounter() as c:
            out = kernel(*a, **k)
        calls.append(c)
        return out

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, packed_attention.PREFIX_SPLIT, counted)
    return calls


def test_prefix_split_ops_do_not_grow_with_users(one_forward, monkeypatch):
    """2 and 8 users launch the same ops per layer and per pass (scoring, and a training forward + backward)."""
    judge = one_forward
    calls = _attention_counter(monkeypatch)
    per_layer, scoring, training = {}, {}, {}
    for B in (2, 8):
        batch = make_batch(60 + B, judge.lm.config.vocab_size, B=B, K=4, reasoning=True)
        assert len(shared_prefix.user_chunks(judge, batch, "packed")) == 1
        with torch.no_grad():
            judge.score_candidates(batch, scoring="shared", with_values=True, with_token_logprobs=True)
            calls.clear()
            with OpCounter() as ops:
                judge.score_candidates(batch, scoring="shared", with_values=True, with_token_logprobs=True)
        per_layer[B] = {c.total for c in calls}
        assert len(calls) == judge.lm.config.num_hidden_layers and len(per_layer[B]) == 1
        scoring[B] = ops.total
        with OpCounter() as ops:
            out = judge.score_candidates(batch, scoring="shared", with_values=True, with_token_logprobs=True)
            (out.scores.sum() + out.values.sum() + out.token_logprobs.sum()).backward()
        judge.zero_grad(set_to_none=True)
        training[B] = ops.total
    assert per_layer[2] == per_layer[8], per_layer
    assert scoring[2] == scoring[8] and training[2] == training[8], (scoring, training)


def test_packed_layout_built_once_for_every_pass(one_forward, monkeypatch):
    """The rollout's scoring pass builds the layout; later passes over the same users (new lists of equal prompts,
    with grad) reuse it and agree with the first; an edited prompt gets a new one that matches the naive path."""
    judge = one_forward
    shared_prefix.clear_packed_cache()
    builds = []
    real = shared_prefix.build_layout
    monkeypatch.setattr(shared_prefix, "build_layout", lambda *a, **k: builds.append(1) or real(*a, **k))
    batch = make_batch(71, judge.lm.config.vocab_size, B=3, K=4)
    with torch.no_grad():
        first = judge.score_candidates(batch, scoring="shared", with_values=True)
    for _epoch in range(2):
        again = judge.score_candidates([copy.deepcopy(p) for p in batch], scoring="shared", with_values=True)
        torch.testing.assert_close(again.scores, first.scores, atol=1e-6, rtol=0)
    assert len(builds) == 1
    batch[1].suffix_ids[2] = batch[1].suffix_ids[2][:-2]
    with torch.no_grad():
        edited = judge.score_candidates(batch, scoring="shared", with_values=True)
        naive = judge.score_candidates(batch, scoring="naive", with_values=True)
    assert len(builds) == 2
    torch.testing.assert_close(edited.scores, naive.scores, atol=TOL, rtol=0)
    assert (edited.scores[1, 2] - first.scores[1, 2]).abs() > 1e-4


def test_only_recent_chunks_keep_their_masks(one_forward):
    """The suffix masks (the large part of a layout) stay with the MASKS_KEPT most recently used chunks; an older
    chunk rebuilds its mask when it comes back, with the same scores."""
    judge = one_forward
    shared_prefix.clear_packed_cache()
    batches = [make_batch(90 + i, judge.lm.config.vocab_size, B=2, K=3) for i in range(3)]
    kept = lambda: [bool(x.layout.masks) for x in shared_prefix._packed_cache.values()]  # noqa: E731
    with torch.no_grad():
        first = judge.score_candidates(batches[0], scoring="shared")
        for b in batches[1:]:
            judge.score_candidates(b, scoring="shared")
        assert shared_prefix.MASKS_KEPT == 2 and kept() == [False, True, True]
        again = judge.score_candidates(batches[0], scoring="shared")
    assert kept() == [False, True, True]  # batches 1 (dropped), 2, 0 (rebuilt)
    torch.testing.assert_close(again.scores, first.scores, atol=0, rtol=0)


def test_only_recent_chunks_keep_a_dense_mask(tiny_dir):
    """The sdpa/eager reference path's dense [U, 1, T, T] masks are held by the MASKS_KEPT most recent chunks only
    (older entries leave the cache), and a chunk that comes back scores the same."""
    judge = get_judge(tiny_dir, "sdpa")
    shared_prefix.clear_packed_cache()
    batches = [make_batch(95 + i, judge.lm.config.vocab_size, B=2, K=3) for i in range(4)]
    with torch.no_grad():
        first = judge.score_candidates(batches[0], scoring="shared")
        for b in batches[1:]:
            judge.score_candidates(b, scoring="shared")
        masks = [x.attention_mask for x in shared_prefix._packed_cache.values()]
        assert len(masks) == shared_prefix.MASKS_KEPT and all(isinstance(m, torch.Tensor) for m in masks)
        again = judge.score_candidates(batches[0], scoring="shared")
    torch.testing.assert_close(again.scores, first.scores, atol=0, rtol=0)


@pytest.mark.parametrize("impl", ["prefix_split", "sdpa"])
def test_empty_candidate_is_scored_at_the_end_of_the_prefix(tiny_dir, impl):
    """A candidate with no suffix tokens scores the prompt `prefix` alone, like the naive path (it used to read the
    previous candidate's last token)."""
    judge = get_judge(tiny_dir, impl)
    batch = make_batch(83, judge.lm.config.vocab_size, B=2, K=3)
    batch[1].suffix_ids[1] = []
    with torch.no_grad():
        naive = judge.score_candidates(batch, scoring="naive")
        shared = judge.score_candidates(batch, scoring="shared")
    torch.testing.assert_close(shared.scores, naive.scores, atol=TOL, rtol=0)


@torch.no_grad()
def test_decode_step_is_static_and_never_syncs(tiny_dir):
    """Every decode step launches the same ops on the same shapes (nothing grows with the step: the write slot is a
    device tensor, the step attends over the whole buffer under a mask), samples on the device and reads nothing
    back: what a CUDA graph needs. The buffers are written in place."""
    judge = get_judge(tiny_dir, "prefix_split")
    batch = make_batch(89, judge.lm.config.vocab_size, B=2, K=3)
    state = shared_prefix._SharedPrefixCache(judge, batch, 6)
    loop = shared_prefix._DecodeLoop(judge, state, 6, 6, True, SamplingSettings(1.0, 20, 0.9), 0, {5})
    loop.emit(state.h_last)
    ptr = state.kv.rows[0][0].data_ptr()
    traces = []
    for _ in range(3):
        with no_host_sync(OpCounter(trace=True)) as ops:
            loop.step()
        traces.append(ops.trace)
    assert traces[0] == traces[1] == traces[2] and len(traces[0]) > 50
    assert state.kv.rows[0][0].data_ptr() == ptr and int(loop.col) == 4 and int(state.kv.slot) == state.kv.written + 3
