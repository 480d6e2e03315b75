"""The R2ec ("RRec") model (docs/rrec.md): one causal LM used two ways.

- LM head: writes the user's reasoning (sampled in training, greedy in evaluation), stopping at <answer>.
- Recommendation head: the final hidden state (after the final norm) at the last token of a sequence. Users:
  user prompt + reasoning ending in <answer>; items: item prompt with the assistant turn pre-filled with
  <answer> (prompters/rrec_prompter.py renders both).

score(u, v) = sim(u, v) / similarity_temperature with upstream's settings by default: similarity_type dot on
L2-normalised vectors (similarity_normalization), i.e. cosine, over temperature 0.02. Our checkpoints carry
these and the prompt settings in rrec_config.json (RRecSettings); a foreign (upstream) checkpoint has none and
gets upstream's defaults, which flags may override. A checkpoint is a full model or a PEFT adapter directory
(+ tokenizer + rrec_config.json).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from models.abstract_models import (
    AbstractRecModel,
    LoraSettings,
    apply_lora,
    attention_softcap,
    check_model_dir,
    is_adapter_dir,
    load_causal_lm,
    load_tokenizer,
    model_config,
    pad_left,
    pad_right,
    resolve_attn_implementation,
    resolve_device,
    resolve_dtype,
    save_lm,
)
from prompters import prompts
from prompters.rrec_prompter import DEFAULT_USER_WINDOW, check_model_type, model_type_of
from foundation.errors import SettingError, UserInputError
from foundation.files import atomic_write_text, read_json
from models.resolution import RREC_CONFIG_FILE  # noqa: F401 (one home: what a model directory holds)

SIMILARITY_TYPES = ("dot", "cosine", "L2")
UPSTREAM_MAX_NEW_TOKENS = 640


@dataclass
class RRecSettings:
    """How an RRec model is used: prompt rendering, reasoning length and the similarity (upstream's defaults).
    Saved as rrec_config.json in our checkpoints. repetition_penalty None = the model's generation_config."""

    model_type: str = "qwen"
    similarity_type: str = "dot"
    similarity_temperature: float = 0.02
    similarity_normalization: bool = True
    user_window_size: int = DEFAULT_USER_WINDOW
    max_new_tokens: int = UPSTREAM_MAX_NEW_TOKENS
    repetition_penalty: float | None = None
    emb_token: str = prompts.RREC_EMB_TOKEN
    emb_end_token: str = prompts.RREC_EMB_END_TOKEN
    item_rating_stats: bool = True  # the item prompt shows average_rating / rating_number (upstream's)

    @classmethod
    def load(cls, path: str | Path) -> "RRecSettings | None":
        """The rrec_config.json of a directory, or None when it has none (a foreign checkpoint)."""
        f = Path(path) / RREC_CONFIG_FILE
        if not f.is_file():
            return None
        try:
            data = read_json(f)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise UserInputError(f"{f}: not valid JSON ({e})")
        if "normalize" in data and "similarity_normalization" not in data:  # our earlier name
            data["similarity_normalization"] = data["normalize"]
            data.setdefault("similarity_temperature", 1.0)  # ... which came with the raw inner product
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def with_overrides(self, **overrides: Any) -> "RRecSettings":
        """A copy with every override that is not None applied."""
        data = asdict(self)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return RRecSettings(**data)

    def validate(self) -> "RRecSettings":
        check_model_type(self.model_type)
        if self.similarity_type not in SIMILARITY_TYPES:
            raise SettingError("similarity_type", repr(self.similarity_type),
                               f"must be one of {'|'.join(SIMILARITY_TYPES)}")
        if not self.similarity_temperature > 0:
            raise SettingError("similarity_temperature", self.similarity_temperature, "must be > 0")
        if self.user_window_size < 1:
            raise SettingError("user_window_size", self.user_window_size, "must be >= 1")
        if self.max_new_tokens < 0:
            raise SettingError("max_new_tokens", self.max_new_tokens, "must be >= 0")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise SettingError("repetition_penalty", self.repetition_penalty, "must be > 0")
        if not isinstance(self.item_rating_stats, bool):
            raise SettingError("item_rating_stats", repr(self.item_rating_stats), "must be true or false")
        return self

    def similarity(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, H] x [N, H] -> float32 [B, N] scores, already divided by the temperature (upstream's Similarity)."""
        u, v = users.float(), items.float()
        if self.similarity_normalization or self.similarity_type == "cosine":
            u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
        if self.similarity_type == "L2":
            s = -torch.cdist(u, v)
        else:
            s = u @ v.T
        return s / self.similarity_temperature


def model_family(path: Path, base_model: str | None) -> str | None:
    """config.json's model_type of a model dir, or of an adapter's base model."""
    return model_config(path, base_model).get("model_type")


class RRecModel(AbstractRecModel):
    """Causal LM + recommendation head (its last hidden state). One nn.Module: accelerate prepares it once."""

    def __init__(self, lm, tokenizer, settings: RRecSettings, forward_batch_size: int = 32) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.settings = settings.validate()
        self.forward_batch_size = max(1, int(forward_batch_size))  # sequences per forward when no batch_size is given
        self.path = ""
        self.attn_implementation = getattr(lm.config, "_attn_implementation", None) or "sdpa"

    @classmethod
    def load(cls, model_name_or_path: str, device: str | None = "auto", dtype: str | torch.dtype | None = "auto",
             attn_implementation: str | None = "auto", base_model: str | None = None,
             lora: LoraSettings | None = None, trainable: bool = False, gradient_checkpointing: bool = False,
             forward_batch_size: int = 32, trust_remote_code: bool = False, settings: dict | None = None,
             merge_adapter: bool = False, flag: str = "--model_name_or_path") -> "RRecModel":
        """A model from a full-model or PEFT adapter directory (ours or upstream's).

        dtype: a torch dtype (trainers: torch.float32, fp32 master weights) or auto|bf16|fp16|fp32.
        lora: wrap a full model in new LoRA adapters; an adapter directory is loaded trainable if `trainable`.
        settings: overrides of the directory's rrec_config.json (or of upstream's defaults when it has none).
        merge_adapter: fold an adapter directory's LoRA weights into the base (inference: no adapter overhead)."""
        path = check_model_dir(model_name_or_path, flag=flag)
        dev = resolve_device(device)
        compute = resolve_dtype(None if isinstance(dtype, torch.dtype) else dtype, dev)
        weights = dtype if isinstance(dtype, torch.dtype) else compute
        attn = resolve_attn_implementation(attn_implementation, dev, compute if dev.type == "cuda" else weights,
                                           softcap=attention_softcap(path, base_model))
        saved = RRecSettings.load(path)
        if saved is None:
            saved = RRecSettings(model_type=model_type_of(model_family(path, base_model)))
        tok = load_tokenizer(path, trust_remote_code, flag=flag)
        merge = merge_adapter and not trainable and is_adapter_dir(path)
        # merged in fp32, then cast: in bf16 the small LoRA deltas would be rounded away
        lm = load_causal_lm(path, dev, torch.float32 if merge else weights, attn, trust_remote_code,
                            base_model=base_model, adapter_trainable=trainable, merge_adapter=merge, flag=flag)
        if merge:
            lm = lm.to(weights)
        if lora is not None:
            if is_adapter_dir(path):
                raise UserInputError(f"{flag} {model_name_or_path}: already a LoRA adapter; resume it with "
                                     "--resume_from, or start from its base model")
            lm = apply_lora(lm, lora)
        model = cls(lm, tok, saved.with_overrides(**(settings or {})), forward_batch_size=forward_batch_size)
        model.path = str(path)
        model.attn_implementation = attn
        if gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def repetition_penalty(self) -> float:
        """The settings' value, else the model's generation_config.json (upstream passes it to vLLM), else 1."""
        if self.settings.repetition_penalty is not None:
            return float(self.settings.repetition_penalty)
        gc = getattr(self.base_lm(), "generation_config", None)
        value = getattr(gc, "repetition_penalty", None)
        return float(value) if value else 1.0

    # ---- the one forward -----------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                logprob_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Right-padded batch -> (h_last [N, H] float32, token log-probs).

        h_last is the final hidden state at each row's last real token. With logprob_mask [N, L] (True where a
        token's log-probability is wanted, never at position 0) it also returns log p(input_ids[mask] | prefix)
        as a flat tensor in row-major order; the LM head runs only on those positions (vocabularies are large),
        followed by the model's final logit soft-capping when its config has one (Gemma-2: 30), so they are the
        log-probs of the distribution the reasoning is sampled from, as upstream's causal-LM forward gives them.
        Training passes users and items through this single call so DDP sees one forward per micro-batch."""
        h = self.backbone()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(1) - 1
        rows = torch.arange(h.shape[0], device=h.device)
        emb = h[rows, last].float()
        logps = None
        if logprob_mask is not None:
            pred_mask = logprob_mask[:, 1:]  # the token at position t is predicted by the hidden state at t-1
            logits = self.output_logits(h[:, :-1][pred_mask])
            targets = input_ids[:, 1:][pred_mask]
            logps = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return emb, logps

    @torch.no_grad()
    def embed_sequences(self, seqs: Sequence[Sequence[int]], batch_size: int | None = None) -> torch.Tensor:
        """Recommendation-head vectors of token sequences, batch_size (default forward_batch_size) per forward, without
        gradients. [N, H] float32."""
        bs = batch_size or self.forward_batch_size
        out = []
        for i in range(0, len(seqs), bs):
            ids, mask = pad_right(seqs[i:i + bs], self.tokenizer.pad_token_id)
            emb, _ = self(ids.to(self.device), mask.to(self.device))
            out.append(emb)
        if not out:
            return torch.zeros((0, self.base_lm().config.hidden_size), device=self.device)
        return torch.cat(out)

    def similarity(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.settings.similarity(users, items)

    # ---- reasoning -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate_reasoning(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, do_sample: bool = False,
                           temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0,
                           stop_token_ids: Sequence[int] = (), num_return_sequences: int = 1,
                           batch_size: int | None = None) -> tuple[list[str], list[int]]:
        """Reasoning texts (special tokens dropped) and their generated token counts, num_return_sequences
        consecutive ones per prompt. Generation stops at the <answer> string, an end token or max_new_tokens;
        every sampling setting is passed explicitly (none comes from the model's generation_config) except the
        repetition penalty, which upstream takes from it (RRecSettings.repetition_penalty overrides)."""
        G = int(num_return_sequences)
        n = len(prompt_ids) * G
        if max_new_tokens <= 0:
            return [""] * n, [0] * n
        from transformers import GenerationConfig

        pad = self.tokenizer.pad_token_id
        gen_cfg = GenerationConfig(
            max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample), num_return_sequences=G,
            temperature=float(temperature) if do_sample else 1.0, top_k=int(top_k) if do_sample else None,
            top_p=float(top_p) if do_sample else 1.0, repetition_penalty=self.repetition_penalty,
            eos_token_id=sorted({int(t) for t in stop_token_ids} | {self.tokenizer.eos_token_id}),
            pad_token_id=pad, stop_strings=[self.settings.emb_token])
        bs = max(1, (batch_size or self.forward_batch_size) // G)
        texts: list[str] = []
        counts: list[int] = []
        was_training = self.training
        self.eval()
        try:
            for i in range(0, len(prompt_ids), bs):
                ids, mask = pad_left(prompt_ids[i:i + bs], pad)
                out = self.lm.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                       generation_config=gen_cfg, tokenizer=self.tokenizer)
                for row in out[:, ids.shape[1]:].tolist():
                    n_tok = len(row)
                    while n_tok and row[n_tok - 1] == pad:  # right padding after an early stop
                        n_tok -= 1
                    counts.append(n_tok)
                    texts.append(self.tokenizer.decode(row[:n_tok], skip_special_tokens=True))
        finally:
            if was_training:
                self.train()
        return texts, counts

    # ---- persistence ---------------------------------------------------------------------------
    def saved_settings(self) -> RRecSettings:
        """The settings as written to a checkpoint: the repetition penalty resolved (adapters carry no
        generation_config.json)."""
        return self.settings.with_overrides(repetition_penalty=self.repetition_penalty)

    def save(self, out_dir: str | Path, merge_adapter: bool = False, state_dict: dict | None = None) -> None:
        """LM (full model, or the adapter; merged with merge_adapter), tokenizer and rrec_config.json."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_lm(self.lm, out_dir, merge_adapter=merge_adapter, state_dict=state_dict)
        self.tokenizer.save_pretrained(out_dir)
        atomic_write_text(out_dir / RREC_CONFIG_FILE, json.dumps(asdict(self.saved_settings()), indent=1))
