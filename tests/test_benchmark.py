"""tools/benchmark.py runs end to end on the tiny model and reports naive vs shared side by side."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/benchmark.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_benchmark_quick_prints_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    r = _run("--quick", "--quiet", "--json_out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    header = next(l for l in lines if "cands/s" in l)
    assert "ratio" in header and "peak_mem_GB" in header and "MFU" in header
    table = [l for l in lines if l.count("|") == 8 and "cands/s" not in l]
    assert len(table) == 8  # K in (5, 10) x (score, train) x (naive, shared)
    assert {tuple(c.strip() for c in l.split("|")[:3]) for l in table} == {
        (k, m, p) for k in ("5", "10") for m in ("score", "train") for p in ("naive", "shared")}
    res = json.loads(out.read_text())
    assert res["meta"]["shape"] == "tiny" and res["meta"]["device"] == "cpu"
    rows = res["rows"]
    assert len(rows) == 8
    for row in rows:
        assert row["cands_per_s"] > 0 and row["tokens_per_s"] > 0 and row["ratio"] > 0
        if row["path"] == "naive":
            assert row["ratio"] == 1.0
    # the shared path runs strictly fewer tokens for the same candidates (the prefix once per user)
    by = {(r["K"], r["mode"], r["path"]): r for r in rows}
    for K in (5, 10):
        assert by[(K, "score", "shared")]["tokens"] < by[(K, "score", "naive")]["tokens"]


def test_benchmark_help_and_bad_flag():
    assert _run("--help").returncode == 0
    r = _run("--shape", "tiny", "--Ks", "0")
    assert r.returncode == 2 and "--Ks" in r.stderr
