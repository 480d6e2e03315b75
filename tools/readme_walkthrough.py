"""Run the README's real-run section ("Your category, your model, your GPUs") end to end on a CPU, offline, in a fresh
copy of the repository, with the demo's model and data standing in for the downloads and tiny sizes for real ones.

The commands are the fenced block after the README's `<!-- readme-walkthrough ... -->` comment. They run as written
except for two declared changes, both listed below and both required to apply (a README edit that a change no
longer fits fails here instead of running a real download or a real-size job):

* SUBSTITUTIONS replace text: the model fetch (no network: tools/make_demo.py builds the demo's tiny Qwen2, which is
  copied to where `hf download` puts the real model, so paths.py resolves the real name to it), training on 8 GPUs
  -> 2 CPU processes (DDP over gloo), evaluation sharded over 8 GPUs -> one process, the DeepSeek key -> the local
  stand-in server's;
* APPEND adds flags to each command that runs a script (later flags win): the demo's raw files for preprocess.py, a
  couple of steps and short prompts for training, a few examples for evaluation. Every script a command runs needs
  an entry, so a new command in the block is a decision made here.

    python tools/readme_walkthrough.py                # run it in a temporary copy (a few minutes on 2 cores)
    python tools/readme_walkthrough.py --print_only   # print the script it would run
    python tools/readme_walkthrough.py --keep DIR     # run it in DIR (created; must not exist) and keep the outputs
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from foundation.config import HelpFormatter
from foundation.errors import UserInputError, exit_on_user_error

REPO = Path(__file__).resolve().parents[1]
MARK = "<!-- readme-walkthrough"
# (what the README says, what runs here): each must occur in the block
SUBSTITUTIONS = [
    ("hf download Qwen/Qwen2.5-3B-Instruct --local-dir models_hub/Qwen2.5-3B-Instruct",
     "python tools/make_demo.py --out_dir demo --skip_existing && mkdir -p models_hub && "
     "cp -r demo/tiny-qwen models_hub/Qwen2.5-3B-Instruct"),
    ("CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7", "device=cpu nproc_per_node=2"),  # train.sh: DDP, 2 processes, gloo
    # test.sh's `accelerate launch --num_processes N` starts one process on a machine without GPUs: say so
    ("nproc=8", "nproc=1"),
    ("DEEPSEEK_API_KEY=sk-...", "DEEPSEEK_API_KEY=local"),
]
TRAIN = "--max_steps 2 --batch_size 2 --max_len_per_item 8 --user_window_size 3 --save_every 2 --num_valid_samples 8 " \
        "--print_every 0"
# script a command runs -> flags appended to the command (sizes only)
APPEND = {
    "preprocess.py": "--raw_dir demo/raw --min_items 50 --window_size 3",
    "train.py": TRAIN,
    "train.sh": TRAIN,
    "test.sh": "--num_samples 12 --no_progress",
    "compare_model/train_rrec.py": "--max_steps 2 --max_new_tokens 8 --num_eval_samples 4 --no-eval_on_start "
                                   "--user_window_size 3 --no-progress",
    "compare_model/rrec.py": "--no_progress",
    "compare_model/sasrec.py": "--num_epochs 2 --valid_samples 50 --no_progress",
    "compare_model/deepseek.py": "--api_base $WALKTHROUGH_API_BASE --model_name loopback-standin --no_progress",
    "tools/compare_results.py": "",
}
SCRIPT_TOKEN = re.compile(r"[\w./-]+\.(?:py|sh)")


def readme_block(readme: str) -> str:
    """The fenced block that follows the walkthrough marker."""
    at = readme.find(MARK)
    if at < 0:
        raise UserInputError(f"README: no '{MARK} ...' marker before the real-run block")
    m = re.search(r"^```bash\n(.*?)^```", readme[at:], flags=re.S | re.M)
    if m is None:
        raise UserInputError("README: no ```bash block after the walkthrough marker")
    return m.group(1)


def commands(block: str) -> list[list[str]]:
    """The block's lines grouped into logical lines (a command continued with a trailing backslash is one group)."""
    groups, current = [], []
    for line in block.splitlines():
        current.append(line)
        if not line.endswith("\\"):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def walkthrough_script(readme: str) -> str:
    """The README block with APPEND's flags on every script command, then SUBSTITUTIONS applied; refuses a command it
    has no settings for, a trailing comment (appended flags would land in it) and a substitution that matches
    nothing."""
    out = []
    for group in commands(readme_block(readme)):
        text = " ".join(group)
        if text.lstrip().startswith("#") or not text.strip():
            out += group
            continue
        if " #" in text:
            raise UserInputError(f"README walkthrough: a comment after a command: {text.strip()[:80]!r} (put comments "
                                 "on their own line)")
        scripts = [t for t in SCRIPT_TOKEN.findall(text) if not t.startswith("-")]
        unknown = [s for s in scripts if s not in APPEND]
        if unknown:
            raise UserInputError(f"README walkthrough runs {', '.join(unknown)}: add its sizes to APPEND in "
                                 "tools/readme_walkthrough.py")
        flags = " ".join(APPEND[s] for s in scripts if APPEND[s])
        out += group[:-1] + [group[-1] + (" " + flags if flags else "")]
    script = "\n".join(out) + "\n"
    for readme_text, here in SUBSTITUTIONS:
        if readme_text not in script:
            raise UserInputError(f"README walkthrough: {readme_text!r} no longer occurs in the block: update "
                                 "SUBSTITUTIONS in tools/readme_walkthrough.py")
        script = script.replace(readme_text, here)
    return script


