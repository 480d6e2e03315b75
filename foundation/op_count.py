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

    with count_host_syncs() as syncs:     # the same reads, counted instead of refused
        trainer.update(rollout)
    syncs.total, syncs.sites
"""
from __future__ import annotations

import collections
import contextlib
import functools
from typing import Any, Callable, Iterator

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


_READ_METHODS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__array__")


@contextlib.contextmanager
def _patched_reads(on_read: Callable[[str, Any], None], depth: list[int] | None = None) -> Iterator[None]:
    """Call on_read(name, tensor) at every Tensor value read (_READ_METHODS) inside the block, and
    on_read("cuda.synchronize", None) at torch.cuda.synchronize; then do the read. depth[0] is raised while a read
    runs (the scalar op it dispatches inside is part of it)."""
    saved = {n: getattr(torch.Tensor, n) for n in _READ_METHODS}
    saved_sync = torch.cuda.synchronize
    depth = depth if depth is not None else [0]

    def wrap(name, f):
        @functools.wraps(f)
        def read(self, *a, **k):
            on_read(name, self)
            depth[0] += 1
            try:
                return f(self, *a, **k)
            finally:
                depth[0] -= 1
        return read

    def sync(*a, **k):
        on_read("cuda.synchronize", None)
        return saved_sync(*a, **k)

    try:
        for n, f in saved.items():
            setattr(torch.Tensor, n, wrap(n, f))
        torch.cuda.synchronize = sync
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
        torch.cuda.synchronize = saved_sync


@contextlib.contextmanager
def no_host_sync(counter: OpCounter | None = None) -> Iterator[OpCounter]:
    """Fail (HostSyncError) on any host read of device data inside the block: the sync ops of the dispatcher, and
    the Tensor methods that read values without dispatching one (tolist, numpy, bool/int/float/index of a tensor)
    and torch.cuda.synchronize."""
    def refuse(name, _tensor):
        raise HostSyncError(f"host sync inside the block: {'torch.' if '.' in name else 'Tensor.'}{name}")

    counter = counter or OpCounter()
    counter.forbid_sync = True
    with _patched_reads(refuse), counter:
        yield counter


class HostSyncCount(TorchDispatchMode):
    """Host reads of device data inside a count_host_syncs block, counted (not refused): `total`, and `sites` by
    what read (a Tensor method, torch.cuda.synchronize, or a dispatcher sync op reached without one, e.g. a boolean
    index). A read through a Tensor method counts once, although it dispatches a scalar read inside.

    `host_tensors` counts the tensors made from host data inside the block (torch.tensor, as_tensor, from_numpy:
    aten::lift_fresh). Made for a CUDA device, each is a copy from pageable host memory, which waits for the
    stream (a sync the CPU run cannot see); on a CPU they are counted whether or not they would go to a device."""

    def __init__(self, ignore: Callable[[torch.Tensor], bool] | None = None) -> None:
        super().__init__()
        self.sites: collections.Counter = collections.Counter()
        self.host_tensors = 0
        self.ignore = ignore
        self.depth = [0]  # > 0 inside a counted Tensor read

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def ignored(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and self.ignore is not None and bool(self.ignore(t))

    def on_read(self, name: str, tensor: Any) -> None:
        if not self.ignored(tensor):
            self.sites[name] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.depth[0] and _is_sync(func, args, kwargs) and not self.ignored(args[0] if args else None):
            self.sites[str(func.overloadpacket)] += 1
        if func._schema.name == "aten::lift_fresh":
            self.host_tensors += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_syncs(ignore: Callable[[torch.Tensor], bool] | None = None) -> Iterator[HostSyncCount]:
    """Count the host reads of device data inside the block (what no_host_sync refuses), see HostSyncCount.

    ignore(tensor) -> True leaves a read of that tensor out: one that lives on the host on every device (the step
    counters of torch's for-each AdamW) costs no sync on a GPU, and on a CPU nothing else tells it apart."""
    count = HostSyncCount(ignore)
    with _patched_reads(count.on_read, count.depth), count:
        yield count
