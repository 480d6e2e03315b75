"""Shared model plumbing: device/dtype/attention choice, loading full models and PEFT adapters, LoRA, saving.

Precision (docs/training.md): training keeps fp32 master weights and computes in bf16 under autocast
(accelerate's mixed precision); `load_causal_lm(..., dtype=torch.float32)` is what trainers load. Inference
loads in bf16 on CUDA (`--dtype auto`). Pure bf16 weights in training are an explicit opt-in of each trainer.

Attention (chosen once per run, `resolve_attn_implementation`): FlashAttention-2 takes no arbitrary 4D mask,
so a run that packs a user's K candidates into one sequence (`--scoring shared`) uses SDPA (or flex_attention)
for every forward of the run: rollout, update and the recompute of checkpointed layers all see the same kernel.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from paths import (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHT_FILES, HEADS_FILE, TOKENIZER_FILES,  # noqa: F401 (re-exported)
                   WEIGHT_FILES, resolve_model_path)
from foundation.distributed import resolve_device  # noqa: F401 (re-exported: models load on it)
from foundation.errors import SettingError, UserInputError
from foundation.files import read_json

ATTN_IMPLEMENTATIONS = ("auto", "prefix_split", "flash_attention_2", "sdpa", "flex_attention", "eager")
# Can run the packed shared-prefix layout (models/packed_attention.py): prefix_split and flex_attention with linear
# memory in K, sdpa and eager through the dense block mask (the reference).
MASK_CAPABLE_ATTN = ("prefix_split", "sdpa", "flex_attention", "eager")


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """auto -> bf16 on CUDA (fp16 if the GPU lacks bf16), fp32 on CPU."""
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in table:
        raise SettingError("dtype", repr(dtype), "must be auto|bf16|fp16|fp32")
    return table[dtype]


def flash_attn_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """FA2 needs CUDA, a 16-bit compute dtype (bf16 autocast counts) and the flash-attn package."""
    return (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and importlib.util.find_spec("flash_attn") is not None)


def resolve_attn_implementation(requested: str | None, device: torch.device, dtype: torch.dtype,
                                packed_mask: bool = False, softcap: float | None = None) -> str:
    """The run's one attention implementation (printed once per process when auto chose it).

    auto: prefix_split when the run packs each user's candidates (packed_mask, i.e. --scoring shared): linear
    memory in K and SDPA's fused kernels inside (tools/benchmark.py compares it with flex_attention and the dense
    mask); otherwise flash_attention_2 when usable, else sdpa. An explicit flash_attention_2 with packed_mask is
    refused: FA2 takes no block mask. A model that caps its attention logits (softcap: Gemma-2's
    attn_logit_softcapping, see attention_softcap) gets eager instead of SDPA-based kernels, which cannot apply it
    (FA2, when usable for a run without packing, applies it)."""
    if requested in (None, "", "auto"):
        if packed_mask and not softcap:
            impl, why = "prefix_split", "shared-prefix packing, linear memory in K"
        elif flash_attn_usable(device, dtype) and not packed_mask:
            impl, why = "flash_attention_2", "flash-attn installed, CUDA, 16-bit compute"
        elif softcap:
            impl, why = "eager", "the model caps its attention logits, which SDPA cannot apply"
        else:
            impl, why = "sdpa", "flash-attn not usable here"
        _announce(impl, why)
        requested = impl
    if requested not in ATTN_IMPLEMENTATIONS:
        raise SettingError("attn_implementation", repr(requested), f"must be {'|'.join(ATTN_IMPLEMENTATIONS)}")
    if softcap and requested in ("prefix_split", "sdpa"):
        raise SettingError("attn_implementation", requested, f"this model caps its attention logits "
                           f"(attn_logit_softcapping={softcap:g}), which SDPA-based kernels do not apply; use eager "
                           "(or flex_attention on CUDA)")
    if requested == "flash_attention_2":
        if packed_mask:
            raise SettingError("attn_implementation", requested, "cannot run shared-prefix scoring (FA2 takes no 4D "
                               "block mask); use prefix_split, flex_attention or sdpa, or naive scoring")
        if not flash_attn_usable(device, dtype):
            raise SettingError("attn_implementation", requested, "needs CUDA, bf16/fp16 and the flash-attn package "
                               "(pip install -r requirements-gpu.txt); use sdpa")
    if requested == "flex_attention" and packed_mask and device.type != "cuda":
        raise SettingError("attn_implementation", requested, "with shared-prefix scoring needs CUDA (inductor's CPU "
                           "flex kernel does not compile the packed block mask); use prefix_split")
    if requested == "prefix_split":
        from models.packed_attention import register_prefix_split

        register_prefix_split()
    return requested


@functools.lru_cache(maxsize=None)
def _announce(impl: str, why: str) -> None:
    import os
    import sys

    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"attention: {impl} (auto: {why})", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- directories
def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG_FILE).is_file()


def model_config(path: str | Path, base_model: str | None = None) -> dict:
    """config.json of a model directory, or of an adapter's base model; {} when it cannot be read (loading the
    model reports that with its own message)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file() and is_adapter_dir(path):
        try:
            cfg = adapter_base_path(path, base_model) / "config.json"
        except UserInputError:
            return {}
    try:
        data = read_json(cfg)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def attention_softcap(path: str | Path, base_model: str | None = None) -> float | None:
    """The model's attention-logit soft-capping (Gemma-2: 50), None when it has none."""
    cfg = model_config(path, base_model)
    value = cfg.get("attn_logit_softcapping", (cfg.get("text_config") or {}).get("attn_logit_softcapping"))
    return float(value) if value else None


