"""--report_to: the tracker's run lives inside --output_dir (never the working directory) and holds every number of
metrics.jsonl at its step plus the final validation (foundation.distributed.log_metrics is the one path)."""
from __future__ import annotations

import glob
import json
import math
import struct
import subprocess

import pytest

from tests.fixtures.ppo_train import ppo_assets, train_cmd, train_env  # noqa: F401 (session fixture)

FAST = ["--K", "4", "--K_eval", "3", "--max_len_per_item", "4", "--user_window_size", "3", "--num_valid_samples", "6",
        "--print_every", "0", "--batch_size", "2", "--max_steps", "2", "--save_every", "2"]


@pytest.fixture(scope="module")
def assets(ppo_assets):
    return ppo_assets


def _run_in(cwd, cmd, **env):
    cwd.mkdir()
    r = subprocess.run(cmd, cwd=cwd, env={**train_env(), **env}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in cwd.iterdir()) == [], "tracker output landed in the working directory"
    return r


def _expected(out) -> dict[tuple[int, str], float]:
    """(step, tag) -> value for every number in metrics.jsonl, and the final validation the run printed."""
    want = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        want.update({(rec["step"], k): float(v) for k, v in rec.items()
                     if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)})
    return want


def _check(got: dict[tuple[int, str], float], out, stdout: str) -> None:
    want = _expected(out)
    assert len(want) >= 2 * 15
    missing = [k for k in want if k not in got]
    assert not missing, f"metrics.jsonl values the tracker lacks: {missing[:5]}"
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
    printed = float(stdout.split("validation at step 2: NDCG@3 of ")[1].split(" = ")[1].split()[0])
    assert got[(2, "final_validation/NDCG@3")] == pytest.approx(printed, abs=1e-4)
    assert got[(2, "final_validation/n")] == 6


def test_tensorboard_run_lives_in_output_dir_with_every_metric(assets, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data, model = assets
    out = tmp_path / "run"
    r = _run_in(tmp_path / "cwd", train_cmd(data, model, out, *FAST, "--report_to", "tensorboard"))
    acc = EventAccumulator(str(out / "ourrec_ppo"))
    acc.Reload()
    got = {(e.step, tag): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    _check(got, out, r.stdout)


def _wandb_history(run_dir) -> dict[tuple[int, str], float]:
    """The history rows of an offline wandb run: its .wandb file is a LevelDB-style log of protobuf Records
    (7-byte header, 32 KiB blocks of chunks with a 7-byte header: crc, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data = open(glob.glob(str(run_dir / "offline-run-*" / "*.wandb"))[0], "rb").read()
    pos, block, payloads, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            payloads.append(buf)
    got = {}
    for p in payloads:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(p)
        if rec.WhichOneof("record_type") == "history":
            row = {it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in rec.history.item}
            got.update({(row["_step"], k): float(v) for k, v in row.items() if not k.startswith("_")})
    return got


def test_wandb_run_lives_in_output_dir_with_every_metric(assets, tmp_path):
    pytest.importorskip("wandb")
    data, model = assets
    out = tmp_path / "run"
    r = _run_in(tmp_path / "cwd", train_cmd(data, model, out, *FAST, "--report_to", "wandb"), WANDB_MODE="offline")
    assert (out / "wandb").is_dir()
    _check(_wandb_history(out / "wandb"), out, r.stdout)
