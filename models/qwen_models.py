"""The binary judge: a Qwen (or any causal LM) whose logit(Yes)-logit(No) scores a candidate, plus a value head.

All candidate scoring goes through `QwenBinaryJudge.score_candidates`, which
dispatches to the naive path (every prompt `prefix + suffix_k` run in full) or
the shared-prefix path (models/shared_prefix.py) selected by `scoring`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from models.abstract_models import (
    AbstractRecModel,
    check_model_dir,
    load_causal_lm,
    load_tokenizer,
    pad_left,
    pad_right,
    resolve_attn_implementation,
    resolve_device,
    resolve_dtype,
)
from prompters import prompts
from prompters.binary_prompter import UserPrompt
from trainers.foundation.errors import UserInputError

SCORING_MODES = ("naive", "shared")


@dataclass
class ScoreOutput:
    scores: torch.Tensor  # [B, K] float32: logit(Yes) - logit(No)
    values: torch.Tensor | None = None  # [B] critic value at the end of the shared prefix
    token_logprobs: torch.Tensor | None = None  # [B, K] summed log-probs of reasoning tokens


class ValueHead(nn.Module):
    """Small MLP critic on a detached hidden state (the critic must not steer the actor's features)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h.float().detach()).squeeze(-1)


def single_token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise UserInputError(f"tokenizer encodes {text!r} as {len(ids)} tokens; the judge needs a single token for it")
    return ids[0]


class QwenBinaryJudge(AbstractRecModel):
    def __init__(
        self,
        model_name_or_path: str,
        device: str | None = None,
        dtype: str | None = "auto",
        attn_implementation: str | None = "auto",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        micro_batch_size: int = 32,
    ) -> None:
        super().__init__()
        path = check_model_dir(model_name_or_path)
        self.path = str(path)
        self.device_ = resolve_device(device)
        self.dtype_ = resolve_dtype(dtype, self.device_)
        self.attn_implementation = resolve_attn_implementation(attn_implementation, self.device_, self.dtype_)
        self.tokenizer = load_tokenizer(path, trust_remote_code)
        self.lm = load_causal_lm(path, self.device_, self.dtype_, self.attn_implementation, trust_remote_code)
        self.yes_id = single_token_id(self.tokenizer, prompts.YES_TOKEN_TEXT)
        self.no_id = single_token_id(self.tokenizer, prompts.NO_TOKEN_TEXT)
        self.value_head = ValueHead(self.lm.config.hidden_size).to(self.device_)
        self.micro_batch_size = micro_batch_size
        if gradient_checkpointing:
            self.enable_gradient_checkpointing()

    @classmethod
    def from_model(cls, lm, tokenizer, device: str | torch.device | None = None, micro_batch_size: int = 32,
                   yes_id: int | None = None, no_id: int | None = None) -> "QwenBinaryJudge":
        """A judge around a causal LM already in memory (benchmarks, tests); the tokenizer gives pad/eos and,
        unless yes_id/no_id are given, the Yes/No token ids."""
        self = cls.__new__(cls)
        AbstractRecModel.__init__(self)
        self.path = None
        self.device_ = torch.device(device) if device is not None else next(lm.parameters()).device
        self.lm = lm.to(self.device_)
        self.dtype_ = lm.dtype
        self.attn_implementation = getattr(lm.config, "_attn_implementation", None) or "sdpa"
        self.tokenizer = tokenizer
        self.yes_id = yes_id if yes_id is not None else single_token_id(tokenizer, prompts.YES_TOKEN_TEXT)
        self.no_id = no_id if no_id is not None else single_token_id(tokenizer, prompts.NO_TOKEN_TEXT)
        self.value_head = ValueHead(lm.config.hidden_size).to(self.device_)
        self.micro_batch_size = micro_batch_size
        return self

    @property
    def device(self) -> torch.device:
        return self.device_

    # ---- scoring -------------------------------------------------------------------------------
    def yes_minus_no(self, h: torch.Tensor) -> torch.Tensor:
        """logit(Yes) - logit(No) from final hidden states h [..., H] without the full vocab projection."""
        w = self.lm_head_weight()
        diff = (w[self.yes_id] - w[self.no_id]).to(h.dtype)
        s = h @ diff
        bias = getattr(self.lm.get_output_embeddings(), "bias", None)
        if bias is not None:
            s = s + (bias[self.yes_id] - bias[self.no_id])
        return s.float()

    def token_logprob(self, h: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """log p(target_ids | h) under the LM head; h [N, H], target_ids [N] -> [N]."""
        logits = self.lm.get_output_embeddings()(h).float()
        return torch.log_softmax(logits, -1).gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)

    def score_candidates(self, batch: Sequence[UserPrompt], scoring: str = "naive", with_values: bool = False,
                         with_token_logprobs: bool = False) -> ScoreOutput:
        """Scores of the K candidates of each user (and optionally critic values and reasoning log-probs).

        Differentiable: call under torch.no_grad() for evaluation, with grad for PPO updates.
        """
        if scoring not in SCORING_MODES:
            raise UserInputError(f"--scoring {scoring!r}: must be one of {'|'.join(SCORING_MODES)}")
        Ks = {p.K for p in batch}
        if len(Ks) != 1:
            raise ValueError(f"all users in a batch need the same K, got {sorted(Ks)}")
        if scoring == "shared":
            from models.shared_prefix import score_shared_prefix

            return score_shared_prefix(self, batch, with_values=with_values, with_token_logprobs=with_token_logprobs)
        return self._score_naive(batch, with_values, with_token_logprobs)

    def _score_naive(self, batch: Sequence[UserPrompt], with_values: bool, with_token_logprobs: bool) -> ScoreOutput:
        B, K = len(batch), batch[0].K
        seqs, prefix_lens, spans = [], [], []
        for p in batch:
            for k in range(K):
                seqs.append(p.full_ids(k))
                prefix_lens.append(len(p.prefix_ids))
                spans.append(p.reasoning_spans[k] if p.reasoning_spans else (0, 0))
        scores, values, tok_lp = [], [], []
        body = self.backbone()
        for start in range(0, len(seqs), self.micro_batch_size):
            chunk = seqs[start:start + self.micro_batch_size]
            ids, mask = pad_right(chunk, self.tokenizer.pad_token_id)
            ids, mask = ids.to(self.device), mask.to(self.device)
            h = body(input_ids=ids, attention_mask=mask).last_hidden_state  # right padding: positions 0..len-1
            last = torch.tensor([len(s) - 1 for s in chunk], device=self.device)
            rows = torch.arange(len(chunk), device=self.device)
            scores.append(self.yes_minus_no(h[rows, last]))
            if with_values:
                pl = torch.tensor(prefix_lens[start:start + len(chunk)], device=self.device) - 1
                values.append(self.value_head(h[rows, pl]))
            if with_token_logprobs:
                for i, s in enumerate(chunk):
                    a, b = spans[start + i]
                    if b > a:
                        off = prefix_lens[start + i]
                        pos = torch.arange(off + a - 1, off + b - 1, device=self.device)
                        tgt = torch.tensor(s[off + a: off + b], device=self.device)
                        tok_lp.append(self.token_logprob(h[i, pos], tgt).sum())
                    else:
                        tok_lp.append(torch.zeros((), device=self.device))
        out = ScoreOutput(scores=torch.cat(scores).view(B, K))
        if with_values:
            out.values = torch.cat(values).view(B, K)[:, 0]
        if with_token_logprobs:
            out.token_logprobs = torch.stack(tok_lp).view(B, K)
        return out

    # ---- reasoning mode -----------------------------------------------------------------------
    @torch.no_grad()
    def generate_reasoning(self, batch: Sequence[UserPrompt], max_new_tokens: int, do_sample: bool = True,
                           temperature: float = 1.0, top_k: int = 50, scoring: str = "naive") -> list[UserPrompt]:
        """Sample a reasoning text for every (user, candidate); return prompts whose suffixes end with it
        plus the answer prefix, with reasoning_spans marking the generated tokens."""
        if scoring == "shared":
            from models.shared_prefix import generate_shared_prefix

            gens = generate_shared_prefix(self, batch, max_new_tokens, do_sample, temperature, top_k)
        else:
            gens = self._generate_naive(batch, max_new_tokens, do_sample, temperature, top_k)
        return [self.attach_reasoning(p, g) for p, g in zip(batch, gens)]

    def _generate_naive(self, batch, max_new_tokens, do_sample, temperature, top_k) -> list[list[list[int]]]:
        seqs = [p.full_ids(k) for p in batch for k in range(p.K)]
        pad = self.tokenizer.pad_token_id
        outs: list[list[int]] = []
        for start in range(0, len(seqs), self.micro_batch_size):
            ids, mask = pad_left(seqs[start:start + self.micro_batch_size], pad)
            L = ids.shape[1]
            gen = self.lm.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=max_new_tokens,
                do_sample=do_sample, temperature=temperature if do_sample else None, top_k=top_k if do_sample else None,
                top_p=None, pad_token_id=pad, stop_strings=[prompts.ANSWER_PREFIX], tokenizer=self.tokenizer,
            )
            outs.extend(gen[:, L:].tolist())
        K = batch[0].K
        return [outs[b * K:(b + 1) * K] for b in range(len(batch))]

    def attach_reasoning(self, p: UserPrompt, generated: list[list[int]]) -> UserPrompt:
        """Cut each generation before the answer tag / end token and append the answer prefix."""
        stop_ids = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        answer_ids = self.tokenizer("\n" + prompts.ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
        new_suffixes, spans = [], []
        for k, g in enumerate(generated):
            kept: list[int] = []
            for t in g:
                if t in stop_ids:
                    break
                kept.append(t)
            text = self.tokenizer.decode(kept)
            if prompts.ANSWER_PREFIX in text:  # drop the tag and whatever followed it; re-append canonically
                text = text[: text.index(prompts.ANSWER_PREFIX)]
                kept = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            base = p.suffix_ids[k]
            new_suffixes.append(base + kept + answer_ids)
            spans.append((len(base), len(base) + len(kept)))
        return UserPrompt(prefix_ids=p.prefix_ids, suffix_ids=new_suffixes, candidates=p.candidates, reasoning_spans=spans)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        self.lm.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                  str(out_dir / self.HEADS_FILE))

    def load_heads(self, ckpt_dir: str | Path) -> None:
        from safetensors.torch import load_file

        f = Path(ckpt_dir) / self.HEADS_FILE
        if f.is_file():
            state = load_file(str(f))
            try:
                self.value_head.load_state_dict(state)
            except RuntimeError as e:
                raise UserInputError(f"--resume_from {ckpt_dir}: value head does not match this model's shape ({str(e).splitlines()[0]})")


def load_judge_from_checkpoint(model_name_or_path: str, resume_from: str | None = None, **kw) -> QwenBinaryJudge:
    """Base model, or a training checkpoint directory (which holds a full save_pretrained model)."""
    src = resume_from or model_name_or_path
    judge = QwenBinaryJudge(src, **kw)
    if resume_from:
        judge.load_heads(resume_from)
    return judge
