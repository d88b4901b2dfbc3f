"""The suite's xdist work units (tests/conftest.py): a file per unit, the demo run's files one unit together."""

from pathlib import Path

from tests.conftest import work_unit

ROOT = Path(__file__).resolve().parents[1]


def test_the_files_that_use_the_demo_run_are_one_unit_and_every_other_file_its_own():
    units = {
        str(p.relative_to(ROOT)): work_unit(ROOT, f"{p.relative_to(ROOT)}::test_x")
        for p in (ROOT / "tests").rglob("test_*.py")
    }
    demo = {p for p, u in units.items() if u == "demo-run"}
    assert {"tests/flows/test_demo_quality.py", "tests/flows/test_novelty_flow.py"} <= demo
    assert all("demo_run" in (ROOT / p).read_text() or "demo_copy" in (ROOT / p).read_text() for p in demo)
    # negative control: a file that never takes the demo run is a unit of its own, its tests together
    assert units["tests/tasks/test_rle.py"] == "tests/tasks/test_rle.py"
    assert work_unit(ROOT, "tests/tasks/test_rle.py::test_bad_shapes_raise[a::b]") == "tests/tasks/test_rle.py"
    assert len(set(units.values())) == len(units) - len(demo) + 1
