"""The run report: ``OUTPUT/report.html`` (:mod:`.render`), from samples finalize gathers (:mod:`.sampler`) and
figures (:mod:`.plots`)."""

from segflow.tasks.report.render import ReportError, write_report
from segflow.tasks.report.sampler import ReportSampler

__all__ = ["ReportError", "ReportSampler", "write_report"]
