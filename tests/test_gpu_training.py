"""GPU-only training paths (skipped without CUDA): FSDP2 and DDP through the shipped accelerate config files, bf16
mixed precision with gradient checkpointing, LoRA. accelerate runs FSDP only on GPUs, so these cannot run in CI;
the CPU tests (tests/test_train_ddp.py) cover the same trainer code under DDP with gloo."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.fixtures.ppo_train import REPO, ppo_assets, run_train  # noqa: F401 (session fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

FAST = ["--K", "4", "--K_eval", "3", "--batch_size", "2", "--max_len_per_item", "4", "--user_window_size", "3",
        "--ppo_epochs", "1", "--lr_actor", "1e-4", "--num_valid_samples", "4", "--print_every", "0", "--max_steps",
        "2", "--save_every", "2", "--no_plot", "--gradient_checkpointing", "--scoring", "shared"]


def _launch(config: str, data, model, out, *extra):
    n = min(2, torch.cuda.device_count())
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "configs" / "accelerate" / f"{config}.yaml"), "--num_processes", str(n), "--main_process_port",
            "29533", str(REPO / "train.py"), "--dataset_path", str(data), "--model_name_or_path", str(model),
            "--output_dir", str(out), "--dataset_type", "other", *FAST, *extra]


@pytest.mark.parametrize("config,extra", [("ddp", []), ("fsdp", []), ("ddp", ["--use_lora"])])
def test_accelerate_configs_train_in_bf16_mixed_precision(ppo_assets, tmp_path, config, extra):
    data, model = ppo_assets
    out = tmp_path / config
    r = run_train(_launch(config, data, model, out, *extra), timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [1, 2] and all(x["grad_norm"] == x["grad_norm"] for x in recs)
    # MFU where the GPU's peak is known (models/flops.PEAK_TFLOPS): a fraction of it
    from models.flops import peak_tflops

    if peak_tflops("cuda"):
        assert all(0 < x["mfu"] < 1 for x in recs)
    assert (out / "checkpoint-2" / "COMPLETE").is_file() and (out / "final" / "heads.safetensors").is_file()
