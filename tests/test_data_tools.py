"""tools/ scripts on a processed synthetic dataset."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.scripts import load_script
from fixtures.synthetic_amazon import build_processed_dataset

REPO = Path(__file__).resolve().parents[1]
CAT = "Video_Games"


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return build_processed_dataset(tmp_path_factory.mktemp("raw"), tmp_path_factory.mktemp("data"), CAT,
                                   n_users=120, n_items=80, n_subcats=3, min_items=10)


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"tools/{name}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_analyze(dataset_dir):
    analyze = load_script("tools/analyze_processed_dataset.py").analyze

    r = analyze(str(dataset_dir))
    st = r["stats_json"]
    assert (r["users"], r["items"], r["interactions"]) == (st["users"], st["items"], st["interactions"])
    assert {s: v["examples"] for s, v in r["splits"].items()} == st["splits"]
    assert min(r["history_length_counts"]) == 1 and max(r["history_length_counts"]) == 10
    p = _tool("analyze_processed_dataset.py", "--dataset_dir", str(dataset_dir))
    assert p.returncode == 0, p.stderr
    assert f"users {st['users']}" in p.stdout and "history length counts" in p.stdout and "test" in p.stdout


def test_analyze_with_tokenizer(dataset_dir, tmp_path):
    tiny = pytest.importorskip("fixtures.tiny_model")
    tok_dir = tmp_path / "tok"
    tiny.build_tiny_tokenizer(tok_dir)
    p = _tool("analyze_processed_dataset.py", "--dataset_dir", str(dataset_dir), "--tokenizer", str(tok_dir))
    assert p.returncode == 0, p.stderr
    assert "title tokens" in p.stdout and "item text tokens" in p.stdout


def test_check_common_user(dataset_dir):
    common_users = load_script("tools/check_common_user.py").common_users

    r = common_users(str(dataset_dir), str(dataset_dir))
    assert r["pairs"]["train&test"] <= r["splits"]["test"]
    assert r["other"]["shared"] == r["other"]["users"]
    p = _tool("check_common_user.py", "--dataset_dir", str(dataset_dir))
    assert p.returncode == 0, p.stderr
    assert "shared train&test" in p.stdout


def test_find_user_history(dataset_dir):
    from datasets import load_from_disk

    ex = load_from_disk(str(dataset_dir))["test"][0]
    p = _tool("find_user_history.py", "--dataset_dir", str(dataset_dir), "--user_id", ex["user_id"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert ex["user_id"] in lines[0]
    assert any(ex["item_title"] in line and "test" in line for line in lines[1:])
    assert all(t in p.stdout for t in ex["history_item_title"])
    dates = [line.split()[0] for line in lines[1:]]
    assert dates == sorted(dates)
    p = _tool("find_user_history.py", "--dataset_dir", str(dataset_dir), "--user_id", "NOPE")
    assert p.returncode == 2 and "error:" in p.stderr and "NOPE" in p.stderr
    p = _tool("check_common_user.py", "--dataset_dir", str(dataset_dir / "missing"))
    assert p.returncode == 2 and "--dataset_dir" in p.stderr


