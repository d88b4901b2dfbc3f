"""`segflow export` and `segflow import-review` on the demo's finished run: every format read back by the tools
that own it (pycocotools for COCO/CVAT, ultralytics for YOLO-seg), unchanged labels coming back equal, a review's
edits coming back exactly, bad review files refused with nothing written, and the reviewed run published."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segflow.flows import cli
from segflow.tasks import rle
from segflow.tasks.formats.polygons import mask_to_polygons

POLYGON_MEAN_IOU = 0.97  # documented bar for polygon formats (holes are lost; measured ~1.0 on the demo)


def manifest(out: Path, verdicts=("accept", "review")) -> dict[int, dict]:
    rows = ds.dataset(str(out / "manifest" / "masks.parquet")).to_table().to_pylist()
    return {r["annotation_id"]: r for r in rows if r["verdict"] in verdicts}


def mask_of(r: dict) -> np.ndarray:
    return rle.decode(r["rle_counts"], r["height"], r["width"])


def iou(a, b) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def export(out, fmt, dest, *extra):
    assert cli.main(["export", str(out), str(dest), "--format", fmt, *extra]) == 0


def test_coco_and_cvat_load_in_pycocotools_and_equal_the_masks(demo_copy, tmp_path):
    rows = manifest(demo_copy)
    export(demo_copy, "coco", tmp_path / "coco")  # RLE: bit for bit
    coco = COCO(str(tmp_path / "coco" / "instances.json"))
    accepted = {a for a, r in rows.items() if r["verdict"] == "accept"}
    assert set(coco.anns) == accepted
    assert all(np.array_equal(coco.annToMask(coco.anns[a]).astype(bool), mask_of(rows[a])) for a in accepted)

    export(demo_copy, "cvat", tmp_path / "cvat")  # polygons, the review band's images with all their labels
    with zipfile.ZipFile(tmp_path / "cvat" / "cvat-coco.zip") as z:
        assert z.namelist() == ["annotations/instances_default.json"]
        (tmp_path / "cvat.json").write_bytes(z.read("annotations/instances_default.json"))
    cvat = COCO(str(tmp_path / "cvat.json"))
    review_images = {r["image_id"] for r in rows.values() if r["verdict"] == "review"}
    assert {im["id"] for im in cvat.dataset["images"]} == review_images
    assert {a for a, r in rows.items() if r["image_id"] in review_images} == set(cvat.anns)
    ious = [iou(cvat.annToMask(a).astype(bool), mask_of(rows[a["id"]])) for a in cvat.anns.values()]
    print(f"cvat polygons: mean mask IoU {np.mean(ious):.4f}, min {np.min(ious):.4f} over {len(ious)}")
    assert np.mean(ious) >= POLYGON_MEAN_IOU and all(a["iscrowd"] == 0 for a in cvat.anns.values())
    # negative control: the same polygons read with x and y swapped do not match
    a = next(iter(cvat.anns.values()))
    h, w = a["segmentation"] and (cvat.imgs[a["image_id"]]["height"], cvat.imgs[a["image_id"]]["width"])
    swapped = [np.asarray(p).reshape(-1, 2)[:, ::-1].reshape(-1).tolist() for p in a["segmentation"]]
    wrong = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(swapped, max(h, w), max(h, w))))[:h, :w]
    assert iou(wrong.astype(bool), mask_of(rows[a["id"]])) < 0.5


def yolo_masks(dest: Path, names: dict) -> dict[str, list[tuple[int, np.ndarray]]]:
    """file name -> [(class index, mask)] read from the label files as ultralytics reads them (normalised polygons)."""
    from PIL import Image, ImageOps

    out = {}
    for split in ("train", "val"):
        for img in sorted((dest / "images" / split).iterdir()):
            w, h = ImageOps.exif_transpose(Image.open(img)).size  # upright, as ultralytics (OpenCV) reads it
            lines = (dest / "labels" / split / f"{img.stem}.txt").read_text().split("\n")
            polys = []
            for line in filter(None, lines):
                v = line.split()
                pts = (np.asarray(v[1:], float).reshape(-1, 2) * [w, h]).reshape(-1).tolist()
                m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([pts], h, w))).astype(bool)
                polys.append((int(v[0]), m))
            out[img.name] = polys
    return out


def test_yolo_seg_dataset_reads_back_and_trains_one_epoch(demo_copy, tmp_path):
    import yaml

    dest = tmp_path / "yolo"
    export(demo_copy, "yolo-seg", dest, "--val-percent", "20")
    data = yaml.safe_load((dest / "data.yaml").read_text())
    assert data["names"] == {0: "circle", 1: "square", 2: "triangle"} and Path(data["path"]) == dest
    images = {
        r["image_id"]: r for r in ds.dataset(str(demo_copy / "manifest" / "images.parquet")).to_table().to_pylist()
    }
    ok = [r for r in images.values() if r["status"] == "ok"]
    read = yolo_masks(dest, data["names"])
    assert sorted(read) == sorted(r["file_name"] for r in ok)  # every decoded image, negatives included
    assert len(list((dest / "images" / "val").iterdir())) > 0 and len(list((dest / "images" / "train").iterdir())) > 0
    rows = manifest(demo_copy, ("accept",))
    ious = []
    for r in rows.values():
        name = images[r["image_id"]]["file_name"]
        cands = [m for c, m in read[name] if c == r["category_id"] - 1]
        ious.append(max(iou(m, mask_of(r)) for m in cands))
    print(f"yolo-seg polygons: mean mask IoU {np.mean(ious):.4f} over {len(ious)}")
    assert sum(len(v) for v in read.values()) == len(rows) and np.mean(ious) >= POLYGON_MEAN_IOU

    # one epoch of ultralytics training on it: finite loss, and the weights load in the yolo_seg stage
    from ultralytics import YOLO

    import segflow.tasks.stages.yolo as yolo_adapter
    from segflow.config import YoloSegStage
    from segflow.tasks.stages.cache import get_model

    with yolo_adapter.keep_torch_threads():
        model = YOLO("yolo11n-seg.yaml")
        model.train(
            data=str(dest / "data.yaml"),
            epochs=1,
            imgsz=160,
            batch=8,
            device="cpu",
            plots=False,
            val=False,
            project=str(tmp_path / "runs"),
            name="t",
            exist_ok=True,
            verbose=False,
            workers=0,
            amp=False,
        )
    losses = model.trainer.tloss  # the epoch's mean losses (box, seg, cls, dfl), a tensor or a dict of them
    values = [float(v) for v in (losses.values() if isinstance(losses, dict) else losses.reshape(-1))]
    print("one epoch, mean losses", values)
    assert len(values) >= 3 and np.isfinite(values).all() and max(values) > 0
    ckpt = tmp_path / "seg.pt"
    yolo_adapter.save_yolo_checkpoint(YOLO(str(tmp_path / "runs" / "t" / "weights" / "last.pt")), ckpt)
    stage = YoloSegStage(kind="yolo_seg", weights=str(ckpt), device="cpu", conf=0.01, imgsz=160)
    loaded = get_model(stage, {1: "circle", 2: "square", 3: "triangle"})
    from PIL import Image

    first = np.asarray(Image.open(next((dest / "images" / "train").iterdir())).convert("RGB"))
    (out,) = loaded.adapter.label([first])
    assert out.image_size == first.shape[:2]


def coco_review_file(out: Path, tmp_path: Path, edit) -> Path:
    """The cvat export, edited by ``edit(doc)`` as a CVAT user would, re-zipped as CVAT exports it."""
    export(out, "cvat", tmp_path / "cvat")
    with zipfile.ZipFile(tmp_path / "cvat" / "cvat-coco.zip") as z:
        doc = json.loads(z.read("annotations/instances_default.json"))
    # CVAT renumbers categories and annotations on export
    doc["categories"] = [dict(c, id=c["id"] + 10) for c in doc["categories"]]
    for k, a in enumerate(doc["annotations"]):
        a["category_id"] += 10
        a["id"] = k + 1
    edit(doc)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("annotations/instances_default.json", json.dumps(doc))
    path = tmp_path / "reviewed.zip"
    path.write_bytes(buf.getvalue())
    return path


def test_cvat_review_comes_back_as_a_new_version_with_exactly_the_edits(demo_copy, tmp_path, capsys):
    rows = manifest(demo_copy)
    before = sorted(rows)
    picked = {}

    def edit(doc):
        anns = doc["annotations"]
        by_image = {}
        for a in anns:
            by_image.setdefault(a["image_id"], []).append(a)
        image_id, group = next((i, g) for i, g in by_image.items() if len(g) >= 3)
        relabel, delete, reshape = group[:3]
        picked["relabel"] = _auto_id(rows, image_id, relabel)
        picked["delete"] = _auto_id(rows, image_id, delete)
        picked["reshape"] = _auto_id(rows, image_id, reshape)
        relabel["category_id"] = next(c["id"] for c in doc["categories"] if c["id"] != relabel["category_id"])
        anns.remove(delete)
        m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(reshape["segmentation"], *_hw(doc, image_id))))
        grown = np.pad(m, 2)[:-4, 2:-2] | m.astype(bool)  # the reviewer extends it 2 px down
        reshape["segmentation"] = [p.reshape(-1).tolist() for p in mask_to_polygons(grown)]
        h, w = _hw(doc, image_id)
        box = np.zeros((h, w), bool)
        box[:6, :6] = True
        anns.append(
            {
                "id": 999,
                "image_id": image_id,
                "category_id": doc["categories"][0]["id"],
                "iscrowd": 0,
                "segmentation": [p.reshape(-1).tolist() for p in mask_to_polygons(box)],
                "bbox": [0, 0, 6, 6],
                "area": 36,
            }
        )
        picked["image"], picked["grown"], picked["box"] = image_id, grown, box

    review = coco_review_file(demo_copy, tmp_path, edit)
    capsys.readouterr()
    assert cli.main(["import-review", str(demo_copy), str(review), "--format", "coco", "--json"]) == 0
    changes = json.loads(capsys.readouterr().out)
    c = changes["counts"]
    assert (c["relabelled"], c["reshaped"], c["deleted"], c["added"]) == (1, 1, 1, 1)
    ids = changes["annotation_ids"]
    assert ids["relabelled"] == [picked["relabel"]] and ids["deleted"] == [picked["delete"]]
    assert ids["reshaped"] == [picked["reshape"]]
    shown = sum(1 for r in rows.values() if r["image_id"] in _review_images(rows))
    assert c["kept"] == shown - 3  # every other label of the reviewed images came back unchanged

    version = demo_copy / "reviews" / "v0001"
    new = {r["annotation_id"]: r for r in ds.dataset(str(version / "masks.parquet")).to_table().to_pylist()}
    assert new[picked["relabel"]]["category_id"] != rows[picked["relabel"]]["category_id"]
    assert new[picked["relabel"]]["rle_counts"] == rows[picked["relabel"]]["rle_counts"]  # the mask itself
    assert new[picked["relabel"]]["source"] == "auto" and new[picked["relabel"]]["checked"]
    assert picked["delete"] not in new
    assert new[picked["reshape"]]["source"] == "human"
    assert np.array_equal(mask_of(new[picked["reshape"]]), picked["grown"])
    (added,) = ids["added"]
    assert (
        added // 100000 == picked["image"] and added not in rows and np.array_equal(mask_of(new[added]), picked["box"])
    )
    kept = [a for a in ids["kept"]]
    assert all(new[a]["rle_counts"] == rows[a]["rle_counts"] for a in kept)  # unchanged labels: bit for bit
    # images nobody reviewed keep their accepted auto labels, unchecked
    untouched = {a for a, r in rows.items() if r["verdict"] == "accept" and r["image_id"] not in _review_images(rows)}
    assert untouched <= set(new) and not any(new[a]["checked"] for a in untouched)
    # the auto labels' rows are still in the manifest, unchanged (the history)
    assert sorted(manifest(demo_copy)) == before
    coco = COCO(str(version / "coco" / "instances.json"))
    assert set(coco.anns) == set(new)

    # published: a new version whose card says how many labels people checked
    dest = tmp_path / "published"
    assert cli.main(["publish", str(demo_copy), str(dest)]) == 0
    (ver,) = [p for p in dest.iterdir() if p.is_dir()]
    card = (ver / "README.md").read_text()
    assert f"{changes['labels_checked']} of the {changes['labels']} labels" in card
    assert (ver / "reviews" / "v0001" / "coco" / "instances.json").exists()


def _hw(doc, image_id):
    im = next(i for i in doc["images"] if i["id"] == image_id)
    return im["height"], im["width"]


def _review_images(rows):
    return {r["image_id"] for r in rows.values() if r["verdict"] == "review"}


def _auto_id(rows, image_id, ann):
    """The manifest row a CVAT annotation was exported from, found by its exported polygons."""
    h, w = next((r["height"], r["width"]) for r in rows.values() if r["image_id"] == image_id)
    m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))).astype(bool)
    return max((r for r in rows.values() if r["image_id"] == image_id), key=lambda r: iou(mask_of(r), m))[
        "annotation_id"
    ]


@pytest.mark.parametrize("problem", ["image", "class"])
def test_a_review_naming_what_the_run_lacks_is_refused_and_nothing_is_written(demo_copy, tmp_path, capsys, problem):
    def edit(doc):
        if problem == "image":
            doc["images"][0]["file_name"] = "not-in-this-run.jpg"
        else:
            doc["categories"][0]["name"] = "forklift"

    review = coco_review_file(demo_copy, tmp_path, edit)
    assert cli.main(["import-review", str(demo_copy), str(review), "--format", "coco"]) == 2
    err = capsys.readouterr().err
    assert ("not-in-this-run.jpg" if problem == "image" else "forklift") in err
    assert not (demo_copy / "reviews").exists()
