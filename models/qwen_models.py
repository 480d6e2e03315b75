"""The binary judge: any causal LM (Qwen instruct by default) whose logit(Yes) - logit(No) scores a candidate,
plus a value head (the PPO critic).

`BinaryJudge` is one nn.Module whose forward returns what the RL loop needs (scores, critic values, reasoning
token log-probs), so a single accelerator.prepare(judge) puts DDP/FSDP/DeepSpeed around every forward.
The forward dispatches to the naive path (every prompt `prefix + suffix_k` run in full) or the shared-prefix
path (models/shared_prefix.py) selected by `scoring`.

A saved judge is a directory: the LM (save_pretrained: a full model, or with LoRA a PEFT adapter whose
adapter_config.json names the base model), the tokenizer, and `heads.safetensors` with the value head
(`net.0.weight [H, H]`, `net.0.bias [H]`, `net.2.weight [1, H]`, `net.2.bias [1]`: Linear-Tanh-Linear on the
hidden state at the end of the shared history prefix). Plain `AutoModelForCausalLM.from_pretrained(dir)` loads
the LM of a full-model directory; the value head is only needed to continue training.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from models.abstract_models import (AbstractRecModel, LoraSettings, apply_lora, attention_softcap, check_model_dir,
                                    check_loaded_tensors, fp32_linear, gathered_parameters, is_adapter_dir,
                                    load_causal_lm, load_tokenizer, model_config, pad_left, pad_right,
                                    resolve_attn_implementation, resolve_device, resolve_dtype, save_lm)
from prompters import prompts
from prompters.binary_prompter import UserPrompt
from foundation.config import SCORING_MODES  # noqa: F401 (re-exported: auto|naive|shared)
from foundation.errors import SettingError, UserInputError
from models.judge_types import SamplingSettings, ScoreOutput  # noqa: F401 (re-exported: the judge's value types)
from models.shared_prefix import generate_shared_prefix, score_shared_prefix

RESOLVED_SCORING = ("naive", "shared")  # what a forward runs: auto is resolved before (resolve_scoring)


def resolve_scoring(scoring: str, model_name_or_path: str, attn_implementation: str | None = "auto",
                    device: str | torch.device | None = "auto", base_model: str | None = None,
                    flag: str = "--scoring") -> str:
    """The run's scoring path, decided once before the model loads (shared packs each user's candidates, so it
    also decides the attention kernel: BinaryJudge.load(packed_mask=...)). naive and shared are returned as given;
    auto is shared where shared-prefix scoring is exact and runs on its fast kernel for this model and backend,
    naive otherwise, and prints one line `scoring: <path> (auto: <why>)` (main process):

    - --attn_implementation flash_attention_2: FA2 takes no block mask -> naive;
    - flex_attention off CUDA: inductor's CPU kernel does not compile the packed mask -> naive;
    - a model with sliding-window layers (Gemma-2, Mistral v0.1, Qwen2 with use_sliding_window): the packed block
      mask replaces the model's own masks, so the window would not be applied -> naive (exact only for prompts
      shorter than the window);
    - a model that caps its attention logits (Gemma-2) under auto attention: SDPA-based kernels (prefix_split)
      cannot apply the cap, so shared would fall back to eager attention with a dense [T, T] mask -> naive
      (an explicit --attn_implementation eager --scoring shared is exact and is not refused);
    - a model_type transformers does not know (custom code): whether it honours a prepared 4D mask is unknown ->
      naive;
    - otherwise shared (prefix_split under auto attention: equal to naive to ~1e-5 in fp32,
      tests/models/test_shared_prefix.py).
    """
    if scoring not in SCORING_MODES:
        raise UserInputError(f"{flag} {scoring!r}: must be one of {'|'.join(SCORING_MODES)}")
    if scoring != "auto":
        return scoring
    resolved, why = _auto_scoring(model_config(model_name_or_path, base_model), attn_implementation or "auto",
                                  resolve_device(device))
    _announce_scoring(resolved, why)
    return resolved


def _auto_scoring(cfg: dict, attn: str, device: torch.device) -> tuple[str, str]:
    """(naive|shared, why) for a model's config.json (a dict) under an attention request on a device."""
    if attn == "flash_attention_2":
        return "naive", "--attn_implementation flash_attention_2 takes no block mask"
    if attn == "flex_attention" and device.type != "cuda":
        return "naive", "flex_attention packs candidates only on CUDA"
    model_type = cfg.get("model_type")
    try:
        from transformers import AutoConfig

        config = AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if k != "model_type"})
    except (ValueError, KeyError, TypeError):
        return "naive", (f"model_type {model_type!r} is not one transformers knows (custom code may ignore the "
                         "block mask)")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None)
    if window and (layer_types is None or "sliding_attention" in layer_types):
        return "naive", (f"{model_type} has sliding-window attention ({window} tokens), which the packed block mask "
                         "does not apply")
    softcap = getattr(text, "attn_logit_softcapping", None)
    if softcap and attn == "auto":
        return "naive", (f"{model_type} caps its attention logits, so shared would run eager attention with a dense "
                         "mask instead of prefix_split")
    kernel = "prefix_split" if attn == "auto" else attn
    return "shared", f"{model_type}: the shared prefix is computed once per user ({kernel})"


