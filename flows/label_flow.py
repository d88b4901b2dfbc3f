"""The labeling flow: one task per planned shard -> finalize -> publish.

:func:`prepare_job` is the one place a job is planned: it checks the weights
(fetch + sha256) and writes or reuses the plan before any flow starts, so a bad
job never starts one. The flow reads the plan's shard ids. Tasks are thin
wrappers over plain functions in :mod:`segflow.tasks`; what travels between
them is the typed job (:class:`~segflow.config.JobConfig`, a pydantic model
Prefect validates as a parameter) and shard ids, never images or tensors.
"""

from __future__ import annotations

import re
import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed, wait

from segflow.config import JobConfig
from segflow.config.schema import ExportConfig
from segflow.flows.runners import make_task_runner, shard_submit_options
from segflow.tasks.evaluate.quality import format_quality, load_quality
from segflow.tasks.finalize.finalizer import finalize
from segflow.tasks.io.storage import load_credentials_block, redact, use_s3_credentials
from segflow.tasks.ops.publish import publish
from segflow.tasks.plan.planner import Plan, PlanError, load_plan, make_plan
from segflow.tasks.records import ExportResult, Publication, RunSummary, ShardResult
from segflow.tasks.shard.commit import IncompleteRunError
from segflow.tasks.shard.runner import run_shard

__all__ = ["apply_credentials", "check_job", "label_flow", "prepare_job", "run_job"]


def prepare_job(job: JobConfig, config_file: str, checked: bool = False) -> Plan:
    """Checks that need I/O, before any flow starts: credentials, weights (fetch + sha256), a saved calibration's
    ontology (:func:`check_job`), then the plan, under the output's lease (:mod:`segflow.tasks.io.lease`).

    ``checked``: :func:`check_job` already ran (the CLI runs it before it takes the lease).

    Raises :class:`~segflow.config.ConfigError` naming ``config_file`` and the key.
    """
    from segflow.config import ConfigError
    from segflow.tasks.io.lease import hold

    if not checked:
        check_job(job, config_file)
    with hold(job.output, "run"):
        try:
            return make_plan(job)
        except PlanError as e:
            raise ConfigError(config_file, [("source" if "source" in str(e) else "output", str(e))]) from None


def check_job(job: JobConfig, config_file: str) -> None:
    """The checks of :func:`prepare_job` that write nothing: credentials, weights (fetched into the cache, checked
    against sha256 and by their kind's own check), a saved calibration's ontology.

    Raises :class:`~segflow.config.ConfigError` naming ``config_file`` and the key.
    """
    from segflow.config import ConfigError
    from segflow.tasks.io.weights import WeightsError
    from segflow.tasks.stages.cache import check_stage_weights

    if job.credentials_block:
        try:
            apply_credentials(job)
        except ValueError as e:
            raise ConfigError(config_file, [("credentials_block", str(e))]) from None
    issues = []
    for name, st in job.stages.items():
        try:
            check_stage_weights(st)  # fetched into the cache, checked against sha256 and by the kind's own check
        except WeightsError as e:
            issues.append((f"stages.{name}.weights", str(e)))
    if job.accept.calibration:
        from segflow.tasks.evaluate.acceptance import CalibrationError, load_calibration

        try:
            load_calibration(job.accept.calibration, job.category_names())
        except CalibrationError as e:
            issues.append(("accept.calibration", str(e)))
    if issues:
        raise ConfigError(config_file, issues)


def apply_credentials(job: JobConfig) -> None:
    """Load the job's credentials block (once per process) for its s3:// URLs. Only the block's name travels."""
    name = job.credentials_block
    if name and _loaded_block.get("name") != name:
        use_s3_credentials(load_credentials_block(name))
        _loaded_block["name"] = name
    elif not name and _loaded_block:
        use_s3_credentials(None)  # back to the environment / profiles
        _loaded_block.clear()


