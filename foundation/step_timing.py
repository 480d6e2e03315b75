"""Seconds per named phase of a training step, without adding a host sync to the step.

On CUDA each phase is a pair of CUDA events recorded on the current stream: the GPU-timeline time between the two
points (including the GPU's idle gaps while the host launches), read only when the step has synced anyway (its one
read of the losses), so the timing adds no wait; the host's own time per phase is kept beside it. Elsewhere both
are time.perf_counter. A phase entered several times in a step (one per micro-batch) sums.

    timer = PhaseTimer(device)
    with timer.phase("rollout_scoring"):
        ...
    timer.read()             # {"rollout_scoring": seconds, ...}; timer.reset() for the next step
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


class PhaseTimer:
    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.reset()

    def reset(self) -> None:
        self._events: list[tuple[str, object, object]] = []  # (name, start, end) CUDA events
        self._host: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = end = None
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._host[name] = self._host.get(name, 0.0) + time.perf_counter() - t0
            if self.cuda:
                end.record()
                self._events.append((name, start, end))

    def read(self, host: bool = False) -> dict[str, float]:
        """Seconds per phase, in the order the phases were first entered: the GPU timeline on CUDA (host=False), the
        host clock otherwise. Call after the step's own sync: an event the GPU has not reached yet is waited for."""
        if host or not self.cuda:
            return dict(self._host)
        out: dict[str, float] = {}
        for name, start, end in self._events:
            if not end.query():
                end.synchronize()
            out[name] = out.get(name, 0.0) + start.elapsed_time(end) / 1e3
        return out
