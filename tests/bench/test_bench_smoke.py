"""`python -m bench` runs and writes its JSON (a smoke run of the cheap measurements; figures are not asserted)."""

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_suite_writes_results(tmp_path):
    out = tmp_path / "latest.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "rle", "rss", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["rle_gpx_per_s"] > 0 and "rss_slope_mb_per_1k_images" in res and res["rss_detail"]["images"] == 200
    assert "rle_gpx_per_s" in r.stdout and "written:" in r.stdout


def test_per_item_timing_interleaves_contenders_on_each_item_and_sums_their_best():
    from bench.__main__ import _timed_per_item

    calls = []
    slow_first_round = {"a": 0.03, "b": 0.0}

    def make(name):
        def fn(item):
            calls.append((name, item))
            time.sleep(slow_first_round[name] if len([c for c in calls if c[0] == name]) <= 2 else 0.001)
        return fn

    rounds = {}
    t = _timed_per_item({"a": make("a"), "b": make("b")}, [(1,), (2,)], 3, rounds)
    # every contender on item 1, then every contender on item 2, round after round
    assert calls[:4] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)] and len(calls) == 12
    # per item the best of 3 rounds: a's slow first round (2 x 30 ms) does not count
    assert 0.002 <= t["a"] < 0.02 and set(rounds) == {"a", "b"} and len(rounds["a"]) == 3
    assert rounds["a"][0] >= 0.06 > max(rounds["a"][1:])
