"""The COCO writer formats annotation rows itself (its hot loop at millions of rows): the text must be exactly what
json.dumps gives for the same object, backslashes in RLE counts, missing and NaN scores included."""

import json

import pyarrow as pa

from segflow.tasks.outputs.coco import InstancesWriter, _f


def test_annotation_text_equals_json_dumps(tmp_path):
    rows = [
        dict(
            annotation_id=100001,
            image_id=1,
            category_id=2,
            rle_counts="a\\b0O1",
            width=30,
            height=20,
            area=7,
            bbox=[1.0, 2.125, 3.0, 4.5],
            score=0.123456,
            predicted_iou=None,
            verdict="accept",
        ),
        dict(
            annotation_id=100002,
            image_id=1,
            category_id=1,
            rle_counts="PP\\\\1",
            width=30,
            height=20,
            area=3,
            bbox=[0.0, 0.0, 1.0, 1.0],
            score=float("nan"),
            predicted_iou=0.9,
            verdict="accept",
        ),
    ]
    images = pa.table(
        {
            "image_id": [1],
            "file_name": ["a/x.jpg"],
            "image_uri": ["/d/a/x.jpg"],
            "width": [30],
            "height": [20],
            "status": ["ok"],
        }
    )
    out = tmp_path / "instances.json"
    writer = InstancesWriter(str(out), {1: "a", 2: "b"})
    writer.add(images, pa.Table.from_pylist(rows))
    writer.close()
    doc = json.loads(out.read_text())
    expected = [
        {
            "id": r["annotation_id"],
            "image_id": 1,
            "category_id": r["category_id"],
            "segmentation": {"size": [20, 30], "counts": r["rle_counts"]},
            "area": r["area"],
            "bbox": [round(v, 2) for v in r["bbox"]],
            "iscrowd": 0,
            "score": None if r["score"] != r["score"] else _f(r["score"]),
            "predicted_iou": _f(r["predicted_iou"]),
        }
        for r in rows
    ]
    assert doc["annotations"] == expected
    text = out.read_text()
    assert json.dumps(expected[0]) in text  # byte for byte, separators included


def test_image_names_are_escaped_as_json_dumps_does():
    from segflow.tasks.outputs.coco import _json_str

    for s in ["a/b.jpg", 'x"y', "back\\slash", "üml", "tab\there", "a b [1]~!#.png", "del\x7f", "emoji\U0001f600"]:
        assert _json_str(s) == json.dumps(s)
