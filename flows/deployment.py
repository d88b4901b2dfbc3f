"""The deployment entrypoint: a flow whose parameter is the job file (path or URL).

``deploy/prefect.yaml`` deploys :func:`label_job`; a scheduled or manual run
reads the job file, checks it and its weights and plans *before* any shard
work (a bad config fails the run with the same ``FILE: key.path: message``
errors as the CLI), then runs :func:`segflow.flows.label_flow.label_flow` as a subflow
on the task runner the job asks for (threads, Dask or Ray).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from segflow.config import ConfigError, load_config
from segflow.flows.label_flow import label_flow, prepare_job
from segflow.flows.runners import make_task_runner
from segflow.tasks.io.storage import redact
from segflow.tasks.records import RunSummary

__all__ = ["label_job"]


@flow(name="segflow-job", log_prints=False)
def label_job(config: str, source: str | None = None, output: str | None = None) -> RunSummary:
    """Run the labeling job described by ``config`` (a job YAML path or URL).

    ``source`` / ``output`` override the file's values (e.g. one output per
    scheduled run). Returns the run summary.
    """
    overrides = {k: v for k, v in (("source", source), ("output", output)) if v}
    log = get_run_logger()
    try:
        job = load_config(config, overrides=overrides)
        plan = prepare_job(job, config)
    except ConfigError as e:
        log.error("%s", e)
        raise
    log.info("%s: %d images in %d shards -> %s", job.name, plan.num_images, len(plan.shard_ids), redact(job.output))
    runner = make_task_runner(job.runtime)
    return label_flow.with_options(task_runner=runner, flow_run_name=job.name)(job)
