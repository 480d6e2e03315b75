"""trainers/evaluation/runner.py on a fake method (tests/fixtures/fake_ranker.py: a deterministic scorer over the
real items of a synthetic processed dataset): the result JSON, resuming a killed run, two processes merging
to the one-process result, the sanity rows, and a reference's candidates ranked identically."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.fake_ranker import K, K_EVAL, NUM_SAMPLES, SEED, Killed, ScoreByIdRanker, make_job
from trainers.evaluation.metrics import eval_ks, metrics_from_ranks
from trainers.evaluation.protocol import SANITY_ROWS, build_eval_items, sanity_results

REPO = Path(__file__).resolve().parents[3]


class OneProcess:
    """What the runner needs of accelerate's PartialState, for one process."""

    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self) -> None:
        pass


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from fixtures.synthetic_amazon import build_processed_dataset

    root = tmp_path_factory.mktemp("runner_data")
    return build_processed_dataset(root / "raw", root / "data", n_users=60, n_items=40)


@pytest.fixture(scope="module")
def dataset(data_dir):
    from trainers.data.dataset import load_processed_dataset

    return load_processed_dataset(data_dir)


@pytest.fixture(scope="module")
def whole(dataset, tmp_path_factory):
    """One uninterrupted single-process run: (result JSON, the ranker, the job)."""
    from trainers.evaluation.runner import run_evaluation

    ranker = ScoreByIdRanker()
    job = make_job(dataset, tmp_path_factory.mktemp("whole"))
    data = run_evaluation(job, ranker, OneProcess())
    return data, ranker, job


def _comparable(data: dict) -> dict:
    """A result JSON without what differs between two runs of the same job (timings, process count)."""
    return {k: v for k, v in data.items() if k != "meta"}


def test_result_json_holds_the_ranked_items_metrics_and_sanity_rows(whole, dataset, capsys):
    data, ranker, job = whole
    items = build_eval_items(dataset, "test", NUM_SAMPLES, K, SEED)
    assert [s["interaction_id"] for s in data["samples"]] == [int(ex["interaction_id"]) for ex, _ in items]
    assert [s["candidates"] for s in data["samples"]] == [c for _, c in items]
    assert sorted(ranker.ranked) == sorted(s["interaction_id"] for s in data["samples"]) and ranker.loads == 1
    ranks = [s["target_rank"] for s in data["samples"]]
    assert data["metrics"] == metrics_from_ranks(ranks, eval_ks(K_EVAL)) and data["metrics"]["n"] == NUM_SAMPLES
    assert len(set(ranks)) > 1  # the scorer is not degenerate: the metrics mean something
    expected = sanity_results(data["samples"], dataset, SEED, eval_ks(K_EVAL))
    assert set(data["sanity_rows"]) == set(SANITY_ROWS)
    assert data["sanity_rows"] == expected["sanity_rows"] and data["sanity_ranks"] == expected["sanity_ranks"]
    assert data["meta"]["processes"] == 1 and data["meta"]["K"] == K
    on_disk = json.loads(job.result_file.read_text())
    assert on_disk["samples"] == data["samples"] and on_disk["metrics"] == data["metrics"]
    assert not list(job.result_file.parent.glob("*.partial*"))  # finalized: the partial logs are gone


def test_table_names_the_method_and_every_sanity_row(dataset, tmp_path, capsys):
    from trainers.evaluation.runner import run_evaluation

    run_evaluation(make_job(dataset, tmp_path), ScoreByIdRanker(), OneProcess())
    out = capsys.readouterr().out
    assert "by-id" in out and all(name in out for name in SANITY_ROWS) and f"NDCG@{K_EVAL}" in out
    assert out.rstrip().endswith(f"wrote {tmp_path / 'results.json'}")


