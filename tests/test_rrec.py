"""The RRec baseline: prompts, reward fusion, advantages, PPO surrogate, in-batch loss, RecPO training,
and compare_model/rrec.py on sampled and on reference candidates (tiny Qwen, synthetic data, CPU)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers.RecPOTrainer import catalogue_ranks, fused_reward, select_topk_rollouts
from trainers.rl.advantages import group_advantages
from trainers.rl.losses import clipped_surrogate, inbatch_rec_loss

REPO = Path(__file__).resolve().parents[1]
CAT = "Video_Games"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tests.fixtures.assets import build_tiny_qwen

    return build_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    from trainers.data.synthetic import build_processed_dataset

    return build_processed_dataset(tmp_path_factory.mktemp("rrec_raw"), tmp_path_factory.mktemp("rrec_data"), CAT,
                                   n_users=120, n_items=60, n_subcats=3, min_items=10)


def _args(tiny_model, dataset_dir, out_dir, **kw):
    from trainers.GRecTrainer import RRecTrainingArguments

    base = dict(model_name_or_path=str(tiny_model), dataset_dir=str(dataset_dir), output_dir=str(out_dir),
                device="cpu", max_steps=3, group_size=2, train_batch_size=2, max_new_tokens=8, warmup_steps=0,
                learning_rate=5e-3, item_refresh_steps=2, num_eval_samples=4, K=5, eval_batch_size=16,
                progress=False, seed=0)
    base.update(kw)
    return RRecTrainingArguments(**base)


@pytest.fixture(scope="module")
def trained(tiny_model, dataset_dir, tmp_path_factory):
    from trainers.RecPOTrainer import RecPOTrainer

    out = tmp_path_factory.mktemp("rrec_run")
    trainer = RecPOTrainer(_args(tiny_model, dataset_dir, out))
    ckpt = trainer.train()
    return trainer, ckpt, out


# ----------------------------------------------------------------------------- pure pieces
def test_fused_reward_hand_computed():
    sims = torch.tensor([[100.0, 3.0, 1.0, 2.0],    # column 0 = pad, ignored even though it is the largest
                         [0.0, 5.0, 5.0, 5.0]])     # ties: the target goes last
    targets = torch.tensor([3, 1])
    ranks = catalogue_ranks(sims, targets)
    assert ranks.tolist() == [2, 3]
    r, parts = fused_reward(sims, targets, ndcg_k=1000, softmax_weight=0.05, temperature=1.0)
    p0 = math.exp(2) / (math.exp(3) + math.exp(1) + math.exp(2))
    assert r[0].item() == pytest.approx(0.95 / math.log2(3) + 0.05 * p0, rel=1e-5)
    assert r[1].item() == pytest.approx(0.95 / math.log2(4) + 0.05 / 3, rel=1e-5)
    # k below the rank: only the softmax part is left; temperature sharpens the softmax
    r, _ = fused_reward(sims, targets, ndcg_k=1, softmax_weight=0.05, temperature=0.5)
    p0 = math.exp(4) / (math.exp(6) + math.exp(2) + math.exp(4))
    assert r[0].item() == pytest.approx(0.05 * p0, rel=1e-5)
    assert parts["ndcg"].tolist() == [pytest.approx(1 / math.log2(3)), pytest.approx(0.5)]


def test_advantages_grpo_and_rloo():
    r = torch.tensor([[1.0, 0.0, 0.5], [2.0, 2.0, 2.0]])
    g = group_advantages(r, "gaussian", eps=0.0 + 1e-4)
    # mean 0.5, unbiased std 0.5
    assert g[0].tolist() == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001, 0.0], abs=1e-6)
    assert g[1].tolist() == [0.0, 0.0, 0.0]
    loo = group_advantages(r, "leave-one-out")
    assert loo[0].tolist() == pytest.approx([0.75, -0.75, 0.0])
    assert loo[1].tolist() == [0.0, 0.0, 0.0]
    assert group_advantages(torch.tensor([[3.0]]), "gaussian").tolist() == [[0.0]]
    assert select_topk_rollouts(torch.tensor([[0.1, 0.9, -1.0], [2.0, 0.0, 1.0]]), 2).tolist() == [1, 0, 3, 5]


def test_clipped_surrogate_hand_computed():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, frac = clipped_surrogate(new, old, adv, 0.2, 0.28)
    # per token: -min(ρA, clip(ρ)A) = -1.28, 1.5, -0.5, 0.8
    assert loss.item() == pytest.approx((-1.28 + 1.5 - 0.5 + 0.8) / 4, rel=1e-5)
    assert frac.item() == pytest.approx(0.5)
    loss.backward()
    # clipped tokens get no gradient; the others get -A*ρ/4
    assert new.grad.tolist() == pytest.approx([0.0, 1.5 / 4, -0.5 / 4, 0.0], abs=1e-6)
    # ratio 1 (one update per rollout): the loss is -mean(A) and the gradient is the policy gradient
    lp = torch.zeros(2, requires_grad=True)
    loss, _ = clipped_surrogate(lp, lp.detach(), torch.tensor([2.0, -1.0]), 0.2, 0.28)
    loss.backward()
    assert loss.item() == pytest.approx(-0.5)
    assert lp.grad.tolist() == pytest.approx([-1.0, 0.5])


def test_time_ago_and_category_names():
    from prompters.rrec_prompter import category_from_dataset_dir, category_names, format_time_ago

    assert format_time_ago((3 * 24 + 4.5) * 3600 * 1000) == "3d 4.5h"
    assert format_time_ago(1.5 * 3600 * 1000) == "1.5h"
    assert category_from_dataset_dir("data/Video_Games_5_2021-1-2023-12/") == "Video_Games"
    assert category_names("Video_Games") == ("video games", "video game")
    assert category_names("Toys_and_Games") == ("products", "product")


def test_prompts_render(trained):
    trainer = trained[0]
    p = trainer.prompter
    ex = trainer.dataset.split("test")[0]
    text = p.user_prompt(ex)
    assert "recommend next video game" in text and "<|im_start|>assistant" in text
    last_title = trainer.dataset.item_rows[ex["history_item_id"][-1]]["title"]
    assert f"[{last_title}]" in text and " ago: [" in text
    item = p.item_prompt(ex["item_id"])
    row = trainer.dataset.item_rows[ex["item_id"]]
    assert f"Title: {row['title']}" in item and "Number of Buyers:" in item and "User Rating:" in item
    desc = item.split("Description: ", 1)[1].split("<|im_end|>")[0]
    assert len(desc.split()) <= 101


# ----------------------------------------------------------------------------- model + training
def test_inbatch_loss_reaches_item_side(trained):
    """Gradients of the recommendation loss flow through the re-encoded target items alone."""
    trainer = trained[0]
    ex = trainer.dataset.split("train").select(range(2)).to_list()
    prompts = [trainer.prompter.user_ids(e) for e in ex]
    items = sorted({int(e["item_id"]) for e in ex} | {1, 2})
    ids, mask, lp = trainer._batch_tensors(prompts, [[], []], items)
    trainer.model.zero_grad(set_to_none=True)
    emb, _ = trainer.wrapped(ids, mask, lp)
    h_u, h_v = emb[:2].detach(), emb[2:]  # user side cut off
    labels = torch.tensor([items.index(int(e["item_id"])) for e in ex])
    inbatch_rec_loss(h_u, h_v, labels, 1.0).backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    trainer.model.zero_grad(set_to_none=True)


def test_recpo_training_run(trained, tiny_model):
    from safetensors.torch import load_file

    trainer, ckpt, out = trained
    assert ckpt is not None and ckpt.name == "checkpoint-3" and (ckpt / "COMPLETE").is_file()
    assert json.loads((ckpt / "rrec_config.json").read_text())["model_type"] == "qwen"
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert all(math.isfinite(r[k]) for k in ("loss", "token_loss", "rec_loss", "reward"))
        assert 0.0 <= r["reward"] <= 1.0 and r["reasoning_tokens"] <= 8
    assert any("valid/NDCG@10" in r and "valid_full/HR@20" in r for r in recs)
    base = load_file(str(tiny_model / "model.safetensors"))
    new = load_file(str(ckpt / "model.safetensors"))
    changed = [k for k in base if not torch.equal(base[k], new[k])]
    assert len(changed) > len(base) // 2, "training did not update the weights"


def test_recpo_resume_continues(trained, tiny_model, dataset_dir):
    from trainers.RecPOTrainer import RecPOTrainer

    _, _, out = trained
    trainer = RecPOTrainer(_args(tiny_model, dataset_dir, out, max_steps=4, resume_from="last", num_eval_samples=0))
    assert trainer.step == 3
    ckpt = trainer.train()
    assert ckpt.name == "checkpoint-4"
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert steps == [1, 2, 3, 4]


def test_rrec_eval_sampled_then_reference(trained, dataset_dir, tmp_path):
    from compare_model import rrec
    from trainers.data.candidates import sample_candidates
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.results import ResultWriter, load_result_json
    from trainers.foundation.errors import UserInputError

    _, _, run_dir = trained
    # 1) the script itself, candidates sampled with --seed, full-catalogue extra mode
    out1 = tmp_path / "sampled.json"
    proc = subprocess.run([sys.executable, "compare_model/rrec.py", "--checkpoint_path", str(run_dir),
                           "--dataset_dir", str(dataset_dir), "--num_samples", "6", "--K", "5", "--max_new_tokens", "8",
                           "--device", "cpu", "--output_file", str(out1), "--full_ranking", "--no_progress",
                           "--batch_size", "4"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "popularity" in proc.stdout and "rrec (full catalogue)" in proc.stdout
    res = load_result_json(out1)
    assert len(res["samples"]) == 6 and res["metrics"]["n"] == 6 and "full_ranking_metrics" in res
    for s in res["samples"]:
        assert s["target_item_id"] in s["candidates"] and len(s["candidates"]) == 5
        assert s["ranking"][s["target_rank"] - 1] == s["target_item_id"]
        assert isinstance(s["outputs"]["reasoning"], str) and 1 <= s["full_rank"] <= 1000

    # 2) a reference file with other candidates (another seed, reversed order): ranked item for item
    ds = load_processed_dataset(dataset_dir)
    ref_path = tmp_path / "reference.json"
    w = ResultWriter(ref_path, {"method": "hand-made"}, resume=False)
    order = []
    for ex in list(ds.split("test").select(range(5)).to_list())[::-1]:
        c = sample_candidates(ex["item_id"], ex["history_item_id"], ds.n_items, 5, 777, ex["interaction_id"])
        w.add({"interaction_id": ex["interaction_id"], "user_id": ex["user_id"], "target_item_id": ex["item_id"],
               "candidates": c, "scores": [0.0] * 5, "ranking": c, "target_rank": 5})
        order.append(ex["interaction_id"])
    w.finalize(order=order)
    out2 = tmp_path / "ref_eval.json"
    argv = ["--checkpoint_path", str(run_dir), "--dataset_dir", str(dataset_dir), "--K", "5",
            "--max_new_tokens", "8", "--device", "cpu", "--reference_json", str(ref_path), "--output_file", str(out2),
            "--no_progress", "--seed", "1"]
    data = rrec.run(rrec.build_parser().parse_args(argv))
    ref = load_result_json(ref_path)
    assert [s["interaction_id"] for s in data["samples"]] == [s["interaction_id"] for s in ref["samples"]]
    assert [s["candidates"] for s in data["samples"]] == [s["candidates"] for s in ref["samples"]]
    # a rerun resumes (nothing recomputed) and gives the same file
    again = rrec.run(rrec.build_parser().parse_args(argv))
    assert again["samples"] == data["samples"]
    # a K that does not match the reference is a one-line user error
    with pytest.raises(UserInputError, match="--K"):
        rrec.run(rrec.build_parser().parse_args(argv[:4] + ["--K", "4"] + argv[6:]))


def test_bad_checkpoint_is_one_line_error(dataset_dir, tmp_path, capsys):
    from compare_model import rrec

    with pytest.raises(SystemExit) as e:
        rrec.main(["--checkpoint_path", str(tmp_path / "nope"), "--dataset_dir", str(dataset_dir), "--K", "5",
                   "--device", "cpu", "--output_dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--checkpoint_path" in err
