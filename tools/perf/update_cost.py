"""Host work of a whole train.py PL-PPO step and of its update, counted on CPU: aten ops, host reads of device data
(syncs on a GPU) and tensors made from host data (synchronous copies on a GPU), at several user counts, this
checkout beside another one (--vs DIR, e.g. a checkout of the main branch) in one run; --time_updates N then times
N updates of one rollout (for whole-process timing from outside, e.g. fixed users vs a token budget).

Per tree and user count (users per step on the one process; --micro_batch_users B splits them into micro-batches
of B users with --gradient_accumulation_steps users/B, --max_tokens_per_micro_batch T by a token budget instead),
the trainer is built exactly as train.py builds it on the demo data and the tiny demo model (or --model/--data),
runs one step, then counts one `training_step` and the `update` of the next rollout. The optimiser's step counters
(host tensors under torch's for-each AdamW) are not counted as reads. Each tree runs in its own process with
PYTHONPATH=tree; the counter (foundation/op_count.py) is always this checkout's.

    python tools/perf/update_cost.py --vs /path/to/main --users 4 16 --json_out update_cost.json
    python tools/perf/update_cost.py --users 16 --micro_batch_users 4 --time_updates 5 --time_only
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]  # this checkout
# the counter loader and the checkout's commit: one home, count_ops.py beside this script (sys.path[0])
from count_ops import _commit, _counter_module, foreign_vs, run_workers, write_json_out  # noqa: E402


def demo_assets(root: Path) -> tuple[Path, Path]:
    """The demo's data and tiny model under root (built with tools/make_demo.py if missing)."""
    data, model = root / "data" / "Video_Games_5_2021-1-2023-12", root / "tiny-qwen"
    if not (data.is_dir() and (model / "config.json").is_file()):
        subprocess.run([sys.executable, str(HERE / "tools" / "make_demo.py"), "--out_dir", str(root),
                        "--skip_existing", "--preprocess"], check=True, capture_output=True, text=True)
    return data, model


