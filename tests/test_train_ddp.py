"""train.py on accelerate: DDP over two CPU processes (torchrun, gloo) equals one process, mixed precision keeps fp32
master weights, LoRA trains an adapter that test.py evaluates and that merges exactly."""
from __future__ import annotations

import json

import pytest
import torch

from tests.fixtures.ppo_train import load_weights, metric_records, ppo_assets, run_train, train_cmd  # noqa: F401

FAST = ["--K", "4", "--K_eval", "3", "--max_len_per_item", "4", "--user_window_size", "3", "--lr_actor", "1e-3",
        "--lr_critic", "1e-3", "--num_valid_samples", "6", "--print_every", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def assets(ppo_assets):
    return ppo_assets


def test_two_processes_equal_one_process_and_stay_in_sync(assets, tmp_path):
    """Each of 2 processes takes 2 of the step's 4 users; DDP averages their gradients. The first step's losses
    equal a single process taking all 4 users, and both processes end with bit-identical weights."""
    data, model = assets
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    common = [*FAST, "--ppo_epochs", "1", "--save_every", "1", "--write_param_checksums"]
    r = run_train(train_cmd(data, model, ddp, "--max_steps", "2", "--batch_size", "2", *common, nproc=2))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_train(train_cmd(data, model, single, "--max_steps", "1", "--batch_size", "4", *common))
    assert r.returncode == 0, r.stderr[-3000:]

    c0 = (ddp / "param_checksum_rank0.txt").read_text().strip()
    c1 = (ddp / "param_checksum_rank1.txt").read_text().strip()
    assert c0 == c1 and len(c0) == 64  # different users on each process, identical weights: DDP synced them
    recs = metric_records(ddp, keep_volatile=True)
    assert [x["step"] for x in recs] == [1, 2]  # one writer (the main process), no duplicates
    one = metric_records(single, keep_volatile=True)[0]
    for key in ("reward", "ndcg", "value_loss", "value_mean", "grad_norm"):
        assert recs[0][key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    final, init = load_weights(ddp / "checkpoint-2"), load_weights(model)
    lm_keys = [k for k in final if k.startswith("model")]
    assert lm_keys and set(lm_keys) <= set(init)
    assert [k for k in lm_keys if not (final[k] == init[k]).all()], "training did not change the backbone weights"
    assert sorted(p.name for p in (ddp / "checkpoint-2").glob("rng_state_rank*.pt")) == [
        "rng_state_rank0.pt", "rng_state_rank1.pt"]

    # A token budget no two users fit: every process accumulates one micro-batch per user (gradients synced at the
    # last); the step is still the full-batch mean of all 4 users.
    budget = tmp_path / "budget"
    r = run_train(train_cmd(data, model, budget, "--max_steps", "1", "--batch_size", "2",
                            "--max_tokens_per_micro_batch", "1", *common, nproc=2))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (budget / "param_checksum_rank0.txt").read_text() == (budget / "param_checksum_rank1.txt").read_text()
    for key in ("reward", "ndcg", "value_loss", "policy_loss", "grad_norm"):
        assert metric_records(budget, keep_volatile=True)[0][key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key


def _changed_fraction(out, model) -> float:
    after, before = load_weights(out / "checkpoint-20"), load_weights(model)
    # decoder-layer matrices (embedding rows of tokens that never occur get no gradient; norms sit at 1.0)
    keys = [k for k in after if ".layers." in k and "norm" not in k]
    # compared in the stored dtype (the pure-bf16 run starts from the fp32 weights rounded to bf16)
    changed = sum(int((after[k] != before[k].to(after[k].dtype)).sum()) for k in keys)
    return changed / sum(after[k].numel() for k in keys)


def test_bf16_mixed_precision_keeps_fp32_master_weights(assets, tmp_path):
    """20 AdamW steps at lr 1e-6 move each weight by ~2e-5, below bf16's resolution at |w| ~ 0.02 (~8e-5): with
    fp32 master weights (the default, bf16 autocast for compute) they change almost everywhere; with --pure_bf16
    almost nothing changes."""
    data, model = assets
    args = [*FAST, "--lr_actor", "1e-6", "--max_steps", "20", "--save_every", "20", "--batch_size", "2",
            "--ppo_epochs", "1", "--print_every", "0", "--num_valid_samples", "2", "--max_grad_norm", "0"]
    mixed, pure = tmp_path / "mixed", tmp_path / "pure"
    r = run_train(train_cmd(data, model, mixed, *args, "--dtype", "bf16"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_train(train_cmd(data, model, pure, *args, "--pure_bf16"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((mixed / "args.json").read_text())["dtype"] == "bf16"
    frac_mixed, frac_pure = _changed_fraction(mixed, model), _changed_fraction(pure, model)
    print(f"share of weights changed after 20 steps at lr 1e-6: fp32 master {frac_mixed:.3f}, pure bf16 {frac_pure:.3f}")
    assert frac_mixed > 0.9
    assert frac_pure < 0.2


def test_lora_adapter_trains_evaluates_and_merges_exactly(assets, tmp_path):
    from models.abstract_models import is_adapter_dir
    from models.qwen_models import BinaryJudge, load_judge_from_checkpoint
    from prompters.binary_prompter import BinaryPrompter
    from trainers.data.dataset import load_processed_dataset
    from trainers.evaluation.protocol import build_eval_items

    data, model = assets
    out = tmp_path / "lora"
    r = run_train(train_cmd(data, model, out, *FAST, "--max_steps", "2", "--save_every", "2", "--batch_size", "2",
                            "--use_lora", "--lora_r", "4", "--lora_alpha", "8", "--merge_lora", "--kl_coef", "0.1"))
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = out / "checkpoint-2"
    assert is_adapter_dir(ckpt) and not (ckpt / "model.safetensors").exists()
    assert (ckpt / "heads.safetensors").is_file() and not is_adapter_dir(out / "final")

    # test.py evaluates the adapter checkpoint on top of --model_name_or_path
    import test as test_script

    res = test_script.main(["--model_name_or_path", str(model), "--resume_from", str(ckpt), "--dataset_path",
                            str(data), "--K", "4", "--K_eval", "3", "--num_samples", "4", "--device", "cpu",
                            "--output_dir", str(tmp_path / "eval"), "--no_progress"])
    assert len(res["samples"]) == 4 and res["meta"]["checkpoint"] == str(ckpt)
    assert res["meta"]["settings_from_checkpoint"]["user_window_size"] == 3  # prompt settings of the training run

    # the merged final model scores like base + adapter (and differs from the base: the adapter learned)
    adapter = load_judge_from_checkpoint(str(model), resume_from=str(ckpt), device="cpu", dtype="fp32")
    merged = BinaryJudge.load(str(out / "final"), device="cpu", dtype="fp32")
    base = BinaryJudge.load(str(model), device="cpu", dtype="fp32")
    ds = load_processed_dataset(data)
    prompter = BinaryPrompter(base.tokenizer, ds.item_rows, max_len_per_item=4, user_window_size=3)
    batch = [prompter.build(ex, c) for ex, c in build_eval_items(ds, "test", 3, 4, 0)]
    with torch.no_grad():
        a, m, b = (j.score_candidates(batch).scores for j in (adapter, merged, base))
    torch.testing.assert_close(m, a, atol=1e-5, rtol=0)
    assert (a - b).abs().max() > 1e-4
