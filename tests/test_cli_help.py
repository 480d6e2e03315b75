"""Every flag of every script is documented in `--help` (issue: "`python train.py --help` and
`python test.py --help` document every flag").

Two checks, both cheap (each interpreter start that imports torch costs seconds on CI's 2 cores):

* in-process: each script is imported as a module and its parser is obtained without running anything:
  through its build_parser()/build_arg_parser() where it has one, else by calling main() with
  ArgumentParser.parse_known_args patched to hand the parser back before any argument is parsed.
  Every action (sub-parsers included, -h excluded) must have a real help text: present, not SUPPRESS,
  and not just the "(default: ...)" suffix a generator adds; the whole help must also format (a stray
  "%" in a help string crashes `--help`).
* one subprocess: all scripts run in one fresh interpreter exactly as `python script.py --help` would
  (runpy as __main__, sys.argv), and each must exit 0 and print every one of its option strings.

And --help is fast where the options are a config dataclass in a torch-free module (trainers/configs/): for every
script in LIGHT_HELP_SCRIPTS, `python SCRIPT --help` in a fresh interpreter imports none of HEAVY_LIBRARIES
(torch alone takes seconds to import; without them --help answers in a few hundredths of a second).
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.scripts import load_script

REPO = Path(__file__).resolve().parents[1]

SCRIPTS = sorted(
    ["train.py", "test.py", "preprocess.py",
     "compare_model/rrec.py", "compare_model/deepseek.py", "compare_model/train_rrec.py",
     "compare_model/sasrec.py",
     "sft_train/generate_prompts.py", "sft_train/process_sft_data.py", "sft_train/train_sft.py",
     "sft_train/get_response_by_deepseek.py"]
    + [str(p.relative_to(REPO)) for p in (REPO / "tools").glob("*.py") if not p.name.startswith("_")]
)
PARSER_FACTORIES = ("build_parser", "build_arg_parser")


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


def get_parser(script: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The script's top-level parser, built without running the script."""
    mod = load_script(script)
    for fn in PARSER_FACTORIES:
        if callable(getattr(mod, fn, None)):
            return getattr(mod, fn)()

    def capture(self, args=None, namespace=None):  # noqa: ARG001 - parse_known_args' signature
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    monkeypatch.setattr(sys, "argv", [str(REPO / script), "--help"])
    main = getattr(mod, "main")
    try:
        if inspect.signature(main).parameters:
            main(["--help"])
        else:
            main()
    except _Captured as c:
        return c.parser
    raise AssertionError(f"{script}: main() returned without parsing arguments")


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                yield from _all_parsers(sub)


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Flags (or positionals) whose help is missing, suppressed or only a '(default: ...)' suffix."""
    bad = []
    for p in _all_parsers(parser):
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            h = a.help
            if h is argparse.SUPPRESS or not isinstance(h, str):
                bad.append("/".join(a.option_strings) or a.dest)
                continue
            # What is left once default placeholders are removed must say something.
            text = re.sub(r"\(?default:?\s*%\(default\)s\)?", "", h)
            if not re.search(r"\w", text):
                bad.append("/".join(a.option_strings) or a.dest)
    return bad


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_help(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    parser = get_parser(script, monkeypatch)
    monkeypatch.undo()  # format_help must run with the real argparse
    assert [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)], \
        f"{script}: no flags found; is this the right parser?"
    missing = undocumented(parser)
    assert not missing, f"{script}: flags without help text: {', '.join(missing)}"
    for p in _all_parsers(parser):
        p.format_help()  # raises on a bad %-format in any help string


def test_undocumented_detects_missing_help() -> None:
    """The check itself can fail: a flag without help, with SUPPRESS, or with only a default suffix."""
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ok", default=1, help="documented")
    p.add_argument("--none", default=1)
    p.add_argument("--empty", default=1, help="")
    p.add_argument("--hidden", default=1, help=argparse.SUPPRESS)
    p.add_argument("--suffix_only", default=1, help=" (default: %(default)s)")
    assert undocumented(p) == ["--none", "--empty", "--hidden", "--suffix_only"]


_RUN_ALL = r"""
import contextlib, io, json, runpy, sys
out = {}
for script in json.loads(sys.argv[1]):
    buf, err = io.StringIO(), io.StringIO()
    sys.argv = [script, "--help"]
    code = "returned"
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code
        except BaseException as e:
            code = "raised " + type(e).__name__ + ": " + str(e)
    out[script] = {"code": code, "stdout": buf.getvalue(), "stderr": err.getvalue()[-2000:]}
