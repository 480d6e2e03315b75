"""tools/perf/: the device script runs every stage in its --smoke mode on a CPU and writes every result file, and the
CPU op counter and the whole-step counter (update_cost.py) compare trees side by side."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fixtures.ppo_train import ppo_assets  # noqa: F401 (session fixture)

REPO = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHON": sys.executable, **extra}


def test_gpu_perf_smoke_runs_every_stage(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(["bash", "tools/perf/gpu_perf.sh", "--smoke", "--out", str(out)], cwd=REPO, text=True,
                       capture_output=True, env=_env(WORK=str(tmp_path / "work")), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    limits = re.search(r"stage limits: (.*) \(total (\d+) s\)", r.stdout)
    assert limits and int(limits.group(2)) <= 480 and len(limits.group(1).split()) == 6
    assert all(f"== {s}: rc=0" in r.stdout for s in ("env", "assets", "step_bs4", "step_bs16_fused", "decode",
                                                      "flex", "summary")), r.stdout[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing"] == []
    for tag, fused in (("bs4", None), ("bs16_fused", True)):
        step = json.loads((out / f"step_{tag}.json").read_text())
        assert step["optimizer"]["fused"] == fused and step["s_per_step"] > 0
        phases = step["phase_s"]  # train.py's time_*_s keys (CPU: host clock)
        assert set(phases) == {"data", "rollout_scoring", "update_forward", "update_backward", "optimizer"}
        assert all(v > 0 for v in phases.values())
        assert sum(phases.values()) <= step["train_py_record"]["step_seconds"] <= step["s_per_step"]
        assert summary[f"step_{tag}"]["phases_s"] == phases
        assert step["train_py_record"]["tokens"] > 0  # what train.py logs, copied as it is
    assert summary["step_bs16_fused"]["tokens"] > summary["step_bs4"]["tokens"]  # more users per step
    decode = summary["decode_tiny_u2_k5"]
    assert decode["eager_generate_s"] > 0 and decode["hf_generate_s"] > 0 and "graph_generate_s" not in decode
    assert {(r["mode"], r["path"]) for r in summary["flex"]["rows"]} >= {("score", "shared:prefix_split")}
    assert (out / "logs.tgz").is_file()


def test_gpu_perf_figures_set_smoke(tmp_path):
    """--set figures (what the earlier device script, gpu_figures, measured beside the full step): the LoRA step, the
    component benchmark and RRec's step each write their file and the summary reports them, none missing."""
    out = tmp_path / "out"
    r = subprocess.run(["bash", "tools/perf/gpu_perf.sh", "--set", "figures", "--smoke", "--out", str(out)], cwd=REPO,
                       text=True, capture_output=True, env=_env(WORK=str(tmp_path / "work")), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    limits = re.search(r"set figures: stage limits: (.*) \(total (\d+) s\)", r.stdout)
    assert limits and int(limits.group(2)) <= 480
    assert all(f"== {s}: rc=0" in r.stdout for s in ("env", "assets", "step_lora", "benchmark", "rrec", "summary"))
    assert "== step_bs4" not in r.stdout and "== gpu_tests" not in r.stdout  # other sets' stages
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing"] == []
    lora = json.loads((out / "step_lora.json").read_text())
    assert lora["extra_flags"][:2] == ["--use_lora", "--lora_r"] and lora["train_py_record"]["lr"] == 1e-5
    assert summary["step_lora"]["phases_s"] == lora["phase_s"]
    assert {(row["mode"], row["path"]) for row in summary["benchmark"]["rows"]} >= {("score", "shared:prefix_split")}
    assert summary["rrec"]["steps"] == 2 and summary["rrec"]["s_per_step"] > 0


def test_gpu_perf_refuses_an_unknown_flag(tmp_path):
    r = subprocess.run(["bash", "tools/perf/gpu_perf.sh", "--smok"], cwd=REPO, text=True, capture_output=True,
                       env=_env(WORK=str(tmp_path)), timeout=60)
    assert r.returncode == 2 and "--smok" in r.stderr
    r = subprocess.run(["bash", "tools/perf/gpu_perf.sh", "--set", "figure"], cwd=REPO, text=True,
                       capture_output=True, env=_env(WORK=str(tmp_path)), timeout=60)
    assert r.returncode == 2 and "--set figure: unknown set" in r.stderr


def test_count_ops_table(tmp_path):
    js = tmp_path / "ops.json"
    # 2 and 4 users: with 1 user some reshapes are views that copy for more users (2 ops per layer, not growth)
    r = subprocess.run([sys.executable, "tools/perf/count_ops.py", "--users", "2", "4", "--K", "2",
                        "--history_items", "1", "--tokens_per_item", "4", "--json_out", str(js)], cwd=REPO,
                       text=True, capture_output=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    by = json.loads(js.read_text())["results"]["this"]["by_users"]
    for key in ("attention_ops_per_layer", "score_ops_per_layer", "train_ops_per_layer", "step_ops"):
        assert by["2"][key] == by["4"][key] > 0, key  # this checkout: nothing grows with the users
    assert "| step: 1 scoring + 2 training passes, 36 layers |" in r.stdout
    bad = subprocess.run([sys.executable, "tools/perf/count_ops.py", "--vs", str(tmp_path)], cwd=REPO, text=True,
                         capture_output=True, env=_env(), timeout=60)
    assert bad.returncode == 2 and "--vs" in bad.stderr


def test_update_cost_counts_reads_that_do_not_grow_with_users(ppo_assets, tmp_path):
    """tools/perf/update_cost.py on train.py's own trainer: the update reads the device at most once per optimiser
    step and makes no tensor from host data; the whole step's reads do not grow with the users."""
    data, model = ppo_assets
    js = tmp_path / "uc.json"
    r = subprocess.run([sys.executable, "tools/perf/update_cost.py", "--users", "1", "3", "--K", "3",
                        "--max_len_per_item", "4", "--model", str(model), "--data", str(data), "--json_out", str(js)],
                       cwd=REPO, text=True, capture_output=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    by = json.loads(js.read_text())["results"]["this"]["by_users"]
    for u in ("1", "3"):
        assert by[u]["update_syncs"] <= by[u]["optimizer_steps"] == 2 and by[u]["update_host_tensors"] == 0
    assert by["1"]["step_syncs"] == by["3"]["step_syncs"] > 0
    assert "| whole step: host reads of device data |" in r.stdout
    bad = subprocess.run([sys.executable, "tools/perf/update_cost.py", "--vs", str(tmp_path)], cwd=REPO, text=True,
                         capture_output=True, env=_env(), timeout=60)
    assert bad.returncode == 2 and "--vs" in bad.stderr
