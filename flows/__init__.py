"""segflow flows: the job config schema, the Prefect flow that runs a job, and the CLI."""

__version__ = "0.1.0"
