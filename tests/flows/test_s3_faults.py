"""Object-store failures on a real S3 server (moto on 127.0.0.1) reached through s3fs and a fault-injecting proxy."""

import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.dataset as ds

from segflow.config import load_config
from segflow.flows import cli
from segflow.tasks.plan.planner import make_plan
from segflow.tasks.shard.runner import run_shard

FAIL_FAST = {
    "config_kwargs": {"retries": {"max_attempts": 1}}
}  # botocore gives up at once; s3fs tries 5 times, then segflow's retries act


def upload(s3, image_dir, prefix="segflow-src/batch1/"):
    s3.put(str(image_dir) + "/", prefix, recursive=True)
    return sorted(k.rsplit("/", 1)[1] for k in s3.find(prefix))


def s3_job(write_job, image_dir, output, name="job.yaml", storage_options=None, **over):
    def mutate(job):
        job["source"] = {"url": "s3://segflow-src/batch1/"}
        if storage_options:
            job["source"]["storage_options"] = storage_options
        job["output"] = output
        job.update(over)

    return write_job(image_dir, "unused", name=name, mutate=mutate)


def table(s3, output, name):
    return ds.dataset(
        f"{output.removeprefix('s3://')}/manifest/{name}.parquet", filesystem=s3, format="parquet"
    ).to_table()


def test_transient_faults_are_retried_and_permanent_ones_fail_fast(
    prefect_harness, s3_faults, s3, write_job, image_dir
):
    names = [n for n in upload(s3, image_dir) if n.startswith("scene")]
    throttled, reset, denied = names[1], names[2], names[3]
    s3_faults.add("GET", f"/segflow-src/batch1/{throttled}", "slowdown", 7)  # more than s3fs's own 5 tries
    s3_faults.add("GET", f"/segflow-src/batch1/{reset}", "reset", 1)
    s3_faults.add(
        "GET", f"/segflow-src/batch1/{throttled.replace('.', '_')}|/segflow-src/batch1/{names[4]}", "error500", 1
    )
    s3_faults.add("GET", f"/segflow-src/batch1/{denied}", "denied", 10)
    job = s3_job(write_job, image_dir, "s3://segflow-out/faults", storage_options=FAIL_FAST)
    assert cli.main(["run", str(job), "--no-progress"]) == 0

    images = {r["file_name"]: r for r in table(s3, "s3://segflow-out/faults", "images").to_pylist()}
    for name in (throttled, reset, names[4]):
        assert images[name]["status"] == "ok", images[name]["error"]
    assert images[denied]["status"] == "failed" and "denied" in images[denied]["error"].lower()
    assert s3_faults.count("slowdown") == 7 and s3_faults.count("reset") == 1 and s3_faults.count("error500") == 1
    assert s3_faults.count("denied") == 1  # a 403 is not retried


def test_throttled_commit_still_commits_once(prefect_harness, s3_faults, s3, write_job, image_dir):
    upload(s3, image_dir)
    s3_faults.add("PUT", r"/segflow-out/commits/shards/shard-00001/_COMMIT\.json", "slowdown", 2)
    job = s3_job(write_job, image_dir, "s3://segflow-out/commits")
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    assert s3_faults.count("slowdown") == 2
    assert len(s3.find("segflow-out/commits/shards/shard-00001/attempts")) == 2  # one attempt's two files
    assert table(s3, "s3://segflow-out/commits", "images").num_rows == 22


def test_two_workers_on_one_shard_commit_once(s3, write_job, image_dir):
    upload(s3, image_dir)
    job = load_config(s3_job(write_job, image_dir, "s3://segflow-out/race"))
    make_plan(job)
    barrier, results = threading.Barrier(2), []

    def worker():
        barrier.wait()
        results.append(run_shard(job, "shard-00000"))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(r.skipped for r in results) == [False, True]  # one committed, one found it done or lost the race
    attempts = {k.split("/attempts/")[1].split("/")[0] for k in s3.find("segflow-out/race/shards/shard-00000/attempts")}
    commit = s3.cat_file("segflow-out/race/shards/shard-00000/_COMMIT.json").decode()
    assert len(attempts) == 1 and attempts.pop() in commit


def test_crash_then_rerun_equals_clean_run(prefect_harness, s3, s3_server, write_job, image_dir, tmp_path):
    upload(s3, image_dir)
    clean = s3_job(
        write_job,
        image_dir,
        "s3://segflow-out/clean",
        name="clean.yaml",
        shard_size=2,
        runtime={"max_workers": 1, "max_failed_fraction": 1.0},
    )
    assert cli.main(["run", str(clean), "--no-progress"]) == 0

    crashy = s3_job(
        write_job,
        image_dir,
        "s3://segflow-out/crashy",
        name="crashy.yaml",
        shard_size=2,
        runtime={"max_workers": 1, "max_failed_fraction": 1.0},
    )
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PREFECT_LOGGING_LEVEL="ERROR", PREFECT_API_URL=PREFECT_API_URL.value())  # the test server
    proc = subprocess.Popen(
        [sys.executable, "-m", "segflow.flows.cli", "run", str(crashy), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and len(s3.glob("segflow-out/crashy/shards/*/_COMMIT.json")) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # a spot instance disappears
    proc.wait()
    committed = len(s3.glob("segflow-out/crashy/shards/*/_COMMIT.json"))
    assert 3 <= committed < 11, "the crash must land mid-run"
    assert not s3.exists("segflow-out/crashy/summary.json")

    assert cli.main(["rerun", "s3://segflow-out/crashy", "--no-progress"]) == 0
    a, b = table(s3, "s3://segflow-out/clean", "masks"), table(s3, "s3://segflow-out/crashy", "masks")
    cols = ["annotation_id", "image_id", "category_id", "rle_counts", "area", "bbox"]
    assert a.sort_by("annotation_id").select(cols).equals(b.sort_by("annotation_id").select(cols))
    ia, ib = table(s3, "s3://segflow-out/clean", "images"), table(s3, "s3://segflow-out/crashy", "images")
    assert (
        ia.sort_by("image_id")
        .select(["image_id", "status", "error"])
        .equals(ib.sort_by("image_id").select(["image_id", "status", "error"]))
    )


def test_failed_data_write_leaves_no_commit(prefect_harness, s3_faults, s3, write_job, image_dir, capsys):
    upload(s3, image_dir)
    s3_faults.add("PUT", r"/segflow-out/wfault/shards/shard-00002/attempts/.*/masks\.parquet", "denied", 1)
    job = s3_job(write_job, image_dir, "s3://segflow-out/wfault")
    assert cli.main(["run", str(job), "--no-progress"]) == 1
    assert "shard-00002" in capsys.readouterr().err
    assert not s3.exists("segflow-out/wfault/shards/shard-00002/_COMMIT.json")
    assert not s3.exists("segflow-out/wfault/manifest")  # no partial dataset
    assert cli.main(["rerun", "s3://segflow-out/wfault", "--no-progress"]) == 0
    assert table(s3, "s3://segflow-out/wfault", "images").num_rows == 22
