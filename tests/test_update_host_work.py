"""Host work of the PL-PPO update, counted on CPU: at most one host read of device data per optimiser step and no
tensor made from host data (a synchronous copy on a GPU), with fixed and token-budget micro-batches; the counter
itself (foundation/op_count.count_host_syncs); fused AdamW where asked; the frozen KL reference in the compute
dtype."""
from __future__ import annotations

import pytest
import torch

from foundation.op_count import count_host_syncs
from tests.fixtures.ppo_train import build_trainer, optimizer_step_counters, ppo_assets  # noqa: F401
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
