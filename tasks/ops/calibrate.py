"""``segflow calibrate``: fit the operating point of a finished run on a gold set and export it again there.

No model runs and committed shards are not touched (:func:`recalibrate_output`); the fit is
:mod:`segflow.tasks.evaluate.calibration`'s.
"""

from __future__ import annotations

from typing import Any

from segflow.tasks.records import RunSummary

__all__ = ["recalibrate_output"]


def recalibrate_output(output: str, gold_url: str, **accept: Any) -> tuple[RunSummary, dict]:
    """Fit the acceptance of a finished run on a gold set and export again at that operating point.

    No model runs and committed shards are not touched: ``job.json`` gets the gold set and the ``accept``
    settings (``precision``, ``folds``, ``score``, ...; a saved ``calibration`` is dropped), then the run is
    finalized again from its commits. Returns ``(summary, calibration)``.
    """
    import json

    from segflow.config.schema import JobConfig
    from segflow.tasks.evaluate.quality import load_gold
    from segflow.tasks.finalize.finalizer import finalize
    from segflow.tasks.io.layout import OutputLayout
    from segflow.tasks.io.lease import hold
    from segflow.tasks.io.storage import open_fs, read_bytes, scrub, write_bytes

    layout = OutputLayout(output)
    fs, job_path = open_fs(layout.job_json)
    with hold(output, "calibrate"):
        job = JobConfig.model_validate(json.loads(read_bytes(fs, job_path)))
        load_gold(gold_url)  # a clear error before anything is written
        settings = job.accept.model_copy(update={**accept, "calibration": None})
        update = {"gold_set": gold_url, "accept": type(settings).model_validate(settings.model_dump())}
        update["output"] = output  # this output, wherever job.json says it was written (a copy, a moved folder)
        job = job.model_copy(update=update)
        write_bytes(fs, job_path, json.dumps(scrub(job.model_dump(mode="json")), indent=1).encode())
        summary = finalize(job, force=True)
        _, cal_path = open_fs(layout.calibration)
        return summary, json.loads(read_bytes(fs, cal_path))
