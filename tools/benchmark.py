"""Naive vs shared-prefix scoring, PL-PPO update and reasoning generation on the same inputs, every attention
backend side by side in one run (docs/performance.md).

Builds a random-weight Qwen2 of a chosen shape in memory and synthetic users with a realistic prompt shape (a
history of --history_items items at ~--tokens_per_item tokens as the shared prefix, one ~--tokens_per_item-token
candidate block per suffix). For every K and mode it times, after --warmup untimed calls:

* score: a no_grad evaluation forward (scores + critic values), weights in the inference dtype (bf16 on CUDA);
* train: one PL-PPO update batched the way the trainer batches a micro-batch (all --users users in one forward and
  backward: clipped PL surrogate on a Gumbel-top-K ranking + clipped value loss, the trainer's loss functions;
  gradient clipping; AdamW step), fp32 master weights under bf16 autocast on CUDA like train.py;
* generate: --gen_tokens reasoning tokens for each of the K candidates of every user: HF generate per prompt for
  naive; the shared-prefix decode loop for shared, with each prefix stored once in static buffers under
  shared:prefix_split and the prefix KV cache repeated over the K rows (transformers' DynamicCache) under the
  other backends (shared:sdpa); vLLM is not wired in: see docs/performance.md.

Paths: ``naive`` (every prompt in full, the model's default attention) and ``shared:<backend>`` for every packing
backend present (prefix_split, flex_attention on CUDA, sdpa = the dense block mask). Per row: candidates/s, real
tokens/s, the ratio to naive next to its token-count bound (naive tokens / the path's tokens: the speed-up if
both ran tokens equally fast) and the share of the bound reached, peak memory and the increase over the memory
held before the call, per user, and on CUDA MFU (useful FLOPs: 2 x non-embedding params x real tokens + 4 x layers
x hidden x attended pairs, x3 for a train step) beside HFU (FLOPs the kernels execute: padded tokens, masked
attention tiles, x4 with gradient checkpointing's recompute) against the GPU's dense bf16 peak.

    python tools/benchmark.py --shape small --Ks 20 100 --mode both
"""
from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from models.flops import ModelFlops, param_counts, peak_tflops
from foundation.config import HelpFormatter, int_range, nonnegative_int, positive_int, seed_int
from foundation.errors import UserInputError, die, exit_on_user_error

SHAPES = ("tiny", "small", "qwen2.5-0.5b", "qwen2.5-3b")
MODES = ("score", "train", "generate")
TEMPLATE_PREFIX_TOKENS = 40  # chat framing + instructions before/after the history
TEMPLATE_ITEM_TOKENS = 8  # "n. ", " (rating: 5)", separators
TEMPLATE_SUFFIX_TOKENS = 30  # "Candidate item:", the question, the assistant turn, "Answer:"
FLEX_BLOCK = 128


# ---- model --------------------------------------------------------------------------------------
def shape_config(shape: str):
    from fixtures.tiny_model import PUBLISHED_SHAPES, published_shape_config

    if shape not in PUBLISHED_SHAPES or shape == "qwen2.5-7b":
        raise UserInputError(f"--shape {shape!r}: must be one of {'|'.join(SHAPES)}")
    return published_shape_config(shape)


def build_judges(args: argparse.Namespace, tmp: Path):
    """(inference judge, training judge): the same random weights; on CUDA the inference copy is bf16 and the
    training copy fp32 master weights (trained under bf16 autocast), on CPU one fp32 judge serves both."""
    from models.abstract_models import resolve_device, resolve_dtype
    from models.packed_attention import register_prefix_split
    from models.qwen_models import BinaryJudge
    from fixtures.tiny_model import build_tiny_qwen, build_tiny_tokenizer, random_qwen
    from fixtures.synthetic_amazon import synthetic_corpus

    register_prefix_split()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(args.seed)
    if args.shape == "tiny":
        path = build_tiny_qwen(tmp / "tiny", corpus=synthetic_corpus())
        train = BinaryJudge.load(str(path), device=str(device), dtype=torch.float32, attn_implementation="sdpa",
                                 scoring_chunk_size=args.scoring_chunk_size)
    else:
        tok = build_tiny_tokenizer(tmp / "tok")  # only pad/eos/Yes/No ids: the inputs are synthetic ids
        lm = random_qwen(shape_config(args.shape), tok, args.seed, device=str(device), attn_implementation="sdpa")
        train = BinaryJudge.from_model(lm, tok, device=device, scoring_chunk_size=args.scoring_chunk_size)
    train.generation_batch_rows = args.gen_batch_size
    if dtype == torch.float32:
        return train, train
    import copy

    infer = copy.deepcopy(train).to(dtype)
    return infer, train


