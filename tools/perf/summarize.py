"""The headline figures of a tools/perf/gpu_perf.sh run: reads every stage's JSON in OUT, prints one line per
figure and writes OUT/summary.json. A stage that did not finish is listed as missing, a key a stage did not write
is left out. A step's phases are train.py's own `time_*_s` keys (GPU timeline on CUDA), its host time per phase
beside them on CUDA.

    python tools/perf/summarize.py OUT
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

STEP_KEYS = ("s_per_step", "peak_mem_gb", "load_s", "oom")
RECORD_KEYS = ("step_seconds", "tokens", "tokens_per_s", "tflops_per_s", "mfu", "hfu")
DECODE_KEYS = ("eager_generate_s", "graph_generate_s", "hf_generate_s", "graph_vs_eager", "graph_vs_hf_generate",
               "eager_vs_hf_generate", "eager_step_ms", "graph_step_ms", "step_graph_vs_eager", "tokens_equal_greedy",
               "tokens_equal_sampled_same_seed")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarize(out: Path) -> dict:
    res: dict = {"missing": []}
    env = _read(out / "env.json")
    if env is None:
        res["missing"].append("env")
    else:
        res["env"] = env
    for tag in ("bs4", "bs16_fused"):
        s = _read(out / f"step_{tag}.json")
        if s is None:
            res["missing"].append(f"step_{tag}")
            continue
        row = {k: s[k] for k in STEP_KEYS if k in s}
        row.update({k: s["train_py_record"][k] for k in RECORD_KEYS if k in s.get("train_py_record", {})})
        row["phases_s"] = s.get("phase_s")
        if "phase_host_s" in s:
            row["phases_host_s"] = s["phase_host_s"]
        if "profile" in s:
            row["gpu_busy_fraction"] = s["profile"]["gpu_busy_fraction"]
        res[f"step_{tag}"] = row
    decodes = sorted(out.glob("decode_*.json"))
    if not decodes:
        res["missing"].append("decode")
    for f in decodes:
        d = _read(f) or {}
        res[f.stem] = {k: d[k] for k in DECODE_KEYS if k in d}
    flex = _read(out / "flex.json")
    if flex is None:
        res["missing"].append("flex")
    else:
        res["flex"] = {"partial": bool(flex.get("partial")),
                       "rows": [{k: r.get(k) for k in ("K", "mode", "path", "seconds", "first_call_s", "mfu", "oom")}
                                for r in flex.get("rows", [])]}
    return res


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python tools/perf/summarize.py OUT_DIR (a directory of gpu_perf.sh results)", file=sys.stderr)
        return 2
    out = Path(args[0])
    res = summarize(out)
    (out / "summary.json").write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        print(f"{k}: {json.dumps(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