def adapter_base_path(adapter_dir: str | Path, base_model: str | None = None,
                      flag: str = "--base_model_name_or_path") -> Path:
    """The base model of a PEFT adapter: base_model if given, else the adapter's recorded
    base_model_name_or_path (a directory or a name known to paths.py)."""
    if base_model:
        return Path(resolve_model_path(base_model, flag=flag))
    try:
        config = read_json(Path(adapter_dir) / ADAPTER_CONFIG_FILE)
    except (OSError, ValueError) as e:
        raise UserInputError(f"{adapter_dir}: {ADAPTER_CONFIG_FILE} is not valid JSON ({e})")
    recorded = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not isinstance(recorded, str):
        recorded = None
    if not recorded:
        raise UserInputError(f"{adapter_dir}: the adapter records no base model; pass {flag}")
    try:
        return Path(resolve_model_path(str(recorded), flag=flag))
    except UserInputError:
        raise UserInputError(f"{adapter_dir}: the adapter's base model {recorded!r} does not exist here; pass {flag} "
                             "with the base model directory")


def check_model_dir(path: str | Path, flag: str = "--model_name_or_path", need_tokenizer: bool = True) -> Path:
    """A local HF checkpoint directory (full model or PEFT adapter) with its tokenizer files, or a clear error."""
    p = Path(resolve_model_path(str(path), flag=flag))
    if not (p / "config.json").is_file() and not is_adapter_dir(p):
        raise UserInputError(f"{flag} {path}: no config.json (nor {ADAPTER_CONFIG_FILE}) in {p}; "
                             "not a saved transformers model or PEFT adapter")
    if need_tokenizer and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise UserInputError(f"{flag} {path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {p}; "
                             "copy the base model's tokenizer into it")
    if is_adapter_dir(p):
        if not any((p / f).is_file() for f in ADAPTER_WEIGHT_FILES):
            raise UserInputError(f"{flag} {path}: adapter directory without {' or '.join(ADAPTER_WEIGHT_FILES)}")
    elif not any((p / f).is_file() for f in WEIGHT_FILES):
        raise UserInputError(f"{flag} {path}: no model weights ({', '.join(WEIGHT_FILES)}) in {p}")
    return p


def _load_errors() -> tuple[type[BaseException], ...]:
    import pickle

    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError, pickle.UnpicklingError)


