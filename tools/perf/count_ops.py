"""Host work of a PL-PPO step's shared-prefix model passes, counted on CPU: the aten ops each pass launches at
several user counts, this checkout beside another one (--vs DIR, e.g. a checkout of the main branch) in one run.

Per tree and user count, on narrow random Qwen2 models (hidden 64; the counts are host work and do not depend on
width) under prefix_split, K candidates per user, --history_items items of ~--tokens_per_item tokens per prefix:

* attention ops per layer: inside the prefix_split kernel, one layer's call;
* per layer / outside the layers: a 2-layer model's count minus a 1-layer model's, and the rest;
* rollout scoring pass: a no-grad forward (scores + values) over users it has not seen;
* training pass: forward + backward with gradient checkpointing, right after the scoring pass saw the same users;
* step: 1 scoring pass + --ppo_epochs training passes (train.py's default step), extrapolated to --layers layers
  (36: Qwen2.5-3B). The optimiser, data and logging are not counted (they are not the model passes' work).

"launches" leave out view ops (no kernel on a GPU). Each tree runs in its own process with PYTHONPATH=tree; the
counter (foundation/op_count.py) is always this checkout's.

    python tools/perf/count_ops.py --vs /path/to/main --users 4 16 --json_out ops.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]  # this checkout


def _counter_module():
    spec = importlib.util.spec_from_file_location("_op_count", HERE / "foundation" / "op_count.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _patch_causal_bias(pa) -> None:
    """Trees whose kernel builds a torch CausalBias (a tensor subclass) inside the counted block: build it with the
    dispatch mode off (the subclass cannot be created under a mode). Measurement scaffolding only."""
    import functools

    from torch.utils._python_dispatch import _disable_current_modes

    make = getattr(getattr(pa, "_lower_right", None), "__wrapped__", None)
    if make is None:
        return

    @functools.lru_cache(maxsize=4096)
    def lower_right(q_len, kv_len):
        with _disable_current_modes():
            return make(q_len, kv_len)

    pa._lower_right = lower_right


def _commit(tree: Path) -> str:
    """The tree's git commit (+ "-dirty" with uncommitted changes), or "unknown": what a figure was counted on."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def worker(a: argparse.Namespace) -> dict:
    import torch
    from transformers import Qwen2Config
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from fixtures.tiny_model import build_tiny_tokenizer, random_qwen
    from models import packed_attention as pa
    from models import shared_prefix as sp
    from models.qwen_models import BinaryJudge
    from tools.benchmark import synth_users

    oc = _counter_module()
    pa.register_prefix_split()
    _patch_causal_bias(pa)
    attention_calls = []
    kernel = ALL_ATTENTION_FUNCTIONS._global_mapping[pa.PREFIX_SPLIT]

    def counted_kernel(*x, **k):
        with oc.OpCounter() as c:
            out = kernel(*x, **k)
        attention_calls.append(c)
        return out

    ALL_ATTENTION_FUNCTIONS._global_mapping[pa.PREFIX_SPLIT] = counted_kernel
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tiny_tokenizer(Path(tmp) / "tok")
    out: dict = {"commit": _commit(Path.cwd()), "torch": torch.__version__, "by_users": {}}
    for U in a.users:
        row: dict = {}
        for L in (1, 2):
            cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=L, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, vocab_size=len(tok), max_position_embeddings=32768,
                              tie_word_embeddings=True, bos_token_id=None)
            lm = random_qwen(cfg, tok, 0, device="cpu", attn_implementation=pa.PREFIX_SPLIT)
            judge = BinaryJudge.from_model(lm, tok, scoring_chunk_size=a.scoring_chunk_size)
            judge.enable_gradient_checkpointing()
            users = synth_users(U, a.K, a.history_items, a.tokens_per_item, len(tok), a.seed)
            judge.eval()
            getattr(sp, "clear_packed_cache", lambda: None)()  # a tree that caches layouts: these users are new
            attention_calls.clear()
            with torch.no_grad(), oc.OpCounter() as score:
                judge.score_candidates(users, scoring="shared", with_values=True)
            attn = attention_calls[-1].total if attention_calls else None  # the last layer: steady state
            judge.train()
            with oc.OpCounter() as train:
                o = judge.score_candidates(users, scoring="shared", with_values=True)
                (o.scores.sum() + o.values.sum()).backward()
            row[L] = {"score": (score.total, score.launches), "train": (train.total, train.launches),
                      "attention_per_layer": attn}
        per_layer = {p: [row[2][p][i] - row[1][p][i] for i in range(2)] for p in ("score", "train")}
        outside = {p: [row[1][p][i] - per_layer[p][i] for i in range(2)] for p in ("score", "train")}
        at = lambda p, i: outside[p][i] + a.layers * per_layer[p][i]  # noqa: E731
        out["by_users"][str(U)] = {
            "attention_ops_per_layer": row[2]["attention_per_layer"],
            "score_ops_per_layer": per_layer["score"][0], "score_ops_outside_layers": outside["score"][0],
            "train_ops_per_layer": per_layer["train"][0], "train_ops_outside_layers": outside["train"][0],
            "score_pass_ops": at("score", 0), "train_pass_ops": at("train", 0),
            "step_ops": at("score", 0) + a.ppo_epochs * at("train", 0),
            "step_launches": at("score", 1) + a.ppo_epochs * at("train", 1)}
    return out


