"""Label quality against a gold set: COCO box/mask AP, per-class AP and mean mask IoU.

A gold set is a COCO instances file with human labels for some of the job's
images. Images are matched by ``file_name`` (the path relative to the source
root; a unique base name also matches); gold categories are matched to the
ontology by name. Only matched images are evaluated.

Metrics (``OUTPUT/quality.json``):

* ``box_ap``, ``box_ap50``, ``mask_ap``, ``mask_ap50``: pycocotools ``COCOeval``
  (IoU 0.50:0.95 and 0.50, all areas, 100 detections), predictions scored by
  the detector confidence;
* ``mean_mask_iou``: for every gold instance, the best mask IoU with an
  auto-label of the same class on the same image (0 when there is none),
  averaged over gold instances -- "how well is each labelled object covered";
* ``set``: the accepted (exported) labels as a set, not a ranked list: ``tp``,
  ``fp``, ``fn``, ``precision``, ``recall``, ``f1``, matched one to one per
  image and class, greedily by score, at mask IoU >= 0.5 (COCOeval's matching
  at that threshold, without its 100-detections cap): every exported mask is a
  label someone trains on, so a false positive counts however low its score;
  ``set_with_review``: the same for accepted + review (what a reviewer could
  reach);
* ``per_class``: per ontology class, with gold and predicted counts (AP and
  mean IoU over every label given, the accepted set's counts, ``with_review``).

AP and mean IoU rank every label QC kept (accepted, review and those below the
review band): how well the model orders its labels. The sets say what the
dataset holds.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import PurePosixPath
from types import SimpleNamespace

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segflow.tasks.documents import ClassQuality, CocoDataset, Quality, SetCounts
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.storage import open_fs, read_bytes, redact

__all__ = [
    "GoldSetError",
    "class_confusion",
    "evaluate",
    "format_quality",
    "label_matches",
    "load_gold",
    "load_quality",
    "match_set",
]


MAX_IMAGE_WEIGHT = 1e6
"""The largest ``segflow_weight`` a gold image may carry (one over its chance of being audited)."""


class GoldSetError(Exception):
    """The gold set cannot be read or shares no images or classes with the job."""


def load_gold(url: str) -> CocoDataset:
    fs, path = open_fs(url)
    try:
        data = json.loads(read_bytes(fs, path))
    except FileNotFoundError:
        raise GoldSetError(f"gold set not found: {redact(url)}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise GoldSetError(f"gold set {redact(url)} is not JSON: {e}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise GoldSetError(f"gold set {redact(url)}: missing COCO key {key!r}")
    for k, im in enumerate(data["images"]):  # a review's gold set weighs images (1 / chance of being audited)
        w = im.get("segflow_weight", 1.0) if isinstance(im, dict) else 1.0
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= MAX_IMAGE_WEIGHT:
            raise GoldSetError(
                f"gold set {redact(url)}: images[{k}].segflow_weight: must be a number in (0, {MAX_IMAGE_WEIGHT:g}], "
                f"got {w!r}"[:300]
            )
    return data  # type: ignore[no-any-return]


def match_images(gold: CocoDataset, file_names: dict[str, int]) -> dict[int, int]:
    """Gold image id -> job image id, by exact file name, else by unique base name."""
    by_base: dict[str, list[int]] = defaultdict(list)
    for name, image_id in file_names.items():
        by_base[PurePosixPath(name).name].append(image_id)
    out = {}
    for img in gold["images"]:
        name = img["file_name"]
        if name in file_names:
            out[img["id"]] = file_names[name]
        else:
            cands = by_base.get(PurePosixPath(name).name, [])
            if len(cands) == 1:
                out[img["id"]] = cands[0]
    return out


def _per_class_ap(ev: COCOeval, cat_ids: list[int]) -> dict[int, tuple[float, float]]:
    """(AP@[.5:.95], AP@.5) per category from an accumulated COCOeval (area all, maxDets 100)."""
    prec = ev.eval["precision"]  # T x R x K x A x M
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        if cid not in cat_ids:
            continue
        p = prec[:, :, k, 0, -1]
        p50 = prec[0, :, k, 0, -1]
        ap = float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
        ap50 = float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else float("nan")
        out[cid] = (ap, ap50)
    return out


def match_set(gold: list[dict], preds: list[dict], iou_threshold: float = 0.5) -> tuple[list[bool | None], list[bool]]:
    """One image and class: which predictions match a gold instance, which gold instances are found.

    Arguments:
      gold: dicts with ``rle`` (COCO RLE) and ``iscrowd``.
      preds: dicts with ``rle`` and ``score``.
    Returns ``(per prediction: True matched, False unmatched, None on a crowd region (ignored);
    per gold instance: found)``, predictions in the given order. Greedy by descending score; each
    prediction takes the unmatched non-crowd gold instance of highest IoU >= the threshold, as
    COCOeval does.
    """
    pred_hit: list[bool | None] = [False] * len(preds)
    found = [False] * len(gold)
    if not preds or not gold:
        return pred_hit, found
    crowd = [int(g.get("iscrowd", 0)) for g in gold]
    ious = np.asarray(mask_utils.iou([p["rle"] for p in preds], [g["rle"] for g in gold], crowd)).reshape(
        len(preds), len(gold)
    )
    for i in sorted(range(len(preds)), key=lambda k: -preds[k]["score"]):
        best, best_iou = -1, iou_threshold
        for j in range(len(gold)):
            if not crowd[j] and not found[j] and ious[i, j] >= best_iou:
                best, best_iou = j, ious[i, j]
        if best >= 0:
            found[best], pred_hit[i] = True, True
        elif any(crowd[j] and ious[i, j] >= iou_threshold for j in range(len(gold))):
            pred_hit[i] = None
    return pred_hit, [f for f, c in zip(found, crowd, strict=True) if not c]


def _match_all(
    gold: dict[tuple[int, int], list[dict]], preds: dict[tuple[int, int], list[dict]]
) -> tuple[list[dict], dict[tuple[int, int], int]]:
    """Every label with its match (labels on crowd regions left out), and the gold instances per image and class."""
    labels = []
    counts = {}
    for key in set(preds) | set(gold):
        hits, found = match_set(gold.get(key, []), preds.get(key, []))
        counts[key] = len(found)
        labels += [
            {"image_id": key[0], "category_id": key[1], "score": p["score"], "tp": h, "row": p.get("row")}
            for p, h in zip(preds.get(key, []), hits, strict=True)
            if h is not None
        ]
    return labels, counts


def label_matches(
    gold: CocoDataset,
    ontology: dict[int, str],
    file_names: dict[str, int],
    predictions: Iterable[dict],
    sizes: dict[int, tuple[int, int]],
) -> tuple[list[dict], dict[tuple[int, int], int]]:
    """For calibration: every label of the gold images with ``score`` and ``tp`` (matched one to one at mask IoU
    >= 0.5), and ``(image, category) -> gold instances``; arguments as :func:`evaluate`'s."""
    pairs = _pair(gold, ontology, file_names, predictions, sizes)
    return _match_all(pairs.gold, pairs.preds)


