"""The gold-set evaluator against cases with known answers."""

import json

import numpy as np
import pytest

from segflow.demo.synthetic import write_scene_set
from segflow.tasks import rle
from segflow.tasks.evaluate.quality import GoldSetError, evaluate, format_quality, match_images

ONTOLOGY = {1: "circle", 2: "square", 3: "triangle"}


@pytest.fixture(scope="module")
def gold_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("gold")
    write_scene_set(d / "images", 6, seed=5, gt_dir=d / "gt", size_range=(200, 400))
    return json.loads((d / "gt" / "instances.json").read_text())


def predictions_from(gold, transform=lambda m: m, category=lambda c: c, prefix=""):
    file_names = {prefix + im["file_name"]: 100 + im["id"] for im in gold["images"]}
    sizes = {100 + im["id"]: (im["height"], im["width"]) for im in gold["images"]}
    preds = []
    for a in gold["annotations"]:
        h, w = a["segmentation"]["size"]
        m = transform(rle.decode(a["segmentation"]["counts"], h, w))
        counts = rle.encode_nhw(m[None])[0]
        preds.append(
            {
                "image_id": 100 + a["image_id"],
                "category_id": category(a["category_id"]),
                "score": 0.9,
                "rle_counts": counts,
                "bbox": rle.bbox_xywh([counts], h, w)[0].tolist(),
            }
        )
    return file_names, preds, sizes


def test_perfect_labels_score_one(gold_set):
    names, preds, sizes = predictions_from(gold_set)
    q = evaluate(gold_set, ONTOLOGY, names, preds, sizes)
    assert q["images"] == 6 and q["gold_instances"] == len(gold_set["annotations"]) == q["predictions"]
    assert q["box_ap50"] == q["mask_ap50"] == q["mask_ap"] == q["mean_mask_iou"] == 1.0
    assert all(c["mean_mask_iou"] in (1.0, None) for c in q["per_class"])
    assert "| circle |" in format_quality(q)


