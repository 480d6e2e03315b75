"""The README and docs/ point only at what a clone of the repository has (issue 28):

* every repository path README.md and docs/*.md name exists: in inline code, code blocks and prose, a token with a
  slash whose first part is a top-level entry of the repository (`tests/test_x.py`, `tools/perf/`, globs such as
  `configs/accelerate/*.yaml` must match something), or a bare file name with a source extension (`paths.py`); what a
  run writes (git-ignored paths) and placeholders (`{category}`, `<name>`, `$VAR`, `...`) are not checked;
* every relative markdown link resolves, to a file and, with `#anchor`, to a heading of it (GitHub's anchors);
* no tracked file points outside the repository to design notes users do not have (the forbidden names below);
* the README has a table of contents under `## Contents` that links every `##` section and every docs/ page, and it
  stays a ten-minute read (README_WORD_LIMIT words).

Each checker is a function that returns what it found wrong, and has a test showing that it finds a planted fault.
"""
from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_WORD_LIMIT = 3500
SOURCE_EXTENSIONS = (".py", ".sh", ".md", ".yaml", ".yml", ".toml", ".ini", ".txt", ".cfg")
# Names of the private design notes this project grew from; users have neither, so nothing may point to them. Built
# from parts so that this file's own text is not a mention.
FORBIDDEN = ("../" + "shared", "/work/" + "shared", "DESIGN" + ".md")
PLACEHOLDER = re.compile(r"[{}<>$…]|\.\.\.")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
TOKEN = re.compile(r"[^\s`'\"()\[\],;=|]+")


def doc_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def tracked_files() -> list[str]:
    """Repository files, relative paths: git's tracked and untracked-but-not-ignored files (a checkout's view)."""
    r = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                       capture_output=True, text=True)
    if r.returncode == 0:
        return [f for f in r.stdout.splitlines() if (REPO / f).exists()]
    skip = {".git", ".venv", "venv", "outputs", "demo", "data", "models_hub", "__pycache__", ".pytest_cache"}
    return [str(p.relative_to(REPO)) for p in REPO.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(REPO).parts)]


def ignored(paths: list[str]) -> set[str]:
    """The paths git would ignore: what the documented steps write (outputs, downloaded models, generated files)."""
    if not paths:
        return set()
    r = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(paths),
                       capture_output=True, text=True)
    return set(r.stdout.splitlines()) if r.returncode in (0, 1) else set()


def path_mentions(text: str, top_level: set[str]) -> list[str]:
    """Repository paths a markdown text names (outside link targets, which `broken_links` checks)."""
    text = LINK.sub(lambda m: m.group(1), text)
    found = []
    for raw in TOKEN.findall(text):
        tok = raw.rstrip(".:!?*_").lstrip("*_").split("::")[0]
        tok = tok[2:] if tok.startswith("./") else tok
        if not tok or "://" in tok or tok.startswith(("/", "~", "-")) or PLACEHOLDER.search(tok):
            continue
        if "/" in tok:
            first = tok.split("/", 1)[0]
            if first in top_level or first == "..":
                found.append(tok)
        elif tok.endswith(SOURCE_EXTENSIONS) and re.fullmatch(r"[\w.\-]+", tok):
            found.append(tok)
    return found


def missing_paths(mentions: list[str], files: list[str]) -> list[str]:
    """The mentions that name nothing in `files` (a path, a directory, a glob, a bare file name or module.attr)."""
    file_set = set(files)
    dirs = {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parts) - 1)}
    names = {Path(f).name for f in files}
    bad = []
    for m in mentions:
        path = m.rstrip("/")
        if "*" in path or "?" in path:
            ok = any(fnmatch.fnmatch(f, path) for f in files)
        elif "/" not in m:
            ok = m in names
        else:
            ok = path in file_set or path in dirs
            attr = re.fullmatch(r"(.+?)\.[A-Za-z_]\w*(?:\.\w+)*", path)  # models/flops.ModelFlops: a module's name
            ok = ok or bool(attr and attr.group(1) + ".py" in file_set)
        if not ok:
            bad.append(m)
    return bad


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: formatting and punctuation dropped, lowercased, spaces -> hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(md_text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in md_text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6} (.+)", line)
        if m:
            a = github_anchor(m.group(1))
            n = seen.get(a, 0)
            seen[a] = n + 1
            out.add(a if n == 0 else f"{a}-{n}")
    return out


def broken_links(doc: Path) -> list[str]:
    """Relative links of a markdown file whose target file, or heading anchor, does not exist."""
    text = doc.read_text(encoding="utf-8")
    bad = []
    for _, target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(target)
    return bad


def forbidden_mentions(files: list[str], root: Path = REPO) -> list[str]:
    """'file: name' for every tracked text file that names one of FORBIDDEN (this file excepted: it checks them)."""
    bad = []
    for f in files:
        if f == "tests/test_docs.py":
            continue
        try:
            text = (root / f).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        bad += [f"{f}: {name}" for name in FORBIDDEN if name in text]
    return bad