def set_backend(judge, impl: str) -> None:
    """Benchmarks only: one model, several kernels (a training run picks its kernel once, at load)."""
    judge.lm.config._attn_implementation = impl
    judge.attn_implementation = impl


def available_backends(device: torch.device) -> list[str]:
    """Packing backends present on this machine (flex_attention packs on CUDA only)."""
    out = ["prefix_split"]
    if device.type == "cuda":
        out.append("flex_attention")
    out.append("sdpa")
    return out


# ---- inputs and work accounting -----------------------------------------------------------------
def synth_users(n_users: int, K: int, history_items: int, tokens_per_item: int, vocab: int, seed: int):
    """UserPrompts with random ids and realistic, ragged lengths (+-25% per item/candidate)."""
    from prompters.binary_prompter import UserPrompt

    rng = random.Random(seed)
    lo = 10  # keep clear of special tokens at the start of the vocab

    def item_len() -> int:
        return max(1, int(round(tokens_per_item * rng.uniform(0.75, 1.25))))

    users = []
    for _ in range(n_users):
        P = TEMPLATE_PREFIX_TOKENS + sum(item_len() + TEMPLATE_ITEM_TOKENS for _ in range(history_items))
        prefix = [rng.randrange(lo, vocab) for _ in range(P)]
        suffixes = [[rng.randrange(lo, vocab) for _ in range(item_len() + TEMPLATE_SUFFIX_TOKENS)] for _ in range(K)]
        users.append(UserPrompt(prefix_ids=prefix, suffix_ids=suffixes, candidates=list(range(K))))
    return users


def work(users: Sequence, path: str, chunk: int) -> dict[str, int]:
    """Tokens and attended (query, key) pairs of one pass: `useful` is what the path must compute, `computed`
    what its kernels execute (padding, masked tiles)."""
    shared = path != "naive"
    tokens = sum(p.n_tokens(shared) for p in users)
    pairs = sum(p.n_attended_pairs(shared) for p in users)
    comp_tokens = comp_pairs = 0
    if path == "naive":
        lens = [len(p.prefix_ids) + len(s) for p in users for s in p.suffix_ids]
        for a in range(0, len(lens), chunk):  # right-padded chunks, padding mask: every tile is computed
            c = lens[a:a + chunk]
            comp_tokens += len(c) * max(c)
            comp_pairs += len(c) * max(c) ** 2
        return {"tokens": tokens, "pairs": pairs, "computed_tokens": comp_tokens, "computed_pairs": comp_pairs}
    backend = path.split(":", 1)[1]
    if backend == "sdpa":  # dense mask, one padded row per user: every (T x T) tile
        T = max(len(p.prefix_ids) + sum(len(s) for s in p.suffix_ids) for p in users)
        comp_tokens, comp_pairs = len(users) * T, len(users) * T * T
    elif backend == "prefix_split":  # causal padded prefixes (half skipped) + every (user, candidate) row's padded
        # suffix against [its user's padded prefix; its padded suffix] under a mask (every tile computed)
        P_max = max(len(p.prefix_ids) for p in users)
        S_max = max(len(s) for p in users for s in p.suffix_ids)
        comp_tokens = tokens
        comp_pairs = len(users) * P_max * (P_max + 1) // 2 + sum(p.K for p in users) * S_max * (P_max + S_max)
    else:  # flex: the blocks that hold an allowed pair, over the bucket-padded flat sequence
        from models.packed_attention import flex_bucket

        comp_tokens = flex_bucket(tokens)
        comp_pairs = _flex_block_pairs(users)
    return {"tokens": tokens, "pairs": pairs, "computed_tokens": comp_tokens, "computed_pairs": comp_pairs}


