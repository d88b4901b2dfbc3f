"""The stages a shard runs: the adapter registry and every model adapter (detectors, SAM 1/2/3, panoptic,
semantic), sliced inference (:mod:`.tiling`), the QC checks and the panoptic merge."""