def toc_problems(readme_text: str, docs: list[str]) -> list[str]:
    """What the README's `## Contents` list lacks: a link to every `##` section and every docs/ page; links that
    lead nowhere."""
    sections = re.split(r"^## ", readme_text, flags=re.M)
    contents = next((s for s in sections if s.startswith("Contents\n")), None)
    if contents is None:
        return ["no '## Contents' section"]
    links = [t for _, t in LINK.findall(contents)]
    problems = [f"TOC link {t} resolves to no heading" for t in links
                if t.startswith("#") and t[1:] not in anchors(readme_text)]
    for s in sections[1:]:
        title = s.splitlines()[0]
        if title != "Contents" and f"#{github_anchor(title)}" not in links:
            problems.append(f"section '{title}' is not in the table of contents")
    problems += [f"{d} is not linked from the table of contents" for d in docs if d not in links]
    return problems


# ------------------------------------------------------------------------------------------------ the checks


def test_every_path_the_docs_name_exists():
    files = tracked_files()
    top_level = {f.split("/", 1)[0] for f in files}
    mentions = {(doc.relative_to(REPO).as_posix(), m) for doc in doc_files()
                for m in path_mentions(doc.read_text(encoding="utf-8"), top_level)}
    skip = ignored(sorted({m.rstrip("/") for _, m in mentions}))
    bad = [f"{doc}: {m}" for doc, m in sorted(mentions)
           if m.rstrip("/") not in skip and missing_paths([m], files)]
    assert not bad, "paths named in the docs that the repository lacks:\n" + "\n".join(bad)


def test_every_relative_link_resolves():
    bad = [f"{doc.relative_to(REPO)}: {t}" for doc in doc_files() for t in broken_links(doc)]
    assert not bad, "links to nothing:\n" + "\n".join(bad)


def test_nothing_points_outside_the_repository():
    bad = forbidden_mentions(tracked_files())
    assert not bad, "files naming private design notes users do not have:\n" + "\n".join(bad)


def test_readme_table_of_contents():
    docs = [f"docs/{p.name}" for p in sorted((REPO / "docs").glob("*.md"))]
    problems = toc_problems(README.read_text(encoding="utf-8"), docs)
    assert not problems, "\n".join(problems)


def test_readme_is_a_ten_minute_read():
    words = len(README.read_text(encoding="utf-8").split())
    assert words < README_WORD_LIMIT, f"README.md has {words} words (limit {README_WORD_LIMIT}): move depth to docs/"


# ------------------------------------------------------------------------------------------ the checkers can fail


def test_path_check_finds_a_missing_path():
    files = ["tests/test_first_steps.py", "tools/perf/gpu_perf.sh", "configs/accelerate/ddp.yaml", "models/flops.py",
             "paths.py"]
    text = ("`tests/test_launchers.py` checks it; tests/test_first_steps.py too; `../elsewhere/notes.md`; see "
            "tools/perf/ and configs/accelerate/*.yaml, models/flops.ModelFlops, paths.py, nothere.py; "
            "outputs/x/results.json and `configs/accelerate/<name>.yaml` are not checked; neither is train/valid/test")
    mentions = path_mentions(text, {f.split("/", 1)[0] for f in files})
    assert "outputs/x/results.json" not in mentions and "train/valid/test" not in mentions
    assert missing_paths(mentions, files) == ["tests/test_launchers.py", "../elsewhere/notes.md", "nothere.py"]
    assert missing_paths(["configs/accelerate/*.json"], files) == ["configs/accelerate/*.json"]


def test_link_and_toc_checks_find_faults(tmp_path):
    doc = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# B\n\n## The `x` flag (`--y`)\n")
    doc.write_text("# A\n\n## Two words\n\n[ok](b.md#the-x-flag---y) [bad](b.md#nope) [gone](c.md) [self](#two-words)"
                   " [selfbad](#three)\n")
    assert broken_links(doc) == ["b.md#nope", "c.md", "#three"]
    readme = "# R\n\n## Contents\n\n- [One](#one)\n- [Gone](#gone)\n- [d](docs/x.md)\n\n## One\n\n## Two\n"
    assert toc_problems(readme, ["docs/x.md", "docs/y.md"]) == [
        "TOC link #gone resolves to no heading", "section 'Two' is not in the table of contents",
        "docs/y.md is not linked from the table of contents"]
    assert toc_problems("# R\n\n## One\n", []) == ["no '## Contents' section"]


def test_forbidden_check_finds_a_mention(tmp_path):
    (tmp_path / "x.py").write_text('"""See ' + FORBIDDEN[2] + '."""\n')
    (tmp_path / "y.md").write_text("clean\n")
    assert forbidden_mentions(["x.py", "y.md"], root=tmp_path) == [f"x.py: {FORBIDDEN[2]}"]