def _set_tally(
    gold: dict[tuple[int, int], list[dict]], preds: dict[tuple[int, int], list[dict]], verdicts: tuple[str, ...]
) -> tuple[list[int], dict[int, list[int]]]:
    """TP / FP / FN overall and per category of the labels whose verdict is in ``verdicts`` (no verdict: accept)."""
    kept = {
        k: [p for p in v if ((p.get("row") or {}).get("verdict") or "accept") in verdicts] for k, v in preds.items()
    }
    labels, gold_counts = _match_all(gold, kept)
    tally: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])  # category -> tp, fp, fn
    for r in labels:
        tally[r["category_id"]][0 if r["tp"] else 1] += 1
    for (_, cid), n in gold_counts.items():
        tally[cid][2] += n
    for t in tally.values():
        t[2] -= t[0]
    return [sum(t[i] for t in tally.values()) for i in range(3)], tally


def class_confusion(
    gold: dict[tuple[int, int], list[dict]],
    preds: dict[tuple[int, int], list[dict]],
    categories: list[int],
    verdicts: tuple[str, ...] = ("accept",),
    iou_threshold: float = 0.5,
) -> list[list[int]]:
    """Which class the exported labels give each gold instance: a (K+1) x (K+1) count matrix.

    Rows are gold classes in ``categories`` order, then "none" (a label on no gold instance); columns are label
    classes, then "none" (a gold instance no label found). Labels (those whose verdict is in ``verdicts``) are
    matched one to one to gold instances of any class, per image, greedy by descending score at mask IoU >=
    ``iou_threshold``; labels on crowd regions are left out. Arguments grouped as :func:`_pair` returns them.
    """
    k = len(categories)
    index = {c: i for i, c in enumerate(categories)}
    matrix = np.zeros((k + 1, k + 1), np.int64)
    by_image: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
    for (img, cid), instances in gold.items():
        by_image[img][0].extend((index[cid], g) for g in instances if cid in index)
    for (img, cid), ps in preds.items():
        kept = [p for p in ps if ((p.get("row") or {}).get("verdict") or "accept") in verdicts]
        by_image[img][1].extend((index[cid], p) for p in kept if cid in index)
    for golds, labels in by_image.values():
        labels.sort(key=lambda t: -t[1]["score"])
        crowd = [int(g.get("iscrowd", 0)) for _, g in golds]
        ious = (
            np.asarray(mask_utils.iou([p["rle"] for _, p in labels], [g["rle"] for _, g in golds], crowd)).reshape(
                len(labels), len(golds)
            )
            if labels and golds
            else np.zeros((len(labels), len(golds)))
        )
        found = np.array(crowd, bool)  # crowd regions are never "found" nor missed
        for i, (pc_, _) in enumerate(labels):
            free = np.where(found, -1.0, ious[i]) if len(golds) else ious[i]
            j = int(np.argmax(free)) if len(golds) else -1
            if j >= 0 and free[j] >= iou_threshold:
                found[j] = True
                matrix[golds[j][0], pc_] += 1
            elif not any(crowd[g] and ious[i, g] >= iou_threshold for g in range(len(golds))):
                matrix[k, pc_] += 1
        for j, (gc, _) in enumerate(golds):
            if not found[j]:
                matrix[gc, k] += 1
    return matrix.tolist()