def _flex_block_pairs(users: Sequence) -> int:
    """Allowed pairs rounded up to the 128 x 128 tiles flex_attention visits."""
    seg_user, seg_kind = [], []
    for u, p in enumerate(users):
        seg_user += [u] * len(p.prefix_ids)
        seg_kind += [0] * len(p.prefix_ids)
        for k, s in enumerate(p.suffix_ids):
            seg_user += [u] * len(s)
            seg_kind += [k + 1] * len(s)
    uq, kq = torch.tensor(seg_user), torch.tensor(seg_kind)
    n = len(seg_user)
    nb = math.ceil(n / FLEX_BLOCK)
    blocks = 0
    for bq in range(nb):
        q = slice(bq * FLEX_BLOCK, min(n, (bq + 1) * FLEX_BLOCK))
        for bk in range(bq + 1):
            kv = slice(bk * FLEX_BLOCK, min(n, (bk + 1) * FLEX_BLOCK))
            same = (uq[q][:, None] == uq[kv][None, :]) & ((kq[kv][None, :] == 0) | (kq[q][:, None] == kq[kv][None, :]))
            if bool(same.any()):
                blocks += 1
    return blocks * FLEX_BLOCK * FLEX_BLOCK


class TrainStep:
    """One PL-PPO update on a fixed rollout, all users in one forward/backward (the trainer's micro-batch)."""

    def __init__(self, judge, users, K_eval: int, temperature: float, seed: int, autocast: Callable) -> None:
        from trainers.evaluation.metrics import ndcg_reward
        from trainers.rl.losses import clipped_surrogate, clipped_value_loss
        from trainers.rl.pl import gumbel_topk_sample, pl_log_prob

        self.judge, self.users, self.tau, self.autocast = judge, users, temperature, autocast
        self.pl_log_prob = pl_log_prob
        self.policy_loss, self.value_loss = clipped_surrogate, clipped_value_loss  # the trainer's own losses
        judge.eval()
        with torch.no_grad(), autocast():
            ro = judge.score_candidates(users, scoring="naive", with_values=True)
        g = torch.Generator().manual_seed(seed)
        self.ranking = gumbel_topk_sample(ro.scores.float().cpu(), temperature, generator=g).to(ro.scores.device)
        self.old_logp = pl_log_prob(ro.scores.float(), self.ranking, temperature)
        target = torch.zeros(len(users), dtype=torch.long, device=ro.scores.device)  # candidate 0 = the target
        self.returns = ndcg_reward(self.ranking, target, K_eval)
        self.old_values = ro.values.float()
        self.adv = self.returns - self.old_values
        self.opt = torch.optim.AdamW([p for p in judge.parameters() if p.requires_grad], lr=1e-6)

    def __call__(self, scoring: str) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.judge.score_candidates(self.users, scoring=scoring, with_values=True)
            logp = self.pl_log_prob(out.scores.float(), self.ranking, self.tau)
            pol, _ = self.policy_loss(logp, self.old_logp, self.adv, 0.2)
            val = self.value_loss(out.values.float(), self.old_values, self.returns, 0.2)
        (pol + val).backward()
        torch.nn.utils.clip_grad_norm_(self.judge.parameters(), 1.0)
        self.opt.step()


# ---- measurement --------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory_now(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**30
    return _proc_status_gb("VmRSS:")


def _proc_status_gb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _release_freed_cpu_memory() -> None:
    """Hand memory freed by earlier cells back to the OS, so that resident memory (the baseline of the next cell's
    increase) is what is alive now rather than what glibc's heap kept."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the increase is then measured against a higher baseline
        pass


def _reset_peak(device: torch.device) -> bool:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return True
    _release_freed_cpu_memory()
    try:  # "5" resets the peak RSS (VmHWM) of this process (Linux >= 4.0) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_gb(device: torch.device, reset_ok: bool) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return _proc_status_gb("VmHWM:") if reset_ok else None


def measure(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Median seconds over `repeats` timed calls after `warmup` untimed ones (the first of which is timed apart:
    compilation, e.g. flex_attention's, lands there); peak memory over the timed calls and its increase over what
    was held before them."""
    first = None
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if i == 0:
            _sync(device)
            first = time.perf_counter() - t0
    _sync(device)
    ok = _reset_peak(device)
    before = _memory_now(device)
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = _peak_gb(device, ok)
    inc = (peak - before) if peak is not None and before is not None else None
    return {"seconds": statistics.median(times), "first_call_s": first, "peak_gb": peak, "mem_increase_gb": inc,
            "result": out}


