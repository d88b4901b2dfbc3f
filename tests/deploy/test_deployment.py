"""deploy/ against a real Prefect server (the test session's, on 127.0.0.1):
the GPU work-pool templates are accepted, `prefect deploy --all` creates the deployments with
their schedule, and a process worker runs the deployment on the tiny models."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(prefect_harness, tmp_path_factory):
    """The session's Prefect server (a real API server on 127.0.0.1, started by prefect_test_harness), for the
    `prefect` CLI and the worker run in their own processes."""
    from prefect.settings import PREFECT_API_URL

    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")),
        PREFECT_API_URL=PREFECT_API_URL.value(),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        SEGFLOW_HOME=str(ROOT),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    env.pop("PREFECT_API_KEY", None)
    return env


def prefect(env, *args, timeout=180, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise AssertionError(
            f"prefect {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    return r


def api(env, method, path, body=None):
    req = urllib.request.Request(
        env["PREFECT_API_URL"] + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def test_deploy_and_run_through_a_process_worker(server, write_job, image_dir, tmp_path):
    env = server
    # the GPU pools: the server accepts the base job templates (what `prefect work-pool create --base-job-template`
    # posts; through the API here, one Prefect CLI start fewer per pool)
    for name, kind, template in (
        ("gpu-k8s", "kubernetes", "deploy/work-pools/kubernetes-gpu.json"),
        ("gpu-docker", "docker", "deploy/work-pools/docker-gpu.json"),
        ("local-process", "process", None),
    ):
        body = {"name": name, "type": kind}
        if template:
            body["base_job_template"] = json.loads((ROOT / template).read_text())
        api(env, "POST", "/work_pools/", body)
    k8s = api(env, "GET", "/work_pools/gpu-k8s")["base_job_template"]
    container = k8s["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    docker = api(env, "GET", "/work_pools/gpu-docker")["base_job_template"]
    assert docker["variables"]["properties"]["container_create_kwargs"]["default"]["device_requests"][0][
        "Capabilities"
    ] == [["gpu"]]

    # every deployment of deploy/prefect.yaml, with the nightly cron schedule
    prefect(env, "deploy", "--prefect-file", "deploy/prefect.yaml", "--all")
    deps = {d["name"]: d for d in api(env, "POST", "/deployments/filter", {})}
    assert set(deps) == {"nightly-k8s-gpu", "adhoc-docker-gpu", "local-process"}
    assert deps["nightly-k8s-gpu"]["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert (
        deps["nightly-k8s-gpu"]["work_pool_name"] == "gpu-k8s"
        and deps["local-process"]["entrypoint"] == "flows/deployment.py:label_job"
    )

    # run the process deployment on a job file with the tiny models, plus one with a bad config
    out = tmp_path / "out"
    good = write_job(image_dir, out, name="good.yaml")
    bad = write_job(
        image_dir, tmp_path / "bad-out", name="bad.yaml", mutate=lambda j: j["stages"]["masks"].update(needs=["nope"])
    )
    runs = {}
    for name, job in (("good", good), ("bad", bad)):  # as `prefect deployment run ... --param config=JOB` does
        run = api(
            env,
            "POST",
            f"/deployments/{deps['local-process']['id']}/create_flow_run",
            {"parameters": {"config": str(job)}},
        )
        runs[name] = run["id"]
    prefect(env, "worker", "start", "--pool", "local-process", "--run-once", "--limit", "2", timeout=400)
    deadline = time.time() + 300
    states = {}
    while time.time() < deadline:
        states = {k: api(env, "GET", f"/flow_runs/{v}")["state"]["type"] for k, v in runs.items()}
        if all(s in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for s in states.values()):
            break
        if any(s == "SCHEDULED" for s in states.values()):  # --run-once takes what is due; start another pass
            prefect(env, "worker", "start", "--pool", "local-process", "--run-once", "--limit", "1", timeout=400)
        time.sleep(1)
    assert states == {"good": "COMPLETED", "bad": "FAILED"}, states
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 22 and summary["failed_images"] == 2 and summary["masks"] > 0
    assert (out / "coco" / "instances.json").exists()
    assert not (tmp_path / "bad-out").exists()  # a bad config starts nothing
    # the labeling flow ran as a subflow of the deployment's run, recorded on this server
    # (the session's server holds other tests' runs of the same name: ask for the one under this deployment run)
    under = {"name": {"any_": ["test-job"]}, "parent_flow_run_id": {"any_": [runs["good"]]}}
    (child,) = api(env, "POST", "/flow_runs/filter", {"flow_runs": under})
    assert child["state"]["type"] == "COMPLETED" and child["parent_task_run_id"] is not None
