"""Value types of the judge shared by its two scoring paths (models/qwen_models.py per prompt,
models/shared_prefix.py packed): how reasoning tokens are sampled, and what a scoring forward returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from foundation.errors import SettingError

# A token outside the top-k / top-p set gets this logit: probability exactly 0 in fp32, log-prob finite.
_EXCLUDED_LOGIT = -1e4


@dataclass(frozen=True)
class SamplingSettings:
    """How reasoning tokens are sampled, and therefore under which distribution their log-probs are computed:
    logits / temperature, then top-k, then top-p (HF's processor order). No repetition penalty or other
    processor from the model's generation_config is applied: the PPO ratio needs the exact distribution."""

    temperature: float = 1.0
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1 = off

    def warp(self, logits: torch.Tensor) -> torch.Tensor:
        """Float32 logits of the sampling distribution (excluded tokens at a large negative value)."""
        x = logits.float() / max(float(self.temperature), 1e-6)
        V = x.shape[-1]
        if self.top_k and 0 < self.top_k < V:
            kth = torch.topk(x, self.top_k, dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, _EXCLUDED_LOGIT)
        if self.top_p < 1.0:
            sorted_x, order = torch.sort(x, dim=-1, descending=False)
            cum = torch.softmax(sorted_x, -1).cumsum(-1)
            drop_sorted = cum <= (1.0 - self.top_p)
            drop_sorted[..., -1] = False  # always keep the most likely token
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            x = x.masked_fill(drop, _EXCLUDED_LOGIT)
        return x

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One token per row of logits [..., V] from the sampling distribution. torch.multinomial's own one-sample
        algorithm (exponential noise q, argmax of p / q): the same tokens as torch.multinomial(p, 1) for the same
        generator state, without its host-side validity check, so a decode step never waits for the GPU and can
        be captured in a CUDA graph."""
        p = torch.softmax(self.warp(logits), -1)
        q = torch.empty_like(p).exponential_(1, generator=generator)
        return (p / q).argmax(-1)

    def validate(self) -> "SamplingSettings":
        """The settings as a run records them (gen_temperature, gen_top_k, gen_top_p) name what is wrong."""
        if not self.temperature > 0:
            raise SettingError("gen_temperature", self.temperature, "must be > 0")
        if self.top_k < 0:
            raise SettingError("gen_top_k", self.top_k, "must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise SettingError("gen_top_p", self.top_p, "must be in (0, 1]")
        return self


@dataclass
class ScoreOutput:
    scores: torch.Tensor  # [B, K] float32: logit(Yes) - logit(No)
    values: torch.Tensor | None = None  # [B] critic value at the end of the shared prefix
    token_logprobs: torch.Tensor | None = None  # [B, K] summed log-probs of reasoning tokens
