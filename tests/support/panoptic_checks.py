"""The COCO panoptic format rules (panopticapi's checks), applied to a finished run's export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from segflow.tasks.stages.panoptic import read_panoptic_png


def check_coco_panoptic(out: Path) -> tuple[dict, int, int]:
    """Check ``out/coco/panoptic.json`` with its PNGs and ``out/semantic``: every PNG id has exactly one
    ``segments_info`` entry and vice versa, areas and boxes are the PNG's, the semantic map is the panoptic map's
    categories byte for byte. Returns ``(the JSON, things seen, stuff seen)``."""
    pan = json.loads((out / "coco" / "panoptic.json").read_text())
    cats = {c["id"]: c for c in pan["categories"]}
    images = {im["id"]: im for im in pan["images"]}
    assert {a["image_id"] for a in pan["annotations"]} == set(images)
    seen_things = seen_stuff = 0
    for a in pan["annotations"]:
        im = images[a["image_id"]]
        ids = read_panoptic_png((out / "coco" / "panoptic" / a["file_name"]).read_bytes())
        assert ids.shape == (im["height"], im["width"]) and ids.min() >= 0
        infos = {s["id"]: s for s in a["segments_info"]}
        assert len(infos) == len(a["segments_info"])  # ids unique
        assert set(np.unique(ids).tolist()) - {0} == set(infos)  # every PNG id has one entry and vice versa
        for sid, s in infos.items():
            m = ids == sid
            assert s["area"] == int(m.sum()) and s["category_id"] in cats and s["iscrowd"] == 0
            ys, xs = np.nonzero(m)
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            seen_things += cats[s["category_id"]]["isthing"]
            seen_stuff += 1 - cats[s["category_id"]]["isthing"]
        sem = Image.open(out / "semantic" / a["file_name"])
        assert sem.mode == "P"
        lut = np.zeros(ids.max() + 1, np.int64)
        for sid, s in infos.items():
            lut[sid] = s["category_id"]
        np.testing.assert_array_equal(np.asarray(sem), lut[ids])
    return pan, seen_things, seen_stuff
