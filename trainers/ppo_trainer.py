"""PL-PPO training of the binary judge (DESIGN.md section 5).

One training step, on every rank:
  1. draw --batch_size training examples (deterministic in (seed, step, rank));
  2. K candidates per example (trainers.candidates, per-step seed) -> binary prompts;
  3. rollout under no_grad: optional reasoning generation, scores s, critic values V;
  4. --rankings_per_user rankings ~ Gumbel-top-K of s/τ from the same scores (seeded generator), old
     log-prob log PL(σ|s) (+ reasoning token log-probs), reward R = NDCG@K_eval of the target,
     advantage A = R - V (the critic is regressed on the mean reward of the user's rankings);
  5. --ppo_epochs optimiser updates, each recomputing s and V with grad over the whole rollout
     batch (split into --gradient_accumulation_steps micro-batches): clipped PPO surrogate +
     clipped value loss (+ optional KL to the frozen initial model); gradients are averaged
     across ranks by an explicit all-reduce (data parallelism without a DDP wrapper, because
     the forward pass is judge.score_candidates rather than module.__call__).

Every random draw comes from a generator seeded by (seed, step, rank) or from state restored
from the checkpoint, so a run killed and resumed with --resume_from last ends with the same
weights and the same metrics.jsonl tail as an uninterrupted one (on the same hardware).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from trainers.foundation.errors import UserInputError
from trainers.foundation.seeding import derived_seed
from trainers.rl.advantages import normalize_advantages
from trainers.rl.kl import kl_penalty
from trainers.rl.losses import clipped_surrogate, clipped_value_loss

SCHEDULERS = ("constant", "cosine")


def lr_lambda_factory(warmup_steps: int, total_steps: int, kind: str):
    """Multiplier of the base lr at scheduler step t: linear warmup, then constant or cosine to 0."""
    if kind not in SCHEDULERS:
        raise UserInputError(f"--lr_scheduler {kind!r}: must be one of {'|'.join(SCHEDULERS)}")

    def f(t: int) -> float:
        if warmup_steps > 0 and t < warmup_steps:
            return (t + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (t - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def step_candidate_seed(seed: int, step: int) -> int:
    """The candidate-sampling seed of a training step: candidates vary across steps, replay on resume."""
    return int(seed) * 1_000_003 + int(step)


def sample_step_indices(n: int, batch_size: int, seed: int, step: int, rank: int) -> list[int]:
    """The training-example indices one rank uses at one step."""
    rng = np.random.default_rng([int(seed), int(step), int(rank), 17])
    return [int(i) for i in rng.choice(n, size=min(batch_size, n), replace=False)]


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="PL-PPO training of the binary judge (see DESIGN.md section 5).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--model_name_or_path", default="demo/tiny-qwen", help="base model directory or known name")
    g.add_argument("--dataset_path", default="demo/data/Video_Games_5_2021-1-2023-12",
                   help="processed DatasetDict written by preprocess.py")
    g.add_argument("--dataset_type", default="other", help="movies|other: which binary prompt template")
    g.add_argument("--prompt_template", default=None, help="file overriding the binary prompt template")
    g.add_argument("--max_len_per_item", type=int, default=64, help="tokens of item text per history/candidate item")
    g.add_argument("--user_window_size", type=int, default=10, help="history items shown in the prompt")
    g.add_argument("--device", default="auto", help="auto|cpu|cuda (ranks use cuda:LOCAL_RANK)")
    g.add_argument("--dtype", default="auto", help="auto|bf16|fp16|fp32 (auto: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--attn_implementation", default="auto", help="auto|flash_attention_2|sdpa|flex_attention|eager")
    g.add_argument("--trust_remote_code", action="store_true",
                   help="allow custom model/tokenizer code shipped with the checkpoint")
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute activations in backward: less memory, more compute")
    g.add_argument("--micro_batch_size", type=int, default=32, help="sequences per forward pass in naive scoring")

    g = p.add_argument_group("ranking and reward")
    g.add_argument("--K", type=int, default=20, help="candidates per user (target + K-1 negatives)")
    g.add_argument("--K_eval", type=int, default=10, help="NDCG cut-off of the reward and validation metric")
    g.add_argument("--temperature", type=float, default=1.0, help="PL temperature τ on the scores")
    g.add_argument("--scoring", default="naive", help="naive|shared: per-prompt or shared-prefix scoring")
    g.add_argument("--max_new_tokens", type=int, default=0, help="reasoning tokens per candidate (0 = direct mode)")
    g.add_argument("--gen_temperature", type=float, default=1.0, help="sampling temperature of reasoning generation")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=4, help="training users per rank per step")
    g.add_argument("--max_steps", type=int, default=-1, help="training steps (<= 0: from --num_train_epochs)")
    g.add_argument("--num_train_epochs", type=float, default=1.0,
                   help="used when --max_steps <= 0: epochs over the train split (global batch = batch_size x ranks)")
    g.add_argument("--ppo_epochs", type=int, default=2, help="optimiser updates per rollout batch")
    g.add_argument("--clip_eps", type=float, default=0.2, help="PPO ratio clip (also the value clip)")
    g.add_argument("--rankings_per_user", type=int, default=4,
                   help="PL rankings sampled per user from one scoring pass: more samples, lower-variance "
                        "gradients at almost no extra cost (the scores are shared)")
    g.add_argument("--kl_coef", type=float, default=0.0, help="KL penalty to the frozen initial model (0 = none)")
    g.add_argument("--vf_coef", type=float, default=1.0, help="weight of the value loss")
    g.add_argument("--lr_actor", type=float, default=1e-5, help="learning rate of the backbone")
    g.add_argument("--lr_critic", type=float, default=1e-4, help="learning rate of the value head")
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (actor and critic)")
    g.add_argument("--warmup_steps", type=int, default=0,
                   help="linear learning-rate warmup steps before --lr_scheduler takes over (0 = none)")
    g.add_argument("--lr_scheduler", default="constant", help="constant|cosine (after warmup)")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="<= 0 disables clipping")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="micro-batches the rollout batch is split into for each update")
    g.add_argument("--normalize_advantage", action=argparse.BooleanOptionalAction, default=True,
                   help="standardise advantages over the global batch")
    g.add_argument("--seed", type=int, default=42,
                   help="seed of model init, batch order, candidates and PL/reasoning sampling")

    g = p.add_argument_group("logging, validation and checkpoints")
    g.add_argument("--output_dir", default="outputs/ppo",
                   help="checkpoint-N directories, metrics.jsonl and the final model go here")
    g.add_argument("--overwrite_output_dir", action="store_true",
                   help="start afresh in a non-empty --output_dir (removes its checkpoints and logs)")
    g.add_argument("--resume_from", default=None, help="'last' (newest complete checkpoint in --output_dir) or PATH")
    g.add_argument("--save_every", type=int, default=100, help="checkpoint every N steps (and at the end)")
    g.add_argument("--save_total_limit", type=int, default=3, help="keep the newest N checkpoints (<= 0: all)")
    g.add_argument("--print_every", type=int, default=50, help="print example rankings every N steps (0 = never)")
    g.add_argument("--eval_every", type=int, default=0, help="validation NDCG every N steps (0 = only at the end)")
    g.add_argument("--num_valid_samples", type=int, default=200, help="validation examples (<= 0: all)")
    g.add_argument("--token_log_path", default=None,
                   help="JSONL of reasoning output lengths (default {output_dir}/token_lengths.jsonl in reasoning mode)")
    g.add_argument("--no_plot", action="store_true", help="do not write {output_dir}/training.png at the end")
    # Test hook (DDP weight-sync check); documented like every flag rather than hidden.
    g.add_argument("--write_param_checksums", action="store_true",
                   help="at the end every rank writes {output_dir}/param_checksum_rank{R}.txt, a checksum of its "
                        "parameters (to check that DDP ranks hold identical weights)")
    return p


def validate_args(args: argparse.Namespace) -> None:
    """Checks that need no data or model; raise UserInputError with a one-line message."""
    from models.qwen_models import SCORING_MODES
    from trainers.data.dataset import check_dataset_type

    check_dataset_type(args.dataset_type)
    if args.K < 2:
        raise UserInputError(f"--K {args.K}: must be >= 2 (the target plus at least one negative)")
    if args.K_eval < 1 or args.K_eval > args.K:
        raise UserInputError(f"--K_eval {args.K_eval}: must be in 1..--K ({args.K})")
    for flag in ("max_len_per_item", "user_window_size", "batch_size", "ppo_epochs", "save_every", "rankings_per_user",
                 "gradient_accumulation_steps", "micro_batch_size"):
        if getattr(args, flag) < 1:
            raise UserInputError(f"--{flag} {getattr(args, flag)}: must be >= 1")
    if args.gradient_accumulation_steps > args.batch_size:
        raise UserInputError(f"--gradient_accumulation_steps {args.gradient_accumulation_steps}: must be <= "
                             f"--batch_size {args.batch_size} (each micro-batch needs a user)")
    if args.scoring not in SCORING_MODES:
        raise UserInputError(f"--scoring {args.scoring!r}: must be one of {'|'.join(SCORING_MODES)}")
    if args.lr_scheduler not in SCHEDULERS:
        raise UserInputError(f"--lr_scheduler {args.lr_scheduler!r}: must be one of {'|'.join(SCHEDULERS)}")
    for flag in ("temperature", "clip_eps", "gen_temperature"):
        if not getattr(args, flag) > 0:
            raise UserInputError(f"--{flag} {getattr(args, flag)}: must be > 0")
    for flag in ("kl_coef", "lr_actor", "lr_critic", "max_new_tokens", "warmup_steps", "eval_every", "print_every"):
        if getattr(args, flag) < 0:
            raise UserInputError(f"--{flag} {getattr(args, flag)}: must be >= 0")
    if args.max_steps <= 0 and not args.num_train_epochs > 0:
        raise UserInputError("--max_steps <= 0 needs --num_train_epochs > 0")
    if args.resume_from is not None and args.overwrite_output_dir:
        raise UserInputError("--resume_from and --overwrite_output_dir exclude each other")
    if args.resume_from is not None and args.resume_from != "last" and not Path(args.resume_from).is_dir():
        raise UserInputError(f"--resume_from {args.resume_from}: directory does not exist (use 'last' or a checkpoint-N dir)")


def _output_dir_artifacts(out: Path, token_log: Path | None) -> list[Path]:
    """What a fresh run writes into --output_dir (and may remove with --overwrite_output_dir)."""
    arts = [p for p in out.glob("checkpoint-*")] + [p for p in out.glob(".tmp-checkpoint-*")]
    arts += [out / n for n in ("metrics.jsonl", "training.png", "token_lengths.jsonl", "args.json")]
    arts += list(out.glob("param_checksum_rank*.txt"))
    if token_log is not None:
        arts.append(token_log)
    return [p for p in arts if p.exists()]


def check_output_dir(args: argparse.Namespace) -> None:
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--output_dir {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and args.resume_from is None and not args.overwrite_output_dir:
        raise UserInputError(f"--output_dir {out}: exists and is not empty; pass --resume_from last to continue "
                             "or --overwrite_output_dir to start afresh")


# ---------------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_arg: str) -> DistInfo:
    """torchrun / accelerate launch set RANK, WORLD_SIZE, LOCAL_RANK; plain python runs one process."""
    from models.abstract_models import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device_arg)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)
    return t


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_mean_(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        import torch.distributed as dist

        dist.all_reduce(t)
        t /= info.world_size
    return t


def all_reduce_grads_(params: Sequence[torch.nn.Parameter], info: DistInfo) -> None:
    """Average gradients over ranks in one flat buffer (a tied embedding/LM head appears once)."""
    if not info.distributed:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    off = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[off:off + n].view_as(g))
        off += n


def broadcast_params_(module: torch.nn.Module, info: DistInfo) -> None:
    if not info.distributed:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in module.parameters():
            dist.broadcast(p.data, src=0)


def param_checksum(module: torch.nn.Module) -> str:
    """SHA-256 over all parameters' bytes in name order: equal iff the weights are bit-identical."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda x: x[0]):
        h.update(name.encode())
        h.update(p.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
def _disable_dropout(module: torch.nn.Module) -> None:
    """PPO compares log-probs of the same model before and after updates: dropout would make the
    first-epoch ratio differ from 1 and break bit-exact resume, so every dropout is set to 0."""
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    cfg = getattr(getattr(module, "lm", None), "config", None)
    if cfg is not None:
        for k in ("attention_dropout", "hidden_dropout", "dropout"):
            if hasattr(cfg, k):
                setattr(cfg, k, 0.0)


class PPOTrainer:
    """Owns the judge, optimiser, scheduler and logs of one training run (one instance per rank)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from models.abstract_models import check_model_dir
        from models.qwen_models import QwenBinaryJudge
        from prompters.binary_prompter import BinaryPrompter
        from trainers.data.dataset import load_processed_dataset
        from trainers.foundation.checkpoints import check_same_model_shape, read_trainer_state, resolve_resume_path

        self.args = args
        self.out = Path(args.output_dir)
        self.reasoning = args.max_new_tokens > 0
        self.token_log = Path(args.token_log_path) if args.token_log_path else (
            self.out / "token_lengths.jsonl" if self.reasoning else None)
        self.info = setup_distributed(args.device)
        self.dataset = load_processed_dataset(args.dataset_path)
        self.train_split = self.dataset.split("train")
        if len(self.train_split) == 0:
            raise UserInputError(f"--dataset_path {args.dataset_path}: the train split is empty")
        if args.K > self.dataset.n_items:
            raise UserInputError(f"--K {args.K}: larger than the catalogue ({self.dataset.n_items} items)")
        base = check_model_dir(args.model_name_or_path)
        self.base_model_dir = base

        self.resume_ckpt: Path | None = None
        self.state: dict[str, Any] = {}
        if args.resume_from is not None:
            self.resume_ckpt = resolve_resume_path(args.resume_from, self.out)
            check_same_model_shape(base, self.resume_ckpt)
            self.state = read_trainer_state(self.resume_ckpt)
        self.start_step = int(self.state.get("step", 0))

        n_global = args.batch_size * self.info.world_size
        self.max_steps = args.max_steps if args.max_steps > 0 else max(
            1, math.ceil(args.num_train_epochs * len(self.train_split) / n_global))

        # Same seed on every rank before building the model: the value head's random init is identical
        # everywhere (and is broadcast from rank 0 below anyway).
        torch.manual_seed(args.seed)
        judge_kw = dict(device=str(self.info.device), dtype=args.dtype, attn_implementation=args.attn_implementation,
                        trust_remote_code=args.trust_remote_code, micro_batch_size=args.micro_batch_size)
        src = str(self.resume_ckpt) if self.resume_ckpt else str(base)
        self.judge = QwenBinaryJudge(src, gradient_checkpointing=args.gradient_checkpointing, **judge_kw)
        if self.resume_ckpt:
            self.judge.load_heads(self.resume_ckpt)
        _disable_dropout(self.judge)
        broadcast_params_(self.judge.value_head, self.info)
        self.ref_judge = None
        if args.kl_coef > 0:  # frozen initial model, only when the penalty is on (it doubles memory)
            self.ref_judge = QwenBinaryJudge(str(base), **judge_kw)
            _disable_dropout(self.ref_judge)
            self.ref_judge.eval()
            self.ref_judge.requires_grad_(False)

        self.prompter = BinaryPrompter(self.judge.tokenizer, self.dataset.item_rows, dataset_type=args.dataset_type,
                                       max_len_per_item=args.max_len_per_item, user_window_size=args.user_window_size,
                                       template_file=args.prompt_template, reasoning=self.reasoning)
        self.actor_params = [p for p in self.judge.lm.parameters() if p.requires_grad]
        self.critic_params = list(self.judge.value_head.parameters())
        self.all_params = self.actor_params + self.critic_params
        self.optimizer = torch.optim.AdamW(
            [{"params": self.actor_params, "lr": args.lr_actor, "name": "actor"},
             {"params": self.critic_params, "lr": args.lr_critic, "name": "critic"}],
            weight_decay=args.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda_factory(args.warmup_steps, self.max_steps, args.lr_scheduler))
        if self.resume_ckpt:
            self._load_training_state(self.resume_ckpt)

    # ---- resume ------------------------------------------------------------------------------
    def _load_training_state(self, ckpt: Path) -> None:
        from trainers.foundation.checkpoints import load_torch_state, restore_rng_state

        # weights_only loads (load_torch_state): a checkpoint file cannot run code.
        opt_state = load_torch_state(ckpt / "optimizer.pt", map_location=self.info.device)
        sched_state = load_torch_state(ckpt / "scheduler.pt")
        try:
            self.optimizer.load_state_dict(opt_state)
            self.scheduler.load_state_dict(sched_state)
        except (ValueError, RuntimeError, KeyError) as e:
            raise UserInputError(f"--resume_from {ckpt}: optimizer/scheduler state does not fit this run "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})")
        rng_file = ckpt / f"rng_state_rank{self.info.rank}.pt"
        if rng_file.is_file():
            restore_rng_state(load_torch_state(rng_file))
        saved_world = int(self.state.get("world_size", self.info.world_size))
        if saved_world != self.info.world_size and self.info.is_main:
            print(f"warning: checkpoint was written by {saved_world} process(es), resuming with "
                  f"{self.info.world_size}: training continues but will not replay an uninterrupted run exactly")

    def _truncate_logs(self) -> None:
        """On resume, drop log records after the resumed step so the files read like one uninterrupted run."""
        from trainers.foundation.files import atomic_write_text, iter_jsonl, repair_jsonl_tail

        for path in (self.out / "metrics.jsonl", self.token_log):
            if path is None or not path.exists():
                continue
            repair_jsonl_tail(path)
            keep = [r for r in iter_jsonl(path, flag="metrics log", skip_bad_lines=True)
                    if int(r.get("step", 0)) <= self.start_step]
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))

    def _prepare_output_dir(self) -> None:
        if not self.info.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if self.args.overwrite_output_dir:
            for p in _output_dir_artifacts(self.out, self.token_log):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        if self.resume_ckpt is not None:
            self._truncate_logs()
        from trainers.foundation.files import atomic_write_json

        atomic_write_json(self.out / "args.json", vars(self.args))

    # ---- one step ----------------------------------------------------------------------------
    def _rollout_prompts(self, step: int):
        from trainers.data.candidates import sample_candidates

        a = self.args
        idx = sample_step_indices(len(self.train_split), a.batch_size, a.seed, step, self.info.rank)
        examples = self.train_split.select(idx).to_list()
        cseed = step_candidate_seed(a.seed, step)
        cands = [sample_candidates(int(ex["item_id"]), ex["history_item_id"], self.dataset.n_items, a.K, cseed,
                                   int(ex["interaction_id"])) for ex in examples]
        prompts = [self.prompter.build(ex, c) for ex, c in zip(examples, cands)]
        return examples, cands, prompts

    def _policy_logp(self, out, rankings: torch.Tensor) -> torch.Tensor:
        from trainers.rl.pl import pl_log_prob

        # rankings [B, M, K]: M rankings per user share that user's scores.
        scores = out.scores.float().unsqueeze(1).expand(-1, rankings.shape[1], -1)
        lp = pl_log_prob(scores, rankings, self.args.temperature)
        if self.reasoning and out.token_logprobs is not None:
            lp = lp + out.token_logprobs.float().sum(-1, keepdim=True)
        return lp

    def train_step(self, step: int) -> dict[str, Any]:
        from trainers.evaluation.metrics import ndcg_at, ndcg_reward, target_rank
        from trainers.rl.pl import gumbel_topk_sample

        a, info, judge = self.args, self.info, self.judge
        t0 = time.time()
        examples, cands, prompts = self._rollout_prompts(step)
        B = len(prompts)
        dev = info.device

        # ---- rollout ----
        judge.eval()
        token_lengths = None
        with torch.no_grad():
            if self.reasoning:
                # lm.generate samples from the global torch RNG: seed it per (step, rank) so a resume replays it.
                torch.manual_seed(derived_seed(a.seed, step, info.rank, 2))
                prompts = judge.generate_reasoning(prompts, a.max_new_tokens, do_sample=True,
                                                   temperature=a.gen_temperature, scoring=a.scoring)
                token_lengths = [[int(e - s) for s, e in p.reasoning_spans] for p in prompts]
            out = judge.score_candidates(prompts, scoring=a.scoring, with_values=True,
                                         with_token_logprobs=self.reasoning)
            gen = torch.Generator().manual_seed(derived_seed(a.seed, step, info.rank, 1))
            M = a.rankings_per_user
            scores_m = out.scores.float().unsqueeze(1).expand(-1, M, -1)
            rankings = gumbel_topk_sample(scores_m, a.temperature, generator=gen).to(dev)  # [B, M, K]
            old_logp = self._policy_logp(out, rankings)
            target_idx = torch.tensor([c.index(int(ex["item_id"])) for ex, c in zip(examples, cands)], device=dev)
            rewards = ndcg_reward(rankings, target_idx.unsqueeze(1).expand(-1, M), a.K_eval).to(dev)  # [B, M]
            old_values = out.values.float()
            # The critic estimates a user's expected reward; the M rankings' mean is its return.
            returns = rewards.mean(1)
            adv = rewards - old_values.unsqueeze(1)
            if a.normalize_advantage:
                adv = normalize_advantages(adv, all_reduce_sum=_all_reduce_sum if info.distributed else None)
            ref_logp = None
            if self.ref_judge is not None:
                ref_out = self.ref_judge.score_candidates(prompts, scoring=a.scoring,
                                                          with_token_logprobs=self.reasoning)
                ref_logp = self._policy_logp(ref_out, rankings)
            scores_cpu = out.scores.float().cpu()
            greedy_ndcg = float(np.mean([ndcg_at(target_rank(s.tolist(), int(t)), a.K_eval)
                                         for s, t in zip(scores_cpu, target_idx.cpu())]))

        # ---- PPO updates ----
        judge.train()
        G = a.gradient_accumulation_steps
        chunks = [list(range(B))[i::G] for i in range(G)]
        chunks = [c for c in chunks if c]
        sums = {"policy_loss": 0.0, "value_loss": 0.0, "kl": 0.0, "clipfrac": 0.0, "grad_norm": 0.0}
        for _epoch in range(a.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for ch in chunks:
                ch_t = torch.tensor(ch, device=dev)
                new = judge.score_candidates([prompts[i] for i in ch], scoring=a.scoring, with_values=True,
                                             with_token_logprobs=self.reasoning)
                new_logp = self._policy_logp(new, rankings[ch_t])
                pol, clipfrac = clipped_surrogate(new_logp, old_logp[ch_t], adv[ch_t], a.clip_eps)
                vloss = clipped_value_loss(new.values.float(), old_values[ch_t], returns[ch_t], a.clip_eps)
                loss = pol + a.vf_coef * vloss
                kl = torch.zeros((), device=dev)
                if ref_logp is not None:
                    kl = kl_penalty(new_logp, ref_logp[ch_t])
                    loss = loss + a.kl_coef * kl
                w = len(ch) / B  # micro-batch losses are means: weight them back to a batch mean
                (loss * w).backward()
                sums["policy_loss"] += float(pol.detach()) * w / a.ppo_epochs
                sums["value_loss"] += float(vloss.detach()) * w / a.ppo_epochs
                sums["kl"] += float(kl.detach()) * w / a.ppo_epochs
                sums["clipfrac"] += float(clipfrac) * w / a.ppo_epochs
            all_reduce_grads_(self.all_params, info)
            if a.max_grad_norm > 0:
                # Actor and critic are clipped separately: the value head's gradients must not shrink the actor's.
                gn = torch.nn.utils.clip_grad_norm_(self.actor_params, a.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(self.critic_params, a.max_grad_norm)
                sums["grad_norm"] += float(gn) / a.ppo_epochs
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()
        self.scheduler.step()
        judge.eval()

        local = torch.tensor([float(rewards.mean()), greedy_ndcg, sums["policy_loss"], sums["value_loss"],
                              sums["kl"], sums["clipfrac"], float(old_values.mean())], dtype=torch.float64)
        all_reduce_mean_(local, info)
        dt = time.time() - t0
        rec = {"step": step, "reward": local[0].item(), "ndcg": local[1].item(), "policy_loss": local[2].item(),
               "value_loss": local[3].item(), "kl": local[4].item(), "clipfrac": local[5].item(),
               "value_mean": local[6].item(), "grad_norm": sums["grad_norm"], "lr_actor": lr[0], "lr_critic": lr[1],
               "samples_per_s": B * info.world_size / max(dt, 1e-9)}
        extra = {"examples": examples, "cands": cands, "prompts": prompts, "rankings": rankings[:, 0].cpu(),
                 "scores": scores_cpu, "rewards": rewards[:, 0].cpu(), "token_lengths": token_lengths}
        return {"record": rec, "extra": extra}

    # ---- validation, examples, checkpoints -----------------------------------------------------
    def validate(self) -> dict[str, float] | None:
        """Greedy NDCG on --num_valid_samples validation examples (rank 0 only; others wait)."""
        from trainers.evaluation.judge import evaluate_split
        from trainers.foundation.checkpoints import capture_rng_state, restore_rng_state

        res = None
        if self.info.is_main:
            rng = capture_rng_state()  # evaluation must not perturb training randomness
            _, m = evaluate_split(self.judge, self.prompter, self.dataset, "valid", self.args.num_valid_samples,
                                  self.args.K, self.args.K_eval, self.args.seed, scoring=self.args.scoring,
                                  max_new_tokens=self.args.max_new_tokens, progress=False)
            restore_rng_state(rng)
            res = m
        barrier(self.info)
        return res

    def print_examples(self, step: int, extra: dict, write) -> None:
        titles = self.dataset.titles
        ex, cands = extra["examples"][0], extra["cands"][0]
        order = extra["rankings"][0].tolist()
        hist = [titles[int(i)] for i in ex["history_item_id"]][-3:]
        lines = [f"[step {step}] interaction {ex['interaction_id']}: reward {float(extra['rewards'][0]):.3f}",
                 f"  history (last {len(hist)}): " + " | ".join(hist),
                 f"  target: {titles[int(ex['item_id'])]}"]
        for n, i in enumerate(order[:3], 1):
            mark = " *" if cands[i] == int(ex["item_id"]) else ""
            lines.append(f"  sampled {n}. [{float(extra['scores'][0][i]):+.3f}] {titles[cands[i]]}{mark}")
        if self.reasoning:
            p = extra["prompts"][0]
            s, e = p.reasoning_spans[order[0]]
            lines.append(f"  reasoning: {self.judge.tokenizer.decode(p.suffix_ids[order[0]][s:e])!r}")
        write("\n".join(lines))

    def save_checkpoint(self, step: int) -> None:
        from trainers.foundation.checkpoints import (
            capture_rng_state,
            finalize_checkpoint,
            rotate_checkpoints,
            tmp_checkpoint_dir,
        )

        tmp = tmp_checkpoint_dir(self.out, step)
        if self.info.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            self.judge.save(tmp)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        barrier(self.info)
        torch.save(capture_rng_state(), tmp / f"rng_state_rank{self.info.rank}.pt")
        barrier(self.info)
        if self.info.is_main:
            finalize_checkpoint(self.out, step, {"step": step, "world_size": self.info.world_size,
                                                 "max_steps": self.max_steps,
                                                 "wall_time": self.state.get("wall_time", 0.0),
                                                 "base_model": str(self.base_model_dir)}, vars(self.args))
            rotate_checkpoints(self.out, self.args.save_total_limit)
        barrier(self.info)

    # ---- main loop ---------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from trainers.foundation.files import append_jsonl

        a, info = self.args, self.info
        self._prepare_output_dir()
        barrier(info)
        t_start = time.time()
        wall_offset = float(self.state.get("wall_time", 0.0))
        last: dict[str, Any] = {}
        bar = tqdm(total=self.max_steps, initial=self.start_step, desc="PL-PPO", unit="step",
                   disable=not info.is_main, dynamic_ncols=True)
        for step in range(self.start_step + 1, self.max_steps + 1):
            res = self.train_step(step)
            rec = res["record"]
            if a.eval_every > 0 and step % a.eval_every == 0:
                m = self.validate()
                if m is not None:
                    rec[f"val_NDCG@{a.K_eval}"] = m[f"NDCG@{a.K_eval}"]
            rec["wall_time"] = wall_offset + time.time() - t_start
            if self.reasoning and self.token_log is not None:
                self._log_tokens(step, res["extra"]["token_lengths"])
            if info.is_main:
                append_jsonl(self.out / "metrics.jsonl", [rec])
                bar.update(1)
                bar.set_postfix(reward=f"{rec['reward']:.3f}", ndcg=f"{rec['ndcg']:.3f}",
                                vloss=f"{rec['value_loss']:.3f}")
                if a.print_every and step % a.print_every == 0:
                    self.print_examples(step, res["extra"], bar.write)
            last = rec
            if step % a.save_every == 0 or step == self.max_steps:
                self.state["wall_time"] = rec["wall_time"]
                self.save_checkpoint(step)
        bar.close()
        final_val = None
        if a.eval_every == 0 or self.max_steps % max(a.eval_every, 1) != 0:
            m = self.validate()
            if m is not None:
                final_val = m
                if info.is_main:
                    print(f"validation at step {self.max_steps}: NDCG@{a.K_eval} = {m[f'NDCG@{a.K_eval}']:.4f} "
                          f"(n={m['n']})")
        if info.is_main and not a.no_plot and (self.out / "metrics.jsonl").exists():
            from trainers.foundation.plotting import plot_training

            plot_training(self.out / "metrics.jsonl", self.out / "training.png")
        if a.write_param_checksums:
            (self.out / f"param_checksum_rank{info.rank}.txt").write_text(param_checksum(self.judge) + "\n")
        barrier(info)
        return {"last": last, "final_validation": final_val, "max_steps": self.max_steps}

    def _log_tokens(self, step: int, lengths: list[list[int]] | None) -> None:
        from trainers.foundation.files import append_jsonl

        gathered = [lengths]
        if self.info.distributed:
            import torch.distributed as dist

            gathered = [None] * self.info.world_size
            dist.all_gather_object(gathered, lengths)
        if self.info.is_main:
            flat = [n for per_rank in gathered for per_user in (per_rank or []) for n in per_user]
            append_jsonl(self.token_log, [{"step": step, "lengths": gathered, "mean": float(np.mean(flat)) if flat else 0.0,
                                           "max": int(max(flat)) if flat else 0}])

    def close(self) -> None:
        if self.info.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def run_training(args: argparse.Namespace) -> dict[str, Any]:
    """Validate, build, train, clean up. Raises UserInputError on bad input."""
    validate_args(args)
    check_output_dir(args)  # every rank checks before any rank can create files (they meet at init_process_group)
    trainer = PPOTrainer(args)
    try:
        return trainer.train()
    finally:
        trainer.close()