def set_counts(tp: int, fp: int, fn: int) -> SetCounts:
    """TP/FP/FN with precision, recall and F1 (None where undefined)."""
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {"tp": tp, "fp": fp, "fn": fn, "precision": _r(precision), "recall": _r(recall), "f1": _r(f1)}


def _run_eval(
    gt: COCO, preds: dict[tuple[int, int], list[dict]], iou_type: str, cat_ids: list[int], chunk: int = 250
) -> tuple[list[float], dict]:
    """COCOeval's 12 summary numbers and the per-category (AP, AP50) of the grouped predictions.

    The images are evaluated ``chunk`` at a time (COCOeval keeps every detection, IoU matrix and per-image
    table of what it evaluates: a gold set of many images at once would hold them all) and the per-image
    tables are accumulated as one, exactly as a single ``evaluate()`` over all images orders them.
    """
    if not any(preds.values()):
        return [0.0] * 12, {}
    img_ids = sorted(gt.getImgIds())
    by_image: dict[int, list[tuple[int, dict]]] = defaultdict(list)
    for (g, cid), ps in preds.items():
        by_image[g] += [(cid, p) for p in ps]
    chunks = []
    with contextlib.redirect_stdout(io.StringIO()):
        for i in range(0, len(img_ids), chunk):
            ids = img_ids[i : i + chunk]
            dt = _results(gt, [(g, c, p) for g in ids for c, p in by_image.get(g, [])], iou_type)
            ev = COCOeval(gt, dt, iou_type)
            ev.params.imgIds = ids
            ev.evaluate()
            chunks.append((len(ids), [_compact(e) for e in ev.evalImgs]))
        ev.params.imgIds = img_ids
        ev._paramsEval.imgIds = img_ids
        n_cat, n_area = len(ev._paramsEval.catIds), len(ev._paramsEval.areaRng)
        ev.evalImgs = [  # COCOeval's order: category, area range, image
            x
            for k in range(n_cat)
            for a in range(n_area)
            for n, e in chunks
            for x in e[(k * n_area + a) * n : (k * n_area + a + 1) * n]
        ]
        ev.accumulate()
        ev.summarize()
    return [max(0.0, float(s)) for s in ev.stats], _per_class_ap(ev, cat_ids)