def _row_fn(mode: str, path: str, judge, users, step: TrainStep | None, args, autocast):
    scoring = "naive" if path == "naive" else "shared"
    if mode == "score":
        def fn():
            with torch.no_grad():
                judge.score_candidates(users, scoring=scoring, with_values=True)
        return fn
    if mode == "train":
        return lambda: step(scoring)

    from models.qwen_models import SamplingSettings

    sampling = SamplingSettings(1.0, 50, 1.0)

    def gen():
        with torch.no_grad(), autocast():
            out = judge.generate_reasoning(users, args.gen_tokens, do_sample=True, sampling=sampling, scoring=scoring)
        return sum(e - s for p in out for s, e in p.reasoning_spans)
    return gen


def run_benchmark(args: argparse.Namespace) -> dict:
    from contextlib import nullcontext

    with tempfile.TemporaryDirectory() as tmp:
        infer, train = build_judges(args, Path(tmp))
    device = infer.device
    peak = peak_tflops(device, args.peak_tflops)
    vocab = infer.lm.config.vocab_size
    backends = args.backends or available_backends(device)
    naive_impl = "flash_attention_2" if _fa2_usable(device) else "sdpa"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    if args.gradient_checkpointing:
        train.enable_gradient_checkpointing()
    rows: list[dict] = []
    from tqdm import tqdm

    paths_all = ["naive"] + [f"shared:{b}" for b in backends]
    bar = tqdm(total=len(args.Ks) * len(args.modes) * len(paths_all), desc="benchmark", disable=args.quiet)
    for K in args.Ks:
        users = synth_users(args.users, K, args.history_items, args.tokens_per_item, vocab, args.seed + K)
        works = {path: work(users, path, args.scoring_chunk_size) for path in paths_all}  # same for every mode
        for mode in args.modes:
            judge = train if mode == "train" else infer
            step = None
            if mode == "train":
                set_backend(train, "sdpa")
                train.train(args.gradient_checkpointing)  # checkpointing acts in train mode; dropout is 0 in Qwen2
                step = TrainStep(train, users, min(args.K_eval, K), 1.0, args.seed, autocast)
                train.train(args.gradient_checkpointing)
            else:
                judge.eval()
            for path in paths_all:
                bar.update(1)
                if mode == "generate" and path not in ("naive", "shared:prefix_split", "shared:sdpa"):
                    continue  # every other backend decodes like shared:sdpa (repeated prefix cache)
                if path == "naive" and args.naive_max_K and K > args.naive_max_K:
                    continue
                set_backend(judge, naive_impl if path == "naive" else path.split(":", 1)[1])
                w = works[path]
                row = {"K": K, "mode": mode, "path": path, "users": len(users), **w}
                try:
                    m = measure(_row_fn(mode, path, judge, users, step, args, autocast), device, args.repeats,
                                args.warmup)
                except torch.OutOfMemoryError:
                    row["oom"] = True
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    rows.append(row)
                    continue
                s = m["seconds"]
                row.update(seconds=s, first_call_s=m["first_call_s"], peak_gb=m["peak_gb"],
                           mem_increase_gb=m["mem_increase_gb"])
                if m["mem_increase_gb"] is not None:
                    row["mem_per_user_gb"] = m["mem_increase_gb"] / len(users)
                if mode == "generate":
                    row["generated_tokens"] = int(m["result"])
                    row["gen_tokens_per_s"] = m["result"] / s
                    row["cands_per_s"] = len(users) * K / s
                else:
                    row["cands_per_s"] = len(users) * K / s
                    row["tokens_per_s"] = w["tokens"] / s
                    ckpt = args.gradient_checkpointing and mode == "train"
                    fl = ModelFlops.of(judge.lm)
                    useful = fl.of_pass(w["tokens"], w["pairs"], train=mode == "train")
                    hw = fl.of_pass(w["computed_tokens"], w["computed_pairs"], train=mode == "train")
                    if ckpt:  # checkpointing runs the forward a second time in the backward
                        hw += fl.of_pass(w["computed_tokens"], w["computed_pairs"])
                    row["tflops_per_s"] = useful / s / 1e12
                    row["mfu"] = useful / s / 1e12 / peak if peak else None
                    row["hfu"] = hw / s / 1e12 / peak if peak else None
                rows.append(row)
                if not args.quiet or args.json_out:  # one line per cell as it finishes (long GPU runs)
                    print(f"  K={K} {mode} {path}: {row.get('seconds', float('nan')):.3f} s, peak "
                          f"{row.get('peak_gb') or 0:.2f} GB", file=sys.stderr, flush=True)
            if step is not None:
                del step
                train.zero_grad(set_to_none=True)
            _add_ratios(rows, K, mode)
            if args.json_out:  # as it goes: a run stopped by a time limit keeps what it measured
                from foundation.files import atomic_write_json

                atomic_write_json(args.json_out, {"meta": _meta(args, infer, train, backends, naive_impl, peak),
                                                  "rows": rows, "summary": summarize(rows), "partial": True})
    bar.close()
    return {"meta": _meta(args, infer, train, backends, naive_impl, peak), "rows": rows, "summary": summarize(rows)}


