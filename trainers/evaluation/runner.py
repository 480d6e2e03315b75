"""The one evaluation runner: items -> resume check -> shard -> rank -> merge -> metrics + sanity rows -> finalize ->
table, for every method that ranks the candidate protocol's items (docs/evaluation.md).

A method supplies a Ranker: how to load its model (once per process, before any result file is touched), how to
rank a share of the items (each finished sample handed to the runner as it comes), and its metric rows. The
runner owns the rest:

    candidate_items  the (example, candidates) items: seeded sampling or a reference result JSON's, never empty
    check_resume     an existing result JSON made with other settings is refused before anything is loaded
    run_evaluation   sharded_results (one result file per evaluation, locked; each process appends its samples,
                     resuming what a killed run saved) -> shard -> load -> rank -> merge -> finish
    finish           the model's rows, the random/popularity/content-tfidf sanity rows on the same candidates, the
                     complete result JSON, the printed table

Front ends: test.py (trainers/evaluation/judge.py: JudgeRanker), compare_model/rrec.py (rrec.py: RRecRanker),
compare_model/sasrec.py (sequential.py: SequentialRanker), compare_model/deepseek.py and tools/run_r1.py
(api.py: ApiRanker, whose answers file resumes it: it ranks through `rank_recorded` and ends in `finish`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from foundation.errors import UserInputError
from trainers.evaluation.metrics import eval_ks, format_metrics_table, metrics_from_ranks
from trainers.evaluation.protocol import Item, build_eval_items, sanity_results

Sample = dict


@dataclass
class EvalJob:
    """What one evaluation ranks and where its result JSON goes."""

    dataset: Any  # trainers.data.dataset.ProcessedDataset
    split: str
    items: list[Item]
    result_file: Path
    meta: dict
    seed: int  # of the sanity rows' random order and tie breaks
    K_eval: int
    fresh: bool = False  # start the result file afresh (else resume it)
    resume_keys: tuple[str, ...] = ()  # meta keys an existing result file must match to be resumed
    output_flag: str = "--output_dir"  # the flag that named the result file, for messages
    fresh_flag: str = "--overwrite_output_dir"  # the flag that starts afresh, for messages
    flush_every: int = 8  # samples between rewrites of the result JSON (the partial log gets every one)

    @property
    def order(self) -> list[int]:
        return [int(ex["interaction_id"]) for ex, _ in self.items]


class Ranker:
    """What a method supplies to the runner; `name` is its row in the metrics table and the result JSON."""

    name = "model"

    def load(self, mine: list[Item], state) -> Any:
        """This process's model (and prompts) for ranking `mine`, before any result file is touched (a damaged
        checkpoint fails with the old results intact); None when this process has nothing to rank."""
        return None

    def rank(self, loaded: Any, mine: list[Item], on_sample: Callable[[Sample], Any], state) -> None:
        """Rank this process's items, handing each finished sample to on_sample."""
        raise NotImplementedError

    def check_saved(self, job: EvalJob, samples: Mapping[int, Sample]) -> None:
        """Refuse saved samples this run cannot continue (e.g. made without a metric this run adds)."""

    def metrics(self, samples: Sequence[Sample], K_eval: int) -> dict[str, dict]:
        """Metric rows by name; the row `name` is the model's (the result JSON's "metrics")."""
        return {self.name: metrics_from_ranks([s["target_rank"] for s in samples], eval_ks(K_eval))}

    def extra_results(self, rows: dict[str, dict]) -> dict:
        """Result-JSON keys besides meta, metrics, the sanity rows and samples."""
        return {}

    def update_meta(self, meta: dict, samples: Sequence[Sample]) -> None:
        """What the final result JSON's meta records about this run besides the job's meta."""

    def row_label(self, meta: dict) -> str:
        """The model's row in the printed table."""
        return self.name

    def describe(self, job: EvalJob, samples: Sequence[Sample]) -> str:
        """The line printed above the table."""
        return (f"\n{job.split} split of {job.meta.get('dataset')}: {len(samples)} samples, K={job.meta.get('K')}, "
                f"seed={job.seed}")

    def report(self, job: EvalJob, rows: dict[str, dict], samples: Sequence[Sample]) -> list[str]:
        """Lines printed after the table (further tables, counts)."""
        return []

    def written(self, job: EvalJob) -> list[Path]:
        """The files this run wrote, printed last."""
        return [job.result_file]