def _compact(e: dict | None) -> dict[str, np.ndarray] | None:
    """What ``COCOeval.accumulate`` reads of a per-image table, in its smallest exact form (it only asks whether
    a detection matched and whether it is ignored)."""
    if e is None:
        return None
    return {
        "dtScores": np.asarray(e["dtScores"], np.float64),
        "dtMatches": e["dtMatches"].astype(bool),
        "dtIgnore": e["dtIgnore"].astype(bool),
        "gtIgnore": np.asarray(e["gtIgnore"], bool),
    }


def _results(gt: COCO, preds: list[tuple[int, int, dict]], iou_type: str) -> COCO:
    """The predictions ``(gold image id, category id, pred)`` as COCO results, boxes or masks (no predictions:
    an empty result set over the same images)."""
    out = []
    for g, cid, p in preds:
        r = {"image_id": g, "category_id": cid, "score": p["score"]}
        if iou_type == "bbox":
            r["bbox"] = [float(v) for v in p["row"]["bbox"]]
        else:
            r["segmentation"] = p["rle"]
        out.append(r)
    if out:
        return gt.loadRes(out)
    empty = COCO()
    empty.dataset = {"images": gt.dataset["images"], "annotations": [], "categories": gt.dataset["categories"]}
    empty.createIndex()
    return empty


_ROW_KEYS = ("bbox", "verdict", "x", "prompt_box", "shape")


def _pair(
    gold: CocoDataset,
    ontology: dict[int, str],
    file_names: dict[str, int],
    predictions: Iterable[dict],
    sizes: dict[int, tuple[int, int]],
) -> SimpleNamespace:
    """The gold set and the predictions in one frame (gold image ids), grouped by image and class."""
    name_to_id = {n: i for i, n in ontology.items()}
    gold_cat = {c["id"]: name_to_id.get(c["name"]) for c in gold["categories"]}
    unknown = sorted(c["name"] for c in gold["categories"] if c["name"] not in name_to_id)
    matched = match_images(gold, file_names)
    if not matched:
        raise GoldSetError("no gold image matches an image of the job by file name")
    job_to_gold = {j: g for g, j in matched.items()}

    gt_images = [
        {"id": g, "file_name": img["file_name"], "height": img["height"], "width": img["width"]}
        for img in gold["images"]
        for g in [img["id"]]
        if g in matched
    ]
    gt_anns = []
    for a in gold["annotations"]:
        cid = gold_cat.get(a["category_id"])
        if a["image_id"] in matched and cid is not None:
            b = dict(a)
            b["category_id"] = cid
            b.setdefault("iscrowd", 0)
            gt_anns.append(b)
    cats = [{"id": i, "name": n} for i, n in sorted(ontology.items())]
    gt = COCO()
    gt.dataset = {"images": gt_images, "annotations": gt_anns, "categories": cats}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()

    pred_by_img_cat: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for p in predictions:
        g = job_to_gold.get(p["image_id"])
        if g is None:
            continue
        h, w = sizes[p["image_id"]]
        rle = {"size": [h, w], "counts": p["rle_counts"]}
        score = float(p["score"]) if p.get("score") is not None else 1.0
        row = {k: p[k] for k in _ROW_KEYS if k in p}  # what the matches and their callers read of the row
        pred_by_img_cat[(g, int(p["category_id"]))].append({"rle": rle, "score": score, "row": row})
    gold_by_img_cat: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for a in gt_anns:
        gold_by_img_cat[(a["image_id"], a["category_id"])].append({"rle": gt.annToRLE(a), "iscrowd": a["iscrowd"]})
    return SimpleNamespace(
        gt=gt,
        gt_anns=gt_anns,
        matched=matched,
        unknown=unknown,
        preds=pred_by_img_cat,
        gold=gold_by_img_cat,
    )


