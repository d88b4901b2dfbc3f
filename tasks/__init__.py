"""segflow shard work: image I/O, model adapters, records, manifest and COCO writers.

Everything here is plain Python (no Prefect): the flow in :mod:`flows` wraps
these functions in thin tasks.
"""
