"""`python -m bench` runs and writes its JSON (a smoke run of the cheap measurements; figures are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_suite_writes_results(tmp_path):
    out = tmp_path / "latest.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "rle", "rss", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["rle_gpx_per_s"] > 0 and "rss_slope_mb_per_1k_images" in res and res["rss_detail"]["images"] == 200
    assert "rle_gpx_per_s" in r.stdout and "written:" in r.stdout
