"""House habits the linters do not check: no production function over 80 lines, at most 6 modules directly in
tasks/ (the rest grouped by phase), tests that mirror the package, and typed records rather than bare dicts
across modules. Each check names what breaks it."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
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


#: a return annotation that says nothing of the keys
BARE_DICT = re.compile(r"^(dict|Dict|dict\[str, Any\]|Dict\[str, Any\]|Mapping\[str, Any\])( \| None)?$")
#: the runtime package; segflow/demo (the demo's scene writer and training loops) is tooling, not the labelling path
RUNTIME = ("tasks", "flows", "segflow/config", "segflow/__init__.py", "segflow/__main__.py")
#: bare dicts by nature: serialisers' output, a JSON Schema, keyword arguments handed to fsspec, boto and a model,
#: a torch checkpoint's contents, and a manifest row (a pyarrow row as ``to_pylist`` gives it)
ALLOWED_BARE = {"to_dict", "to_json", "job_json_schema", "storage_options_for", "load_credentials_block", "_inputs"}
ALLOWED_BARE |= {"check_yolo_weights", "_from_auto"}


def bare_dict_returns(paths=RUNTIME) -> list[str]:
    out = []
    for name in paths:
        target = ROOT / name
        for path in sorted(target.rglob("*.py") if target.is_dir() else [target] if target.exists() else []):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
                    if BARE_DICT.match(ast.unparse(node.returns)):
                        out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    return out


def test_at_most_10_runtime_functions_return_a_bare_dict():
    """A bare ``dict`` (or ``dict[str, Any]``) return says nothing of its keys: the JSON documents are typed in
    segflow.tasks.documents, the records in segflow.tasks.records. The few left are listed in ALLOWED_BARE."""
    found = bare_dict_returns()
    assert len(found) <= 10, found
    assert all(f.rsplit(" ", 1)[1] in ALLOWED_BARE for f in found), [
        f for f in found if f.rsplit(" ", 1)[1] not in ALLOWED_BARE
    ]
    assert len(bare_dict_returns(("segflow/demo",))) >= 3, "negative control: the demo's training results are bare"


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


CYCLES = """
import grimp
g = grimp.build_graph("segflow", include_external_packages=False)
adj = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
index, low, on, stack, found, n = {}, {}, set(), [], [], [0]
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in adj[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: found.append(sorted(comp))
for m in sorted(adj):
    if m not in index: visit(m)
print(len(g.modules), found)
"""


def _import_cycles(tree: Path) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-c", CYCLES],
        cwd=tree,
        env={"PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    modules, cycles = r.stdout.strip().split(" ", 1)
    return int(modules), cycles


def test_no_import_cycle_among_production_modules(tmp_path):
    """grimp reads every import statement, function-level ones included, of the package laid out as installed."""
    tree = tmp_path / "src"
    shutil.copytree(ROOT / "segflow", tree / "segflow", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("flows", "tasks"):
        shutil.copytree(ROOT / folder, tree / "segflow" / folder, ignore=shutil.ignore_patterns("__pycache__"))
    modules, cycles = _import_cycles(tree)
    assert modules > 90 and cycles == "[]", cycles
    # negative control: one module importing back up a layer makes a cycle the check reports
    rle = tree / "segflow" / "tasks" / "rle.py"
    rle.write_text(rle.read_text() + "\n\ndef _back():\n    from segflow.tasks.record import Detections  # noqa\n")
    assert "segflow.tasks.rle" in _import_cycles(tree)[1]
