"""Tests a newcomer can find: every library module with logic (a function or a class) in foundation/, models/,
prompters/ and trainers/ has its tests at the mirrored path, `a/b/c.py` -> `tests/a/b/test_c.py`. Modules
without a def (re-exports such as trainers/GRecTrainer.py, constant tables such as trainers/rl/names.py) need
none. Behaviour suites (bad input, damaged artifacts, first steps, learning, faults) and the scripts' end-to-end
tests stay flat in tests/; fixtures/ is tested by tests/test_fixtures.py."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("foundation", "models", "prompters", "trainers")


def has_logic(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body)


def mirrored_test(path: Path) -> Path:
    rel = path.relative_to(REPO)
    return REPO / "tests" / rel.parent / f"test_{rel.name}"


def test_every_library_module_with_logic_has_a_test_module_at_its_mirrored_path():
    missing = [f"{p.relative_to(REPO)} -> {mirrored_test(p).relative_to(REPO)}"
               for package in LIBRARY for p in sorted((REPO / package).rglob("*.py"))
               if p.name != "__init__.py" and has_logic(p) and not mirrored_test(p).exists()]
    assert not missing, "no test module for:\n" + "\n".join(missing)


def test_every_test_package_is_importable_as_a_package():
    # tests/models/test_sequential.py and tests/trainers/configs/test_sequential.py share a basename: pytest
    # tells them apart only as packages (tests.models / tests.trainers.configs)
    for d in (REPO / "tests").rglob("test_*.py"):
        for parent in d.relative_to(REPO).parents:
            if parent != Path("."):
                assert (REPO / parent / "__init__.py").exists(), f"{parent}/__init__.py missing"
