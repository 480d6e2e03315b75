"""Counting what the host launches: every aten op dispatched inside a block (TorchDispatchMode), and a guard that
fails on anything that makes the host wait for the device.

On a GPU each non-view op is (about) one kernel launch, so the count measured on a CPU is the host work a GPU step
cannot hide, and a count that grows with the batch is a loop in Python. The guard is the CPU stand-in for CUDA's
sync debug mode: a block that passes it has no device-to-host read (so it can be captured in a CUDA graph).

    with OpCounter() as ops:
        judge.score_candidates(users, scoring="shared")
    ops.total, ops.launches, ops.counts.most_common(5)

    with no_host_sync():
        decode_step()
"""
from __future__ import annotations

import collections
import contextlib
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops whose result the host must read before it can go on: a scalar read, an output whose size is data-dependent,
# or a kernel that reads a scalar inside (torch.multinomial checks its input with .item(), unseen by the mode).
SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique",
                      "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::multinomial"})


class HostSyncError(RuntimeError):
    pass


def _is_sync(func, args, kwargs) -> bool:
    name = func._schema.name
    if name in SYNC_OPS:
        return True
    if name == "aten::repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor") and \
            (kwargs or {}).get("output_size") is None:
        return True  # repeats as a tensor without output_size: the output length is read from the device
    if name in ("aten::index", "aten::index_put", "aten::index_put_"):  # a boolean index is a nonzero inside
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
    return False


class OpCounter(TorchDispatchMode):
    """Aten ops dispatched inside the block, by name (`counts`); `total` counts all, `launches` the non-view ones
    (what a GPU would launch). trace=True also records (op, output shapes and dtypes) in order, so two runs of a
    step can be compared for static shapes; forbid_sync=True raises HostSyncError at the first op that makes the
    host wait for the device."""

    def __init__(self, trace: bool = False, forbid_sync: bool = False) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self.views = 0
        self.trace: list[tuple] | None = [] if trace else None
        self.forbid_sync = forbid_sync

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.forbid_sync and _is_sync(func, args, kwargs):
            raise HostSyncError(f"host sync inside the block: {func}")
        self.counts[str(func.overloadpacket)] += 1
        self.views += bool(func.is_view)
        out = func(*args, **(kwargs or {}))
        if self.trace is not None:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            self.trace.append((str(func), tuple((tuple(o.shape), o.dtype) for o in outs
                                                if isinstance(o, torch.Tensor))))
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def launches(self) -> int:
        return self.total - self.views


@contextlib.contextmanager
def no_host_sync(counter: OpCounter | None = None) -> Iterator[OpCounter]:
    """Fail (HostSyncError) on any host read of device data inside the block: the sync ops of the dispatcher, and
    the Tensor methods that read values without dispatching one (tolist, numpy, bool/int/float/index of a tensor)
    and torch.cuda.synchronize."""
    def refuse(name):
        def f(*a, **k):
            raise HostSyncError(f"host sync inside the block: Tensor.{name}")
        return f

    names = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__array__")
    saved = {n: getattr(torch.Tensor, n) for n in names}
    saved_sync = torch.cuda.synchronize
    counter = counter or OpCounter()
    counter.forbid_sync = True
    try:
        for n in names:
            setattr(torch.Tensor, n, refuse(n))
        torch.cuda.synchronize = refuse("cuda.synchronize")
        with counter:
            yield counter
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
        torch.cuda.synchronize = saved_sync