def evaluate(
    gold: CocoDataset,
    ontology: dict[int, str],
    file_names: dict[str, int],
    predictions: Iterable[dict],
    sizes: dict[int, tuple[int, int]],
) -> Quality:
    """Evaluate predictions (manifest rows as dicts) against a gold set.

    Arguments:
      gold: a COCO instances dict.
      ontology: category id -> name of the job.
      file_names: job file name (key) -> job image id, for the images that decoded.
      predictions: rows with ``image_id``, ``category_id``, ``score``, ``rle_counts``, ``bbox`` (XYWH).
      sizes: job image id -> (height, width).
    """
    pairs = _pair(gold, ontology, file_names, predictions, sizes)
    gt, gt_anns = pairs.gt, pairs.gt_anns
    pred_by_img_cat, matched, unknown = pairs.preds, pairs.matched, pairs.unknown

    box_stats, box_cls = _run_eval(gt, pred_by_img_cat, "bbox", list(ontology))
    seg_stats, seg_cls = _run_eval(gt, pred_by_img_cat, "segm", list(ontology))

    # mean mask IoU over gold instances
    ious_by_cat: dict[int, list[float]] = defaultdict(list)
    for key, instances in pairs.gold.items():
        for g in instances:
            if g["iscrowd"]:
                continue
            preds = pred_by_img_cat.get(key, [])
            best = float(np.max(mask_utils.iou([p["rle"] for p in preds], [g["rle"]], [0]))) if preds else 0.0
            ious_by_cat[key[1]].append(best)
    all_ious = [v for vs in ious_by_cat.values() for v in vs]

    # the labels as sets: one-to-one matches at mask IoU >= 0.5, of the accepted and of accepted + review
    total, tally = _set_tally(pairs.gold, pred_by_img_cat, ("accept",))
    total_review, tally_review = _set_tally(pairs.gold, pred_by_img_cat, ("accept", "review"))

    n_pred_cat: dict[int, int] = defaultdict(int)
    for (_, cid), ps in pred_by_img_cat.items():
        n_pred_cat[cid] += len(ps)
    per_class: list[ClassQuality] = []
    for cid, name in sorted(ontology.items()):
        n_gold = len(ious_by_cat.get(cid, []))
        per_class.append(
            {
                "category_id": cid,
                "name": name,
                "gold_instances": n_gold,
                "predictions": n_pred_cat.get(cid, 0),
                "box_ap50": _r(box_cls.get(cid, (None, None))[1]),
                "mask_ap50": _r(seg_cls.get(cid, (None, None))[1]),
                "mask_ap": _r(seg_cls.get(cid, (None, None))[0]),
                "mean_mask_iou": _r(float(np.mean(ious_by_cat[cid]))) if n_gold else None,
                **set_counts(*tally.get(cid, [0, 0, 0])),
                "with_review": set_counts(*tally_review.get(cid, [0, 0, 0])),
            }
        )
    return {
        "images": len(matched),
        "gold_instances": len(gt_anns),
        "predictions": sum(n_pred_cat.values()),
        "box_ap": _r(box_stats[0]),
        "box_ap50": _r(box_stats[1]),
        "mask_ap": _r(seg_stats[0]),
        "mask_ap50": _r(seg_stats[1]),
        "mean_mask_iou": _r(float(np.mean(all_ious))) if all_ious else 0.0,
        "set": set_counts(*total),
        "set_with_review": set_counts(*total_review),
        "per_class": per_class,
        "confusion": {
            "classes": [ontology[c] for c in sorted(ontology)] + ["none"],
            "matrix": class_confusion(pairs.gold, pred_by_img_cat, sorted(ontology)),
            "rows": "gold class",
            "columns": "class of the exported (accepted) label",
        },
        "gold_categories_not_in_ontology": unknown,
    }


