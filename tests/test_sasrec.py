"""compare_model/sasrec.py (SASRec, GRU4Rec; models/sequential.py, trainers/sequential_trainer.py) on a planted
sequential pattern: every user buys items i, i+1, i+2, ... (a run through the catalogue from a random start), so
the next item is the last one plus one. Both models must learn it clearly above the popularity and random rows
(paired over the same examples and candidates; the training sequences: tests/trainers/data/test_sequences.py);
the candidates are exactly a reference file's; a run killed while training or while ranking and rerun ends
with the same result JSON as an uninterrupted one; upstream's dataset layout (pad row last) gives the same result as
ours; bad flags stop with one line and exit 2 (the models themselves: tests/models/test_sequential.py). CPU, a few
seconds each."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from foundation.checkpoints import load_torch_state

N_ITEMS, WINDOW, K = 30, 3, 10
FAST = ["--K", str(K), "--max_len", "12", "--patience", "5", "--device", "cpu", "--no_progress"]


def _planted(path: Path, n_users: int = 100, seed: int = 0) -> Path:
    """A processed dataset (preprocess.py's columns) whose users walk the catalogue in id order: user u buys
    s, s+1, ..., wrapping after N_ITEMS. Every interaction after a user's first is an example with the previous
    WINDOW items as its history; examples sorted by target time split 80/10/10 (users start at staggered times,
    so their last interactions fall into valid and test)."""
    from datasets import Dataset, DatasetDict

    rng = random.Random(seed)
    info = [{"item_id": i, "title": "pad" if i == 0 else f"Gadget {i}", "description": [], "features": [],
             "categories": []} for i in range(N_ITEMS + 1)]
    examples = []
    for u in range(n_users):
        start, length, t0 = rng.randint(1, N_ITEMS), rng.randint(6, 12), rng.randint(0, 40) * 1000
        seq = [(start - 1 + k) % N_ITEMS + 1 for k in range(length)]
        times = [t0 + 1000 * k + u for k in range(length)]
        for k in range(1, length):
            lo = max(0, k - WINDOW)
            examples.append({"user_id": f"U{u:03d}", "item_id": seq[k], "timestamp": times[k], "rating": 5.0,
                             "history_item_id": seq[lo:k], "history_timestamp": times[lo:k],
                             "history_rating": [5.0] * (k - lo)})
    examples.sort(key=lambda e: e["timestamp"])
    for n, e in enumerate(examples):
        e["interaction_id"] = n
    a, b = int(0.8 * len(examples)), int(0.9 * len(examples))
    dd = DatasetDict({"train": Dataset.from_list(examples[:a]), "valid": Dataset.from_list(examples[a:b]),
                      "test": Dataset.from_list(examples[b:]), "item_info": Dataset.from_list(info)})
    dd.save_to_disk(str(path))
    return path


def _upstream_layout(src: Path, dst: Path) -> Path:
    """The same data as upstream R2ec lays it out: item ids 1..N in rows 0..N-1, the pad row last."""
    from datasets import load_from_disk

    dd = load_from_disk(str(src))
    dd["item_info"] = dd["item_info"].select([*range(1, N_ITEMS + 1), 0])
    dd.save_to_disk(str(dst))
    return dst


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return _planted(tmp_path_factory.mktemp("planted") / "Video_Games_5_2021-1-2023-12")


def _run(*argv: str) -> dict:
    from compare_model import sasrec

    return sasrec.main(list(argv))


@pytest.fixture(scope="module")
def sasrec_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sasrec_run")
    return out, _run("--dataset_dir", str(data_dir), "--output_dir", str(out), *FAST)


def _margins(data: dict, name: str) -> dict[str, tuple[float, float]]:
    from trainers.evaluation.metrics import paired_margins

    ids = [str(s["interaction_id"]) for s in data["samples"]]
    ranks = {name: [s["target_rank"] for s in data["samples"]]}
    ranks.update({row: [data["sanity_ranks"][row][i] for i in ids] for row in ("random", "popularity")})
    return paired_margins(ranks, name)


@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])
def test_learns_the_planted_successor_pattern(model, sasrec_run, data_dir, tmp_path):
    """NDCG@10 among K candidates clearly above popularity and random (> 2 paired SE, and by a wide margin); the
    full-catalogue rank is filled in for every sample; training stopped at the best valid epoch."""
    if model == "sasrec":
        out, data = sasrec_run
    else:
        out = tmp_path
        data = _run("--model", "gru4rec", "--dataset_dir", str(data_dir), "--output_dir", str(out), *FAST)
    margins = _margins(data, model)
    for row in ("random", "popularity"):
        m, se = margins[row]
        assert m > 2 * se and m > 0.3, (row, m, se)
    assert data["metrics"]["NDCG@10"] > 0.8 and data["meta"]["method"] == model
    assert all(s["full_rank"] is not None and 1 <= s["full_rank"] <= N_ITEMS for s in data["samples"])
    assert data["full_ranking_metrics"]["NDCG@10"] > 0.5  # the pattern holds against the whole catalogue too
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all({"step", "lr", "wall_time_s"} <= set(r) for r in log)  # the keys every trainer logs
    best = max(log, key=lambda r: r["valid/NDCG@10"])  # the first of the best, as strict improvement keeps it
    assert data["meta"]["training"]["best_epoch"] == best["epoch"] and log[-1]["epoch"] - best["epoch"] <= 5


def test_ranks_exactly_the_reference_candidates(sasrec_run, data_dir, tmp_path, capsys):
    """Another order and a subset of a reference: the same ids in its order, the same candidate lists, the same
    scores as the first run's (the trained model is reused, not retrained); tools/compare_results.py --paired
    reads the pair; a --K other than the reference's is one line, exit 2."""
    from tests.fixtures.scripts import load_script

    compare = load_script("tools/compare_results.py").compare

    out, first = sasrec_run
    ref = dict(first)
    ref["samples"] = first["samples"][::-1][:25]
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    log_before = (out / "metrics.jsonl").read_text()
    argv = ["--dataset_dir", str(data_dir), "--output_dir", str(out), "--reference_json", str(tmp_path / "ref.json"),
            "--output_file", str(tmp_path / "on_ref.json"), *FAST]
    data = _run(*argv)
    assert [s["interaction_id"] for s in data["samples"]] == [s["interaction_id"] for s in ref["samples"]]
    assert [s["candidates"] for s in data["samples"]] == [s["candidates"] for s in ref["samples"]]
    for a, b in zip(data["samples"], ref["samples"]):  # other batches: float noise only
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5) and a["target_rank"] == b["target_rank"]
    assert (out / "metrics.jsonl").read_text() == log_before and data["meta"]["candidate_source"] == str(
        tmp_path / "ref.json")
    table = compare([str(tmp_path / "ref.json"), str(tmp_path / "on_ref.json")], ["first", "sasrec"],
                    paired="sasrec")
    assert "popularity" in table and "+0.0000  SE 0.0000" in table  # the same ranks on the same candidates
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _run(*[a if a != str(K) else "7" for a in argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "--K" in err


def test_killed_and_resumed_run_equals_an_uninterrupted_one(data_dir, tmp_path, monkeypatch, capsys):
    """A crash in the middle of epoch 4 (checkpoint of epoch 3 on disk), then one while ranking (some samples
    saved): each rerun of the same command continues, and the result JSON, the log and the model are those of an
    uninterrupted run."""
    import trainers.evaluation.sequential as seq_eval
    from trainers.sequential_trainer import SequentialTrainer

    argv = ["--dataset_dir", str(data_dir), *FAST, "--num_epochs", "6", "--patience", "0", "--eval_batch_size", "4"]
    whole = _run(*argv, "--output_dir", str(tmp_path / "whole"))

    class Killed(Exception):
        pass

    original_epoch = SequentialTrainer.train_epoch

    def epoch_killed_at_4(self, epoch):
        if epoch == 4:
            original_epoch(self, epoch)  # trained, not yet saved: lost with the process
            raise Killed
        return original_epoch(self, epoch)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(SequentialTrainer, "train_epoch", epoch_killed_at_4)
    with pytest.raises(Killed):
        _run(*argv, "--output_dir", str(resumed))
    monkeypatch.undo()
    assert (resumed / "checkpoint-3").is_dir() and not (resumed / "checkpoint-4").exists()
    original_rank = seq_eval.rank_with_sequential

    def rank_killed_after_9(*a, on_sample=None, **kw):  # the ranking of the result JSON; validation runs on
        if on_sample is None:
            return original_rank(*a, **kw)
        seen = []

        def add(sample):
            if len(seen) == 9:
                raise Killed
            seen.append(sample)
            on_sample(sample)
        return original_rank(*a, on_sample=add, **kw)

    monkeypatch.setattr(seq_eval, "rank_with_sequential", rank_killed_after_9)
    with pytest.raises(Killed):
        _run(*argv, "--output_dir", str(resumed))
    monkeypatch.undo()
    capsys.readouterr()
    again = _run(*argv, "--output_dir", str(resumed))
    assert "resuming" in capsys.readouterr().out  # the 9 saved samples were kept
    for key in ("metrics", "sanity_rows", "sanity_ranks", "full_ranking_metrics"):
        assert again[key] == whole[key], key
    for a, b in zip(again["samples"], whole["samples"], strict=True):  # other batches: float noise in scores only
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
        assert {k: v for k, v in a.items() if k != "scores"} == {k: v for k, v in b.items() if k != "scores"}
    assert again["meta"]["training"]["best_epoch"] == whole["meta"]["training"]["best_epoch"]

    def log(run):
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds") and k != "wall_time_s"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert log("resumed") == log("whole") and len(log("whole")) == 6
    kept = sorted(p.name for p in (tmp_path / "whole").glob("checkpoint-*"))
    assert kept == sorted(p.name for p in resumed.glob("checkpoint-*"))
    for name in kept:
        a, b = (load_torch_state(tmp_path / run / name / "model.pt") for run in ("whole", "resumed"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_upstream_layout_gives_the_same_result(data_dir, tmp_path, capsys):
    """The planted data in upstream R2ec's layout (pad row last): the item ids keep their items, so training and
    ranking give exactly ours' samples."""
    from datasets import load_from_disk

    up = _upstream_layout(data_dir, tmp_path / "upstream" / data_dir.name)
    assert load_from_disk(str(up))["item_info"][0]["item_id"] == 1  # the rows really are in another order
    argv = [*FAST, "--num_epochs", "4"]
    ours = _run("--dataset_dir", str(data_dir), "--output_dir", str(tmp_path / "ours"), *argv)
    theirs = _run("--dataset_dir", str(up), "--output_dir", str(tmp_path / "theirs"), *argv)
    assert "upstream R2ec item_info layout" in capsys.readouterr().err
    assert theirs["meta"]["dataset_layout"] == "upstream" and ours["meta"]["dataset_layout"] == "ours"
    assert theirs["samples"] == ours["samples"] and theirs["sanity_ranks"] == ours["sanity_ranks"]


@pytest.mark.parametrize("extra, needle", [
    (["--model", "bert4rec"], "--model"),
    (["--K", "1"], "--K"),
    (["--dropout", "1.5"], "--dropout"),
    (["--num_heads", "3"], "--num_heads"),
    (["--dataset_dir", "/nonexistent/data"], "--dataset_dir"),
    (["--K", "40"], "--K"),
    (["--reference_json", "/nonexistent/ref.json"], "--reference_json"),
    (["--lr", "0.5"], "--learning_rate"),  # another trained run in --output_dir
])
def test_bad_input_is_one_line_exit_2(extra, needle, sasrec_run, data_dir, tmp_path, capsys):
    out, _ = sasrec_run
    base = ["--dataset_dir", str(data_dir), "--output_dir", str(out if needle == "--learning_rate" else tmp_path),
            "--output_file", str(tmp_path / "r.json"), *FAST]
    before = sorted(p.name for p in out.rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _run(*base, *extra)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and needle in err[-1] and "Traceback" not in "\n".join(err)
    assert len(err) == 1 or err[0].startswith("usage:")  # argparse's own errors come after its usage line
    assert sorted(p.name for p in out.rglob("*")) == before and not (tmp_path / "r.json").exists()


def test_foreign_checkpoints_in_output_dir_are_refused(data_dir, tmp_path, capsys):
    """An --output_dir holding another trainer's checkpoint-N: refused (rotation would delete it), untouched."""
    foreign = tmp_path / "checkpoint-5"
    foreign.mkdir()
    (foreign / "args.json").write_text(json.dumps({"learning_rate": 1e-5}))
    with pytest.raises(SystemExit) as e:
        _run("--dataset_dir", str(data_dir), "--output_dir", str(tmp_path), *FAST)
    assert e.value.code == 2 and "did not write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]
    shutil.rmtree(foreign)
