"""Where the time of one train.py PL-PPO step goes (a stage of tools/perf/gpu_perf.sh; runs on CPU too).

Builds the trainer exactly as train.py does (trainers.ppo_trainer.PPOTrainer, the flags below plus any train.py
flags after --), runs --warmup steps, then --steps timed steps of `training_step` (no checkpoint is written) and
reports what train.py logs for them (medians): step_seconds, tokens, MFU/HFU and the per-phase times `time_*_s`
(data, generation, rollout scoring, reference, update forwards, update backwards with checkpointing's recompute,
optimiser = clipping + AdamW + zero_grad; CUDA events on the GPU's timeline, the host clock on CPU) as `phase_s`, the
host's own time in each phase beside them on CUDA (`phase_host_s`: launching, Python, syncs: what the GPU may be
waiting on), the wall time per step with a final synchronize; then, on CUDA, one step under torch.profiler for the
GPU's busy fraction (union of kernel intervals / step wall) and kernel time by category.

Writes OUT/step_<tag>.json (OUT: --out, else $OUT, else /tmp). --fused_adamw is train.py's --adamw_implementation
fused (the default `auto` is already fused on CUDA).

    python tools/perf/step_profile.py --model DIR --data DIR --batch_size 16 --fused_adamw --tag bs16_fused
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

CATEGORIES = [("attention", ("flash", "fmha", "attention", "sdpa", "efficient")),
              ("optimizer", ("multi_tensor", "fused_adam", "adam")),
              ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "sm90", "cublas", "matmul", "wgmma")),
              ("copy_cast_index", ("copy", "convert", "cat", "index", "gather", "scatter")),
              ("norm_reduce", ("reduce", "norm", "sum", "mean", "softmax", "logsumexp"))]


def _category(name: str) -> str:
    n = name.lower()
    return next((c for c, keys in CATEGORIES if any(k in n for k in keys)), "elementwise_other")


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total / 1e6  # profiler times are in microseconds


def phases_of(record: dict) -> dict[str, float]:
    """train.py's per-phase keys of a metrics.jsonl record, by phase name (time_update_forward_s -> update_forward)."""
    return {k[len("time_"):-len("_s")]: v for k, v in record.items() if k.startswith("time_") and k.endswith("_s")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--K", type=int, default=20)
    ap.add_argument("--ppo_epochs", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--fused_adamw", action="store_true")
    ap.add_argument("--no_profile", action="store_true", help="skip the profiled step")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--out", default=None)
    a, extra = ap.parse_known_args(argv)
    extra = [x for x in extra if x != "--"]
    out_dir = Path(a.out or os.environ.get("OUT") or "/tmp")
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"tag": a.tag, "batch_size": a.batch_size, "K": a.K, "ppo_epochs": a.ppo_epochs,
                 "fused_adamw": a.fused_adamw, "extra_flags": extra}
    target = out_dir / f"step_{a.tag}.json"
    try:
        run(a, extra, res)
    except torch.OutOfMemoryError as e:
        res["oom"] = str(e).splitlines()[0]
    target.write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return 0


def run(a: argparse.Namespace, extra: list[str], res: dict) -> None:
    from foundation.distributed import build_accelerator
    from trainers.ppo_trainer import PPOTrainer, parse_config

    flags = ["--model_name_or_path", a.model, "--dataset_path", a.data, "--dataset_type", "other", "--K", str(a.K),
             "--K_eval", str(min(10, a.K)), "--batch_size", str(a.batch_size), "--rankings_per_user", "4",
             "--ppo_epochs", str(a.ppo_epochs), "--scoring", "shared", "--gradient_checkpointing",
             "--max_len_per_item", "64", "--user_window_size", "10", "--lr_actor", "1e-6", "--max_steps", "100000",
             "--save_every", "100000", "--print_every", "0", "--eval_every", "0", "--no_plot",
             "--output_dir", f"/tmp/step_profile_{a.tag}", "--overwrite_output_dir",
             *(["--adamw_implementation", "fused"] if a.fused_adamw else []), *extra]
    cfg = parse_config(flags)
    cfg.validate()
    t0 = time.perf_counter()
    tr = PPOTrainer(cfg, build_accelerator(cfg, cfg.gradient_accumulation_steps))
    tr.prepare_output_dir()
    res["load_s"] = time.perf_counter() - t0
    cuda = tr.acc.device.type == "cuda"
    res["device"] = torch.cuda.get_device_name(tr.acc.device) if cuda else "cpu"
    res["optimizer"] = {k: tr.optimizer.param_groups[0].get(k) for k in ("fused", "foreach")}
    for s in range(1, a.warmup + 1):
        tr.training_step(s)
    if cuda:
        torch.cuda.synchronize()
    walls, recs, host = [], [], collections.defaultdict(list)
    for s in range(a.warmup + 1, a.warmup + a.steps + 1):
        t0 = time.perf_counter()
        rec, _ = tr.training_step(s)
        if cuda:
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
        recs.append(rec)
        for k, v in tr.step_timer.read(host=True).items():
            host[k].append(v)
    med = statistics.median
    res["s_per_step"] = med(walls)
    numeric = {k for r in recs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    res["train_py_record"] = {k: med(r[k] for r in recs if k in r) for k in sorted(numeric)}
    res["phase_s"] = phases_of(res["train_py_record"])
    if cuda:
        res["phase_host_s"] = {k: med(v) for k, v in host.items()}
        res["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if cuda and not a.no_profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            tr.training_step(a.warmup + a.steps + 1)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        by, spans, n = collections.defaultdict(float), [], 0
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time_total > 0:
                by[_category(ev.name)] += ev.device_time_total / 1e6
                spans.append((ev.time_range.start, ev.time_range.end))
                n += 1
        busy = _union_seconds(spans)
        res["profile"] = {"wall_s": wall, "gpu_busy_s": busy, "gpu_busy_fraction": busy / wall, "kernels": n,
                          "kernel_s_by_category": dict(sorted(by.items(), key=lambda x: -x[1]))}


if __name__ == "__main__":
    sys.exit(main())
