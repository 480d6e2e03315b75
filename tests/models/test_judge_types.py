"""models/judge_types.py: SamplingSettings.sample draws what torch.multinomial draws, without a host sync."""
from __future__ import annotations

import pytest
import torch

from foundation.op_count import HostSyncError, no_host_sync
from models.judge_types import SamplingSettings


@pytest.mark.parametrize("settings", [SamplingSettings(1.0, 0, 1.0), SamplingSettings(0.7, 20, 1.0),
                                      SamplingSettings(1.3, 0, 0.8)])
def test_sampler_draws_what_torch_multinomial_draws(settings):
    """The sync-free sampler is torch.multinomial's one-sample algorithm: the same tokens and the same generator
    state afterwards, for the global generator and an explicit one."""
    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(0)) * 3
    probs = torch.softmax(settings.warp(logits), -1)
    torch.manual_seed(5)
    ours = settings.sample(logits)
    after_ours = torch.rand(3)
    torch.manual_seed(5)
    ref = torch.multinomial(probs, 1).squeeze(-1)
    assert torch.equal(ours, ref) and torch.equal(torch.rand(3), after_ours)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(settings.sample(logits, g1), torch.multinomial(probs, 1, generator=g2).squeeze(-1))
    assert len(set(ours.tolist())) > 5  # a real draw, not an argmax
    with no_host_sync():
        settings.sample(logits)
    with pytest.raises(HostSyncError):  # what the old sampler did
        with no_host_sync():
            torch.multinomial(probs, 1)
