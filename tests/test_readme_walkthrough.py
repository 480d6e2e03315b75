"""The README's real-run section runs (issue 28's acceptance: "a fresh clone walked through the README's real-run
section with the demo paths substituted runs end to end"): tools/readme_walkthrough.py takes the README's marked
block, shrinks it to the demo's model, data and sizes through its declared substitutions, and runs it on a CPU in a
fresh copy of the checkout. The first tests check how the script is built (seconds); the last runs it (about two
minutes on 2 cores: marked slow, and CI runs it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foundation.errors import UserInputError
from tests.fixtures.scripts import load_script

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
walk = load_script("tools/readme_walkthrough.py")
APPEND, SUBSTITUTIONS, commands = walk.APPEND, walk.SUBSTITUTIONS, walk.commands
readme_block, walkthrough_script = walk.readme_block, walk.walkthrough_script


def test_the_script_is_the_readme_block_with_only_the_declared_changes():
    script = walkthrough_script(README)
    block = readme_block(README)
    for readme_text, here in SUBSTITUTIONS:
        assert readme_text in block and readme_text not in script and here in script
    assert "hf download" not in script and "sk-..." not in script
    # every command of the README is there, its own words first, then the sizes
    ran = [c for c in commands(script) if not " ".join(c).lstrip().startswith("#") and " ".join(c).strip()]
    assert len(ran) == len([c for c in commands(block)
                            if not " ".join(c).lstrip().startswith("#") and " ".join(c).strip()])
    for script_name in ("train.py", "train.sh", "test.sh", "preprocess.py", "compare_model/train_rrec.py",
                        "compare_model/rrec.py", "compare_model/sasrec.py", "compare_model/deepseek.py",
                        "tools/compare_results.py"):
        assert script_name in block, f"the README's real-run block no longer runs {script_name}"
    assert script.count(APPEND["train.py"]) == 3  # the two train.py commands and train.sh in the seeds loop


@pytest.mark.parametrize("edit, message", [
    (("hf download Qwen/Qwen2.5-3B-Instruct", "hf download Qwen/Qwen2.5-7B-Instruct"), "no longer occurs"),
    (("python tools/compare_results.py", "python tools/plot_training.py"), "tools/plot_training.py: add its sizes"),
    (("--output_dir outputs/vg/sasrec", "--output_dir outputs/vg/sasrec  # SASRec"), "a comment after a command"),
    (("<!-- readme-walkthrough", "<!-- walkthrough"), "marker"),
])
def test_a_readme_edit_the_walkthrough_does_not_cover_is_refused(edit, message):
    """A README change that the substitutions or sizes no longer fit stops the walkthrough before anything runs
    (rather than downloading a model or running a real-size job)."""
    old, new = edit
    assert old in README
    with pytest.raises(UserInputError, match=message):
        walkthrough_script(README.replace(old, new, 1))


@pytest.mark.slow
def test_the_readme_real_run_section_runs_end_to_end_on_cpu(tmp_path):
    keep = tmp_path / "walk"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "tools/readme_walkthrough.py", "--keep", str(keep)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "the README's real-run block ran end to end" in r.stderr
    repo = keep / "repo"
    # the real model name resolved through paths.py to the fetched directory (the demo's tiny model stands in)
    assert (repo / "models_hub" / "Qwen2.5-3B-Instruct" / "config.json").is_file()
    for run in ("full", "lora", "seed1", "seed2", "seed3"):
        args = json.loads((repo / "outputs" / "vg" / run / "args.json").read_text())
        assert args["model_name_or_path"] == "Qwen2.5-3B-Instruct"
        assert (repo / "outputs" / "vg" / run / "final" / "config.json").is_file()
    seed2 = json.loads((repo / "outputs" / "vg" / "seed2" / "args.json").read_text())
    assert seed2["seed"] == 2 and seed2["distribution"]["mode"] == "DDP" and seed2["distribution"]["processes"] == 2
    assert seed2["lr_actor"] == 1e-6  # train.sh's real-run default, the README's recommendation
    lora = json.loads((repo / "outputs" / "vg" / "lora" / "args.json").read_text())
    assert lora["use_lora"] and lora["lr_actor"] == 1e-5
    # the paper table: every method on the same candidates (compare_results refuses otherwise), margins per seed
    table = r.stdout[r.stdout.rindex("\nmethod "):]  # the last table printed: compare_results'
    assert "\nfull catalogue" not in table
    for row in ("ours", "rrec", "sasrec", "deepseek", "random", "popularity", "content-tfidf"):
        assert f"\n{row} " in table, row
    assert "3 training seeds of ours" in table and "paired SE" in table
