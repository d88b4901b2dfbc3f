"""What a run writes: the Parquet manifests, the COCO instances and panoptic exports, the QC outputs."""
