"""segflow's work without Prefect, one subpackage per phase of a run (the flow in :mod:`segflow.flows` wraps these
functions in thin tasks):

==========  ==========================================================================================
io          storage, retries, weights, image decoding (and statistics), the output layout, its writer lease
plan        list the source once, split it into deterministic shards
shard       one shard from read to commit: the runner, the commit protocol, progress
stages      the model adapters and their registry, sliced inference, QC, the panoptic merge
outputs     the manifests, COCO and panoptic exports, QC outputs
evaluate    quality against a gold set, calibration, acceptance, novelty, drift, the semantic audit
finalize    committed shards -> manifests, exports and the summary
report      the run report (report.html)
formats     exports to review and training tools, and review files read back
ops         status, verify, publish, import-review
==========  ==========================================================================================

Three modules every phase uses sit here: :mod:`.record` (``Detections``, the one record between stages),
:mod:`.records` (the typed records across modules: ``RunSummary``, ``Verdict``, ``Role``) and :mod:`.rle` (the one
mask format).
"""
