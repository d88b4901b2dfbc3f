"""An ultralytics segmentation dataset from the run's labels: ``images/``, ``labels/`` and ``data.yaml``.

``segflow export OUTPUT --format yolo-seg DEST`` (DEST: any fsspec URL) writes::

    DEST/data.yaml                       path, train, val, names (index -> class name)
    DEST/images/{train,val}/<file_name>  the source images, copied byte for byte (``link``: symlinked, local only)
    DEST/labels/{train,val}/<stem>.txt   one line per mask: ``<class index> x1 y1 x2 y2 ...`` normalised to [0, 1]
    DEST/segflow_classes.json            class index -> ontology category id

Class indices are the ontology's thing classes in id order, 0-based (YOLO needs them
contiguous). A mask with several parts is one line: the parts joined by
ultralytics' own ``merge_multi_segment`` (as its COCO converter does); holes are lost.
The split is by image: ``val`` when the first 8 hex digits of the sha1 of the image's
``file_name`` modulo 100 are below ``val_percent`` (deterministic, stable as the dataset
grows). Images without masks of the chosen verdicts get an empty label file (negatives).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import PurePosixPath

import numpy as np

from segflow.tasks.formats.labels import ExportError, RunLabels
from segflow.tasks.formats.polygons import rle_to_polygons
from segflow.tasks.io.storage import is_local, join, open_fs, read_bytes, safe_join, write_bytes

__all__ = ["export_yolo_seg", "split_of"]


def split_of(file_name: str, val_percent: int) -> str:
    """``train`` or ``val`` for an image, by the sha1 of its path (see the module docstring)."""
    return "val" if int(hashlib.sha1(file_name.encode()).hexdigest()[:8], 16) % 100 < val_percent else "train"


def _line(index: int, polygons: list[np.ndarray], width: int, height: int) -> str | None:
    if not polygons:
        return None
    if len(polygons) > 1:
        from ultralytics.data.converter import merge_multi_segment

        points = np.concatenate(merge_multi_segment([p.reshape(-1).tolist() for p in polygons]), axis=0)
    else:
        points = polygons[0]
    norm = (np.asarray(points, np.float64).reshape(-1, 2) / [width, height]).clip(0, 1)
    return f"{index} " + " ".join(f"{v:.6f}" for v in norm.reshape(-1))


def export_yolo_seg(
    run: RunLabels, dest: str, verdicts: str, val_percent: int = 10, link: bool = False, tolerance: float = 0.0
) -> dict[str, int]:
    """Write the dataset; returns counts per split."""
    import yaml

    index = {cid: k for k, cid in enumerate(sorted(run.categories))}
    fs, root = open_fs(dest)
    counts = {"train": 0, "val": 0, "masks": 0}
    for im in run.images(verdicts, labelled_only=False):
        split = split_of(im.file_name, val_percent)
        rel = PurePosixPath(im.file_name)
        drawn = [
            _line(
                index[r["category_id"]],
                rle_to_polygons(r["rle_counts"], im.height, im.width, tolerance),
                im.width,
                im.height,
            )
            for r in im.masks
            if r["category_id"] in index
        ]
        lines = [x for x in drawn if x]
        try:  # file names come from the output (others may write it): never outside DEST
            label = safe_join(join(dest, "labels", split), str(rel.with_suffix(".txt")))
            target = open_fs(safe_join(join(dest, "images", split), str(rel)))[1]
        except ValueError as e:
            raise ExportError(f"image {im.image_id}: {e}") from None
        write_bytes(fs, open_fs(label)[1], ("\n".join(lines) + ("\n" if lines else "")).encode())
        src_fs, src = open_fs(im.uri)
        if link:
            if not (is_local(fs) and is_local(src_fs)):
                raise ExportError("link: true needs a local source and a local DEST; copy instead")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                os.unlink(target)
            os.symlink(os.path.abspath(src), target)
        else:
            write_bytes(fs, target, read_bytes(src_fs, src))
        counts[split] += 1
        counts["masks"] += len(lines)
    data = {
        "path": root if is_local(fs) else ".",  # ultralytics resolves a relative path from its datasets dir
        "train": "images/train",
        "val": "images/val",
        "names": {k: run.categories[cid] for cid, k in index.items()},
    }
    write_bytes(fs, open_fs(join(dest, "data.yaml"))[1], yaml.safe_dump(data, sort_keys=False).encode())
    write_bytes(
        fs, open_fs(join(dest, "segflow_classes.json"))[1], json.dumps({k: c for c, k in index.items()}).encode()
    )
    return {"images": counts["train"] + counts["val"], **counts}