def check_resolved_scoring(scoring: str) -> None:
    """A forward runs naive or shared; auto must have been resolved (resolve_scoring) before the model loaded."""
    if scoring == "auto":
        raise ValueError("scoring 'auto' reached a forward: resolve it with models.qwen_models.resolve_scoring "
                         "before loading the model (it decides the attention kernel too)")
    if scoring not in RESOLVED_SCORING:
        raise SettingError("scoring", repr(scoring), f"must be one of {'|'.join(SCORING_MODES)}")


@functools.lru_cache(maxsize=None)
def _announce_scoring(scoring: str, why: str) -> None:
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"scoring: {scoring} (auto: {why})", file=sys.stderr)


class ValueHead(nn.Module):
    """Small MLP critic on a detached hidden state (the critic must not steer the actor's features)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """V [...] in fp32 whatever the weights' dtype (it enters every advantage: bf16 rounding would be noise)."""
        l1, l2 = self.net[0], self.net[2]
        return fp32_linear(torch.tanh(fp32_linear(h.detach(), l1.weight, l1.bias)), l2.weight, l2.bias).squeeze(-1)


def single_token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise UserInputError(f"tokenizer encodes {text!r} as {len(ids)} tokens; the judge needs a single token for it")
    return ids[0]


class BinaryJudge(AbstractRecModel):
    """Causal LM + value head. Build with `BinaryJudge.load(...)` (from a directory) or `from_model(...)`."""

    def __init__(self, lm, tokenizer, scoring_chunk_size: int = 32, yes_id: int | None = None,
                 no_id: int | None = None, generation_batch_rows: int = 256) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.path: str | None = None
        self.yes_id = yes_id if yes_id is not None else single_token_id(tokenizer, prompts.YES_TOKEN_TEXT)
        self.no_id = no_id if no_id is not None else single_token_id(tokenizer, prompts.NO_TOKEN_TEXT)
        hidden = self.base_lm().config.hidden_size
        self.value_head = ValueHead(hidden).to(device=next(lm.parameters()).device)
        self.scoring_chunk_size = max(1, int(scoring_chunk_size))
        # (user, candidate) rows decoded together in reasoning generation (shared path), independent of scoring
        self.generation_batch_rows = max(1, int(generation_batch_rows))

    @classmethod
    def load(cls, model_name_or_path: str, device: str | None = "auto", dtype: str | torch.dtype | None = "auto",
             attn_implementation: str | None = "auto", packed_mask: bool = False, trust_remote_code: bool = False,
             base_model: str | None = None, lora: LoraSettings | None = None, trainable: bool = False,
             gradient_checkpointing: bool = False, scoring_chunk_size: int = 32, load_heads: bool = True,
             flag: str = "--model_name_or_path", generation_batch_rows: int = 256) -> "BinaryJudge":
        """A judge from a full-model or adapter directory (+ its heads.safetensors when present).

        dtype: a torch dtype or auto|bf16|fp16|fp32 (trainers pass torch.float32: fp32 master weights).
        lora: wrap a full model in new LoRA adapters; an adapter directory is loaded trainable if `trainable`.
        attn_implementation is resolved once here (packed_mask: the run uses shared-prefix packing)."""
        path = check_model_dir(model_name_or_path, flag=flag)
        dev = resolve_device(device)
        compute = resolve_dtype(None if isinstance(dtype, torch.dtype) else dtype, dev)
        weights = dtype if isinstance(dtype, torch.dtype) else compute
        attn = resolve_attn_implementation(attn_implementation, dev, compute if dev.type == "cuda" else weights,
                                           packed_mask=packed_mask, softcap=attention_softcap(path, base_model))
        tok = load_tokenizer(path, trust_remote_code, flag=flag)
        lm = load_causal_lm(path, dev, weights, attn, trust_remote_code, base_model=base_model,
                            adapter_trainable=trainable, flag=flag)
        if lora is not None:
            if is_adapter_dir(path):
                raise UserInputError(f"{flag} {model_name_or_path}: already a LoRA adapter; train it further without "
                                     "--use_lora, or start from its base model")
            lm = apply_lora(lm, lora)
        judge = cls(lm, tok, scoring_chunk_size=scoring_chunk_size, generation_batch_rows=generation_batch_rows)
        judge.path = str(path)
        judge.attn_implementation = attn
        judge.value_head.to(dtype=weights if weights != torch.float16 else torch.float32)
        if gradient_checkpointing:
            judge.enable_gradient_checkpointing()
        if load_heads and (path / cls.HEADS_FILE).is_file():
            judge.load_heads(path)
        return judge

    @classmethod
    def from_model(cls, lm, tokenizer, device: str | torch.device | None = None, scoring_chunk_size: int = 32,
                   yes_id: int | None = None, no_id: int | None = None,
                   generation_batch_rows: int = 256) -> "BinaryJudge":
        """A judge around a causal LM already in memory (benchmarks, tests)."""
        if device is not None:
            lm = lm.to(device)
        judge = cls(lm, tokenizer, scoring_chunk_size=scoring_chunk_size, yes_id=yes_id, no_id=no_id,
                    generation_batch_rows=generation_batch_rows)
        judge.attn_implementation = getattr(lm.config, "_attn_implementation", None) or "sdpa"
        return judge

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    # ---- scoring -------------------------------------------------------------------------------
    def yes_minus_no(self, h: torch.Tensor) -> torch.Tensor:
        """logit(Yes) - logit(No) from final hidden states h [..., H], in fp32 whatever the weights' dtype or an
        enclosing autocast: the scores are ranked (ties count against the target) and enter the PL log-prob, and a
        bf16 product rounds them to ~0.4% of their size, so close candidates would tie. Only two rows of the head
        matter: h @ (w_yes - w_no) instead of the full vocabulary projection."""
        head = self.output_head()
        bias = getattr(head, "bias", None)
        with gathered_parameters(head.weight, bias):
            w = head.weight
            diff = (w[self.yes_id].float() - w[self.no_id].float())[None]
            b = None if bias is None else (bias[self.yes_id].float() - bias[self.no_id].float())[None]
            return fp32_linear(h, diff, b)[..., 0]

    def token_logprob(self, h: torch.Tensor, target_ids: torch.Tensor,
                      sampling: SamplingSettings | None = None) -> torch.Tensor:
        """log p(target_ids | h) under the distribution the tokens were sampled from (SamplingSettings.warp);
        h [N, H], target_ids [N] -> [N]."""
        logits = (sampling or SamplingSettings(1.0, 0, 1.0)).warp(self.output_logits(h))
        return torch.log_softmax(logits, -1).gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)

    def forward(self, batch: Sequence[UserPrompt], scoring: str = "naive", with_values: bool = False,
                with_token_logprobs: bool = False, sampling: SamplingSettings | None = None) -> ScoreOutput:
        """Scores of the K candidates of each user (and optionally critic values and reasoning log-probs under
        `sampling`). Differentiable: call under torch.no_grad() for evaluation, with grad for PPO updates."""
        check_resolved_scoring(scoring)
        Ks = {p.K for p in batch}
        if len(Ks) != 1:
            raise ValueError(f"all users in a batch need the same K, got {sorted(Ks)}")
        if scoring == "shared":

            return score_shared_prefix(self, batch, with_values=with_values, with_token_logprobs=with_token_logprobs,
                                       sampling=sampling)
        return self._score_naive(batch, with_values, with_token_logprobs, sampling)

    def score_candidates(self, batch: Sequence[UserPrompt], scoring: str = "naive", with_values: bool = False,
                         with_token_logprobs: bool = False, sampling: SamplingSettings | None = None) -> ScoreOutput:
        """forward() through __call__ (hooks run); for code holding the plain module (evaluation, tools)."""
        return self(batch, scoring=scoring, with_values=with_values, with_token_logprobs=with_token_logprobs,
                    sampling=sampling)

    def _score_naive(self, batch: Sequence[UserPrompt], with_values: bool, with_token_logprobs: bool,
                     sampling: SamplingSettings | None) -> ScoreOutput:
        B, K = len(batch), batch[0].K
        seqs, prefix_lens, spans = [], [], []
        for p in batch:
            for k in range(K):
                seqs.append(p.full_ids(k))
                prefix_lens.append(len(p.prefix_ids))
                spans.append(p.reasoning_spans[k] if p.reasoning_spans else (0, 0))
        scores, values, tok_lp = [], [], []
        body = self.backbone()
        dev = self.device
        for start in range(0, len(seqs), self.scoring_chunk_size):
            chunk = seqs[start:start + self.scoring_chunk_size]
            ids, mask = pad_right(chunk, self.tokenizer.pad_token_id)
            ids, mask = ids.to(dev), mask.to(dev)
            h = body(input_ids=ids, attention_mask=mask).last_hidden_state  # right padding: positions 0..len-1
            last = torch.tensor([len(s) - 1 for s in chunk], device=dev)
            rows = torch.arange(len(chunk), device=dev)
            scores.append(self.yes_minus_no(h[rows, last]))
            if with_values:
                pl = torch.tensor(prefix_lens[start:start + len(chunk)], device=dev) - 1
                values.append(self.value_head(h[rows, pl]))
            if with_token_logprobs:
                for i, s in enumerate(chunk):
                    a, b = spans[start + i]
                    if b > a:
                        off = prefix_lens[start + i]
                        pos = torch.arange(off + a - 1, off + b - 1, device=dev)
                        tgt = torch.tensor(s[off + a: off + b], device=dev)
                        tok_lp.append(self.token_logprob(h[i, pos], tgt, sampling).sum())
                    else:
                        tok_lp.append(torch.zeros((), device=dev))
        out = ScoreOutput(scores=torch.cat(scores).view(B, K))
        if with_values:
            out.values = torch.cat(values).view(B, K)[:, 0]
        if with_token_logprobs:
            out.token_logprobs = torch.stack(tok_lp).view(B, K).float()
        return out

    # ---- reasoning mode -----------------------------------------------------------------------
    @torch.no_grad()
    def generate_reasoning(self, batch: Sequence[UserPrompt], max_new_tokens: int, do_sample: bool = True,
                           sampling: SamplingSettings | None = None, scoring: str = "naive") -> list[UserPrompt]:
        """Sample (or greedily decode) a reasoning text for every (user, candidate); return prompts whose
        suffixes end with it plus the answer prefix, with reasoning_spans marking exactly the generated tokens."""
        check_resolved_scoring(scoring)
        sampling = sampling or SamplingSettings()
        if scoring == "shared":

            gens = generate_shared_prefix(self, batch, max_new_tokens, do_sample, sampling)
        else:
            gens = self._generate_naive(batch, max_new_tokens, do_sample, sampling)
        return [self.attach_reasoning(p, g) for p, g in zip(batch, gens)]

    def _generate_naive(self, batch, max_new_tokens: int, do_sample: bool,
                        sampling: SamplingSettings) -> list[list[list[int]]]:
        seqs = [p.full_ids(k) for p in batch for k in range(p.K)]
        pad = self.tokenizer.pad_token_id
        outs: list[list[int]] = []
        lm = self.base_lm() if not hasattr(self.lm, "generate") else self.lm
        for start in range(0, len(seqs), self.scoring_chunk_size):
            ids, mask = pad_left(seqs[start:start + self.scoring_chunk_size], pad)
            L = ids.shape[1]
            # Exactly our sampling distribution: every other processor of generation_config is switched off.
            gen = lm.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=max_new_tokens,
                do_sample=do_sample, temperature=sampling.temperature if do_sample else None,
                top_k=(sampling.top_k or None) if do_sample else None,
                top_p=sampling.top_p if do_sample and sampling.top_p < 1 else None, repetition_penalty=None,
                pad_token_id=pad, stop_strings=[prompts.ANSWER_PREFIX], tokenizer=self.tokenizer,
            )
            outs.extend(gen[:, L:].tolist())
        K = batch[0].K
        return [outs[b * K:(b + 1) * K] for b in range(len(batch))]

    def reasoning_token_ids(self, generated: Sequence[int]) -> list[int]:
        """The sampled tokens that form the reasoning: up to (not including) an end/pad token, and cut at token
        level before the token where the answer tag begins. Never re-tokenised: the PPO ratio must be computed on
        the very ids that were sampled."""
        stop_ids = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        kept: list[int] = []
        for t in generated:
            if t in stop_ids:
                break
            kept.append(int(t))
        text = self.tokenizer.decode(kept)
        if prompts.ANSWER_PREFIX in text:
            cut = text.index(prompts.ANSWER_PREFIX)
            # the shortest token prefix whose text reaches the tag's first character; drop that token and the rest
            n = 0
            while n < len(kept) and len(self.tokenizer.decode(kept[:n + 1])) <= cut:
                n += 1
            kept = kept[:n]
        return kept

    def attach_reasoning(self, p: UserPrompt, generated: list[list[int]]) -> UserPrompt:
        """Append each candidate's reasoning tokens and the canonical answer prefix to its suffix."""
        answer_ids = self.tokenizer("\n" + prompts.ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
        new_suffixes, spans = [], []
        for k, g in enumerate(generated):
            kept = self.reasoning_token_ids(g)
            base = p.suffix_ids[k]
            new_suffixes.append(base + kept + answer_ids)
            spans.append((len(base), len(base) + len(kept)))
        return UserPrompt(prefix_ids=p.prefix_ids, suffix_ids=new_suffixes, candidates=p.candidates, reasoning_spans=spans)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, out_dir: str | Path, merge_adapter: bool = False, lm_state_dict: dict | None = None,
             heads_state_dict: dict | None = None) -> None:
        """LM (full model or adapter; merged with merge_adapter), tokenizer and heads.safetensors into out_dir."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        save_lm(self.lm, out_dir, merge_adapter=merge_adapter, state_dict=lm_state_dict)
        self.tokenizer.save_pretrained(out_dir)
        heads = heads_state_dict if heads_state_dict is not None else self.value_head.state_dict()
        save_file({k: v.detach().float().cpu().contiguous() for k, v in heads.items()}, str(out_dir / self.HEADS_FILE))

    def load_heads(self, ckpt_dir: str | Path, flag: str = "--resume_from") -> None:
        from safetensors.torch import load_file

        f = Path(ckpt_dir) / self.HEADS_FILE
        try:
            state = load_file(str(f))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise UserInputError(f"{flag} {ckpt_dir}: cannot read {self.HEADS_FILE} ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})")
        expected = self.value_head.state_dict()
        check_loaded_tensors(Path(ckpt_dir), set(expected) - set(state), set(state) - set(expected),
                             [k for k in state if k in expected and state[k].shape != expected[k].shape], flag,
                             file=f)
        try:
            ref = self.value_head.net[0].weight
            self.value_head.load_state_dict({k: v.to(dtype=ref.dtype) for k, v in state.items()})
        except RuntimeError as e:
            raise UserInputError(f"{flag} {ckpt_dir}: value head does not match this model's shape "
                                 f"({str(e).splitlines()[0]})")


def load_judge_from_checkpoint(model_name_or_path: str, resume_from: str | None = None, **kw) -> BinaryJudge:
    """Base model, or a training checkpoint directory (a full model, or a LoRA adapter whose base is
    model_name_or_path unless its recorded base exists)."""
    if resume_from:
        kw.setdefault("base_model", model_name_or_path if is_adapter_dir(resume_from) else None)
        return BinaryJudge.load(resume_from, flag="--resume_from", **kw)
    return BinaryJudge.load(model_name_or_path, **kw)
