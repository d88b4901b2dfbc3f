"""Shard tasks on Dask and Ray local clusters started by the tests: same outputs as the thread pool,
models loaded once per worker process, workers report to the flow's Prefect API."""

import json
from collections import defaultdict

import pyarrow.dataset as ds
import pytest

from segflow.config import load_config
from segflow.flows.label_flow import run_job


def rows(out):
    t = ds.dataset(str(out / "manifest" / "masks.parquet"), format="parquet").to_table().sort_by("annotation_id")
    return t.select(["annotation_id", "category_id", "rle_counts"]).to_pylist()


@pytest.fixture(scope="module")
def reference(prefect_harness, tiny_models, tmp_path_factory, _scenes_seed1):
    """The thread pool's masks for the images of ``image_dir`` (the same scenes: seed 1), once for both runners."""
    import shutil

    import yaml

    from tests.conftest import job_dict

    d = tmp_path_factory.mktemp("threads")
    shutil.copytree(_scenes_seed1, d / "images")
    job = job_dict(d / "images", d / "out", tiny_models["yolo"], tiny_models["sam"], shard_size=4)
    (d / "threads.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    run_job(load_config(d / "threads.yaml"))
    return rows(d / "out")


def check_workers(summary, n_shards, n_models):
    runs = summary.shard_runs
    assert len(runs) == n_shards and not any(r.skipped for r in runs)
    by_pid = defaultdict(list)
    for r in runs:
        by_pid[r.worker_pid].append(r.model_loads)
    import os

    assert os.getpid() not in by_pid  # the shards ran in worker processes, not in the flow's
    for pid, loads in by_pid.items():
        assert sum(loads) == n_models, (pid, loads)  # each worker process loaded each model once
    return by_pid


def shard_task_states(flow_run_name):
    """States of the shard task runs as the Prefect API recorded them (reported by the workers)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        flt = FlowRunFilter(name=FlowRunFilterName(any_=[flow_run_name]))
        (run,) = client.read_flow_runs(flow_run_filter=flt)
        tasks = client.read_task_runs(flow_run_filter=flt)
    assert run.state.is_completed()
    return sorted((t.name, t.state.type.value) for t in tasks if t.name.startswith("shard-"))


def test_dask_local_cluster(reference, write_job, image_dir, tmp_path):
    pytest.importorskip("prefect_dask")
    out = tmp_path / "dask"
    job = load_config(
        write_job(
            image_dir,
            out,
            name="dask.yaml",
            shard_size=4,
            mutate=lambda j: j.update(name="on-dask"),
            runtime={"task_runner": "dask", "max_workers": 2, "gpus_per_shard": 1},
        )
    )
    summary = run_job(job)
    by_pid = check_workers(summary, 6, 2)
    assert len(by_pid) <= 2 and any(len(v) > 1 for v in by_pid.values())  # processes were reused across shards
    assert rows(out) == reference
    assert json.loads((out / "summary.json").read_text())["masks"] == len(reference)
    assert shard_task_states("on-dask") == [(f"shard-{i:05d}", "COMPLETED") for i in range(6)]


def test_ray_local_cluster(reference, write_job, image_dir, tmp_path):
    pytest.importorskip("prefect_ray")
    out = tmp_path / "ray"
    job = load_config(
        write_job(
            image_dir,
            out,
            name="ray.yaml",
            shard_size=4,
            mutate=lambda j: j.update(name="on-ray"),
            runtime={"task_runner": "ray", "max_workers": 2},
        )
    )
    summary = run_job(job)
    check_workers(summary, 6, 2)
    assert rows(out) == reference
    assert shard_task_states("on-ray") == [(f"shard-{i:05d}", "COMPLETED") for i in range(6)]