def _meta(args, infer, train, backends, naive_impl, peak) -> dict:
    device = infer.device
    total, non_emb, _ = param_counts(infer.lm)
    meta = {k: v for k, v in vars(args).items()}
    meta.update(device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                dtype=str(infer.lm.dtype).replace("torch.", ""), train_weights=str(train.lm.dtype).replace("torch.", ""),
                autocast="bf16" if device.type == "cuda" else "off", naive_attention=naive_impl, backends=backends,
                params=total, non_embedding_params=non_emb, peak_tflops=peak, torch=torch.__version__,
                threads=torch.get_num_threads(), vllm="not wired in")
    return meta


def _fa2_usable(device: torch.device) -> bool:
    from models.abstract_models import flash_attn_usable

    return flash_attn_usable(device, torch.bfloat16)


def _add_ratios(rows: list[dict], K: int, mode: str) -> None:
    mine = [r for r in rows if r["K"] == K and r["mode"] == mode and not r.get("oom")]
    naive = next((r for r in mine if r["path"] == "naive"), None)
    for r in mine:
        if naive is None:
            continue
        r["ratio"] = r["cands_per_s"] / naive["cands_per_s"]
        if mode != "generate":  # the prompt-token bound says nothing about decoding the same number of new tokens
            r["token_bound"] = naive["tokens"] / r["tokens"]
            r["of_bound"] = r["ratio"] / r["token_bound"]


def summarize(rows: list[dict]) -> list[str]:
    """Growth of the memory increase per user against the growth of tokens per user, smallest K to largest."""
    out = []
    for mode in MODES:
        for path in sorted({r["path"] for r in rows if r["mode"] == mode and r["path"] != "naive"}):
            rs = sorted((r for r in rows if r["mode"] == mode and r["path"] == path and r.get("mem_per_user_gb")),
                        key=lambda r: r["K"])
            if len(rs) < 2 or rs[0]["mem_per_user_gb"] <= 0:
                continue
            a, b = rs[0], rs[-1]
            mem_growth = b["mem_per_user_gb"] / a["mem_per_user_gb"]
            tok_growth = b["tokens"] / a["tokens"]
            out.append(f"{mode} {path}: memory increase per user K={a['K']}->{b['K']} grows {mem_growth:.2f}x, "
                       f"tokens {tok_growth:.2f}x (memory/token growth {mem_growth / tok_growth:.2f})")
    return out


def _fmt(v, spec: str, suffix: str = "") -> str:
    return "n/a" if v is None else format(v, spec) + suffix


COLUMNS = ["K", "mode", "path", "cands/s", "tok/s", "gen tok/s", "ratio", "bound", "of bound", "sec", "peak GB",
           "+mem GB", "GB/user", "MFU", "HFU"]


