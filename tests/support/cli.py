"""The installed ``segflow`` command of the environment that runs the tests."""

from __future__ import annotations

import sys
from pathlib import Path


def segflow_command() -> str:
    """The console script beside this interpreter, not whatever ``segflow`` comes first on PATH.

    A virtualenv used without activation (``venv/bin/python -m pytest``) would otherwise run another
    environment's segflow, or none.
    """
    exe = Path(sys.executable).parent / "segflow"
    if not exe.exists():
        raise FileNotFoundError(f"{exe}: no segflow console script beside {sys.executable}: pip install -e .")
    return str(exe)
