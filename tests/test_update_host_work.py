"""Host work of the PL-PPO update, counted on CPU: at most one host read of device data per optimiser step and no
tensor made from host data (a synchronous copy on a GPU), with fixed and token-budget micro-batches; the counter
itself (foundation/op_count.count_host_syncs); fused AdamW where asked; the frozen KL reference in the compute
dtype."""
from __future__ import annotations

import torch

from foundation.op_count import count_host_syncs


def test_sync_counter_counts_each_read_once_and_ignores_what_it_is_told():
    x = torch.arange(6.0)
    keep = torch.tensor(3.0)
    with count_host_syncs(ignore=lambda t: t is keep) as c:
        x.sum().item()          # one read (its scalar op inside is part of it)
        float(x[2])             # one
        bool((x > 4).any())     # one
        x.tolist()              # one
        x[x > 2]                # a boolean index: the output size is read from the device
        keep.item()             # ignored
        y = torch.tensor([1, 2])  # a tensor made from host data
        x * 2                   # no read
    assert c.sites == {"item": 1, "__float__": 1, "__bool__": 1, "tolist": 1, "aten.index": 1}, c.sites
    assert c.total == 5 and c.host_tensors == 1 and y.sum() == 3
    assert torch.Tensor.item.__name__ == "item" and x.sum().item() == 15  # restored
