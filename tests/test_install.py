"""The original README's install, `pip install -r requirements.txt` from the repository root, is enough for the
scripts in subfolders and for train.sh: requirements.txt installs the project itself (its `-e .` line).

Building a fresh environment with every dependency would take minutes, so the test's environment gets the
dependencies from this interpreter's site-packages (a .pth file pointing at a directory of links to everything
there except this project's own installation) and nothing else; the project must then come from
`pip install --no-deps -r requirements.txt` alone. The scripts run before that (and fail: the project is not
importable) and after it (and work), from another working directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# tools/make_demo.py is what `bash train.sh` runs first on a fresh clone (then train.py, at the root)
SCRIPTS = (["tools/compare_results.py", "--help"], ["compare_model/rrec.py", "--help"],
           ["sft_train/process_sft_data.py", "--help"], ["tools/make_demo.py", "--help"])


def _deps_only(dest: Path) -> Path:
    """A directory of links to this environment's installed packages, without the project's own installation."""
    dest.mkdir()
    for lib in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
        for entry in Path(lib).iterdir():
            name = entry.name.lower()
            if name.startswith(("__editable__", "our_rec", "_our_rec")) or entry.suffix == ".pth" or \
                    (dest / entry.name).exists():
                continue
            (dest / entry.name).symlink_to(entry)
    return dest


def _fresh_clone(dest: Path) -> Path:
    """The repository's files as a clone has them: none of the top-level outputs, environments or build files."""
    top_level = {".git", ".venv", "venv", "demo", "outputs", "data", "models_hub", "build"}
    anywhere = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")

    def ignore(folder: str, names: list[str]) -> set[str]:
        return set(anywhere(folder, names)) | (top_level & set(names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


@pytest.mark.skipif(os.name != "posix", reason="venv layout of POSIX systems")
def test_requirements_txt_alone_makes_subfolder_scripts_work(tmp_path):
    clone = _fresh_clone(tmp_path / "clone")
    venv = tmp_path / "venv"
    # no pip of its own (ensurepip takes seconds): this interpreter's pip installs into it (pip --python)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "ourrec_test_deps.pth").write_text(str(_deps_only(tmp_path / "deps")) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(args, **kw):
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kw)

    r = run([str(py), str(clone / SCRIPTS[0][0]), "--help"], cwd=elsewhere)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, "the project was importable before installing"

    r = run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "-r",
             "requirements.txt"], cwd=clone)
    assert r.returncode == 0, r.stderr[-3000:]
    for script, *args in SCRIPTS:
        r = run([str(py), str(clone / script), *args], cwd=elsewhere)
        assert r.returncode == 0 and "usage:" in r.stdout, f"{script}: {r.stderr[-2000:]}"


def test_setup_sh_reports_progress(tmp_path):
    """The install step is never silent (issue 28: 4-14 minutes without a line): a timed line per step, and pip runs
    without -q, so each package shows as it is collected, downloaded and installed. A stand-in `python` (the active
    virtualenv's) records what setup.sh asks of it; torch counts as missing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    fake = bin_dir / "python"
    fake.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in
  "-c import torch") exit 1 ;;
  "-m pip install"*) echo "Collecting something"; exit 0 ;;
esac
exit 0
""")
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "VIRTUAL_ENV": str(tmp_path)}
    r = subprocess.run(["bash", str(REPO / "setup.sh"), "test", "-k", "nothing"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    steps = [ln for ln in r.stdout.splitlines() if ln.startswith("setup.sh [")]
    assert [ln.split("] ", 1)[1].split(" ")[0:2] for ln in steps] == [
        ["python:", f"{bin_dir}/python"], ["installing", "torch"], ["torch", "installed"],
        ["installing", "requirements.txt"], ["installed;", "running:"]]
    assert all(ln[len("setup.sh ["):].split("]")[0].endswith("s") for ln in steps)  # [0m03s]: time since the start
    pip_calls = [c for c in log.read_text().splitlines() if c.startswith("-m pip install")]
    assert len(pip_calls) == 2 and not any(" -q" in c for c in pip_calls) and "Collecting something" in r.stdout