def _cells(r: dict) -> dict[str, str]:
    """One result row's figures, formatted once for both tables."""
    pct = lambda v: None if v is None else v * 100  # noqa: E731
    return {"cand": _fmt(r.get("cands_per_s"), ".1f"), "tok": _fmt(r.get("tokens_per_s"), ",.0f"),
            "gen": _fmt(r.get("gen_tokens_per_s"), ",.0f"), "ratio": _fmt(r.get("ratio"), ".2f", "x"),
            "bound": _fmt(r.get("token_bound"), ".2f", "x"), "of_bound": _fmt(pct(r.get("of_bound")), ".0f", "%"),
            "sec": _fmt(r.get("seconds"), ".3f"), "peak": _fmt(r.get("peak_gb"), ".2f"),
            "mem": _fmt(r.get("mem_increase_gb"), ".3f"), "mem_user": _fmt(r.get("mem_per_user_gb"), ".3f"),
            "mfu": _fmt(pct(r.get("mfu")), ".1f", "%"), "hfu": _fmt(pct(r.get("hfu")), ".1f", "%")}


def format_table(result: dict) -> str:
    m = result["meta"]
    head = (f"shape={m['shape']} params={m['params'] / 1e6:.1f}M (non-emb {m['non_embedding_params'] / 1e6:.1f}M) "
            f"device={m['device_name']} weights={m['dtype']} (train: {m['train_weights']}, autocast {m['autocast']}) "
            f"naive attention={m['naive_attention']} users={m['users']} history_items={m['history_items']} "
            f"tokens_per_item={m['tokens_per_item']} warmup={m['warmup']} repeats={m['repeats']}"
            f"{' gradient_checkpointing' if m['gradient_checkpointing'] else ''}")
    width = [9] * len(COLUMNS)
    width[2] = 21
    lines = [head, " | ".join(f"{c:>{w}}" for c, w in zip(COLUMNS, width))]
    lines.append("-" * len(lines[-1]))
    for r in result["rows"]:
        if r.get("oom"):
            vals = [str(r["K"]), r["mode"], r["path"]] + ["OOM"] + [""] * (len(COLUMNS) - 4)
        else:
            c = _cells(r)
            vals = [str(r["K"]), r["mode"], r["path"]] + [c[k] for k in (
                "cand", "tok", "gen", "ratio", "bound", "of_bound", "sec", "peak", "mem", "mem_user", "mfu", "hfu")]
        lines.append(" | ".join(f"{v:>{w}}" for v, w in zip(vals, width)))
    lines += result.get("summary", [])
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """docs/performance.md's tables, built from a --json_out file."""
    m = result["meta"]
    out = [f"{m['device_name']}, shape {m['shape']} ({m['params'] / 1e6:.0f}M params), {m['users']} users, "
           f"inference weights {m['dtype']}, training: {m['train_weights']} weights, autocast {m['autocast']}"
           f"{', gradient checkpointing' if m['gradient_checkpointing'] else ''}", "",
           "| K | mode | path | cand/s | tok/s (gen) | ratio | token bound | of bound | s | peak GB | +mem GB/user "
           "| MFU | HFU |", "|" + "---|" * 13]
    for r in result["rows"]:
        if r.get("oom"):
            out.append(f"| {r['K']} | {r['mode']} | {r['path']} | OOM |" + " |" * 9)
            continue
        c = _cells(r)
        vals = [r["K"], r["mode"], r["path"]] + [c[k] for k in (
            "cand", "gen" if r["mode"] == "generate" else "tok", "ratio", "bound", "of_bound", "sec", "peak",
            "mem_user", "mfu", "hfu")]
        out.append("| " + " | ".join(str(v) for v in vals) + " |")
    out += [""] + [f"- {line}" for line in result.get("summary", [])]
    return "\n".join(out)


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--shape", default=None, choices=SHAPES,
                    help="model shape (random weights); default: qwen2.5-3b on CUDA, small on CPU")
    ap.add_argument("--Ks", type=int_range(2), nargs="+", default=[5, 10, 20, 50, 100], help="candidates per user")
    ap.add_argument("--mode", default="both", choices=["score", "train", "generate", "both", "all"],
                    help="what to time: score, a PPO update, reasoning generation; both = score + train, "
                         "all = the three")
    ap.add_argument("--users", type=positive_int, default=None, help="users per batch (default: 4 on CUDA, 2 on CPU)")
    ap.add_argument("--history_items", type=positive_int, default=10,
                    help="history items per synthetic user (shared prefix)")
    ap.add_argument("--tokens_per_item", type=positive_int, default=60,
                    help="approximate tokens per item text (drawn from 0.75x to 1.25x this)")
    ap.add_argument("--K_eval", type=positive_int, default=10, help="NDCG cut-off of the PPO reward")
    ap.add_argument("--backends", nargs="+", default=None, choices=["prefix_split", "flex_attention", "sdpa"],
                    help="packing backends to time (default: every one present; sdpa = dense block mask)")
    ap.add_argument("--naive_max_K", type=nonnegative_int, default=None,
                    help="skip the naive path above this K (default: 20 on CPU, where it is slow; none on CUDA)")
    ap.add_argument("--gen_tokens", type=positive_int, default=64,
                    help="reasoning tokens per candidate in generate mode")
    ap.add_argument("--gen_batch_size", type=positive_int, default=256,
                    help="rows per decode step of shared generation")
    ap.add_argument("--repeats", type=positive_int, default=3, help="timed calls per cell (median)")
    ap.add_argument("--warmup", type=nonnegative_int, default=1,
                    help="untimed calls per cell before timing (compiles, caches)")
    ap.add_argument("--scoring_chunk_size", "--micro_batch_size", dest="scoring_chunk_size", type=positive_int,
                    default=32,
                    help="naive path: prompts per forward; the shared path packs the same token budget "
                         "(--micro_batch_size is the old name)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny shape, K 5 10, 1 warm-up + 1 timed call, short prompts (test suite)")
    ap.add_argument("--gradient_checkpointing", action="store_true",
                    help="recompute activations in backward (train mode): less memory, more compute")
    ap.add_argument("--device", default="auto", help="auto|cpu|cuda[:N] (auto: cuda when available)")
    ap.add_argument("--dtype", default="auto", help="inference weights: auto|bf16|fp16|fp32 (auto: bf16 on CUDA, "
                                                    "fp32 on CPU); training keeps fp32 master weights")
    ap.add_argument("--peak_tflops", type=float, default=None, help="override the GPU's dense bf16 peak for MFU")
    ap.add_argument("--seed", type=seed_int, default=0, help="seed of the random weights and synthetic users")
    ap.add_argument("--json_out", default=None,
                    help="also write the figures as JSON here (docs/performance.md's tables)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--markdown", default=None, metavar="JSON",
                    help="print the markdown table of an earlier --json_out file and exit (runs nothing)")
    return ap