def _trainer(a: argparse.Namespace, users: int, out: Path):
    import torch

    from foundation.distributed import build_accelerator
    from trainers.ppo_trainer import PPOTrainer, parse_config

    torch.set_num_threads(1)
    per_micro = a.micro_batch_users or users
    if users % per_micro:
        raise SystemExit(f"--micro_batch_users {per_micro}: must divide --users {users}")
    flags = ["--model_name_or_path", str(a.model), "--dataset_path", str(a.data), "--dataset_type", "other",
             "--K", str(a.K), "--K_eval", str(min(10, a.K)), "--batch_size", str(per_micro),
             "--gradient_accumulation_steps", str(users // per_micro), "--rankings_per_user", "4",
             "--ppo_epochs", str(a.ppo_epochs), "--scoring", "shared", "--max_len_per_item", str(a.max_len_per_item),
             "--user_window_size", "10", "--max_steps", "100000", "--save_every", "100000", "--print_every", "0",
             "--no_plot", "--device", "cpu", "--output_dir", str(out), "--overwrite_output_dir",
             *(["--gradient_checkpointing"] if a.gradient_checkpointing else []),
             *(["--max_tokens_per_micro_batch", str(a.max_tokens_per_micro_batch)]
               if a.max_tokens_per_micro_batch else [])]
    cfg = parse_config(flags)
    cfg.validate()
    tr = PPOTrainer(cfg, build_accelerator(cfg, cfg.gradient_accumulation_steps))
    tr.prepare_output_dir()
    return tr


def time_updates(a: argparse.Namespace) -> None:
    """--time_only: build, one warm step, one rollout, then --time_updates updates of it; prints seconds per update
    (a process to time from outside: its wall time is mostly the updates)."""
    users = a.users[0]
    with tempfile.TemporaryDirectory() as tmp:
        tr = _trainer(a, users, Path(tmp) / "run")
        tr.training_step(1)
        rollout = tr.make_experience(2)
        t0 = time.perf_counter()
        for _ in range(a.time_updates):
            tr.update(rollout)
        dt = (time.perf_counter() - t0) / max(1, a.time_updates)
    print(json.dumps({"users": users, "micro_batch_users": a.micro_batch_users,
                      "max_tokens_per_micro_batch": a.max_tokens_per_micro_batch, "seconds_per_update": dt}))


def worker(a: argparse.Namespace) -> dict:
    oc = _counter_module()
    res: dict = {"commit": _commit(Path.cwd()), "by_users": {}}
    for users in a.users:
        with tempfile.TemporaryDirectory() as tmp:
            tr = _trainer(a, users, Path(tmp) / "run")
            tr.training_step(1)  # warm: optimiser state, caches

            def ignore(t) -> bool:  # the optimiser's own step counters: host tensors on every device
                return any(t is s.get("step") for s in tr.optimizer.state.values())

            with oc.count_host_syncs(ignore) as step_syncs, oc.OpCounter() as step_ops:
                tr.training_step(2)
            rollout = tr.make_experience(3)
            micro = len(tr.micro_batches(rollout.prompts)) if hasattr(tr, "micro_batches") else \
                -(-len(rollout.prompts) // tr.cfg.batch_size)
            with oc.count_host_syncs(ignore) as upd_syncs, oc.OpCounter() as upd_ops:
                tr.update(rollout)
            row = {"layers": tr.judge.lm.config.num_hidden_layers, "micro_batches": micro,
                   "optimizer_steps": tr.cfg.ppo_epochs,
                   "tokens_per_user": sum(p.n_tokens(True) for p in rollout.prompts) / len(rollout.prompts),
                   "step_ops": step_ops.total, "step_launches": step_ops.launches, "step_syncs": step_syncs.total,
                   "step_host_tensors": step_syncs.host_tensors, "step_sync_sites": dict(step_syncs.sites),
                   "update_ops": upd_ops.total, "update_launches": upd_ops.launches,
                   "update_syncs": upd_syncs.total, "update_host_tensors": upd_syncs.host_tensors,
                   "update_sync_sites": dict(upd_syncs.sites)}
            row["update_syncs_per_optimizer_step"] = row["update_syncs"] / row["optimizer_steps"]
            if a.time_updates:
                t0 = time.perf_counter()
                for _ in range(a.time_updates):
                    tr.update(rollout)
                row["seconds_per_update"] = (time.perf_counter() - t0) / a.time_updates
            res["by_users"][str(users)] = row
    return res


ROWS = [("micro_batches", "micro-batches per optimiser step"),
        ("update_syncs", "update: host reads of device data"),
        ("update_syncs_per_optimizer_step", "update: host reads per optimiser step"),
        ("update_host_tensors", "update: tensors made from host data (a sync each on a GPU)"),
        ("update_ops", "update: aten ops"),
        ("update_launches", "update: non-view ops (GPU launches)"),
        ("step_syncs", "whole step: host reads of device data"),
        ("step_host_tensors", "whole step: tensors made from host data"),
        ("step_ops", "whole step: aten ops"),
        ("step_launches", "whole step: non-view ops")]


def _fmt(v) -> str:
    return f"{v:,.2f}" if isinstance(v, float) and not v.is_integer() else f"{int(v):,}"


def table(res: dict, users: list[int]) -> str:
    names = list(res)
    head = "| per step | " + " | ".join(f"{n}, {u} users" for u in users for n in names)
    if len(names) == 2:
        head += " | " + " | ".join(f"{names[0]}/{names[1]}, {u} users" for u in users)
    lines = [head + " |", "|---" * head.count("|") + "|"]
    for key, label in ROWS:
        cells = [res[n]["by_users"][str(u)][key] for u in users for n in names]
        line = f"| {label} | " + " | ".join(_fmt(c) for c in cells)
        if len(names) == 2:
            ratios = []
            for u in users:
                x, y = res[names[0]]["by_users"][str(u)][key], res[names[1]]["by_users"][str(u)][key]
                ratios.append(f"{x / y:.2f}x" if y else ("=" if x == y else "-"))
            line += " | " + " | ".join(ratios)
        lines.append(line + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--vs", default=None, metavar="DIR", help="another checkout to count beside this one")
    ap.add_argument("--users", type=int, nargs="+", default=[4, 16], help="users per step (one process)")
    ap.add_argument("--micro_batch_users", type=int, default=0,
                    help="users per micro-batch (--batch_size; 0: all users in one micro-batch)")
    ap.add_argument("--max_tokens_per_micro_batch", type=int, default=0,
                    help="train.py's token budget per micro-batch (0: not passed; a tree without the flag refuses)")
    ap.add_argument("--K", type=int, default=20, help="candidates per user")
    ap.add_argument("--max_len_per_item", type=int, default=64, help="train.py's --max_len_per_item")
    ap.add_argument("--ppo_epochs", type=int, default=2)
    ap.add_argument("--gradient_checkpointing", action="store_true")
    ap.add_argument("--model", default=None, help="model dir (default: the tiny demo model, built if missing)")
    ap.add_argument("--data", default=None, help="processed dataset dir (default: the demo data)")
    ap.add_argument("--assets", default="/tmp/update_cost_assets", help="where the demo assets are built")
    ap.add_argument("--time_updates", type=int, default=0, help="then time this many updates of one rollout")
    ap.add_argument("--time_only", action="store_true",
                    help="count nothing: time --time_updates updates at the first --users in this process (for "
                         "timing whole processes from outside, e.g. /usr/bin/time)")
    ap.add_argument("--json_out", default=None, help="also write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if foreign_vs(a.vs, "trainers/ppo_trainer.py"):
        return 2
    if a.worker:
        print(json.dumps(worker(a)))
        return 0
    if a.model is None or a.data is None:
        data, model = demo_assets(Path(a.assets))
        a.data, a.model = a.data or str(data), a.model or str(model)
    if a.time_only:
        time_updates(a)
        return 0
    passed = [*(argv if argv is not None else sys.argv[1:]), "--model", a.model, "--data", a.data]
    res = run_workers(__file__, passed, a.vs)
    if res is None:
        return 1
    print(table(res, a.users))
    for name in res:
        for u in a.users:
            row = res[name]["by_users"][str(u)]
            extra = f", {row['seconds_per_update']:.3f} s per update" if "seconds_per_update" in row else ""
            print(f"{name} ({res[name]['commit']}), {u} users: {row['tokens_per_user']:.0f} tokens per user, "
                  f"{row['layers']} layers; update reads {row['update_sync_sites']}, step reads "
                  f"{row['step_sync_sites']}{extra}")
    write_json_out(a, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