def copy_checkout(src: Path, dest: Path) -> None:
    """A fresh clone's files: git's tracked and untracked-but-not-ignored files of `src` (so uncommitted edits are
    included), never outputs, demo assets or downloaded models."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src,
                       capture_output=True)
    if r.returncode != 0:
        raise UserInputError(f"{src}: not a git checkout (git ls-files failed): the walkthrough copies a checkout")
    for rel in filter(None, r.stdout.decode().split("\0")):
        path = src / rel
        if path.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)


def run(workdir: Path, script: str) -> int:
    """Run `script` with bash in `workdir` (a copy of the repository), with the local stand-in API server up."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PYTHON": sys.executable, "PATH": path,
           "PYTHONPATH": str(workdir), "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    port_file = workdir / ".walkthrough_port"
    server = subprocess.Popen([sys.executable, "tools/loopback_llm_server.py", "--port", "0", "--port_file",
                               str(port_file)], cwd=workdir, env=env, stdout=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if port_file.is_file() and port_file.read_text().strip():
                break
            if server.poll() is not None:
                raise UserInputError("the local stand-in API server (tools/loopback_llm_server.py) did not start")
            time.sleep(0.1)
        env["WALKTHROUGH_API_BASE"] = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
        prologue = "set -euo pipefail\nPS4='+ [walkthrough ${SECONDS}s] '\nset -x\n"
        (workdir / ".walkthrough.sh").write_text(prologue + script)
        return subprocess.run(["bash", ".walkthrough.sh"], cwd=workdir, env=env).returncode
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--readme", default=str(REPO / "README.md"), help="the README whose real-run block runs")
    p.add_argument("--print_only", action="store_true", help="print the script that would run, run nothing")
    p.add_argument("--keep", default=None, help="run in this new directory and keep it (default: a temporary one, "
                                                "removed afterwards)")
    a = p.parse_args(argv)
    with exit_on_user_error():
        readme = Path(a.readme)
        if not readme.is_file():
            raise UserInputError(f"--readme {a.readme}: no such file")
        script = walkthrough_script(readme.read_text(encoding="utf-8"))
        if a.print_only:
            print(script, end="")
            return 0
        if a.keep and Path(a.keep).exists():
            raise UserInputError(f"--keep {a.keep}: already exists (the walkthrough starts from a fresh copy)")
        tmp = None if a.keep else tempfile.mkdtemp(prefix="readme_walkthrough_")
        workdir = Path(a.keep or tmp) / "repo"
        try:
            workdir.mkdir(parents=True)
            copy_checkout(REPO, workdir)
            t0 = time.monotonic()
            rc = run(workdir, script)
            status = "ran end to end" if rc == 0 else f"stopped with exit status {rc}"
            print(f"readme_walkthrough: the README's real-run block {status} in {time.monotonic() - t0:.0f} s "
                  f"({workdir})", file=sys.stderr)
            return rc
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
