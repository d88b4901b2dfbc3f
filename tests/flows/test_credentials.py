"""Nothing secret is written or shown: credentials in a job file are refused at validation (at any depth of
`storage_options`, in URLs, in a source list) with the key path and where credentials go, before anything is
written; credentials from the environment never reach a written byte, the console or a Prefect artifact, through
a run, its report, a publish and a failing run (canary values, on moto's S3 server)."""

from __future__ import annotations

import pytest
import yaml

from segflow.flows import cli
from tests.flows.test_s3_faults import s3_job, upload

CANARY = "CANARY-4f1d9c0e7a-SECRET"


def _set(path: str, value):
    def mutate(job):
        node = job
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    return mutate


CASES = {
    "source.storage_options.client_kwargs.aws_secret_access_key": _set(
        "source.storage_options", {"client_kwargs": {"aws_secret_access_key": CANARY}, "anon": False}
    ),
    "source.storage_options.headers.Authorization": _set(
        "source.storage_options", {"headers": {"Authorization": f"Bearer {CANARY}"}}
    ),
    "output": lambda j: j.update(output=f"s3://AKIAEXAMPLE:{CANARY}@segflow-out/run"),
    "stages.detector.weights": lambda j: j["stages"]["detector"].update(
        weights=f"https://models.example.com/det.pt?X-Amz-Credential=AKIA&X-Amz-Signature={CANARY}"
    ),
}


@pytest.mark.parametrize("key", sorted(CASES))
def test_credentials_in_the_job_file_are_refused_naming_the_key(key, write_job, image_dir, tmp_path, capfd):
    out = tmp_path / "out"
    job = write_job(image_dir, out, mutate=CASES[key])
    for args in (["validate", "--static", str(job)], ["validate", str(job)], ["run", str(job), "--no-progress"]):
        assert cli.main(args) == 2, args
        captured = capfd.readouterr()
        assert CANARY not in captured.out + captured.err
        assert f"{key}: " in captured.err and "environment, an AWS profile or a Prefect block" in captured.err
    assert not out.exists()
    # negative control: signature_version is a setting, not a secret
    job = write_job(
        image_dir, out, mutate=_set("source.storage_options", {"config_kwargs": {"signature_version": "v4"}})
    )
    assert cli.main(["validate", "--static", str(job)]) == 0


def test_a_source_list_of_presigned_urls_is_refused_naming_the_line(write_job, image_dir, tmp_path, capfd):
    listing = tmp_path / "images.txt"
    lines = [str(p) for p in sorted(image_dir.glob("*.png"))[:2]]
    lines.insert(1, f"https://bucket.s3.amazonaws.com/a.png?X-Amz-Signature={CANARY}")
    listing.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    job = write_job(image_dir, out, mutate=lambda j: j.update(source={"list": str(listing)}))
    assert cli.main(["run", str(job), "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert "line 2: the URI carries a signature or token parameter" in err and CANARY not in err
    assert not (out / "plan").exists() and not (out / "job.json").exists()


def _everything_written(s3, tmp_path) -> list[tuple[str, bytes]]:
    files = [(f"s3://{k}", s3.cat_file(k)) for bucket in ("segflow-out", "segflow-src") for k in s3.find(bucket)]
    files += [(str(p), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()]
    return files


def test_environment_credentials_never_reach_a_written_byte_or_the_console(
    prefect_harness, s3, s3_server, write_job, image_dir, tmp_path, capfd, monkeypatch
):
    import os

    from prefect.client.orchestration import get_client

    secret, key_id = os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]
    monkeypatch.setenv("AWS_SESSION_TOKEN", CANARY)  # one more credential for the run to (not) write
    upload(s3, image_dir)
    job = s3_job(write_job, image_dir, "s3://segflow-out/canary")
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    assert cli.main(["report", "s3://segflow-out/canary"]) == 0
    assert cli.main(["publish", "s3://segflow-out/canary", "s3://segflow-out/datasets/canary"]) == 0
    assert cli.main(["export", "s3://segflow-out/canary", str(tmp_path / "ls"), "--format", "label-studio"]) == 0
    failing = s3_job(write_job, image_dir, "s3://segflow-out/failing", name="failing.yaml")
    spec = yaml.safe_load(failing.read_text())
    spec["source"]["url"] = "s3://segflow-src/no-such-prefix/"
    failing.write_text(yaml.safe_dump(spec))
    assert cli.main(["run", str(failing), "--no-progress", "--verbose"]) != 0
    console = capfd.readouterr()
    written = _everything_written(s3, tmp_path)
    assert any(name.endswith("canary/report.html") for name, _ in written)  # negative control: it looked there
    assert any(name.endswith("/README.md") for name, _ in written)
    for needle in (secret, key_id, CANARY):
        assert needle not in console.out + console.err
        leaked = [name for name, data in written if needle.encode() in data]
        assert not leaked, (needle, leaked)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    assert artifacts and not any(n in str(a.data) for a in artifacts for n in (secret, key_id, CANARY))
