"""trainers/ppo_trainer.py, built in this process on the tiny model: the update reads the device at most once per
optimiser step and makes no tensor from host data (fixed and token-budget micro-batches, fused AdamW); the AdamW
kernel choice; the frozen KL reference held in the compute dtype; a token budget refused under FSDP/DeepSpeed; the
final validation under the default --eval_every and the KL to the reference in metrics.jsonl and training.png."""
from __future__ import annotations

import json

import pytest
import torch

from foundation.op_count import count_host_syncs
from tests.fixtures.ppo_train import build_trainer, optimizer_step_counters, ppo_assets  # noqa: F401
from tests.test_train_resume import _args
from trainers.ppo_trainer import adamw_kernel_kwargs


@pytest.fixture(scope="module")
def assets(ppo_assets):  # noqa: F811
    return ppo_assets


@pytest.mark.parametrize("flags", [
    (),  # today's split: --batch_size users per micro-batch (one micro-batch here)
    ("--batch_size", "2", "--gradient_accumulation_steps", "2", "--max_tokens_per_micro_batch", "150"),
    ("--adamw_implementation", "fused", "--kl_coef", "0.1"),
], ids=["fixed", "token_budget_ga2", "fused_kl"])
def test_update_reads_the_device_once_per_optimiser_step(assets, tmp_path, flags):
    data, model = assets
    tr = build_trainer(data, model, tmp_path / "run", *flags)
    fused = "fused" in flags
    assert tr.optimizer.param_groups[0]["fused"] is (True if fused else None)
    tr.training_step(1)  # the optimiser's state exists from now on
    rollout = tr.make_experience(2)
    micro = tr.micro_batches(rollout.prompts)
    if "--max_tokens_per_micro_batch" in flags:
        assert len(micro) >= 2  # several micro-batches per optimiser step
    # fused AdamW keeps its step counters on the device and reads nothing: nothing to leave out
    with count_host_syncs(ignore=None if fused else optimizer_step_counters(tr)) as syncs:
        stats = tr.update(rollout)
    assert syncs.total <= tr.cfg.ppo_epochs, syncs.sites
    assert syncs.host_tensors == 0  # no index tensors, no packed layout built (the rollout's are reused)
    assert stats["grad_norm"] > 0 and 0 <= stats["clipfrac"] <= 1
    if "--kl_coef" in flags:
        assert stats["kl_ref"] >= 0


def test_adamw_kernels():
    assert adamw_kernel_kwargs("auto", "cuda") == {"fused": True}
    assert adamw_kernel_kwargs("auto", "cpu") == {}  # torch's default: the CPU figures stay as they were
    assert adamw_kernel_kwargs("fused", "cpu") == {"fused": True}
    assert adamw_kernel_kwargs("foreach", "cuda") == {"foreach": True}


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process: start and leave this test with none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_kl_reference_is_held_in_the_compute_dtype(assets, tmp_path, fresh_accelerate_state):
    data, model = assets
    tr = build_trainer(data, model, tmp_path / "run", "--dtype", "bf16", "--kl_coef", "0.1")
    assert {p.dtype for p in tr.judge.lm.parameters()} == {torch.float32}  # master weights
    assert {p.dtype for p in tr.ref_judge.parameters()} == {torch.bfloat16}  # forwards only
    rollout = tr.make_experience(1)
    # before any update the reference is the policy, up to bf16 rounding of its weights
    assert (rollout.ref_logp - rollout.old_logp).abs().max().item() < 0.1


def test_token_budget_is_refused_under_sharding():
    """Under FSDP every process must run the same number of forwards (each gathers the weights) and DeepSpeed steps
    after a fixed count of micro-batches; a budget splits each process's users by their lengths."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from foundation.errors import UserInputError
    from trainers.ppo_trainer import check_token_budget_distribution

    for kind, name in ((DistributedType.FSDP, "FSDP"), (DistributedType.DEEPSPEED, "DeepSpeed")):
        with pytest.raises(UserInputError, match=f"--max_tokens_per_micro_batch 500: not under {name}"):
            check_token_budget_distribution(500, SimpleNamespace(distributed_type=kind))
    check_token_budget_distribution(500, SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))  # DDP: fine


def test_final_validation_with_default_eval_every_and_kl_to_the_reference(assets, tmp_path, monkeypatch):
    """--eval_every 0 (the default): only the last step validates, and training.png draws that point; with
    --kl_coef > 0 the KL to the reference is logged as kl_ref."""
    from foundation import plotting
    from trainers.ppo_trainer import run_training

    data, model = assets
    out = tmp_path / "run"
    result = run_training(_args(data, model, out, "--max_steps", "2", "--batch_size", "2", "--num_valid_samples", "4",
                                "--eval_K", "6", "--kl_coef", "0.1", "--ppo_epochs", "1"))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in r if k.startswith("val_")) for r in recs] == [[], ["val_NDCG@3_K6"]]
    assert result["final_validation"]["NDCG@3"] == recs[-1]["val_NDCG@3_K6"]
    assert all(r["kl_ref"] >= 0 for r in recs)
    drawn = []
    import matplotlib.axes

    orig = matplotlib.axes.Axes.plot

    def record(ax, *a, **kw):
        drawn.append((kw.get("label"), list(a[0]), list(a[1])))
        return orig(ax, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    plotting.plot_training(out / "metrics.jsonl", tmp_path / "training.png")
    assert ("validation NDCG@3, K=6 candidates", [2], [recs[-1]["val_NDCG@3_K6"]]) in drawn
    assert "reward (rollout NDCG@3, K=4 training candidates)" in [label for label, _, _ in drawn]
    assert (tmp_path / "training.png").stat().st_size > 0
