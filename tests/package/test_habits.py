"""House habits the linters do not check: no production function over 80 lines, at most 6 modules directly in
tasks/ (the rest grouped by phase), and tests that mirror the package. Each check names what breaks it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("tasks", "flows", "segflow")
MAX_LINES = 80


def long_functions(folders=PRODUCTION, limit=MAX_LINES) -> list[str]:
    out = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_production_function_is_over_80_lines():
    assert long_functions() == []
    assert long_functions(("bench",), limit=80), "negative control: bench has long functions, the check sees them"


def test_tasks_is_grouped_by_phase():
    top = sorted(p.name for p in (ROOT / "tasks").glob("*.py"))
    assert len(top) <= 6, top
    phases = {p.name for p in (ROOT / "tasks").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert phases >= {"io", "plan", "shard", "stages", "outputs", "evaluate", "finalize", "report", "formats", "ops"}


def test_tests_mirror_the_package():
    """Every tests/tasks/<folder> is a phase of tasks/ (a test of tasks/X/y.py lives in tests/tasks/X/)."""
    phases = {p.name for p in (ROOT / "tasks").iterdir() if p.is_dir() and not p.name.startswith("__")}
    test_dirs = {p.name for p in (ROOT / "tests" / "tasks").iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert test_dirs <= phases, test_dirs - phases
    for test in (ROOT / "tests" / "tasks").rglob("test_*.py"):
        module = test.name.removeprefix("test_")
        here = test.parent.relative_to(ROOT / "tests")
        if (ROOT / here / module).exists():
            continue  # tests/tasks/X/test_y.py next to tasks/X/y.py
        assert not any((ROOT / "tasks").rglob(module)), f"{test.relative_to(ROOT)}: its module is elsewhere"
