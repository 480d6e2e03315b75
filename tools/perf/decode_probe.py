"""Reasoning-generation speed: the shared-prefix decoder eager, the same decoder replayed from a CUDA graph, and HF
generate per prompt (--scoring naive's reference), on the same users, in one run (a stage of tools/perf/gpu_perf.sh).

A random-weight judge of a published shape under prefix_split (bf16 on CUDA, fp32 on CPU), --users users x --K
candidates with realistic prompt lengths (tools/benchmark.synth_users), --tokens new tokens per candidate:

* generate_s: the whole generate_shared_prefix call (prefill + decode + host stop checks), median of --repeats
  after a warm-up, eager (judge.decode_cuda_graph = False) and graph; HF generate per prompt likewise, once;
* step_ms: one decode step (forward + sampling), median over --steps steps, eager vs graph replay (CUDA events);
* tokens_equal: the eager and the graph decoder give the same greedy tokens, and the same sampled tokens for the
  same seed.

Without CUDA (--smoke on a CPU) the graph rows are absent (graphs need CUDA) and the rest runs on tiny shapes.
Writes OUT/decode_<shape>_u<users>_k<K>.json (OUT: --out, else $OUT, else /tmp).

    python tools/perf/decode_probe.py --shape qwen2.5-3b --users 4 --K 20 --tokens 32
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _timed(fn, cuda: bool, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        _sync(cuda)
        t0 = time.perf_counter()
        out = fn()
        _sync(cuda)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="qwen2.5-3b", help="a published shape (fixtures/tiny_model.py) or tiny")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--K", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per candidate")
    ap.add_argument("--history_items", type=int, default=10)
    ap.add_argument("--tokens_per_item", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="decode steps timed one by one")
    ap.add_argument("--skip_hf", action="store_true", help="do not time HF generate")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from fixtures.tiny_model import build_tiny_tokenizer, published_shape_config, random_qwen
    from models.packed_attention import register_prefix_split
    from models.qwen_models import BinaryJudge, SamplingSettings
    from models.shared_prefix import _DecodeLoop, _SharedPrefixCache, _eos_ids, _pad_id, generate_shared_prefix
    from tools.benchmark import synth_users

    register_prefix_split()
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tiny_tokenizer(Path(tmp) / "tok")
    if a.shape == "tiny":
        from transformers import Qwen2Config

        config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=4096,
                             tie_word_embeddings=True, bos_token_id=None)
    else:
        config = published_shape_config(a.shape)
    lm = random_qwen(config, tok, 0, device=dev, dtype=torch.bfloat16 if cuda else torch.float32,
                     attn_implementation="prefix_split")
    judge = BinaryJudge.from_model(lm, tok).eval()
    users = synth_users(a.users, a.K, a.history_items, a.tokens_per_item, min(len(tok), config.vocab_size), 0)
    sampling = SamplingSettings(1.0, 50, 1.0)
    res: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "shape": a.shape, "users": a.users,
                 "K": a.K, "tokens": a.tokens, "rows": a.users * a.K,
                 "prefix_tokens_mean": statistics.mean(len(p.prefix_ids) for p in users)}
    modes = [False, True] if cuda else [False]
    with torch.no_grad():
        got = {}
        for graph in modes:
            judge.decode_cuda_graph = graph
            name = "graph" if graph else "eager"

            def run(do_sample=True):
                torch.manual_seed(0)
                return generate_shared_prefix(judge, users, a.tokens, do_sample=do_sample, sampling=sampling)

            run()  # warm-up (allocator, cuBLAS, first capture)
            res[f"{name}_generate_s"], got[(graph, True)] = _timed(run, cuda, a.repeats)
            got[(graph, False)] = run(do_sample=False)
            res[f"{name}_generated_tokens"] = sum(len(g) for u in got[(graph, True)] for g in u)
        if cuda:
            res["tokens_equal_greedy"] = got[(True, False)] == got[(False, False)]
            res["tokens_equal_sampled_same_seed"] = got[(True, True)] == got[(False, True)]
            res["graph_vs_eager"] = res["eager_generate_s"] / res["graph_generate_s"]
        # one decode step, eager and replayed
        state = _SharedPrefixCache(judge, users, a.steps * 2 + 8)
        loop = _DecodeLoop(judge, state, a.users * a.K, a.steps * 2 + 8, True, sampling, _pad_id(judge),
                           _eos_ids(judge))
        loop.emit(state.h_last)
        res["eager_step_ms"] = _step_ms(loop.step, cuda, a.steps)
        if cuda:
            from models.shared_prefix import _CudaGraphStep

            step = _CudaGraphStep(loop.step, 2)
            for _ in range(3):  # warm-up, capture, first replay
                step()
            res["graph_step_ms"] = _step_ms(step, cuda, a.steps)
            res["step_graph_vs_eager"] = res["eager_step_ms"] / res["graph_step_ms"]
        if not a.skip_hf:
            res["hf_generate_s"], _ = _timed(lambda: judge._generate_naive(users, a.tokens, True, sampling), cuda, 1)
            for name in ("eager", "graph"):
                if f"{name}_generate_s" in res:
                    res[f"{name}_vs_hf_generate"] = res["hf_generate_s"] / res[f"{name}_generate_s"]
    out = Path(a.out or os.environ.get("OUT") or "/tmp") / f"decode_{a.shape}_u{a.users}_k{a.K}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return 0


def _step_ms(fn, cuda: bool, n: int) -> float:
    times = []
    for _ in range(n):
        if cuda:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
