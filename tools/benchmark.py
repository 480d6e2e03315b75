"""Naive vs shared-prefix scoring and PL-PPO train-step throughput on the same inputs (DESIGN.md section 8).

Builds a random-weight Qwen2 of a chosen shape in memory, synthesises users with a
realistic prompt shape (a history of --history_items items at ~--tokens_per_item
tokens each as the shared prefix, one ~--tokens_per_item-token candidate block per
suffix) and, for every K, times `judge.score_candidates(scoring=naive|shared)`:

* score: a no_grad evaluation forward;
* train: one PL-PPO update: forward with grad (scores + critic values), clipped
  surrogate on the PL log-prob of a Gumbel-top-K ranking + clipped value loss
  (trainers.ppo_trainer's loss functions), backward (one user per backward, i.e.
  gradient accumulation over users, as the trainer's micro-batches do), AdamW step.

Reported per row: candidates/s, real tokens/s (tokens that path actually runs
through the model: K full prompts per user for naive, prefix + K suffixes for
shared), shared/naive throughput ratio, peak memory (CUDA: max_memory_allocated;
CPU: the process's peak RSS VmHWM after resetting it through /proc/self/clear_refs,
'n/a' where that is not possible) and, on CUDA, model FLOP utilisation against the
GPU's dense bf16 peak (FLOPs = 2 * non-embedding params * tokens + the attention
term 4 * layers * hidden * attended (query, key) pairs; x3 for a train step).

    python tools/benchmark.py --shape small --Ks 20 --mode score
"""
from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from trainers.foundation.errors import UserInputError, die

# Dense bf16 peak TFLOP/s by (substring of) torch.cuda.get_device_name(); first match wins.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0), ("4090", 165.0)]
SHAPES = ("tiny", "small", "qwen2.5-3b")
PATHS = ("naive", "shared")
TEMPLATE_PREFIX_TOKENS = 40  # chat framing + instructions before/after the history
TEMPLATE_ITEM_TOKENS = 8  # "n. ", " (rating: 5)", separators
TEMPLATE_SUFFIX_TOKENS = 30  # "Candidate item:", the question, the assistant turn, "Answer:"


# ---- model --------------------------------------------------------------------------------------
def shape_config(shape: str, vocab_size_tiny: int):
    from transformers import Qwen2Config

    if shape == "small":  # ~37M params (16M of them the 32000-token embedding)
        kw = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=32000)
    elif shape == "qwen2.5-3b":  # the published Qwen2.5-3B(-Instruct) config
        kw = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, vocab_size=151936, rope_theta=1000000.0, rms_norm_eps=1e-6)
    else:
        raise UserInputError(f"--shape {shape!r}: must be one of {'|'.join(SHAPES)}")
    return Qwen2Config(max_position_embeddings=32768, tie_word_embeddings=True, bos_token_id=None, **kw)


def build_judge(args: argparse.Namespace, tmp: Path):
    """The judge for --shape: tiny loads the test fixture from disk; others are random Qwen2s built in memory."""
    from models.abstract_models import resolve_attn_implementation, resolve_device, resolve_dtype
    from models.qwen_models import BinaryJudge
    from models.tiny import build_tiny_qwen, build_tiny_tokenizer
    from trainers.data.synthetic import synthetic_corpus

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    attn = resolve_attn_implementation(args.attn_implementation, device, dtype)
    torch.manual_seed(args.seed)
    if args.shape == "tiny":
        path = build_tiny_qwen(tmp / "tiny", corpus=synthetic_corpus())
        judge = BinaryJudge.load(str(path), device=str(device), dtype=args.dtype, attn_implementation=attn,
                                 scoring_chunk_size=args.scoring_chunk_size)
    else:
        from transformers import Qwen2ForCausalLM

        tok = build_tiny_tokenizer(tmp / "tok")  # only pad/eos/Yes/No ids: the inputs are synthetic ids
        config = shape_config(args.shape, len(tok))
        config.pad_token_id = tok.pad_token_id
        config.eos_token_id = tok.eos_token_id
        with torch.device(device):
            lm = Qwen2ForCausalLM._from_config(config, attn_implementation=attn, dtype=dtype)
        judge = BinaryJudge.from_model(lm, tok, device=device, scoring_chunk_size=args.scoring_chunk_size)
    if args.gradient_checkpointing:
        judge.enable_gradient_checkpointing()
    return judge


def param_counts(judge) -> tuple[int, int]:
    total = sum(p.numel() for p in judge.lm.parameters())
    emb = judge.lm.get_input_embeddings().weight.numel()
    return total, total - emb


# ---- inputs -------------------------------------------------------------------------------------
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


def work(users: Sequence, path: str) -> tuple[int, int]:
    """(real tokens run through the model, attended (query, key) pairs) for one pass of `path`."""
    tokens = pairs = 0
    for p in users:
        P = len(p.prefix_ids)
        if path == "naive":
            for s in p.suffix_ids:
                L = P + len(s)
                tokens += L
                pairs += L * (L + 1) // 2
        else:
            tokens += P + sum(len(s) for s in p.suffix_ids)
            pairs += P * (P + 1) // 2 + sum(P * len(s) + len(s) * (len(s) + 1) // 2 for s in p.suffix_ids)
    return tokens, pairs