print("@@RESULT@@" + json.dumps(out))
"""


def test_help_runs_as_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python SCRIPT --help` exits 0 and lists every flag, for all scripts in one interpreter."""
    r = subprocess.run([sys.executable, "-c", _RUN_ALL, json.dumps(SCRIPTS)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.split("@@RESULT@@", 1)[1])
    for script in SCRIPTS:
        got = res[script]
        assert got["code"] in (0, None), f"{script} --help: exit {got['code']!r}\n{got['stderr']}"
        parser = get_parser(script, monkeypatch)
        monkeypatch.undo()
        missing = [o for a in parser._actions for o in a.option_strings if o not in got["stdout"]]
        assert not missing, f"{script} --help does not list {missing}"


def defaults_not_shown(parser: argparse.ArgumentParser) -> list[str]:
    """Options with a default (not None, not suppressed) whose --help text does not show it ('(default: 5)', or the
    help's own '...; default: 5')."""
    bad = []
    for p in _all_parsers(parser):
        formatter = p._get_formatter()
        for a in p._actions:
            if not a.option_strings or isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if a.default is None or a.default is argparse.SUPPRESS or a.help is argparse.SUPPRESS:
                continue
            if not re.search(r"\bdefault:", formatter._expand_help(a), re.IGNORECASE):
                bad.append("/".join(a.option_strings))
    return bad


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_every_default(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """--help of every script shows each option's default (issue 28: preprocess.py's K 5, its 2017-2023 window,
    window 10, min_items 10000 were invisible)."""
    monkeypatch.chdir(REPO)
    parser = get_parser(script, monkeypatch)
    monkeypatch.undo()
    missing = defaults_not_shown(parser)
    assert not missing, f"{script} --help hides the default of {', '.join(missing)}"


def test_defaults_not_shown_detects_a_hidden_default() -> None:
    """The check itself can fail: a plain formatter hides defaults; %(default)s or the defaults formatter shows them."""
    from foundation.config import HelpFormatter

    plain = argparse.ArgumentParser()
    plain.add_argument("--K", type=int, default=5, help="candidates")
    plain.add_argument("--out", default=None, help="no default to show")
    plain.add_argument("--win", default=10, help="window (default: %(default)s)")
    assert defaults_not_shown(plain) == ["--K"]
    shown = argparse.ArgumentParser(formatter_class=HelpFormatter)
    shown.add_argument("--K", type=int, default=5, help="candidates")
    assert defaults_not_shown(shown) == [] and "(default: 5)" in shown.format_help()


# ----------------------------------------------------------------------------- --help without the heavy libraries
# Scripts whose parser comes from a torch-free config module; a script joins the list once its options are one.
LIGHT_HELP_SCRIPTS = ["train.py", "compare_model/train_rrec.py", "sft_train/train_sft.py", "compare_model/sasrec.py",
                      "test.py", "compare_model/rrec.py", "compare_model/deepseek.py", "tools/run_r1.py",
                      "tools/run_r1_once.py", "sft_train/get_response_by_deepseek.py"]
HEAVY_LIBRARIES = ("torch", "transformers", "accelerate", "datasets", "peft")

_HELP_IMPORTS = r"""
import contextlib, io, json, runpy, sys
script, heavy = sys.argv[1], json.loads(sys.argv[2])
sys.argv = [script, "--help"]
code = "returned"
with contextlib.redirect_stdout(io.StringIO()):
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code
print("@@RESULT@@" + json.dumps({"code": code, "imported": sorted(m for m in heavy if m in sys.modules)}))
"""


def help_imports(script: str, modules: tuple[str, ...] = HEAVY_LIBRARIES, cwd: Path = REPO) -> dict:
    """`python SCRIPT --help` in a fresh interpreter: its exit code and which of `modules` it imported."""
    r = subprocess.run([sys.executable, "-c", _HELP_IMPORTS, script, json.dumps(list(modules))], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    assert "@@RESULT@@" in r.stdout, r.stderr[-3000:]
    return json.loads(r.stdout.split("@@RESULT@@", 1)[1])


@pytest.mark.parametrize("script", LIGHT_HELP_SCRIPTS)
def test_help_imports_no_heavy_library(script: str) -> None:
    got = help_imports(script)
    assert got["code"] in (0, None), f"{script} --help: exit {got['code']!r}"
    assert got["imported"] == [], f"{script} --help imports {got['imported']} (build the parser from its config " \
                                  "module in trainers/configs/ and import the trainer after parsing)"


def test_help_imports_sees_an_import(tmp_path: Path) -> None:
    """The probe itself can fail: a script that imports a module at the top is reported (a light stand-in for torch,
    so the check costs no torch import)."""
    (tmp_path / "heavy.py").write_text("import argparse\nimport colorsys\n"
                                       "argparse.ArgumentParser().parse_args()\n")
    assert help_imports("heavy.py", ("colorsys", "wave"), cwd=tmp_path) == {"code": 0, "imported": ["colorsys"]}