def test_a_killed_run_resumes_to_the_uninterrupted_result(whole, dataset, tmp_path, capsys):
    from trainers.evaluation.runner import run_evaluation

    full, _, _ = whole
    killed = ScoreByIdRanker(fail_after=5)
    with pytest.raises(Killed):
        run_evaluation(make_job(dataset, tmp_path), killed, OneProcess())
    assert len(killed.ranked) == 5
    assert len((tmp_path / "results.json.partial.jsonl").read_text().splitlines()) == 5  # saved as they came
    again = ScoreByIdRanker()
    data = run_evaluation(make_job(dataset, tmp_path), again, OneProcess())
    assert "resuming" in capsys.readouterr().out
    assert sorted(again.ranked) == sorted(set(s["interaction_id"] for s in full["samples"]) - set(killed.ranked))
    assert _comparable(data) == _comparable(full)
    # nothing left: a third run loads no model and ranks nothing, and changes nothing
    third = ScoreByIdRanker()
    assert _comparable(run_evaluation(make_job(dataset, tmp_path), third, OneProcess())) == _comparable(full)
    assert third.ranked == [] and third.loads == 0


def test_a_result_file_of_other_settings_is_refused_unless_fresh(whole, dataset, tmp_path):
    from foundation.errors import UserInputError
    from trainers.evaluation.runner import run_evaluation

    run_evaluation(make_job(dataset, tmp_path), ScoreByIdRanker(), OneProcess())
    with pytest.raises(UserInputError, match="other settings .*seed"):
        run_evaluation(make_job(dataset, tmp_path, seed=SEED + 1), ScoreByIdRanker(), OneProcess())
    other = ScoreByIdRanker()
    data = run_evaluation(make_job(dataset, tmp_path, fresh=True, seed=SEED + 1), other, OneProcess())
    assert len(other.ranked) == NUM_SAMPLES and data["meta"]["seed"] == SEED + 1


def test_the_candidates_of_a_reference_are_ranked_identically(whole, dataset, tmp_path):
    from trainers.evaluation.runner import run_evaluation

    full, _, _ = whole
    reference = {"samples": full["samples"][::-1]}  # another order: followed sample for sample
    data = run_evaluation(make_job(dataset, tmp_path, reference=reference, seed=SEED + 7), ScoreByIdRanker(),
                          OneProcess())
    assert [(s["interaction_id"], s["candidates"]) for s in data["samples"]] == \
        [(s["interaction_id"], s["candidates"]) for s in reference["samples"]]
    # the same scorer on the same candidates: the same ranks, whatever seed the candidates were sampled with
    assert sorted(s["target_rank"] for s in data["samples"]) == sorted(s["target_rank"] for s in full["samples"])


def test_two_processes_merge_to_the_one_process_result(whole, data_dir, tmp_path):
    """torchrun, 2 CPU processes (gloo): each ranks its share of the items, the main process merges; the result
    JSON equals the single process's."""
    from tests.fixtures.ppo_train import _free_port, train_env

    full, _, _ = whole
    out = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(_free_port()), str(REPO / "tests/fixtures/fake_ranker.py"), str(data_dir),
                        str(out)], cwd=REPO, env={**train_env(), "PYTHONPATH": str(REPO)}, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["processes"] == 2
    assert _comparable(data) == _comparable(full)
    shares = [json.loads((out / f"ranked_rank{i}.json").read_text()) for i in (0, 1)]
    assert all(shares) and not set(shares[0]) & set(shares[1])  # both took part, no item twice
    assert sorted(shares[0] + shares[1]) == sorted(s["interaction_id"] for s in full["samples"])
    assert not list(out.glob("*.partial*"))  # every process's partial log merged and dropped


def test_saved_samples_the_ranker_cannot_continue_stop_the_run_before_its_model_loads(dataset, tmp_path):
    from foundation.errors import UserInputError
    from trainers.evaluation.runner import run_evaluation

    with pytest.raises(Killed):
        run_evaluation(make_job(dataset, tmp_path), ScoreByIdRanker(fail_after=3), OneProcess())
    saved = (tmp_path / "results.json.partial.jsonl").read_text()

    class Refusing(ScoreByIdRanker):
        def check_saved(self, job, samples):
            if samples:
                raise UserInputError(f"{job.result_file}: {len(samples)} saved samples this ranker cannot continue")

    refusing = Refusing()
    with pytest.raises(UserInputError, match="3 saved samples"):
        run_evaluation(make_job(dataset, tmp_path), refusing, OneProcess())
    assert refusing.loads == 0 and refusing.ranked == []
    assert (tmp_path / "results.json.partial.jsonl").read_text() == saved  # nothing lost