def validate_args(args: argparse.Namespace) -> None:
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda") or str(args.device).startswith("cuda")
    if args.quick:
        args.shape, args.Ks, args.repeats, args.warmup = "tiny", [5, 10], 1, 1
        args.users, args.history_items, args.tokens_per_item, args.gen_tokens = 2, 3, 8, 4
    if args.shape is None:
        args.shape = "qwen2.5-3b" if cuda else "small"
    if args.users is None:
        args.users = 4 if cuda else 2
    if args.naive_max_K is None and not cuda:
        args.naive_max_K = 20
    args.modes = {"both": ["score", "train"], "all": list(MODES)}.get(args.mode, [args.mode])
    if args.warmup < 0:
        raise UserInputError(f"--warmup {args.warmup}: must be >= 0")
    for name in ("users", "repeats", "history_items", "tokens_per_item", "scoring_chunk_size", "K_eval", "gen_tokens",
                 "gen_batch_size"):
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name} {getattr(args, name)}: must be >= 1")
    if any(k < 1 for k in args.Ks):
        raise UserInputError(f"--Ks {args.Ks}: every K must be >= 1")
    if args.backends and "flex_attention" in args.backends and not cuda:
        raise UserInputError("--backends flex_attention: packs on CUDA only")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    if args.markdown:
        from foundation.files import MAX_JSON_BYTES, read_json

        try:
            print(markdown_table(read_json(args.markdown, MAX_JSON_BYTES)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            die(f"--markdown {args.markdown}: not a readable benchmark JSON ({type(e).__name__}: {e})")
        return 0
    with exit_on_user_error():
        validate_args(args)
        result = run_benchmark(args)
    print(format_table(result))
    if args.json_out:
        from foundation.files import atomic_write_json

        atomic_write_json(args.json_out, result)
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
