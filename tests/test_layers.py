"""The import rule of the layers (docs/architecture.md): a module imports only from its own layer or lower ones,
and no modules import each other in a loop (a circle), inside a layer either.

    0 foundation   foundation/*, paths.py           (imports nothing else of ours)
    1 prompters    prompters/*
    2 models       models/*
    3 data         trainers/data/*
    4 rl           trainers/rl/*
    5 evaluation   trainers/evaluation/*
    6 trainers     trainers/*.py (the trainers and their utilities, trainers/utils.py)
    7 fixtures     fixtures/* (the demo's and the tests' offline stand-ins)
    8 scripts      train.py, test.py, preprocess.py, compare_model/, sft_train/, tools/

Imports inside functions count as much as top-level ones (a lazy import would otherwise hide a cycle).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = [("foundation", ("foundation", "paths")), ("prompters", ("prompters",)), ("models", ("models",)),
          ("data", ("trainers.data",)), ("rl", ("trainers.rl",)), ("evaluation", ("trainers.evaluation",)),
          ("trainers", ("trainers",)), ("fixtures", ("fixtures",))]
PACKAGES = ("foundation", "prompters", "models", "trainers", "fixtures")
OURS = PACKAGES + ("paths",)


def layer_of(module: str) -> int:
    """Index in LAYERS of a dotted module name (the longest matching prefix wins); scripts are above all."""
    best, best_len = len(LAYERS), -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of our packages in a file, nested and relative imports included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x` / `from ..data import y`: relative to this file's package
                package = module_name(path).split(".")[:-1] if path.name != "__init__.py" else \
                    module_name(path).split(".")
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            if not base:
                continue
            # `from pkg import sub` may import a submodule: judge by the most specific name that is a module.
            for a in node.names:
                full = f"{base}.{a.name}"
                is_module = (REPO / Path(*full.split("."))).with_suffix(".py").is_file() or \
                    (REPO / Path(*full.split("."))).is_dir()
                out.append((node.lineno, full if is_module else base))
    return [(ln, m) for ln, m in out if m.split(".")[0] in OURS]


def library_files() -> list[Path]:
    files = [REPO / "paths.py"]
    for pkg in PACKAGES:
        files += sorted((REPO / pkg).rglob("*.py"))
    return files


def test_layer_table_is_correct():
    assert layer_of("foundation.errors") == 0 and layer_of("paths") == 0
    assert layer_of("prompters.prompts") == 1 and layer_of("models.qwen_models") == 2
    assert layer_of("trainers.data.dataset") == 3 and layer_of("trainers.rl.pl") == 4
    assert layer_of("trainers.evaluation.metrics") == 5 and layer_of("trainers.ppo_trainer") == 6
    assert layer_of("fixtures.tiny_model") == 7 and layer_of("train") == len(LAYERS)


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_run_one_way(path):
    me = module_name(path)
    mine = layer_of(me)
    bad = [f"line {ln}: {m} ({LAYERS[layer_of(m)][0]})" for ln, m in imported_modules(path)
           if layer_of(m) > mine]
    assert not bad, f"{me} (layer {LAYERS[mine][0]}) imports from a higher layer: {bad}"


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (a package's import counts as an import of its __init__)."""
    names = {module_name(p) for p in library_files()}
    graph = {}
    for p in library_files():
        me = module_name(p)
        graph[me] = {m for _, m in imported_modules(p) if m in names and m != me}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop of the graph (as a closed path), or None; iterative DFS with three colours."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done
    for root in sorted(graph):
        if colour[root]:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        colour[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = 2
                stack.pop()
            elif colour.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif colour.get(nxt) == 0:
                colour[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "modules import each other in a loop: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_loop_inside_one_layer():
    assert find_cycle({"models.a": {"models.b"}, "models.b": {"models.c"}, "models.c": {"models.a"}}) == \
        ["models.a", "models.b", "models.c", "models.a"]
    assert find_cycle({"models.a": {"models.b"}, "models.b": set(), "models.c": {"models.b"}}) is None


def test_the_check_sees_every_kind_of_import(tmp_path):
    """A back-import is caught whether it is top-level, inside a function or relative."""
    pkg = tmp_path / "trainers" / "data"
    pkg.mkdir(parents=True)
    (tmp_path / "trainers" / "evaluation").mkdir()
    (tmp_path / "trainers" / "evaluation" / "metrics.py").write_text("")
    f = pkg / "files.py"
    f.write_text("import os\nfrom trainers.evaluation import metrics\n\n\ndef g():\n"
                 "    from ..evaluation.metrics import ndcg_at\n    import fixtures.tiny_model\n")
    globals()["REPO"], old = tmp_path, REPO  # the helpers resolve module names against REPO
    try:
        found = [(ln, m, layer_of(m)) for ln, m in imported_modules(f)]
    finally:
        globals()["REPO"] = old
    assert found == [(2, "trainers.evaluation.metrics", 5), (6, "trainers.evaluation.metrics", 5),
                     (7, "fixtures.tiny_model", 7)]


def test_no_sys_path_edits():
    hits = []
    for p in REPO.rglob("*.py"):
        if ".venv" in p.parts or ".git" in p.parts:
            continue
        if "sys.path.insert" in p.read_text(encoding="utf-8") and p.name != "test_layers.py":
            hits.append(str(p.relative_to(REPO)))
    assert not hits, f"sys.path edits (the project is importable through pip install -e .): {hits}"
