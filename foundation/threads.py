"""How many threads torch's CPU kernels use in our scripts (intra-op parallelism), set once at the start of every
script (foundation.errors.exit_on_user_error calls configure_threads on entry).

torch's own default is one thread per core, whatever else runs on the machine. On a shared machine that
oversubscribes the cores: OpenMP's threads spin at every parallel region's barrier waiting for a thread that the
kernel has descheduled. On the demo's training step (2-core machine shared with other jobs) torch's default ran
5-6x slower per step and 3-4x per run than one thread (docs/performance.md, "Threads"). Our default therefore
leaves half the cores to the rest of the machine and shares the other half among the processes of a node:

    threads = max(1, usable cores // (2 * LOCAL_WORLD_SIZE))

A fixed number, not one read off the current load: the thread count changes the order of floating-point sums, so a
load-dependent count would make a seeded run's numbers depend on what else ran.

Overrides, first match wins: OURREC_THREADS=N (ours, for every script), then OMP_NUM_THREADS / MKL_NUM_THREADS (the
usual variables; torchrun and accelerate launch set OMP_NUM_THREADS for the processes they start).
"""
from __future__ import annotations

import os
import sys
from typing import Mapping

THREADS_ENV = "OURREC_THREADS"
STANDARD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """The processors this process may run on (its CPU affinity: taskset, a container's cpuset), else the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def local_processes(env: Mapping[str, str] = os.environ) -> int:
    """Processes of this run on this node: LOCAL_WORLD_SIZE (torchrun, accelerate launch), else 1."""
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        return 1


def default_threads(cores: int, processes: int = 1) -> int:
    """Half the usable cores, shared among the node's processes; at least 1."""
    return max(1, cores // (2 * max(1, processes)))


def _positive(name: str, text: str) -> int:
    # OMP_NUM_THREADS may be a nesting list ("4,2"): its first entry is the outer (intra-op) level
    first = text.split(",")[0].strip()
    try:
        n = int(first)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={text!r}: must be a whole number >= 1 (threads per process)")
    return n


def thread_setting(env: Mapping[str, str] = os.environ, cores: int | None = None) -> tuple[int, str]:
    """(threads, where the number comes from): OURREC_THREADS, else OMP_NUM_THREADS / MKL_NUM_THREADS, else the
    default. ValueError (one line naming the variable) for a value that is not a number >= 1."""
    for name in (THREADS_ENV, *STANDARD_ENVS):
        if env.get(name, "").strip():
            return _positive(name, env[name]), name
    processes = local_processes(env)
    cores = usable_cores() if cores is None else cores
    return default_threads(cores, processes), f"default: half of {cores} cores / {processes} process(es)"


def configure_threads(threads: int | None = None) -> int:
    """Set this process's intra-op threads (threads: an explicit number, e.g. from a flag; else thread_setting()),
    at most the usable cores (more only oversubscribe them; torch caps an OMP_NUM_THREADS it reads the same way),
    and return it. Before torch is imported, the environment carries the number (OpenMP and MKL read it when torch
    loads, and child processes inherit it); once torch is loaded, torch.set_num_threads applies it."""
    if threads is None:
        threads, source = thread_setting()
    else:
        threads, source = _positive("threads", str(threads)), "explicit"
    threads = min(threads, usable_cores())
    if source not in STANDARD_ENVS:  # a number the user set in OMP_/MKL_NUM_THREADS stays as it is
        for name in STANDARD_ENVS:
            os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads") and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
