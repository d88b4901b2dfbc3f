"""The installed package: one import name, package data in the wheel, the demo from a wheel, runtime vs demo code.

The wheel test builds segflow's wheel, installs it without dependencies into a
fresh virtual environment, and runs ``segflow demo`` from a folder outside the
checkout. The inner venv sees the dependencies (torch, Prefect, ... are not
installed twice) through a ``.pth`` file listing the folders this interpreter
imports from, wherever they are: a base interpreter, a virtualenv, a user site.
The checkout and this interpreter's editable-install hooks are left out, so
``segflow`` can only come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")  # a copy: the build leaves no build/ folder in the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("segflow", "flows", "tasks", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    subprocess.run(cmd, check=True, capture_output=True)
    (whl,) = out.glob("segflow-*.whl")
    return whl


def test_wheel_has_one_top_level_name_and_the_demo_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"segflow"}, top
    for needed in (
        "segflow/flows/cli/__init__.py",
        "segflow/tasks/shard/runner.py",
        "segflow/tasks/stages/sam.py",
        "segflow/demo/synthetic.py",
        "segflow/configs/demo.yaml",
        "segflow/configs/models/demo-yolo.pt",
        "segflow/configs/models/demo-video-yolo.pt",
        "segflow/configs/models/demo-sam.pt",
        "segflow/configs/models/demo-m2f.pt",
        "segflow/configs/models/demo-unet.pt",
        "segflow/tasks/report/templates/report.html.j2",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith("segflow/tests") or "localizers" in n or "tiny.py" in n]


def _outer_import_paths() -> list[str]:
    """The folders this interpreter imports third-party code from, minus the standard library and the checkout.

    Listed as plain paths in a ``.pth`` file, they are added to ``sys.path`` without running the ``.pth`` files
    inside them, so an editable install of segflow in the outer environment stays invisible to the inner one.
    """
    import sysconfig

    stdlib = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    out = []
    for entry in sys.path:
        p = Path(entry or ".").resolve()
        in_checkout = p == ROOT or (ROOT in p.parents and "site-packages" not in p.parts)  # a venv in it is fine
        if not p.is_dir() or in_checkout or str(p) in stdlib or p.name == "lib-dynload":
            continue
        if any(str(p).startswith(s + os.sep) for s in stdlib) and "site-packages" not in p.parts:
            continue
        out.append(str(p))
    return list(dict.fromkeys(out))


def test_demo_runs_from_a_wheel_in_a_fresh_venv(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    inner_site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(inner_site).mkdir(parents=True, exist_ok=True)
    (Path(inner_site) / "zz_outer_env.pth").write_text("\n".join(_outer_import_paths()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": "", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    where = subprocess.run(
        [str(py), "-c", "import segflow.flows.cli as c, segflow.configs as d; print(c.__file__); print(d.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(str(env_dir) in p for p in where), where  # the wheel's copy, not the checkout
    r = subprocess.run(
        [str(env_dir / "bin" / "segflow"), "demo", "--output", "demo-out", "--images", "4", "--no-progress"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    quality = json.loads((work / "demo-out" / "quality.json").read_text())
    assert quality["gold_instances"] > 0 and quality["mask_ap50"] > 0.3
    summary = json.loads((work / "demo-out" / "out" / "summary.json").read_text())
    assert "report_error" not in summary and (work / "demo-out" / "out" / "report.html").stat().st_size > 10_000


RUNTIME_MODULES = [
    "segflow.flows.cli",
    "segflow.flows.label_flow",
    "segflow.flows.deployment",
    "segflow.tasks.shard.runner",
    "segflow.tasks.finalize.finalizer",
    "segflow.tasks.report.render",
    "segflow.tasks.ops.publish",
    "segflow.tasks.stages.sam",
    "segflow.tasks.stages.yolo",
    "segflow.tasks.stages.instances",
    "segflow.tasks.stages.mask2former",
    "segflow.tasks.stages.owl",
    "segflow.tasks.stages.gdino",
    "segflow.tasks.stages.qc",
    "segflow.tasks.stages.panoptic",
]


def _loaded_demo_and_test_modules(modules: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('segflow.demo', 'tests')))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_labeling_path_never_imports_demo_or_test_code():
    assert _loaded_demo_and_test_modules(RUNTIME_MODULES) == []
    # negative control: the demo command's module does pull the demo package in
    assert "segflow.demo.synthetic" in _loaded_demo_and_test_modules([*RUNTIME_MODULES, "segflow.demo.prepare"])