_loaded_block: dict[str, str] = {}


@task(name="plan", retries=2, retry_delay_seconds=5)
def plan_task(job: JobConfig) -> list[str]:
    """The shard ids of the job's plan (made by :func:`prepare_job`; read here, the source is not listed)."""
    meta = load_plan(job.output)
    get_run_logger().info(
        "plan for %s: %d images in %d shards", redact(job.output), meta["num_images"], len(meta["shard_ids"])
    )
    return list(meta["shard_ids"])


@task(name="label-shard", task_run_name="{shard_id}")
def shard_task(job: JobConfig, shard_id: str, redo: bool = False) -> ShardResult:
    apply_credentials(job)  # once per worker process (a no-op after the first)
    result = run_shard(job, shard_id, redo=redo)
    get_run_logger().info(
        "%s: %d images (%d failed), %d masks in %.1fs%s",
        shard_id,
        result.images,
        result.failed,
        result.masks,
        result.seconds,
        " (already committed)" if result.skipped else "",
    )
    return result


@task(name="finalize")
def finalize_task(job: JobConfig, started_at: float, force: bool = False) -> RunSummary:
    apply_credentials(job)
    summary = finalize(job, started_at=started_at, force=force)
    artifact_key = re.sub(r"[^a-z0-9-]", "-", f"segflow-{summary.job}".lower())
    create_markdown_artifact(
        key=f"{artifact_key}-summary",
        markdown=(
            f"# {summary.job}\n\n| images | labelled | failed | masks |\n|---:|---:|---:|---:|\n"
            f"| {summary.images} | {summary.labelled_images} | {summary.failed_images} "
            f"| {summary.masks} |\n\n" + "\n".join(f"- {k}: `{redact(v)}`" for k, v in summary.outputs.items())
        ),
        description="segflow run summary",
    )
    if "report" in summary.outputs:
        create_markdown_artifact(
            key=f"{artifact_key}-report", markdown=report_link(summary.outputs["report"]), description="run report"
        )
    if summary.qc is not None:
        from segflow.tasks.io.storage import open_fs, read_bytes

        fs, path = open_fs(summary.outputs["qc_report"])
        create_markdown_artifact(
            key=f"{artifact_key}-qc-report", markdown=read_bytes(fs, path).decode(), description="segflow QC report"
        )
        rows = [{"rule": k, "masks": v} for k, v in summary.qc["rules"].items()] + [
            {"rule": f"verdict: {k}", "masks": v} for k, v in summary.qc["verdicts"].items()
        ]
        create_table_artifact(key=f"{artifact_key}-qc", table=rows, description="QC rules and verdicts")
    if summary.quality is not None:
        _quality_artifacts(job, artifact_key)
    return summary


def _quality_artifacts(job: JobConfig, artifact_key: str) -> None:
    quality = load_quality(job.output)
    if "per_class" in quality:
        create_table_artifact(
            key=f"{artifact_key}-quality",
            table=[dict(row) for row in quality["per_class"]],
            description=format_quality(quality).splitlines()[1].strip(),
        )
    if "panoptic" in quality:
        rows = [{"class": k, **v} for k, v in quality["panoptic"]["per_class"].items()]
        create_table_artifact(
            key=f"{artifact_key}-panoptic-quality",
            table=rows,
            description=f"PQ {quality['pq']}, SQ {quality['sq']}, RQ {quality['rq']}, mIoU {quality['miou']}",
        )


def report_link(url: str) -> str:
    """Markdown pointing at the run report. Prefect shows images only by URL and a browser opens only what it can
    reach: a local report by its ``file://`` link, one on an object store by copying it down (or a presigned URL)."""
    url = redact(url)
    from pathlib import Path

    if "://" not in url or url.startswith("file://"):
        path = Path(url.removeprefix("file://")).resolve()
        return f"# Run report\n\n[report.html]({path.as_uri()}): open it in a browser on this machine."
    return (
        f"# Run report\n\n`{url}`: one self-contained HTML page (figures and samples embedded). Browsers cannot "
        f"open object-store URLs; copy it down (`aws s3 cp {url} .`, `gsutil cp`, or fsspec) or share a "
        f"presigned URL (`aws s3 presign {url}`)."
    )


