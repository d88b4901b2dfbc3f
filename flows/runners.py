"""Where shard tasks run: ``runtime.task_runner`` -> a Prefect task runner.

* ``threads`` -- ``ThreadPoolTaskRunner(max_workers)`` in the flow's process
  (always bounded: Prefect's default pool is not).
* ``dask`` -- ``prefect_dask.DaskTaskRunner``: the cluster at ``address``, or a
  local cluster of ``max_workers`` single-threaded worker processes. With
  ``gpus_per_shard`` each shard task is annotated ``resources={"GPU": n}`` (a
  local cluster's workers then offer ``GPU: n`` each, one shard at a time).
* ``ray`` -- ``prefect_ray.RayTaskRunner``: the cluster at ``address``, or a
  local Ray with ``max_workers`` CPUs; each shard task requests
  ``num_gpus=gpus_per_shard`` and one CPU.

Workers report to the same Prefect API as the flow: the flow's
``PREFECT_API_URL`` is exported to local clusters' worker processes (Ray:
through ``runtime_env``); workers of an existing cluster need it in their own
environment. Models load once per worker process (:mod:`segflow.tasks.stages.cache`);
Dask and Ray reuse their worker processes across tasks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from segflow.tasks.stages.registry import MissingDependencyError

__all__ = ["make_task_runner", "shard_submit_options"]


def _api_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    env = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    url = PREFECT_API_URL.value()
    if url:
        env["PREFECT_API_URL"] = url
    key = PREFECT_API_KEY.value()
    if key:
        env["PREFECT_API_KEY"] = key.get_secret_value() if hasattr(key, "get_secret_value") else str(key)
    return env


def make_task_runner(runtime: Any) -> Any:
    """The Prefect task runner for a job's ``runtime`` settings."""
    kind = runtime.task_runner
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=runtime.max_workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:
            raise MissingDependencyError(
                f"runtime.task_runner 'dask' needs prefect-dask ({e}); install it with: pip install 'segflow[dask]'"
            ) from e
        if runtime.address:
            return DaskTaskRunner(address=runtime.address)
        os.environ.update(_api_env())  # local worker processes inherit the environment
        cluster_kwargs: dict[str, Any] = {
            "n_workers": runtime.max_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
        if runtime.gpus_per_shard:
            cluster_kwargs["resources"] = {"GPU": runtime.gpus_per_shard}
        return DaskTaskRunner(cluster_kwargs=cluster_kwargs)
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as e:
            raise MissingDependencyError(
                f"runtime.task_runner 'ray' needs prefect-ray ({e}); install it with: pip install 'segflow[ray]'"
            ) from e
        init_kwargs: dict[str, Any] = {
            "runtime_env": {"env_vars": _api_env()},
            "include_dashboard": False,
            "log_to_driver": False,
        }
        if runtime.address:
            return RayTaskRunner(address=runtime.address, init_kwargs=init_kwargs)
        init_kwargs["num_cpus"] = runtime.max_workers
        return RayTaskRunner(init_kwargs=init_kwargs)
    raise ValueError(f"unknown runtime.task_runner {kind!r}")  # pragma: no cover - the schema keeps it closed


@contextlib.contextmanager
def shard_submit_options(runtime: Any) -> Iterator[None]:
    """Resource requests that apply to the shard tasks submitted inside this block."""
    if runtime.task_runner == "dask" and runtime.gpus_per_shard:
        import dask

        with dask.annotate(resources={"GPU": runtime.gpus_per_shard}):
            yield
    elif runtime.task_runner == "ray":
        from prefect_ray.context import remote_options

        with remote_options(num_cpus=1, num_gpus=runtime.gpus_per_shard):
            yield
    else:
        yield
