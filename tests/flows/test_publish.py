"""Publishing a finished run to S3 (moto's server through s3fs): versioned, checksummed, LATEST last, idempotent."""

import hashlib
import json

import pytest

from segflow.flows import cli
from segflow.tasks.ops.publish import PublishError, publish


@pytest.fixture()
def finished(prefect_harness, write_job, image_dir, tmp_path):
    out = tmp_path / "out"

    def mutate(j):
        j["stages"]["qc"] = {"kind": "qc", "needs": ["masks"], "predicted_iou": {"min": 0.0, "action": "reject"}}
        j["exports"] = [  # the job key: interchange files written after the run, before any publish
            {"format": "coco", "dest": str(tmp_path / "exported" / "coco")},
            {"format": "yolo-seg", "dest": str(tmp_path / "exported" / "yolo")},
        ]

    job = write_job(image_dir, out, mutate=mutate)
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    return out


def test_publish_versions_checksums_card_and_latest(finished, s3_faults, s3, capsys, tmp_path):
    # the job's exports ran after the run: the COCO export holds what the run's own COCO holds
    exported = json.loads((tmp_path / "exported" / "coco" / "instances.json").read_text())
    own = json.loads((finished / "coco" / "instances.json").read_text())
    assert exported["annotations"] == own["annotations"] and (tmp_path / "exported" / "yolo" / "data.yaml").exists()

    assert cli.main(["publish", str(finished), "s3://segflow-out/datasets/shapes", "--version", "v1"]) == 0
    assert "published version v1" in capsys.readouterr().out
    root = "segflow-out/datasets/shapes"
    assert s3.cat_file(f"{root}/LATEST").decode().strip() == "v1"
    keys = {k[len(root) + 4 :] for k in s3.find(f"{root}/v1")}
    assert {
        "manifest/masks.parquet/part-shard-00000.parquet",
        "coco/instances.json",
        "qc/report.md",
        "report.html",
        "summary.json",
        "job.json",
        "README.md",
        "SHA256SUMS",
        "_PUBLISHED.json",
    } <= keys
    sums = dict(line.split("  ")[::-1] for line in s3.cat_file(f"{root}/v1/SHA256SUMS").decode().splitlines())
    assert set(sums) == keys - {"SHA256SUMS", "_PUBLISHED.json"}
    assert s3.cat_file(f"{root}/v1/report.html") == (finished / "report.html").read_bytes()
    for rel, digest in sums.items():
        assert hashlib.sha256(s3.cat_file(f"{root}/v1/{rel}")).hexdigest() == digest, rel
    card = s3.cat_file(f"{root}/v1/README.md").decode()
    summary = json.loads((finished / "summary.json").read_text())
    assert (
        f"| {summary['images']} | {summary['labelled_images']} |" in card
        and "## Models" in card
        and "sam-tiny.pt" in card
    )
    assert all(f"| {k} | {v} |" in card for k, v in summary["masks_per_category"].items())
    # LATEST is the last object written
    puts = [
        path
        for method, path, kind in s3_faults.requests
        if method == "PUT" and "/datasets/shapes/" in path and "/_lease/" not in path  # the publisher's lease
    ]
    assert puts[-1].endswith("/datasets/shapes/LATEST") and puts[-2].endswith("/v1/_PUBLISHED.json")

    # idempotent: publishing the same run again writes nothing
    n = len(s3_faults.requests)
    assert publish(str(finished), "s3://segflow-out/datasets/shapes").created is False
    assert not any(m == "PUT" for m, _, _ in s3_faults.requests[n:])


def test_publish_refuses_incomplete_runs_and_taken_versions(finished, s3, write_job, image_dir, tmp_path):
    # a version name already used by other content is never overwritten
    publish(str(finished), "s3://segflow-out/ds", version="v1")
    other = tmp_path / "other"
    job = write_job(image_dir, other, name="other.yaml", shard_size=11)
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    with pytest.raises(PublishError, match="already exists .* never overwritten"):
        publish(str(other), "s3://segflow-out/ds", version="v1")
    # an incomplete run is refused, naming the missing shard
    commit = other / "shards" / "shard-00001" / "_COMMIT.json"
    commit.rename(other / "moved.json")
    with pytest.raises(PublishError, match="incomplete run.*shard-00001"):
        publish(str(other), "s3://segflow-out/ds", version="v2")
    assert not s3.exists("segflow-out/ds/v2")