# What loading a damaged, truncated or foreign weight file raises (safetensors' error is no OSError).
LOAD_ERRORS = _load_errors()


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, flag: str = "--model_name_or_path"):
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_dir() and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise UserInputError(f"{flag} {path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {p}; "
                             "copy the base model's tokenizer into it")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as e:
        raise UserInputError(f"{flag} {path}: cannot load the tokenizer ({_first_line(e)})")
    # A tokenizer directory missing tokenizer.json or tokenizer_config.json can still "load": an empty vocabulary,
    # or no end-of-sequence token. Either would fail much later (or silently change the prompts).
    if not tok("Yes", add_special_tokens=False)["input_ids"]:
        raise UserInputError(f"{flag} {path}: the tokenizer encodes nothing (tokenizer.json missing or damaged?)")
    if tok.pad_token_id is None and tok.eos_token_id is None:
        raise UserInputError(f"{flag} {path}: the tokenizer has neither an end-of-sequence nor a padding token "
                             "(tokenizer_config.json missing or damaged?)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, device: torch.device, dtype: torch.dtype, attn_implementation: str,
                   trust_remote_code: bool = False, base_model: str | None = None, adapter_trainable: bool = False,
                   merge_adapter: bool = False, flag: str = "--model_name_or_path"):
    """A causal LM from a full model directory or a PEFT adapter directory (its base from `base_model` or the
    adapter's record). Adapters stay a PeftModel (trainable if adapter_trainable) unless merge_adapter."""
    from transformers import AutoModelForCausalLM

    src = adapter_base_path(path, base_model) if is_adapter_dir(path) else Path(path)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(src), dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
            output_loading_info=True)
    except LOAD_ERRORS as e:
        raise UserInputError(f"{flag} {src}: cannot load the model ({_first_line(e)}); the weights are damaged or "
                             "truncated, or not this architecture's")
    check_loaded_tensors(src, info.get("missing_keys", ()), info.get("unexpected_keys", ()),
                         [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())], flag)
    if is_adapter_dir(path):
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(path), is_trainable=adapter_trainable)
            missing, unexpected = adapter_key_problems(model, path)
        except LOAD_ERRORS as e:
            raise UserInputError(f"{flag} {path}: adapter does not fit base model {src}, or is damaged "
                                 f"({_first_line(e)})")
        check_loaded_tensors(Path(path), missing, unexpected, (), flag, adapter=True)
        if merge_adapter:
            model = model.merge_and_unload()
    return model.to(device)


def weight_file_of(model_dir: Path, tensor: str, adapter: bool = False) -> Path:
    """The file of model_dir that holds (or should hold) `tensor`: the shard a *.index.json maps it to, else the
    directory's weight file."""
    names = ADAPTER_WEIGHT_FILES if adapter else WEIGHT_FILES
    for name in names:
        f = model_dir / name
        if not f.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                weight_map = read_json(f).get("weight_map") or {}
                return model_dir / weight_map[tensor] if isinstance(weight_map.get(tensor), str) else f
            except (OSError, ValueError, AttributeError):
                return f
        return f
    return model_dir / names[0]


# Buffers some older checkpoints saved, which a model recomputes: never a reason to refuse a load.
BUFFER_SUFFIXES = (".inv_freq", ".masked_bias")


def check_loaded_tensors(model_dir: Path, missing, unexpected, mismatched, flag: str, adapter: bool = False,
                         file: Path | None = None) -> None:
    """A load must use every tensor of the files and find every tensor the model has: a missing one would run
    with transformers' (or peft's) random initialisation, an unexpected one means the files are another model's.
    One line naming the first such tensor and its file (tied weights such as an lm_head shared with the
    embeddings, and buffers such as rotary inv_freq, are never reported: transformers and peft leave them out).
    file: the one file all tensors come from (a value head's), instead of looking it up in model_dir."""
    # a tied lm_head is missing only because the embedding it shares is: name the embedding first
    missing = sorted(missing, key=lambda k: (k.startswith("lm_head"), k))
    unexpected, mismatched = sorted(unexpected), sorted(mismatched)
    unexpected = [k for k in unexpected if not k.endswith(BUFFER_SUFFIXES)]  # older saves kept these buffers
    if not (missing or unexpected or mismatched):
        return
    what = "adapter tensor" if adapter else "tensor"

    def where(name: str) -> Path:
        return file if file is not None else weight_file_of(model_dir, name, adapter)

    counts = ", ".join(f"{len(v)} {k}" for k, v in (("missing", missing), ("unexpected", unexpected),
                                                     ("of another shape", mismatched)) if v)
    if missing:
        name = missing[0]
        problem = f"{what} {name} is missing from {where(name)}"
    elif mismatched:
        name = mismatched[0]
        problem = f"{what} {name} in {where(name)} has another shape than the model's"
    else:
        name = unexpected[0]
        problem = f"{where(name)} holds {what} {name}, which this model does not have"
    raise UserInputError(f"{flag} {model_dir}: {problem} ({counts}); the weights are incomplete or another "
                         "model's, and loading them would leave tensors randomly initialised")


