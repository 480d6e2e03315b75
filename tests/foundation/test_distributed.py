"""foundation/distributed.py: DeepSpeed's gradient clipping comes from --max_grad_norm."""
from __future__ import annotations

import pytest


def test_deepspeed_takes_its_clipping_from_max_grad_norm(monkeypatch):
    """DeepSpeed clips inside its engine: --max_grad_norm goes into its config; a config file with another
    gradient_clipping is refused (what accelerate launch puts into the environment)."""
    from types import SimpleNamespace

    from foundation.distributed import configure_deepspeed
    from foundation.errors import UserInputError

    plugin = SimpleNamespace(deepspeed_config={"gradient_clipping": "auto"})
    acc = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", "none")
    configure_deepspeed(acc, micro_batch_size=3, max_grad_norm=0.5)
    assert plugin.deepspeed_config == {"gradient_clipping": 0.5, "train_micro_batch_size_per_gpu": 3}
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", "1.0")
    with pytest.raises(UserInputError, match="gradient_clipping 1.0, but --max_grad_norm 0.5"):
        configure_deepspeed(acc, micro_batch_size=3, max_grad_norm=0.5)
    configure_deepspeed(acc, micro_batch_size=3, max_grad_norm=1.0)
    assert plugin.deepspeed_config["gradient_clipping"] == 1.0