def load_quality(output: str) -> Quality:
    """``OUTPUT/quality.json`` of a finished run."""

    fs, path = open_fs(OutputLayout(output).quality)
    return json.loads(read_bytes(fs, path))


def _r(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return None
    return round(float(x), 4)


def format_quality(q: Quality) -> str:
    """The quality figures and per-class tables (instances, panoptic), for terminals and Markdown."""
    f = lambda v: "-" if v is None else f"{v:.3f}"
    lines: list[str] = []
    if "box_ap50" in q:
        lines += [
            f"quality vs gold set ({q['images']} images, {q['gold_instances']} gold "
            f"instances, {q['predictions']} auto-labels):",
            f"  box AP50 {q['box_ap50']:.3f}   mask AP50 {q['mask_ap50']:.3f}   mask "
            f"AP {q['mask_ap']:.3f}   mean mask IoU {q['mean_mask_iou']:.3f}",
        ]
        for st, what in ((q.get("set"), "accepted (exported)"), (q.get("set_with_review"), "accepted + review  ")):
            if st is not None:
                lines.append(
                    f"  {what}: precision {f(st['precision'])}   recall {f(st['recall'])}   F1 {f(st['f1'])}   "
                    f"(TP {st['tp']}, FP {st['fp']}, FN {st['fn']}; mask IoU >= 0.5, one to one)"
                )
        lines += [
            "",
            "  | class | gold | labels | box AP50 | mask AP50 | mask AP | mean IoU "
            "| precision | recall | TP | FP | FN |",
            "  |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in q["per_class"]:
            if c["gold_instances"] or c["predictions"]:
                lines.append(
                    f"  | {c['name']} | {c['gold_instances']} | {c['predictions']} | {f(c['box_ap50'])} "
                    f"| {f(c['mask_ap50'])} | {f(c['mask_ap'])} | {f(c['mean_mask_iou'])} "
                    f"| {f(c.get('precision'))} | {f(c.get('recall'))} | {c.get('tp', '-')} | {c.get('fp', '-')} "
                    f"| {c.get('fn', '-')} |"
                )
    if "panoptic" in q:
        p = q["panoptic"]
        lines += [
            ("\n" if lines else "") + f"panoptic quality vs gold set ({p['images']} images):",
            f"  PQ {f(p['pq'])}   SQ {f(p['sq'])}   RQ {f(p['rq'])}   (things PQ {f(p['things']['pq'])}, "
            f"stuff PQ {f(p['stuff']['pq'])})   mIoU {f(p['miou'])}",
            *(
                [f"  things: TP {t['tp']}, FP {t['fp']}, FN {t['fn']} (segment IoU > 0.5)"]
                if "tp" in (t := p["things"])
                else []
            ),
            "",
            "  | class | PQ | SQ | RQ | TP | FP | FN | IoU |",
            "  |---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in p["per_class"].items():
            lines.append(
                f"  | {name} | {f(row['pq'])} | {f(row['sq'])} | {f(row['rq'])} | {row['tp']} | "
                f"{row['fp']} | {row['fn']} | {f(p.get('per_class_iou', {}).get(name))} |"
            )
    return "\n".join(lines)