def adapter_key_problems(peft_model, adapter_dir: str | Path, adapter_name: str = "default") -> tuple[list, list]:
    """(missing, unexpected) adapter tensors of an adapter directory loaded into peft_model, as peft's own
    set_peft_model_state_dict reports them (PeftModel.from_pretrained only warns about missing ones and ignores
    unexpected ones). Loads the same weights again (adapters are small): nothing changes in the model."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    try:  # the tuner's key prefix ("lora_"), as peft's load_adapter filters the missing keys with it
        from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    except ImportError:  # pragma: no cover - older peft
        PEFT_TYPE_TO_PREFIX_MAPPING = {}
    weights = load_peft_weights(str(adapter_dir), device="cpu")
    result = set_peft_model_state_dict(peft_model, weights, adapter_name=adapter_name)
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(peft_model.peft_config[adapter_name].peft_type, "")
    missing = [k.replace(f".{adapter_name}.", ".", 1) for k in result.missing_keys  # as saved: no adapter name
               if prefix in k and adapter_name in k]  # the base model's weights are not the adapter's job
    return missing, list(result.unexpected_keys)


# ---------------------------------------------------------------------------------------------- LoRA
@dataclass
class LoraSettings:
    """peft LoraConfig fields the lora_r, lora_alpha, lora_dropout and lora_target_modules settings set."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])

    @classmethod
    def from_flags(cls, r: int, alpha: float, dropout: float, target_modules: str) -> "LoraSettings":
        mods = [m.strip() for m in str(target_modules).split(",") if m.strip()]
        if r < 1:
            raise SettingError("lora_r", r, "must be >= 1")
        if not 0 <= dropout < 1:
            raise SettingError("lora_dropout", dropout, "must be in [0, 1)")
        if not mods:
            raise SettingError("lora_target_modules", None, "give at least one module name, e.g. q_proj,v_proj")
        return cls(r=int(r), alpha=float(alpha), dropout=float(dropout), target_modules=mods)


def apply_lora(lm, settings: LoraSettings):
    """Wrap lm in trainable LoRA adapters (base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    present = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
    missing = [m for m in settings.target_modules if m not in present]
    if missing:
        raise SettingError("lora_target_modules", None, f"{missing} are not module names of this model "
                           f"(e.g. {sorted(x for x in present if x.endswith('proj'))[:8]})")
    cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                     target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(lm, cfg)


def is_peft_model(lm) -> bool:
    return hasattr(lm, "peft_config") and hasattr(lm, "disable_adapter")


def portable_model_ref(recorded: str | None) -> str | None:
    """A base-model reference that resolves from any working directory: a relative directory becomes absolute; a
    name paths.py resolves (or an absolute path) stays as it is."""
    if recorded and not Path(recorded).is_absolute() and Path(recorded).is_dir():
        return str(Path(recorded).resolve())
    return recorded


def save_lm(lm, out_dir: str | Path, merge_adapter: bool = False, state_dict: dict | None = None) -> None:
    """save_pretrained: a full model, or (LoRA) the adapter only unless merge_adapter writes the merged model. An
    adapter records its base portably (portable_model_ref), so plain peft (AutoPeftModelForCausalLM) loads it from
    any working directory."""
    out_dir = Path(out_dir)
    if is_peft_model(lm) and not merge_adapter:
        for cfg in lm.peft_config.values():
            cfg.base_model_name_or_path = portable_model_ref(cfg.base_model_name_or_path)
    if is_peft_model(lm) and merge_adapter:
        import copy

        merged = copy.deepcopy(lm).merge_and_unload()
        merged.save_pretrained(out_dir)
        return
    if state_dict is not None:
        lm.save_pretrained(out_dir, state_dict=state_dict)
    else:
        lm.save_pretrained(out_dir)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: real tokens keep positions 0..len-1 (for forward passes)."""
    return _pad(seqs, pad_id, max(1, max(len(s) for s in seqs)), left=False)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask [N, L] (L = longest sequence): what `generate` needs, so that new
    tokens start at column L for every row."""
    return _pad(seqs, pad_id, max(len(s) for s in seqs), left=True)


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, L: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Filled in numpy on the host (no tensor op per sequence), then one tensor each."""
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    col = np.arange(L)[None, :]
    mask = col >= (L - lens)[:, None] if left else col < lens[:, None]
    ids = np.full((len(seqs), L), pad_id, dtype=np.int64)
    ids[mask] = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lens.sum()))
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def disable_dropout(module: torch.nn.Module) -> None:
    """RL compares log-probs of the same model before and after updates: dropout would make the first-epoch
    ratio differ from 1 (and break bit-exact resume), so every dropout is set to 0."""
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    cfg = getattr(getattr(module, "lm", None), "config", None)
    if cfg is not None:
        for k in ("attention_dropout", "hidden_dropout", "dropout"):
            if hasattr(cfg, k):
                setattr(cfg, k, 0.0)


