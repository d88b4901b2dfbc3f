"""The whole job on S3 (moto's server on 127.0.0.1, through s3fs): source, weights and output."""

import json

import pyarrow.dataset as ds
import pytest
from pycocotools.coco import COCO

from segflow.flows import cli
from segflow.tasks.io.weights import sha256_file


def test_job_on_s3_source_weights_and_output(prefect_harness, s3, write_job, image_dir, tiny_models, tmp_path, capsys):
    s3.put(str(image_dir) + "/", "segflow-src/batch1/", recursive=True)
    s3.put(str(tiny_models["sam"]), "segflow-models/sam-tiny.pt")
    s3.put(str(tiny_models["yolo"]), "segflow-models/yolo-tiny.pt")
    sam_sha = sha256_file(tiny_models["sam"])

    def on_s3(job):
        job["source"] = {"url": "s3://segflow-src/batch1/"}
        job["output"] = "s3://segflow-out/labels/run1"
        job["stages"]["detector"]["weights"] = "s3://segflow-models/yolo-tiny.pt"
        job["stages"]["masks"].update(weights="s3://segflow-models/sam-tiny.pt", sha256=sam_sha)

    job = write_job(image_dir, "unused", mutate=on_s3)
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    printed = capsys.readouterr()

    masks = ds.dataset("segflow-out/labels/run1/manifest/masks.parquet", filesystem=s3, format="parquet").to_table()
    images = ds.dataset("segflow-out/labels/run1/manifest/images.parquet", filesystem=s3, format="parquet").to_table()
    assert images.num_rows == 22 and masks.num_rows > 0
    assert all(u.startswith("s3://segflow-src/batch1/") for u in images["image_uri"].to_pylist())
    failed = {r["file_name"]: r["error"] for r in images.to_pylist() if r["status"] == "failed"}
    assert failed == {"broken_empty.jpg": "zero-byte file", "broken_truncated.jpg": failed["broken_truncated.jpg"]}

    local = tmp_path / "instances.json"
    s3.get("segflow-out/labels/run1/coco/instances.json", str(local))
    assert len(COCO(str(local)).anns) == masks.num_rows

    # credentials never leave the environment: not in outputs, not in what was printed
    secret = "segflow-test-secret-do-not-log"
    for key in s3.find("segflow-out/labels/run1"):
        assert secret.encode() not in s3.cat_file(key), key
    assert secret not in printed.out + printed.err
    summary = json.loads(s3.cat_file("segflow-out/labels/run1/summary.json"))
    assert summary["outputs"]["masks"] == "s3://segflow-out/labels/run1/manifest/masks.parquet"


def test_missing_s3_source_is_a_clear_error(s3, write_job, image_dir, capsys):
    job = write_job(
        image_dir, "s3://segflow-out/x", mutate=lambda j: j.update(source={"url": "s3://segflow-src/nothing-here/"})
    )
    assert cli.main(["run", str(job), "--no-progress"]) == 2
    assert "source not found: s3://segflow-src/nothing-here/" in capsys.readouterr().err
    assert not s3.exists("segflow-out/x/plan")


def test_credentials_from_a_prefect_block_never_travel(prefect_harness, s3, write_job, image_dir, monkeypatch, capsys):
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    s3.put(str(image_dir) + "/", "segflow-src/batch1/", recursive=True)
    secret = "block-secret-value-never-shown"
    Secret(value=json.dumps({"aws_access_key_id": "block-key-id", "aws_secret_access_key": secret})).save(
        "segflow-test-s3", overwrite=True
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # the block is the only source of credentials
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    def on_s3(job):
        job["source"] = {"url": "s3://segflow-src/batch1/"}
        job["output"] = "s3://segflow-out/blockrun"
        job["credentials_block"] = "segflow-test-s3"

    job = write_job(image_dir, "unused", mutate=on_s3)
    assert cli.main(["run", str(job), "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err
    for key in s3.find("segflow-out/blockrun"):
        assert secret.encode() not in s3.cat_file(key), key
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    params = [json.dumps(r.parameters, default=str) for r in runs]
    assert any("segflow-test-s3" in p for p in params) and not any(secret in p for p in params)

    job_missing = write_job(
        image_dir,
        "unused",
        name="missing.yaml",
        mutate=lambda j: (on_s3(j), j.update(credentials_block="no-such-block")),
    )
    assert cli.main(["run", str(job_missing), "--no-progress"]) == 2
    assert "credentials_block: no Prefect Secret block named 'no-such-block'" in capsys.readouterr().err


def test_job_file_on_s3_resolves_relative_paths_against_its_folder(s3, write_job, image_dir, tiny_models):
    import yaml

    from segflow.config import ConfigError, load_config

    s3.put(str(tiny_models["sam"]), "segflow-models/jobs/models/sam-tiny.pt")
    s3.put(str(tiny_models["yolo"]), "segflow-models/jobs/models/yolo-tiny.pt")
    job = yaml.safe_load(write_job(image_dir, "unused").read_text())
    job.update(source={"url": "../images/"}, output="../labels/run9")
    job["stages"]["detector"]["weights"] = "models/yolo-tiny.pt"
    job["stages"]["masks"]["weights"] = "models/sam-tiny.pt"
    s3.pipe("segflow-models/jobs/nightly.yaml", yaml.safe_dump(job).encode())
    s3.put(str(image_dir) + "/", "segflow-models/images/", recursive=True)
    cfg = load_config("s3://segflow-models/jobs/nightly.yaml")
    assert cfg.stages["masks"].weights == "s3://segflow-models/jobs/models/sam-tiny.pt"
    assert cfg.source.url == "s3://segflow-models/images" and cfg.output == "s3://segflow-models/labels/run9"
    with pytest.raises(ConfigError, match="s3://segflow-models/jobs/missing.yaml: file not found"):
        load_config("s3://segflow-models/jobs/missing.yaml")