@task(name="export")
def export_task(job: JobConfig, spec: ExportConfig) -> ExportResult:
    from segflow.tasks.formats import export

    apply_credentials(job)
    result = export(job.output, spec.format, spec.dest, spec.verdicts)
    get_run_logger().info("%s: %s images, %s masks -> %s", spec.format, result.images, result.masks, spec.dest)
    return result


@task(name="publish")
def publish_task(job: JobConfig) -> Publication:
    apply_credentials(job)
    if job.publish is None:
        raise ValueError(f"{job.name}: the job has no publish section")
    result = publish(job.output, job.publish.dest, job.publish.version)
    get_run_logger().info(
        "%s version %s at %s",
        "published" if result.created else "already published as",
        result.version,
        result.url,
    )
    return result


@flow(name="segflow-label", log_prints=False)
def label_flow(job: JobConfig, redo: list[str] | None = None, refinalize: bool = False) -> RunSummary:
    """Label every planned image of the job's source and write the manifests, COCO and summary.

    The job was planned by :func:`prepare_job` (``segflow run``, ``run_job`` and the deployment do it first).
    ``redo``: committed shards to label again (each new commit supersedes the shard's last); ``refinalize``:
    write the merged outputs again even if they were built from the same commits.

    Shards that fail do not stop the others; the flow fails at the end,
    naming them, and a new run of the same job on the same output redoes only those.
    """
    from segflow.tasks.io.lease import hold

    with hold(job.output, "run"):  # re-entrant: `segflow run` already holds it; a deployment's run takes it here
        return _label(job, redo, refinalize)


def _label(job: JobConfig, redo: list[str] | None, refinalize: bool) -> RunSummary:
    started = time.time()
    shard_ids = plan_task(job)
    runner = shard_task.with_options(retries=job.runtime.retries, retry_delay_seconds=job.runtime.retry_delay_s)
    with shard_submit_options(job.runtime):
        again = set(redo or ())
        futures = [runner.submit(job, sid, sid in again) for sid in shard_ids]
    progress_id = create_progress_artifact(progress=0.0, description=f"{job.name}: shards committed")
    for done, _ in enumerate(as_completed(futures), 1):
        update_progress_artifact(progress_id, progress=100.0 * done / max(len(futures), 1))  # type: ignore[arg-type]
    wait(futures)
    failed = {}
    for sid, fut in zip(shard_ids, futures):
        state = fut.state
        if not state.is_completed():
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001 - collected and reported below
                failed[sid] = f"{type(e).__name__}: {e}"
    if failed:
        raise IncompleteRunError(sorted(failed), failed)
    shard_runs = [f.result() for f in futures]
    summary = finalize_task(job, started, force=refinalize)
    # which worker process ran each shard and how many models it had to load (not part of summary.json)
    summary.shard_runs = shard_runs
    if job.exports:
        summary.exported = [export_task(job, spec) for spec in job.exports]
    if job.publish is not None:
        summary.published = publish_task(job)
    return summary


def run_job(
    job: JobConfig,
    plan: Plan | None = None,
    config_file: str = "<job>",
    redo: list[str] | None = None,
    refinalize: bool = False,
) -> RunSummary:
    """Run ``label_flow`` for a validated job on its configured task runner (see :mod:`segflow.flows.runners`).

    ``plan``: what :func:`prepare_job` returned; prepared here when not given.
    """
    if plan is None:
        prepare_job(job, config_file)
    runner = make_task_runner(job.runtime)
    return label_flow.with_options(task_runner=runner, flow_run_name=f"{job.name}")(job, redo, refinalize)
