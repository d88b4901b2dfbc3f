"""The job file: one YAML document, parsed once with ``yaml.safe_load`` into pydantic models.

A job declares where the images are, which classes it wants, and a DAG of
stages (each names the stages it ``needs``). Everything is checked before any
work starts; every problem is reported as ``FILE: key.path: message``, e.g.::

    job.yaml: stages.masks.needs[0]: no stage named 'detector'

Relative paths inside the YAML (source, output, weights) are resolved against
the directory of the YAML file, so a job file travels with its models. Paths
given on the command line are relative to the working directory. URLs
(``s3://...``, ``memory://...``) are used as they are.

Every key: ``docs/config.md`` (generated from :mod:`segflow.config.schema`).
"""

from segflow.config.loading import load_config, parse_config
from segflow.config.schema import *  # noqa: F403 - the job and stage models
from segflow.config.schema import __all__ as _schema_names
from segflow.config.validation import ConfigError

__all__ = ["ConfigError", "load_config", "parse_config", *_schema_names]