def gathered_parameters(*params: torch.Tensor | None):
    """Context in which parameters partitioned by DeepSpeed ZeRO-3 (numel 0 outside their module's forward) hold
    their full values, for code that reads a weight directly; a no-op for every other parameter."""
    held = [p for p in params if p is not None]
    if any(p.numel() == 0 and hasattr(p, "ds_id") for p in held):
        import deepspeed

        return deepspeed.zero.GatheredParameters(held, modifier_rank=None)
    return contextlib.nullcontext()


def fp32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias in fp32 whatever the dtypes of x and the weights, outside any autocast (which would cast
    the product back to bf16). For the judge's scores and the critic's values: numbers that are ranked, enter the
    PL log-prob or every advantage, where bf16's ~0.4% rounding makes close candidates tie."""
    with gathered_parameters(weight, bias), torch.autocast(x.device.type, enabled=False):
        return torch.nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float())


class AbstractRecModel(torch.nn.Module):
    """Base of our recommenders: a causal LM backbone (`self.lm`, possibly a PEFT model) plus task heads."""

    HEADS_FILE = HEADS_FILE

    # What accelerate's FSDP2 preparation asks of the module it wraps (here the judge/RRec model, not the LM):
    # the decoder-layer classes to shard one by one, and re-tying embeddings after its move to the meta device.
    @property
    def _no_split_modules(self):
        return getattr(self.base_lm(), "_no_split_modules", None)

    def tie_weights(self, **kwargs) -> None:
        self.base_lm().tie_weights(**kwargs)

    def base_lm(self):
        """The transformers model under any PEFT wrapper."""
        lm = self.lm
        if is_peft_model(lm):
            lm = lm.get_base_model()
        return lm

    def backbone(self):
        """The transformer body returning hidden states (no LM head); LoRA layers inside it stay active."""
        lm = self.base_lm()
        return lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model

    def output_head(self) -> torch.nn.Module:
        return self.base_lm().get_output_embeddings()

    def output_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 next-token logits from final hidden states h [..., H], with the model's final logit soft-capping
        when its config has one (Gemma-2: 30), as the causal LM's own forward and HF generate compute them: the one
        place every sampled or scored token distribution (reasoning log-probs, decoding, RRec) comes from."""
        logits = self.output_head()(h).float()
        cap = getattr(self.base_lm().config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def lm_head_weight(self) -> torch.Tensor:
        return self.output_head().weight

    def enable_gradient_checkpointing(self) -> None:
        lm = self.base_lm()
        # transformers 5.x renamed it (the old name warns); 4.x only has gradient_checkpointing_enable.
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.config.use_cache = False
        if is_peft_model(self.lm) and hasattr(lm, "enable_input_require_grads"):
            lm.enable_input_require_grads()  # frozen embeddings + checkpointing: keep a grad path to the adapters

    def lora_settings_dict(self) -> dict | None:
        if not is_peft_model(self.lm):
            return None
        cfg = self.lm.peft_config["default"]
        return {"r": cfg.r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                "target_modules": sorted(cfg.target_modules)}

