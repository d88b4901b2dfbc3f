"""Known failures end as one `error:` line on stderr and a documented exit code, never a traceback (unless asked for
with --verbose or SEGFLOW_DEBUG=1). Failures before any flow are captured in process at the file-descriptor level
(capfd); a failure inside a flow runs the installed CLI in its own process, where segflow sets up Prefect's logging."""

import shutil

from segflow.flows import cli
from tests.flows.test_s3_faults import s3_job, upload
from tests.support.cli import segflow_command


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_permission_denied_on_the_output_is_one_line(prefect_harness, s3_faults, s3, write_job, image_dir, capfd):
    upload(s3, image_dir)
    s3_faults.add("PUT", "/segflow-out/denied/", "denied", 1000)
    job = s3_job(write_job, image_dir, "s3://segflow-out/denied")
    assert cli.main(["run", str(job), "--no-progress"]) == 1
    err = capfd.readouterr().err
    lines = error_lines(err)
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert "permission denied" in lines[0] and "s3://segflow-out/denied" in lines[0]
    assert "segflow-test-secret" not in err  # credentials are never printed
    assert not s3.exists("segflow-out/denied/plan/plan.json")


def test_vanished_weights_and_source_are_one_line_each(
    prefect_harness, write_job, image_dir, tiny_models, tmp_path, capfd
):
    sam = tmp_path / "sam.pt"
    shutil.copy(tiny_models["sam"], sam)
    out = tmp_path / "out"
    job = write_job(image_dir, out, mutate=lambda j: j["stages"]["masks"].update(weights=str(sam)))
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    capfd.readouterr()

    sam.unlink()  # the weights are gone when the output is labelled again
    assert cli.main(["rerun", str(out), "--shards", "shard-00000", "--no-progress"]) == 2
    err = capfd.readouterr().err
    lines = error_lines(err)
    assert (
        "Traceback" not in err
        and len(lines) == 1
        and lines[0].endswith(f"stages.masks.weights: weights not found: {sam}")
    )

    shutil.copy(tiny_models["sam"], sam)
    shutil.rmtree(image_dir)  # the source folder is gone: every image of the shard fails, so the shard does
    r = segflow("rerun", str(out), "--shards", "shard-00000", "--no-progress")
    lines = error_lines(r.stderr)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout and len(lines) == 1, r.stderr[-3000:]
    assert lines[0] == "error: run incomplete: 1 shard(s) not committed: shard-00000"
    detail = r.stderr.split(lines[0], 1)[1]  # the shard's reason, naming the images that were not there
    assert "shard-00000: ShardFailed" in detail and f"{image_dir}/" in detail and ": file not found" in detail
    capfd.readouterr()
    assert cli.main(["rerun", str(out), "--shards", "shard-00000", "--no-progress", "--verbose"]) == 1
    assert "Traceback" in capfd.readouterr().err  # asked for


def segflow(*args: str):
    """The installed CLI in its own process, as a user runs it (Prefect's own logging set up by segflow)."""
    import os
    import subprocess

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "SEGFLOW_DEBUG": "0", "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run([segflow_command(), *args], capture_output=True, text=True, timeout=300, env=env)
