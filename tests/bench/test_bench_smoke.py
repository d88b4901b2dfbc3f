"""`python -m bench` runs and writes its JSON (a smoke run of the cheap measurements; figures are not asserted)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_suite_writes_results(tmp_path):
    out = tmp_path / "latest.json"
    r = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "rle", "rss", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["rle_gpx_per_s"] > 0 and "rss_slope_mb_per_1k_images" in res and res["rss_detail"]["images"] == 80
    assert "rle_gpx_per_s" in r.stdout and "written:" in r.stdout
    assert set(res["measured_at"]) >= {"rle_gpx_per_s", "rss_slope_mb_per_1k_images", "rss_detail"}


def test_results_of_a_partial_run_are_merged_with_each_rows_date(tmp_path):
    """`--only X` and the scale bench replace their own keys and keep every other row with the date it was
    measured (a partial run used to overwrite the file with its rows alone)."""
    from bench.common import save_results

    out = tmp_path / "latest.json"
    save_results(out, {"device": "cpu", "a_ratio": 2.0, "b_ratio": 3.0}, {"device": "cpu"})
    first = json.loads(out.read_text())
    first["measured_at"]["b_ratio"] = "2026-01-01T00:00:00Z"  # as measured by an older run
    out.write_text(json.dumps(first))
    merged = save_results(out, {"device": "cuda", "a_ratio": 4.0}, {"device": "cuda"})
    assert merged == json.loads(out.read_text())
    assert merged["a_ratio"] == 4.0 and merged["b_ratio"] == 3.0 and merged["device"] == "cuda"
    assert merged["measured_at"]["b_ratio"] == "2026-01-01T00:00:00Z" != merged["measured_at"]["a_ratio"]
    assert merged["environment"]["a_ratio"] == {"device": "cuda"} and merged["environment"]["b_ratio"] == {
        "device": "cpu"
    }
    assert "device" not in merged["measured_at"]  # the run's own keys are not measurements


def test_per_item_timing_interleaves_contenders_on_each_item_and_sums_their_best():
    from bench.common import timed_per_item

    calls = []
    slow_first_round = {"a": 0.03, "b": 0.0}

    def make(name):
        def fn(item):
            calls.append((name, item))
            time.sleep(slow_first_round[name] if len([c for c in calls if c[0] == name]) <= 2 else 0.001)

        return fn

    rounds = {}
    t = timed_per_item({"a": make("a"), "b": make("b")}, [(1,), (2,)], 3, rounds)
    # every contender on item 1, then every contender on item 2, round after round
    assert calls[:4] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)] and len(calls) == 12
    # per item the best of 3 rounds: a's slow first round (2 x 30 ms) does not count
    assert 0.002 <= t["a"] < 0.02 and set(rounds) == {"a", "b"} and len(rounds["a"]) == 3
    assert rounds["a"][0] >= 0.06 > max(rounds["a"][1:])


def test_utilisation_is_images_per_s_times_gflops_over_the_device_peak():
    import pytest

    from bench.__main__ import _gpu_peak_tflops, _utilisation

    assert _utilisation(20.0, 500.0, 989.0) == pytest.approx(
        10_000 / 989_000
    )  # 20 img/s x 500 GFLOPs = 10 TFLOP/s of 989
    assert _utilisation(40.0, 500.0, 989.0) == pytest.approx(2 * _utilisation(20.0, 500.0, 989.0))
    with pytest.raises(ValueError, match="peak"):
        _utilisation(1.0, 1.0, 0.0)
    assert _gpu_peak_tflops("NVIDIA H200") == 989.0 and _gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert _gpu_peak_tflops("Some Unknown GPU") is None


def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "bench", "--gpu", "--out", str(tmp_path / "gpu.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no CUDA device" in r.stdout and not (tmp_path / "gpu.json").exists()


def test_capacity_model_counts_flops_on_meta_tensors_and_scales_them_to_gpu_hours():
    import torch

    from bench.capacity import _count, plan

    with torch.device("meta"):
        layer = torch.nn.Linear(256, 512)
    assert _count(lambda: layer(torch.empty(8, 256, device="meta"))) == 2 * 8 * 256 * 512 / 1e9
    rows = {"a": {"image_gflops": 1000.0, "per_box_gflops": 10.0}}
    p = plan(rows, ["a"], images=3600, gpu="H100", gpus=2, util=0.5, boxes=10)
    # 1.1 TFLOP an image at 494.5 TFLOP/s: 2.224 ms an image, 3600 images = 8.01 s = 0.00222 GPU-hours
    assert p["tflops_per_image"] == pytest.approx(1.1)
    assert p["gpu_hours"] == pytest.approx(3600 * 1.1 / 494.5 / 3600) and p["wall_hours"] == p["gpu_hours"] / 2


def test_scale_bench_runs_on_a_small_simulated_output(tmp_path):
    """bench/bench_scale.py writes manifests by hand: a column the manifests gained (shape, image statistics)
    broke it unnoticed twice. A small run keeps it in step (figures not asserted)."""
    out = tmp_path / "latest.json"
    argv = ["--shards", "4", "--images-per-shard", "10", "--rows", "80", "400", "--out", str(out)]
    r = subprocess.run(
        [sys.executable, "-m", "bench.bench_scale", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["scale_detail"]["images"] == 40 and set(res["scale_detail"]["by_rows"]) == {"80", "400"}
    assert "scale_finalize_peak_rss_mb" in res["measured_at"]
