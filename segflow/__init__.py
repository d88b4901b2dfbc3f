"""segflow: declarative auto-labeling of large image datasets on Prefect 3.

One import name, mapped from the checkout's folders:

* :mod:`segflow.flows`  (``flows/``)   -- the job config, the Prefect flow, the CLI.
* :mod:`segflow.tasks`  (``tasks/``)   -- shard work: image I/O, model adapters, QC, writers (no Prefect).
* :mod:`segflow.configs` (``configs/``) -- example jobs and the demo models (package data).
* :mod:`segflow.demo`   (``segflow/demo/``) -- synthetic scenes and demo-model training; the labeling
  path never imports it.
"""

__version__ = "0.1.0"
