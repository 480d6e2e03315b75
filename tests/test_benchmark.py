"""tools/benchmark.py runs end to end on the tiny model and reports naive and every shared backend side by side."""
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
    r = _run("--quick", "--quiet", "--mode", "all", "--json_out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    header = next(line for line in r.stdout.splitlines() if "cands/s" in line)
    for col in ("ratio", "bound", "of bound", "peak GB", "+mem GB", "GB/user", "MFU", "HFU", "gen tok/s"):
        assert col in header
    res = json.loads(out.read_text())
    assert res["meta"]["shape"] == "tiny" and res["meta"]["device"] == "cpu" and res["meta"]["warmup"] == 1
    rows = res["rows"]
    cells = {(r["K"], r["mode"], r["path"]) for r in rows}
    # every packing backend present on a CPU is timed for scoring and training; generation: naive vs the shared-KV
    # decoder (prefix_split) vs the repeated prefix cache (sdpa)
    for K in (5, 10):
        for mode in ("score", "train", "generate"):
            assert {(K, mode, p) for p in ("naive", "shared:prefix_split", "shared:sdpa")} <= cells
    by = {(r["K"], r["mode"], r["path"]): r for r in rows}
    for row in rows:
        assert row["cands_per_s"] > 0 and row["ratio"] > 0 and row["peak_gb"] > 0
        if row["path"] == "naive":
            assert row["ratio"] == 1.0
        # the prompt-token bound is a scoring/training bound: decoding the same new tokens has none
        assert ("token_bound" in row) == (row["mode"] != "generate")
        if row["path"] == "naive" and row["mode"] != "generate":
            assert row["token_bound"] == 1.0
    for K in (5, 10):
        shared, naive = by[(K, "score", "shared:prefix_split")], by[(K, "score", "naive")]
        # the shared path runs fewer tokens for the same candidates (the prefix once per user): bound = the ratio
        assert shared["tokens"] < naive["tokens"]
        assert abs(shared["token_bound"] - naive["tokens"] / shared["tokens"]) < 1e-9
        assert abs(shared["of_bound"] - shared["ratio"] / shared["token_bound"]) < 1e-9
        # the dense mask computes every tile of the padded row; the split kernel computes no more than that
        dense = by[(K, "score", "shared:sdpa")]
        assert dense["computed_pairs"] >= shared["computed_pairs"] >= shared["pairs"]
        assert by[(K, "generate", "shared:prefix_split")]["generated_tokens"] > 0


def test_benchmark_help_and_bad_flag():
    assert _run("--help").returncode == 0
    r = _run("--shape", "tiny", "--Ks", "0")
    assert r.returncode == 2 and "--Ks" in r.stderr
    r = _run("--shape", "tiny", "--device", "cpu", "--backends", "flex_attention")
    assert r.returncode == 2 and "--backends" in r.stderr
