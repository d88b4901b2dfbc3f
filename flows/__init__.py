"""segflow.flows: the job config schema, the Prefect flow that runs a job, and the CLI."""
