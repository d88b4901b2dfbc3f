"""How right the labels are: quality against a gold set, calibration, acceptance (verdicts), novelty, drift
and the semantic audit."""
