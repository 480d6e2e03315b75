"""The R2ec ("RRec") dual-head model (shared/RRec.md): one causal LM used two ways.

- LM head: writes the user's reasoning (sampled in training, greedy in evaluation).
- Recommendation head: the final hidden state (after the final norm) at the last real token of a
  sequence. For a user: user prompt + generated reasoning; for an item: its item prompt, no generation.

score(u, v) = <h_u, h_v> (optionally on L2-normalised vectors); softmaxes over items divide the scores
by `similarity_temperature`. A checkpoint is a save_pretrained directory (model + tokenizer) plus
`rrec_config.json` with these settings.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from models.abstract_models import (  # noqa: F401
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
from prompters.rrec_prompter import RRecPrompter, check_model_type
from trainers.foundation.errors import UserInputError

RREC_CONFIG_FILE = "rrec_config.json"


@dataclass
class RRecConfig:
    """Settings of the recommendation head saved next to the weights."""

    model_type: str = "qwen"
    normalize: bool = False
    similarity_temperature: float = 1.0

    @classmethod
    def load(cls, path: Path) -> "RRecConfig | None":
        f = path / RREC_CONFIG_FILE
        if not f.is_file():
            return None
        try:
            data = json.loads(f.read_text())
        except ValueError as e:
            raise UserInputError(f"{f}: not valid JSON ({e})")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Rollouts:
    """Generated reasoning for a batch of prompts (one entry per sequence)."""

    prompt_ids: list[list[int]]
    reasoning_ids: list[list[int]]  # generated tokens up to and including the first stop token


class RRecModel(AbstractRecModel):
    """Causal LM + recommendation head (its last hidden state)."""

    def __init__(self, model_name_or_path: str, device: str | None = None, dtype: str | None = "auto",
                 attn_implementation: str | None = "auto", model_type: str | None = None,
                 normalize: bool | None = None, similarity_temperature: float | None = None,
                 gradient_checkpointing: bool = False, micro_batch_size: int = 16,
                 trust_remote_code: bool = False, flag: str = "--model_name_or_path") -> None:
        super().__init__()
        path = check_model_dir(model_name_or_path, flag=flag)
        self.path = str(path)
        # Saved settings are the defaults; explicit arguments override them.
        cfg = RRecConfig.load(path) or RRecConfig()
        if model_type is not None:
            cfg.model_type = model_type
        if normalize is not None:
            cfg.normalize = bool(normalize)
        if similarity_temperature is not None:
            cfg.similarity_temperature = float(similarity_temperature)
        check_model_type(cfg.model_type)
        if cfg.similarity_temperature <= 0:
            raise UserInputError(f"--similarity_temperature {cfg.similarity_temperature}: must be > 0")
        self.rrec_config = cfg
        self.device_ = resolve_device(device)
        self.dtype_ = resolve_dtype(dtype, self.device_)
        self.attn_implementation = resolve_attn_implementation(attn_implementation, self.device_, self.dtype_)
        self.tokenizer = load_tokenizer(path, trust_remote_code)
        self.lm = load_causal_lm(path, self.device_, self.dtype_, self.attn_implementation, trust_remote_code)
        self.micro_batch_size = max(1, int(micro_batch_size))
        if gradient_checkpointing:
            self.enable_gradient_checkpointing()

    @property
    def device(self) -> torch.device:
        return self.device_

    @property
    def temperature(self) -> float:
        return self.rrec_config.similarity_temperature

    # ---- the one forward -----------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                logprob_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Right-padded batch -> (h_last [N, H] float32, token log-probs).

        h_last is the hidden state at each row's last real token (normalised if configured).
        With logprob_mask [N, L] (True where a token's log-probability is wanted, never at position 0),
        also returns log p(input_ids[mask] | prefix) as a flat tensor in row-major order; the LM head
        runs only on those positions (the vocabulary can be large).
        Training passes users and items through this single call so DDP sees one forward per step.
        """
        h = self.backbone()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(1) - 1
        rows = torch.arange(h.shape[0], device=h.device)
        emb = h[rows, last].float()
        if self.rrec_config.normalize:
            emb = F.normalize(emb, dim=-1)
        logps = None
        if logprob_mask is not None:
            # the token at position t is predicted by the hidden state at t-1
            pred_mask = logprob_mask[:, 1:]
            hs = h[:, :-1][pred_mask]
            logits = self.lm.get_output_embeddings()(hs).float()
            targets = input_ids[:, 1:][pred_mask]
            logps = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return emb, logps

    def embed_sequences(self, seqs: Sequence[Sequence[int]], grad: bool = False,
                        batch_size: int | None = None) -> torch.Tensor:
        """Recommendation-head vectors of token sequences, in micro-batches. [N, H] float32."""
        bs = batch_size or self.micro_batch_size
        out = []
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            for i in range(0, len(seqs), bs):
                ids, mask = pad_right(seqs[i:i + bs], self.tokenizer.pad_token_id)
                emb, _ = self(ids.to(self.device), mask.to(self.device))
                out.append(emb)
        if not out:
            return torch.zeros((0, self.lm.config.hidden_size), device=self.device)
        return torch.cat(out)

    # ---- users and items -----------------------------------------------------------------------
    def encode_items(self, item_ids: Sequence[int], prompter: RRecPrompter, batch_size: int | None = None,
                     grad: bool = False, progress: bool = False) -> torch.Tensor:
        """Item vectors from their item prompts (no generation). [N, H]."""
        seqs = [prompter.item_ids(int(i)) for i in item_ids]
        if not progress:
            return self.embed_sequences(seqs, grad=grad, batch_size=batch_size)
        from tqdm.auto import tqdm

        bs = batch_size or self.micro_batch_size
        chunks = []
        for i in tqdm(range(0, len(seqs), bs), desc="item embeddings", unit="batch", dynamic_ncols=True):
            chunks.append(self.embed_sequences(seqs[i:i + bs], grad=grad, batch_size=bs))
        return torch.cat(chunks)

    def encode_users(self, prompt_ids: Sequence[Sequence[int]], reasoning_ids: Sequence[Sequence[int]],
                     grad: bool = False, batch_size: int | None = None) -> torch.Tensor:
        """User vectors after the reasoning: the last hidden state of prompt + reasoning. [B, H]."""
        seqs = [list(p) + list(r) for p, r in zip(prompt_ids, reasoning_ids)]
        return self.embed_sequences(seqs, grad=grad, batch_size=batch_size)

    def scores(self, h_users: torch.Tensor, h_items: torch.Tensor) -> torch.Tensor:
        """Inner products [B, N] (not divided by the temperature)."""
        return h_users.float() @ h_items.float().T

    @torch.no_grad()
    def generate_reasoning(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, do_sample: bool = False,
                           temperature: float = 1.0, top_k: int = 50, stop_token_ids: Sequence[int] = (),
                           num_return_sequences: int = 1, batch_size: int | None = None) -> Rollouts:
        """Generate reasoning after each prompt (greedy or sampled). With num_return_sequences G the output
        holds G consecutive rollouts per prompt. max_new_tokens 0 gives empty reasoning."""
        G = int(num_return_sequences)
        prompts_rep = [list(p) for p in prompt_ids for _ in range(G)]
        if max_new_tokens <= 0:
            return Rollouts(prompts_rep, [[] for _ in prompts_rep])
        stop = set(int(s) for s in stop_token_ids) | {self.tokenizer.eos_token_id}
        stop.discard(None)
        pad = self.tokenizer.pad_token_id
        bs = batch_size or self.micro_batch_size
        was_training = self.training
        self.eval()
        gens: list[list[int]] = []
        try:
            for i in range(0, len(prompts_rep), bs):
                ids, mask = pad_left(prompts_rep[i:i + bs], pad)
                L = ids.shape[1]
                out = self.lm.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    max_new_tokens=int(max_new_tokens), do_sample=do_sample,
                    temperature=float(temperature) if do_sample else None,
                    top_k=int(top_k) if do_sample else None, top_p=None,
                    eos_token_id=sorted(stop), pad_token_id=pad,
                )
                for row in out[:, L:].tolist():
                    kept: list[int] = []
                    for t in row:
                        kept.append(t)
                        if t in stop:  # keep the stop token: ending is a decision of the policy
                            break
                    gens.append(kept)
        finally:
            if was_training:
                self.train()
        return Rollouts(prompts_rep, gens)

    def decode_reasoning(self, reasoning_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(reasoning_ids), skip_special_tokens=True)

    # ---- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        (out_dir / RREC_CONFIG_FILE).write_text(json.dumps(asdict(self.rrec_config), indent=1))


def load_rrec_model(checkpoint_path: str, flag: str = "--checkpoint_path", **kw) -> RRecModel:
    """An RRec checkpoint, or a base HF model (then the head settings are the defaults/arguments)."""
    return RRecModel(checkpoint_path, flag=flag, **kw)