def test_shifted_masks_and_wrong_classes_score_low(gold_set):
    names, shifted, sizes = predictions_from(
        gold_set, transform=lambda m: np.roll(m, (m.shape[0] // 3, m.shape[1] // 3), (0, 1))
    )
    q = evaluate(gold_set, ONTOLOGY, names, shifted, sizes)
    assert q["mask_ap50"] < 0.2 and q["mean_mask_iou"] < 0.3
    names, wrong, sizes = predictions_from(gold_set, category=lambda c: c % 3 + 1)
    q = evaluate(gold_set, ONTOLOGY, names, wrong, sizes)
    assert q["mask_ap50"] == 0.0 and q["mean_mask_iou"] == 0.0


def test_matching_by_base_name_and_categories_by_name(gold_set):
    names, preds, sizes = predictions_from(gold_set, prefix="batch/7/")
    renamed = {1: "circle", 2: "square", 3: "triangle"}
    ontology = {10 + k: v for k, v in renamed.items()}  # different ids, same names
    preds = [dict(p, category_id=p["category_id"] + 10) for p in preds]
    q = evaluate(gold_set, ontology, names, preds, sizes)
    assert q["images"] == 6 and q["mask_ap50"] == 1.0
    assert match_images({"images": [{"id": 1, "file_name": "x/a.jpg"}]}, {"a.jpg": 5, "b/a.jpg": 6}) == {}  # ambiguous
    with pytest.raises(GoldSetError, match="no gold image matches"):
        evaluate(gold_set, ONTOLOGY, {"other.jpg": 1}, [], {})


def test_missing_predictions_count_as_zero_iou(gold_set):
    names, preds, sizes = predictions_from(gold_set)
    half = preds[: len(preds) // 2]
    q = evaluate(gold_set, ONTOLOGY, names, half, sizes)
    assert q["mean_mask_iou"] == pytest.approx(len(half) / len(preds), abs=1e-3)


def test_exported_set_precision_and_recall_count_every_label(gold_set):
    """A dataset is not a ranked list: duplicates and wrong labels at low score cost precision, not AP."""
    names, preds, sizes = predictions_from(gold_set)
    n = len(preds)
    q = evaluate(gold_set, ONTOLOGY, names, preds, sizes)
    assert q["set"] == {"tp": n, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    # the same labels plus a low-score duplicate of each and, for half the objects, a low-score wrong class
    _, wrong, _ = predictions_from(gold_set, category=lambda c: c % 3 + 1)
    extra = [dict(p, score=0.1) for p in preds] + [dict(p, score=0.05) for p in wrong[: n // 2]]
    q = evaluate(gold_set, ONTOLOGY, names, preds + extra, sizes)
    assert q["mask_ap50"] == 1.0  # AP does not see them: they rank below every true label
    assert q["set"]["tp"] == n and q["set"]["fp"] == n + n // 2 and q["set"]["fn"] == 0
    assert q["set"]["precision"] == round(n / (2 * n + n // 2), 4) and q["set"]["recall"] == 1.0
    assert sum(c["fp"] for c in q["per_class"]) == q["set"]["fp"]
    assert "accepted (exported): precision 0.400" in format_quality(q)
    # the same labels with the extras sent to review: the accepted set is clean, accepted + review is the above
    rq = evaluate(gold_set, ONTOLOGY, names, preds + [dict(p, verdict="review") for p in extra], sizes)
    assert rq["set"] == {"tp": n, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert rq["set_with_review"] == q["set"] and rq["mask_ap50"] == 1.0
    assert sum(c["with_review"]["fp"] for c in rq["per_class"]) == q["set"]["fp"]
    assert "accepted + review  : precision 0.400" in format_quality(rq)
    # negative control: shifted masks are not matches at all
    names, shifted, sizes = predictions_from(
        gold_set, transform=lambda m: np.roll(m, (m.shape[0] // 3, m.shape[1] // 3), (0, 1))
    )
    q = evaluate(gold_set, ONTOLOGY, names, shifted, sizes)
    assert q["set"]["recall"] < 0.2 and q["set"]["precision"] < 0.2


def test_set_matching_agrees_with_cocoeval_at_iou_half(gold_set):
    """Our one-to-one matches are COCOeval's at IoU 0.5 (its dtMatches), on noisy labels with duplicates."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    names, preds, sizes = predictions_from(gold_set, transform=lambda m: np.roll(m, rng.integers(-9, 10, 2), (0, 1)))
    _, dup, _ = predictions_from(gold_set, transform=lambda m: np.roll(m, rng.integers(-20, 21, 2), (0, 1)))
    preds = [dict(p, score=float(s)) for p, s in zip(preds + dup, rng.random(2 * len(preds)), strict=True)]
    q = evaluate(gold_set, ONTOLOGY, names, preds, sizes)
    gt = COCO()
    gt.dataset = gold_set
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(
            [
                {
                    "image_id": p["image_id"] - 100,
                    "category_id": p["category_id"],
                    "segmentation": {"size": list(sizes[p["image_id"]]), "counts": p["rle_counts"]},
                    "score": p["score"],
                }
                for p in preds
            ]
        )
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
    area_all = [e for e in ev.evalImgs if e is not None and e["aRng"] == ev.params.areaRng[0]]
    coco_tp = sum(int((e["dtMatches"][0] > 0).sum()) for e in area_all)
    assert 0 < coco_tp < len(preds) and q["set"]["tp"] == coco_tp
    assert q["set"]["fp"] == len(preds) - coco_tp


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_chunked_evaluation_equals_one_cocoeval_over_all_images(gold_set, iou_type):
    """COCOeval run a few images at a time and accumulated as one gives COCOeval's own numbers over all images,
    also where a whole chunk has no predictions (its gold instances are misses)."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from segflow.tasks.evaluate.quality import _pair, _per_class_ap, _run_eval

    rng = np.random.default_rng(4)
    names, preds, sizes = predictions_from(gold_set, transform=lambda m: np.roll(m, rng.integers(-12, 13, 2), (0, 1)))
    _, dup, _ = predictions_from(gold_set, transform=lambda m: np.roll(m, rng.integers(-25, 26, 2), (0, 1)))
    first_two = {100 + i for i in sorted(im["id"] for im in gold_set["images"])[:2]}
    preds = [
        dict(p, score=float(s))
        for p, s in zip(preds + dup, rng.random(2 * len(preds)), strict=True)
        if p["image_id"] not in first_two
    ]
    pairs = _pair(gold_set, ONTOLOGY, names, preds, sizes)
    with contextlib.redirect_stdout(io.StringIO()):
        results = [
            {"image_id": g, "category_id": c, "score": p["score"]}
            | ({"bbox": [float(v) for v in p["row"]["bbox"]]} if iou_type == "bbox" else {"segmentation": p["rle"]})
            for (g, c), ps in pairs.preds.items()
            for p in ps
        ]
        ev = COCOeval(pairs.gt, pairs.gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    whole = ([max(0.0, float(s)) for s in ev.stats], _per_class_ap(ev, list(ONTOLOGY)))
    assert 0.1 < whole[0][1] < 0.99  # AP50: neither trivial nor perfect
    for chunk in (1, 2, 4, 1000):
        stats, per_class = _run_eval(pairs.gt, pairs.preds, iou_type, list(ONTOLOGY), chunk=chunk)
        assert stats == whole[0]
        assert per_class.keys() == whole[1].keys()
        for cid, aps in whole[1].items():  # approx() takes flat sequences only (pytest >= 9.2)
            assert list(per_class[cid]) == pytest.approx(list(aps), nan_ok=True), cid


@pytest.mark.parametrize("weight", ["2", None, float("nan"), float("inf"), 0, -1.0, True, 1e9])
def test_a_gold_images_weight_must_be_a_positive_number(tmp_path, weight):
    """``segflow_weight`` (a review gold set's one over the chance of being audited) comes from a file anyone with
    the output can edit: one error line naming the file and the image, never a traceback or a silent weight."""
    import json

    from segflow.tasks.evaluate.quality import load_gold

    images = [{"id": 1, "file_name": "a.png", "width": 4, "height": 4, "segflow_weight": 2.5}]
    doc = {"images": images, "annotations": [], "categories": []}
    (tmp_path / "ok.json").write_text(json.dumps(doc))
    assert load_gold(str(tmp_path / "ok.json"))["images"][0]["segflow_weight"] == 2.5  # a valid weight reads
    bad = images + [{"id": 2, "file_name": "b.png", "width": 4, "height": 4, "segflow_weight": weight}]
    (tmp_path / "bad.json").write_text(json.dumps(doc | {"images": bad}))
    with pytest.raises(GoldSetError, match=r"bad\.json: images\[1\]\.segflow_weight: must be a number"):
        load_gold(str(tmp_path / "bad.json"))