def flops(judge, tokens: int, pairs: int, train: bool) -> float:
    cfg = judge.lm.config
    _, non_emb = param_counts(judge)
    f = 2.0 * non_emb * tokens + 4.0 * cfg.num_hidden_layers * cfg.hidden_size * pairs
    return f * (3.0 if train else 1.0)


class TrainStep:
    """One PL-PPO update on a fixed rollout (same rollout for both paths)."""

    def __init__(self, judge, users, K_eval: int, temperature: float, seed: int) -> None:
        from trainers.evaluation.metrics import ndcg_reward
        from trainers.rl.losses import clipped_surrogate, clipped_value_loss
        from trainers.rl.pl import gumbel_topk_sample, pl_log_prob

        self.judge, self.users, self.tau = judge, users, temperature
        self.pl_log_prob = pl_log_prob
        self.policy_loss, self.value_loss = clipped_surrogate, clipped_value_loss  # the trainer's own losses
        was_training = judge.training
        judge.eval()
        with torch.no_grad():
            ro = judge.score_candidates(users, scoring="shared", with_values=True)
        judge.train(was_training)
        g = torch.Generator().manual_seed(seed)
        self.ranking = gumbel_topk_sample(ro.scores, temperature, generator=g)
        self.old_logp = pl_log_prob(ro.scores, self.ranking, temperature)
        target = torch.zeros(len(users), dtype=torch.long, device=ro.scores.device)  # candidate 0 = the target
        self.returns = ndcg_reward(self.ranking, target, K_eval)
        self.old_values = ro.values
        self.adv = self.returns - self.old_values
        self.opt = torch.optim.AdamW([p for p in judge.parameters() if p.requires_grad], lr=1e-6)

    def __call__(self, path: str) -> None:
        self.opt.zero_grad(set_to_none=True)
        n = len(self.users)
        for u in range(n):  # one user per backward: gradient accumulation keeps memory bounded
            out = self.judge.score_candidates(self.users[u:u + 1], scoring=path, with_values=True)
            sl = slice(u, u + 1)
            logp = self.pl_log_prob(out.scores, self.ranking[sl], self.tau)
            pol, _ = self.policy_loss(logp, self.old_logp[sl], self.adv[sl], 0.2)
            val = self.value_loss(out.values, self.old_values[sl], self.returns[sl], 0.2)
            ((pol + val) / n).backward()
        torch.nn.utils.clip_grad_norm_(self.judge.parameters(), 1.0)
        self.opt.step()


