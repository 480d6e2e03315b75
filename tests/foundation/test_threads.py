"""foundation/threads.py: every script sets torch's intra-op threads on entry (foundation.errors.exit_on_user_error)
to half the usable cores shared among the node's processes, unless OURREC_THREADS or OMP_NUM_THREADS /
MKL_NUM_THREADS say otherwise (issue 28: torch's one-thread-per-core default ran the demo's step 5-6x slower on a
shared 2-core machine, docs/performance.md "Threads")."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from foundation.threads import default_threads, thread_setting, usable_cores
from tests.fixtures.scripts import REPO


def test_thread_setting_precedence_and_default():
    assert [default_threads(c) for c in (1, 2, 3, 4, 16, 64)] == [1, 1, 1, 2, 8, 32]
    assert default_threads(16, processes=4) == 2 and default_threads(16, processes=32) == 1
    assert thread_setting({}, cores=16) == (8, "default: half of 16 cores / 1 process(es)")
    assert thread_setting({"LOCAL_WORLD_SIZE": "4"}, cores=16)[0] == 2
    assert thread_setting({"LOCAL_WORLD_SIZE": "junk"}, cores=16)[0] == 8
    assert thread_setting({"OMP_NUM_THREADS": "3"}, cores=16) == (3, "OMP_NUM_THREADS")
    assert thread_setting({"MKL_NUM_THREADS": "5"}, cores=16) == (5, "MKL_NUM_THREADS")
    assert thread_setting({"OMP_NUM_THREADS": "4,2"}, cores=16) == (4, "OMP_NUM_THREADS")  # nested: outer level
    assert thread_setting({"OURREC_THREADS": "6", "OMP_NUM_THREADS": "1"}, cores=16) == (6, "OURREC_THREADS")
    for bad in ("0", "-2", "many", "1.5"):
        with pytest.raises(ValueError, match=f"OURREC_THREADS={bad!r}: must be a whole number >= 1"):
            thread_setting({"OURREC_THREADS": bad}, cores=16)


_PROBE = """
import os, sys
from foundation.errors import exit_on_user_error
if sys.argv[1] == "torch_first":
    import torch
with exit_on_user_error():
    import torch
    print(torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"))
"""


def _probe(order: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OURREC_THREADS")}
    env.update(PYTHONPATH=str(REPO), **env_vars)
    return subprocess.run([sys.executable, "-c", _PROBE, order], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_scripts_get_the_default_unless_told_otherwise():
    """A script's torch runs with the default whether torch was imported before the script's handler (train.py) or
    after it (the env carries it); OURREC_THREADS and OMP_NUM_THREADS win; a bad value is one line, exit 2."""
    cores = usable_cores()
    want = str(default_threads(cores))
    for order in ("torch_first", "torch_later"):
        r = _probe(order)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [want, want], order
    # an override (at most the cores: more would only oversubscribe them), after and before torch loads
    two = str(min(2, cores))
    assert _probe("torch_first", OMP_NUM_THREADS="2").stdout.split() == [two, "2"]
    assert _probe("torch_later", OURREC_THREADS="2", OMP_NUM_THREADS="1").stdout.split() == [two, two]
    r = _probe("torch_later", OURREC_THREADS="lots")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "-c: error: OURREC_THREADS='lots': must be a whole number >= 1 (threads per process)"]


def test_configure_threads_caps_at_the_cores(monkeypatch):
    import torch

    from foundation.threads import configure_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # both restored afterwards: an explicit number sets them
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    try:
        assert configure_threads(usable_cores() + 3) == usable_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
