"""Evaluating the binary judge (docs/evaluation.md, docs/training.md): used by test.py and by train.py's periodic
validation.

JudgeRankSettings -> how the judge ranks (greedy or a seeded PL sample, scoring path, reasoning, batch size)
rank_examples     -> score (example, candidates) items with the judge; rank by those settings
evaluate_split    -> build_eval_items (trainers/evaluation/protocol.py) + rank_examples + metrics in one call
JudgeRanker       -> the judge as trainers/evaluation/runner.py's ranker (test.py)

Each sample is a dict of the result JSON schema (trainers/evaluation/results.py).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from foundation.errors import SettingError
from foundation.seeding import derived_seed
from trainers.evaluation.metrics import eval_ks, metrics_from_ranks, rank_from_ranking, ranking_from_scores, target_rank
from trainers.evaluation.options import GEN_MODES, JUDGE_MODES as MODES
from trainers.evaluation.protocol import Item, build_eval_items
from trainers.evaluation.runner import Ranker, process_device
from trainers.rl.pl import gumbel_topk_sample


@dataclass(frozen=True)
class JudgeRankSettings:
    """How rank_examples ranks. greedy: candidates by descending score, ties against the target. rollout: one
    Gumbel-top-K sample from PL(scores / temperature), seeded per interaction id. In reasoning mode
    (max_new_tokens > 0) the judge first generates a reasoning text per candidate: greedy decoding in greedy mode,
    sampled with `sampling` (models.judge_types.SamplingSettings: the training run's gen_temperature/gen_top_k/
    gen_top_p) in rollout mode; gen_mode says which texts a sample keeps. print_every_text: show every Nth sample
    (0 = never)."""

    mode: str = "greedy"
    scoring: str = "naive"
    batch_size: int = 8
    max_new_tokens: int = 0
    temperature: float = 1.0
    seed: int = 0
    gen_mode: str = "top1"
    sampling: Any = None
    progress: bool = True
    print_every_text: int = 0

    def validate(self) -> "JudgeRankSettings":
        if self.mode not in MODES:
            raise SettingError("mode", repr(self.mode), f"must be one of {'|'.join(MODES)}")
        if self.gen_mode not in GEN_MODES:
            raise SettingError("gen_mode", repr(self.gen_mode), f"must be one of {'|'.join(GEN_MODES)}")
        if self.batch_size < 1:
            raise SettingError("batch_size", self.batch_size, "must be >= 1")
        if not self.temperature > 0:
            raise SettingError("temperature", self.temperature, "must be > 0")
        return self

    def replace(self, **changes: Any) -> "JudgeRankSettings":
        return replace(self, **changes)


def _chunks(xs: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


def _reasoning_outputs(prompt, scores: Sequence[float], ranking_idx: Sequence[int], tokenizer, gen_mode: str,
                       seed: int, iid: int) -> dict:
    """The generated reasoning texts to keep for one user: top-ranked candidate, a random one, or all."""
    if not prompt.reasoning_spans:
        return {}
    K = len(prompt.candidates)
    if gen_mode == "top1":
        keep = [int(ranking_idx[0])]
    elif gen_mode == "random":
        keep = [random.Random(derived_seed(seed, iid, 3)).randrange(K)]
    else:
        keep = list(range(K))
    out = []
    for k in keep:
        a, b = prompt.reasoning_spans[k]
        ids = prompt.suffix_ids[k][a:b]
        out.append({"item_id": int(prompt.candidates[k]), "score": float(scores[k]), "n_tokens": int(b - a),
                    "text": tokenizer.decode(ids)})
    return {"reasoning": out, "reasoning_tokens": [int(b - a) for a, b in prompt.reasoning_spans]}


def format_example(sample: dict, ex: dict, titles: Sequence[str], top: int = 5) -> str:
    """A human-readable view of one ranked sample (history tail, top of the ranking, target, reasoning)."""
    hist = [titles[int(i)] for i in ex["history_item_id"]][-3:]
    lines = [f"--- interaction {sample['interaction_id']} (user {sample['user_id']})",
             f"  history (last {len(hist)}): " + " | ".join(hist),
             f"  target: {titles[int(sample['target_item_id'])]}  -> rank {sample['target_rank']}/"
             f"{len(sample['candidates'])}"]
    score_of = dict(zip(sample["candidates"], sample["scores"]))
    for n, c in enumerate(sample["ranking"][:top], 1):
        mark = " *" if c == sample["target_item_id"] else ""
        lines.append(f"  {n}. [{score_of[c]:+.3f}] {titles[int(c)]}{mark}")
    for r in sample.get("outputs", {}).get("reasoning", []):
        lines.append(f"  reasoning for {titles[int(r['item_id'])]!r}: {r['text']!r}")
    return "\n".join(lines)


def rank_examples(judge, prompter, items: Sequence[Item], settings: JudgeRankSettings = JudgeRankSettings(),
                  on_sample: Callable[[dict], Any] | None = None, forward: Callable | None = None) -> list[dict]:
    """Score and rank the candidates of each item (JudgeRankSettings says how); return result-JSON samples in the
    items' order, each also handed to on_sample. `forward` is the callable that scores (default: the judge
    itself; a trainer passes its wrapped model so DDP/FSDP see the forward)."""
    import torch
    from tqdm.auto import tqdm

    st = settings.validate()
    mode, scoring, batch_size, max_new_tokens = st.mode, st.scoring, st.batch_size, st.max_new_tokens
    seed, gen_mode, print_every_text = st.seed, st.gen_mode, st.print_every_text
    if bool(getattr(prompter, "reasoning", max_new_tokens > 0)) != (max_new_tokens > 0):
        # The prompt's instruction (answer directly vs think first) must match how we score it.
        raise ValueError("prompter.reasoning must be True exactly when max_new_tokens > 0")

    titles = getattr(prompter, "item_rows", None)
    titles = [r["title"] for r in titles] if titles is not None else None
    was_training = getattr(judge, "training", False)
    if hasattr(judge, "eval"):
        judge.eval()
    samples: list[dict] = []
    bar = tqdm(total=len(items), desc=f"eval ({mode})", unit="user", disable=not st.progress, dynamic_ncols=True)
    try:
        for batch in _chunks(list(items), batch_size):
            prompts = [prompter.build(ex, cands) for ex, cands in batch]
            with torch.no_grad():
                if max_new_tokens > 0:
                    # Generation randomness is seeded per batch from its first interaction so reruns repeat.
                    torch.manual_seed(derived_seed(seed, int(batch[0][0]["interaction_id"]), 2))
                    prompts = judge.generate_reasoning(prompts, max_new_tokens, do_sample=(mode == "rollout"),
                                                       sampling=st.sampling, scoring=scoring)
                scores = (forward or judge)(prompts, scoring=scoring).scores.float().cpu()
            for (ex, cands), p, s in zip(batch, prompts, scores):
                iid, target = int(ex["interaction_id"]), int(ex["item_id"])
                s_list = [float(x) for x in s.tolist()]
                t_idx = cands.index(target)
                if mode == "greedy":
                    ranking = ranking_from_scores(cands, s_list, target)
                    rank = target_rank(s_list, t_idx)
                else:
                    g = torch.Generator().manual_seed(derived_seed(seed, iid, 1))
                    order = gumbel_topk_sample(s.double(), temperature=st.temperature, generator=g).tolist()
                    ranking = [int(cands[i]) for i in order]
                    rank = rank_from_ranking(ranking, target)
                ranking_idx = [cands.index(c) for c in ranking]
                sample = {
                    "interaction_id": iid, "user_id": ex["user_id"], "target_item_id": target,
                    "candidates": [int(c) for c in cands], "scores": s_list, "ranking": ranking,
                    "target_rank": int(rank),
                    "outputs": _reasoning_outputs(p, s_list, ranking_idx, prompter.tokenizer, gen_mode, seed, iid),
                }
                samples.append(sample)
                if on_sample is not None:
                    on_sample(sample)
                if print_every_text and titles is not None and len(samples) % print_every_text == 1 % print_every_text:
                    bar.write(format_example(sample, ex, titles))
                bar.update(1)
            ranks = [x["target_rank"] for x in samples]
            bar.set_postfix(NDCG10=f"{metrics_from_ranks(ranks, (10,))['NDCG@10']:.3f}")
    finally:
        bar.close()
        if was_training and hasattr(judge, "train"):
            judge.train()
    return samples


def evaluate_split(judge, prompter, dataset, split: str, num_samples: int | None, K: int, K_eval: int | None,
                   seed: int, settings: JudgeRankSettings | None = None, *, rank: int = 0,
                   world_size: int = 1) -> tuple[list[dict], dict]:
    """Evaluate num_samples examples of a split, ranked with `settings` (its seed replaced by `seed`); metrics are
    NDCG/HR@{1,5,10,K_eval} and MRR of the model.

    With world_size > 1 (DDP validation) this process takes items[rank::world_size] of the same seeded list and
    the metrics are over its shard only: gather the samples' target_rank (or weight by metrics["n"]) to combine.
    """
    items = build_eval_items(dataset, split, num_samples, K, seed)[rank::world_size]
    samples = rank_examples(judge, prompter, items, (settings or JudgeRankSettings()).replace(seed=seed))
    return samples, metrics_from_ranks([s["target_rank"] for s in samples], eval_ks(K_eval))


class JudgeRanker(Ranker):
    """The binary judge (a base model, a train.py checkpoint or a final/ model) as the runner's ranker: test.py."""

    def __init__(self, opts, checkpoint: str | None, item_rows) -> None:
        """opts: trainers.evaluation.options.JudgeEvalOptions (validated); the ranking and sampling settings are
        checked here, before any model or result file is touched."""
        from models.judge_types import SamplingSettings

        self.opts, self.checkpoint, self.item_rows = opts, checkpoint, item_rows
        sampling = SamplingSettings(opts.gen_temperature, opts.gen_top_k, opts.gen_top_p).validate()
        self.settings = JudgeRankSettings(
            mode=opts.mode, scoring=opts.scoring, batch_size=opts.batch_size, max_new_tokens=opts.max_new_tokens,
            temperature=opts.temperature, seed=opts.seed, gen_mode=opts.gen_mode, sampling=sampling,
            progress=not opts.no_progress, print_every_text=opts.print_every_text).validate()
        self.name = f"model ({opts.mode})" if not checkpoint else f"{Path(checkpoint).name} ({opts.mode})"

    def load(self, mine: list[Item], state):
        """The judge and its prompter (only on a process with items to rank)."""
        if not mine:
            return None
        from models.qwen_models import load_judge_from_checkpoint
        from prompters.binary_prompter import BinaryPrompter

        o = self.opts
        judge = load_judge_from_checkpoint(o.model_name_or_path, resume_from=self.checkpoint,
                                           device=process_device(state, o.device), dtype=o.dtype,
                                           attn_implementation=o.attn_implementation,
                                           packed_mask=o.scoring == "shared", trust_remote_code=o.trust_remote_code,
                                           scoring_chunk_size=o.scoring_chunk_size,
                                           generation_batch_rows=o.gen_batch_size)
        prompter = BinaryPrompter(judge.tokenizer, self.item_rows, dataset_type=o.dataset_type,
                                  max_len_per_item=o.max_len_per_item, user_window_size=o.user_window_size,
                                  template_file=o.prompt_template, reasoning=o.max_new_tokens > 0)
        return judge, prompter

    def rank(self, loaded, mine: list[Item], on_sample, state) -> None:
        judge, prompter = loaded
        settings = self.settings if state.process_index == 0 else self.settings.replace(progress=False,
                                                                                         print_every_text=0)
        rank_examples(judge, prompter, mine, settings, on_sample=on_sample)