# ---- measurement --------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> bool:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # "5" resets the peak RSS (VmHWM) of this process (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_gb(device: torch.device, reset_ok: bool) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    if not reset_ok:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def measure(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> dict:
    """Median seconds over `repeats` timed calls after `warmup` untimed ones; peak memory over the timed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    ok = _reset_peak(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "peak_gb": _peak_gb(device, ok)}


def peak_tflops(override: float | None, device: torch.device) -> float | None:
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, v in PEAK_TFLOPS:
        if key in name:
            return v
    return None


def run_benchmark(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        judge = build_judge(args, Path(tmp))
    device = judge.device
    total, non_emb = param_counts(judge)
    peak = peak_tflops(args.peak_tflops, device)
    vocab = judge.lm.config.vocab_size
    rows: list[dict] = []
    modes = ["score", "train"] if args.mode == "both" else [args.mode]
    from tqdm import tqdm

    bar = tqdm(total=len(args.Ks) * len(modes) * len(PATHS), desc="benchmark", disable=args.quiet)
    for K in args.Ks:
        users = synth_users(args.users, K, args.history_items, args.tokens_per_item, vocab, args.seed + K)
        for mode in modes:
            if mode == "score":
                judge.eval()

                def make(path):
                    def fn():
                        with torch.no_grad():
                            judge.score_candidates(users, scoring=path, with_values=True)
                    return fn
            else:
                judge.train(args.gradient_checkpointing)  # checkpointing acts in train mode; dropout is 0 in Qwen2
                step = TrainStep(judge, users, min(args.K_eval, K), 1.0, args.seed)

                def make(path):
                    return lambda: step(path)
            for path in PATHS:
                tokens, pairs = work(users, path)
                row = {"K": K, "mode": mode, "path": path, "users": len(users), "tokens": tokens}
                try:
                    m = measure(make(path), device, args.repeats, args.warmup)
                except torch.OutOfMemoryError:
                    row.update(seconds=None, cands_per_s=None, tokens_per_s=None, peak_gb=None, mfu=None, oom=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                else:
                    s = m["seconds"]
                    row.update(seconds=s, cands_per_s=len(users) * K / s, tokens_per_s=tokens / s, peak_gb=m["peak_gb"])
                    f = flops(judge, tokens, pairs, mode == "train")
                    row["tflops_per_s"] = f / s / 1e12
                    row["mfu"] = (f / s / 1e12) / peak if peak else None
                rows.append(row)
                bar.update(1)
            if mode == "train":
                del step
            naive, shared = rows[-2], rows[-1]
            ratio = (shared["cands_per_s"] / naive["cands_per_s"]
                     if shared.get("cands_per_s") and naive.get("cands_per_s") else None)
            naive["ratio"], shared["ratio"] = 1.0 if naive.get("cands_per_s") else None, ratio
    bar.close()
    meta = {k: v for k, v in vars(args).items()}
    meta.update(device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                dtype=str(judge.lm.dtype).replace("torch.", ""), attn_implementation=judge.attn_implementation,
                params=total, non_embedding_params=non_emb, peak_tflops=peak, torch=torch.__version__,
                threads=torch.get_num_threads())
    return {"meta": meta, "rows": rows}


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    m = result["meta"]
    head = (f"shape={m['shape']} params={m['params'] / 1e6:.1f}M (non-emb {m['non_embedding_params'] / 1e6:.1f}M) "
            f"device={m['device_name']} dtype={m['dtype']} attn={m['attn_implementation']} users={m['users']} "
            f"history_items={m['history_items']} tokens_per_item={m['tokens_per_item']} repeats={m['repeats']}")
    cols = ["K", "mode", "path", "cands/s", "tok/s", "ratio", "sec", "peak_mem_GB", "MFU"]
    lines = [head, " | ".join(f"{c:>11}" for c in cols)]
    lines.append("-" * len(lines[-1]))
    for r in result["rows"]:
        vals = [str(r["K"]), r["mode"], r["path"],
                "OOM" if r.get("oom") else _fmt(r["cands_per_s"], ".1f"),
                "OOM" if r.get("oom") else _fmt(r["tokens_per_s"], ".0f"),
                _fmt(r.get("ratio"), ".2f") + ("x" if r.get("ratio") is not None else ""),
                _fmt(r.get("seconds"), ".3f"), _fmt(r.get("peak_gb"), ".2f"),
                _fmt(r.get("mfu") * 100 if r.get("mfu") is not None else None, ".1f") + ("%" if r.get("mfu") is not None else "")]
        lines.append(" | ".join(f"{v:>11}" for v in vals))
    return "\n".join(lines)


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--shape", default=None, choices=SHAPES,
                    help="model shape (random weights); default: qwen2.5-3b on CUDA, small on CPU")
    ap.add_argument("--Ks", type=int, nargs="+", default=[5, 10, 20, 50], help="candidates per user")
    ap.add_argument("--mode", default="both", choices=["score", "train", "both"],
                    help="time no_grad scoring, one PL-PPO train step, or both")
    ap.add_argument("--users", type=int, default=4, help="users per scored batch / per train step")
    ap.add_argument("--history_items", type=int, default=10, help="history items per synthetic user (shared prefix)")
    ap.add_argument("--tokens_per_item", type=int, default=60,
                    help="approximate tokens per item text (drawn from 0.75x to 1.25x this)")
    ap.add_argument("--K_eval", type=int, default=10, help="NDCG cut-off of the PPO reward")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per cell (median), after one warm-up")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per cell before timing")
    ap.add_argument("--scoring_chunk_size", "--micro_batch_size", dest="scoring_chunk_size", type=int, default=32,
                    help="naive path: prompts per forward; the shared path packs the same token budget "
                         "(--micro_batch_size is the old name)")
    ap.add_argument("--quick", action="store_true", help="tiny shape, K 5 10, 1 repeat, no warm-up, short prompts (test suite)")
    ap.add_argument("--gradient_checkpointing", action="store_true",
                    help="recompute activations in backward (train mode): less memory, more compute")
    ap.add_argument("--device", default="auto", help="auto|cpu|cuda[:N] (auto: cuda when available)")
    ap.add_argument("--dtype", default="auto", help="auto|bf16|fp16|fp32 (auto: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--attn_implementation", default="auto", help="auto|sdpa|eager|flex_attention|flash_attention_2")
    ap.add_argument("--peak_tflops", type=float, default=None, help="override the GPU's dense bf16 peak for MFU")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights and synthetic users")
    ap.add_argument("--json_out", default=None, help="also write the figures as JSON here")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def validate_args(args: argparse.Namespace) -> None:
    if args.quick:
        args.shape, args.Ks, args.repeats, args.warmup = "tiny", [5, 10], 1, 0
        args.users, args.history_items, args.tokens_per_item = 2, 3, 8
    if args.shape is None:
        args.shape = "qwen2.5-3b" if torch.cuda.is_available() and args.device in ("auto", "cuda") else "small"
    if args.warmup < 0:
        raise UserInputError(f"--warmup {args.warmup}: must be >= 0")
    for name in ("users", "repeats", "history_items", "tokens_per_item", "scoring_chunk_size", "K_eval"):
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name} {getattr(args, name)}: must be >= 1")
    if any(k < 1 for k in args.Ks):
        raise UserInputError(f"--Ks {args.Ks}: every K must be >= 1")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        validate_args(args)
        result = run_benchmark(args)
    except UserInputError as e:
        die(str(e))
    print(format_table(result))
    if args.json_out:
        from trainers.foundation.files import atomic_write_json

        atomic_write_json(args.json_out, result)
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
