"""The headline figures of a tools/perf/gpu_perf.sh run: reads every stage's JSON in OUT, prints one line per
figure and writes OUT/summary.json. A stage of the set (--set, gpu_perf.sh's) that did not finish is listed as
missing, a key a stage did not write is left out. A step's phases are train.py's own `time_*_s` keys (GPU
timeline on CUDA), its host time per phase beside them on CUDA.

    python tools/perf/summarize.py OUT [--set step|figures]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

STEP_KEYS = ("s_per_step", "peak_mem_gb", "load_s", "oom")
RECORD_KEYS = ("step_seconds", "tokens", "tokens_per_s", "tflops_per_s", "mfu", "hfu")
BENCH_KEYS = ("K", "mode", "path", "seconds", "peak_gb", "mem_per_user_gb", "cands_per_s", "tokens_per_s", "ratio",
              "mfu", "hfu", "oom")
# what each gpu_perf.sh set writes; a file of another set is summarised when present, never reported missing
EXPECTED = {"step": ("env", "step_bs4", "step_bs16_fused", "decode", "flex"),
            "figures": ("env", "step_lora", "benchmark", "rrec")}
DECODE_KEYS = ("eager_generate_s", "graph_generate_s", "hf_generate_s", "graph_vs_eager", "graph_vs_hf_generate",
               "eager_vs_hf_generate", "eager_step_ms", "graph_step_ms", "step_graph_vs_eager", "tokens_equal_greedy",
               "tokens_equal_sampled_same_seed")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summarize(out: Path, set_name: str = "step") -> dict:
    expected = EXPECTED[set_name]
    res: dict = {"missing": []}

    def missing(stage: str) -> None:
        if stage in expected:
            res["missing"].append(stage)

    env = _read(out / "env.json")
    if env is None:
        missing("env")
    else:
        res["env"] = env
    for tag in ("bs4", "bs16_fused", "lora"):
        s = _read(out / f"step_{tag}.json")
        if s is None:
            missing(f"step_{tag}")
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
        missing("decode")
    for f in decodes:
        d = _read(f) or {}
        res[f.stem] = {k: d[k] for k in DECODE_KEYS if k in d}
    flex = _read(out / "flex.json")
    if flex is None:
        missing("flex")
    else:
        res["flex"] = {"partial": bool(flex.get("partial")),
                       "rows": [{k: r.get(k) for k in ("K", "mode", "path", "seconds", "first_call_s", "mfu", "oom")}
                                for r in flex.get("rows", [])]}
    bench = _read(out / "benchmark.json")
    if bench is None:
        missing("benchmark")
    else:
        res["benchmark"] = {"partial": bool(bench.get("partial")),
                            "rows": [{k: r.get(k) for k in BENCH_KEYS} for r in bench.get("rows", [])]}
    rrec = _rrec_steps(out / "rrec_metrics.jsonl")
    if rrec is None:
        missing("rrec")
    else:
        res["rrec"] = rrec
    return res


def _rrec_steps(path: Path) -> dict | None:
    """compare_model/train_rrec.py's steps: how many, the median s/step of steps 2.. and the peak GPU memory."""
    from foundation.errors import UserInputError
    from foundation.files import iter_jsonl

    try:
        recs = [r for r in iter_jsonl(path, skip_bad_lines=True, report=False) if "step_seconds" in r]
    except (OSError, UserInputError):
        return None
    if not recs:
        return None
    steady = recs[1:] or recs
    row = {"steps": len(recs), "s_per_step": statistics.median(r["step_seconds"] for r in steady)}
    mem = [r["peak_mem_gb"] for r in recs if "peak_mem_gb" in r]
    if mem:
        row["peak_mem_gb"] = max(mem)
    return row


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    set_name = "step"
    if len(args) == 3 and args[1] == "--set":
        set_name = args.pop(2)
        args.pop(1)
    if len(args) != 1 or not Path(args[0]).is_dir() or set_name not in EXPECTED:
        print("usage: python tools/perf/summarize.py OUT_DIR [--set step|figures] (OUT_DIR: a directory of gpu_perf.sh "
              "results)", file=sys.stderr)
        return 2
    out = Path(args[0])
    res = summarize(out, set_name)
    (out / "summary.json").write_text(json.dumps(res, indent=1))
    for k, v in res.items():
        print(f"{k}: {json.dumps(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