# ---------------------------------------------------------------------------------------------- the steps
def candidate_items(dataset, split: str, num_samples: int | None, K: int, seed: int, reference: dict | None,
                    where: str, split_flag: str | None = "--split") -> list[Item]:
    """The items to rank: exactly the reference's (its split, interaction ids and candidate lists, in its order),
    else num_samples examples of the split in the seeded order with K sampled candidates each (K must fit the
    catalogue). An empty list is a one-line error naming the split (its flag, where the script has one) and the
    dataset (`where`)."""
    if reference is None:
        dataset.check_K(K)
    items = build_eval_items(dataset, split, num_samples, K, seed, reference=reference)
    if not items:
        raise UserInputError(f"{split_flag} {split}: no examples to evaluate in {where}" if split_flag else
                             f"{where}: the {split} split has no examples to evaluate")
    return items


def check_resume(job: EvalJob) -> None:
    """Unless job.fresh: an existing result file made with other settings (job.resume_keys) is refused."""
    if not job.fresh:
        from trainers.evaluation.results import check_resume_settings

        check_resume_settings(job.result_file, job.meta, job.resume_keys, flag=job.output_flag)


def launch_state(cpu: bool):
    """The processes of this launch (accelerate PartialState: one, or one per process of accelerate launch/
    torchrun)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu)


def process_device(state, device: str) -> str:
    """The device a process loads its model on: its own GPU under a multi-process launch, else the flag's."""
    return str(state.device) if state.num_processes > 1 else device


def run_evaluation(job: EvalJob, ranker: Ranker, state) -> dict | None:
    """Rank job.items with the ranker, sharded over the launch's processes; the main process returns the result
    JSON (the others None). A rerun of the same job resumes: only the samples the result file lacks are ranked."""
    from foundation.distributed import shard
    from trainers.evaluation.results import sharded_results

    check_resume(job)
    rank, world = state.process_index, state.num_processes
    with sharded_results(state, job.result_file, job.meta, job.items, job.fresh, job.flush_every,
                         load=lambda todo: ranker.load(shard(todo, rank, world), state), flag=job.output_flag,
                         check_saved=lambda writer: ranker.check_saved(job, writer.samples),
                         fresh_flag=job.fresh_flag) as (writer, order, todo, loaded):
        t0 = time.time()
        if loaded is not None:
            ranker.rank(loaded, shard(todo, rank, world), writer.add, state)
        seconds = time.time() - t0
        state.wait_for_everyone()
        if rank != 0:
            return None
        writer.merge()
        ranker.check_saved(job, writer.samples)
        return finish(job, ranker, writer, {"eval_seconds_this_run": round(seconds, 2), "processes": world})


def finish(job: EvalJob, ranker: Ranker, writer, run_meta: dict | None = None) -> dict:
    """Metrics of the model and of the sanity rows on the same candidates, the complete result JSON (the partial
    logs dropped), the table. Returns the result JSON."""
    samples = writer.ordered_samples(job.order)
    ks = eval_ks(job.K_eval)
    rows = ranker.metrics(samples, job.K_eval)
    extra = sanity_results(samples, job.dataset, job.seed, ks)
    extra.update(ranker.extra_results(rows))
    writer.meta.update(run_meta or {})
    ranker.update_meta(writer.meta, samples)
    data = writer.finalize(rows[ranker.name], extra=extra, order=job.order)
    print(ranker.describe(job, samples))
    print(format_metrics_table({ranker.row_label(writer.meta): rows[ranker.name], **extra["sanity_rows"]}, ks))
    for line in ranker.report(job, rows, samples):
        print(line)
    print("wrote " + " and ".join(str(p) for p in ranker.written(job)))
    return data