ROWS = [("attention_ops_per_layer", "attention kernel ops per layer (the last layer's call)"),
        ("score_ops_per_layer", "scoring pass: ops per layer"),
        ("score_ops_outside_layers", "scoring pass: ops outside the layers"),
        ("train_ops_per_layer", "training pass: ops per layer (fwd + ckpt recompute + bwd)"),
        ("train_ops_outside_layers", "training pass: ops outside the layers"),
        ("score_pass_ops", "scoring pass at {layers} layers"),
        ("train_pass_ops", "training pass at {layers} layers"),
        ("step_ops", "step: 1 scoring + {epochs} training passes, {layers} layers"),
        ("step_launches", "  of which non-view ops (GPU launches)")]


def table(res: dict, a: argparse.Namespace) -> str:
    names = list(res)
    head = "| ops | " + " | ".join(f"{n} {u} users" for u in a.users for n in names)
    if len(names) == 2:
        head += " | " + " | ".join(f"{names[0]}/{names[1]} {u} users" for u in a.users)
    lines = [head + " |", "|---" * (head.count("|")) + "|"]
    for key, label in ROWS:
        cells = [res[n]["by_users"][str(u)][key] for u in a.users for n in names]
        line = f"| {label.format(layers=a.layers, epochs=a.ppo_epochs)} | " + " | ".join(f"{c:,}" for c in cells)
        if len(names) == 2:
            line += " | " + " | ".join(
                f"{res[names[0]]['by_users'][str(u)][key] / res[names[1]]['by_users'][str(u)][key]:.2f}x"
                for u in a.users)
        lines.append(line + " |")
    return "\n".join(lines)


def run_workers(script: str, passed: list[str], vs: str | None) -> dict | None:
    """Run `script ... --worker` once in this checkout and once in --vs (each its own process, its own code on
    PYTHONPATH, one thread) and return {"this": json, "vs": json}; None (after printing why) if one failed."""
    res = {}
    for name, tree in (("this", HERE), ("vs", Path(vs) if vs else None)):
        if tree is None:
            continue
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        p = subprocess.run([sys.executable, script, *passed, "--worker"], env=env, cwd=tree, capture_output=True,
                           text=True)
        if p.returncode != 0:
            print(f"{name} ({tree}) failed:\n{p.stderr[-3000:]}", file=sys.stderr)
            return None
        res[name] = json.loads(p.stdout.strip().splitlines()[-1])
    return res


def foreign_vs(vs: str | None, marker: str) -> bool:
    """True (after one line naming --vs) when --vs is given but is not a checkout of this project (no `marker`)."""
    if vs is not None and not (Path(vs) / marker).is_file():
        print(f"--vs {vs}: not a checkout of this project (no {marker})", file=sys.stderr)
        return True
    return False


def write_json_out(a: argparse.Namespace, res: dict) -> None:
    """--json_out: the run's flags (less the plumbing ones) and every tree's results, as one JSON file."""
    if a.json_out:
        args = {k: v for k, v in vars(a).items() if k not in ("worker", "vs", "json_out")}
        Path(a.json_out).write_text(json.dumps({"args": args, "results": res}, indent=1))
        print(f"wrote {a.json_out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--vs", default=None, metavar="DIR", help="another checkout to count beside this one")
    ap.add_argument("--users", type=int, nargs="+", default=[4, 16], help="users per pass")
    ap.add_argument("--K", type=int, default=20, help="candidates per user")
    ap.add_argument("--history_items", type=int, default=10, help="history items per prefix")
    ap.add_argument("--tokens_per_item", type=int, default=60, help="approximate tokens per item text")
    ap.add_argument("--scoring_chunk_size", type=int, default=32,
                    help="train.py's default: the shared path packs this many longest prompts' tokens per forward")
    ap.add_argument("--layers", type=int, default=36, help="layers to extrapolate a pass to (Qwen2.5-3B: 36)")
    ap.add_argument("--ppo_epochs", type=int, default=2, help="training passes per step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json_out", default=None, help="also write the counts here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if foreign_vs(a.vs, "models/shared_prefix.py"):
        return 2
    if a.worker:
        print(json.dumps(worker(a)))
        return 0
    res = run_workers(__file__, list(argv if argv is not None else sys.argv[1:]), a.vs)
    if res is None:
        return 1
    print(table(res, a))
    write_json_out(a, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
