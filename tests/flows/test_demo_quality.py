"""Label quality of the shipped demo models on scenes never used for training (seeds < 10000).

The demo models are trained by `segflow train-demo-models` on scenes with
seeds >= 10000; everything here renders fresh scenes with small seeds.
"""

import contextlib
import io
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segflow.config import load_config
from segflow.demo.synthetic import rotate_for_exif, write_scene_set
from segflow.demo.training import mean_box_prompt_iou
from segflow.flows import cli
from segflow.tasks.evaluate.quality import evaluate
from segflow.tasks.outputs.manifest import ANNOTATION_ID_STRIDE
from segflow.tasks.stages.panoptic import read_panoptic_png

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"


def demo_stage(name):
    return load_config(DEMO, overrides={"source": str(ROOT), "output": "/tmp/unused"}).stages[name]


def coco_eval(gt: COCO, results: list[dict], iou_type: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return float(ev.stats[1])  # AP50


def test_demo_writes_ground_truth_and_quality(demo_run):
    gt = demo_run / "ground_truth"
    assert (gt / "instances.json").exists() and (gt / "panoptic.json").exists()
    assert len(list((gt / "panoptic").glob("*.png"))) == 30 and len(list((gt / "semantic").glob("*.png"))) == 30
    q = json.loads((demo_run / "quality.json").read_text())
    assert {"box_ap50", "mask_ap50", "mask_ap", "mean_mask_iou", "per_class", "set", "set_with_review"} <= set(q)
    held = json.loads((demo_run / "holdout_quality.json").read_text())
    assert q["images"] == 15 and held["images"] == 15  # fitted on the first half, measured on the other too
    assert q["gold_instances"] + held["gold_instances"] == len(COCO(str(gt / "instances.json")).anns)
    summary = json.loads((demo_run / "out" / "summary.json").read_text())
    assert summary["failed_images"] == 2 and summary["quality"]["mask_ap50"] == q["mask_ap50"]


# Issue targets: box/mask AP50 >= 0.8 and SAM with ground-truth boxes >= 0.85 mean IoU
# (the demo job's SAM stage, zoom_context included: 0.95 on these scenes, 0.93-0.96 on seeds 0, 7, 11).
BOX_AP50_FLOOR, MASK_AP50_FLOOR, SAM_IOU_FLOOR = 0.8, 0.8, 0.85


def test_exported_coco_quality_floor(demo_run):
    """COCOeval on the exported COCO files themselves (independent of segflow's own evaluator): the accepted labels
    and the review band together are the model's ranked list (only the lowest-scored tail is left out)."""
    gt = COCO(str(demo_run / "ground_truth" / "instances.json"))
    pred = json.loads((demo_run / "out" / "coco" / "instances.json").read_text())
    review = json.loads((demo_run / "out" / "review" / "instances.json").read_text())
    assert not {a["id"] for a in pred["annotations"]} & {a["id"] for a in review["annotations"]}
    pred["annotations"] += review["annotations"]
    by_name = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
    to_gt = {im["id"]: by_name[im["file_name"]] for im in pred["images"]}
    names = {c["id"]: c["name"] for c in pred["categories"]}
    gt_ids = {c["name"]: c["id"] for c in gt.dataset["categories"]}
    segm = [
        {
            "image_id": to_gt[a["image_id"]],
            "category_id": gt_ids[names[a["category_id"]]],
            "segmentation": a["segmentation"],
            "score": a["score"],
        }
        for a in pred["annotations"]
    ]
    boxes = [
        {"image_id": s["image_id"], "category_id": s["category_id"], "bbox": a["bbox"], "score": a["score"]}
        for s, a in zip(segm, pred["annotations"])
    ]
    box_ap50, mask_ap50 = coco_eval(gt, boxes, "bbox"), coco_eval(gt, segm, "segm")
    print(f"box AP50 {box_ap50:.3f}, mask AP50 {mask_ap50:.3f}")
    assert box_ap50 >= BOX_AP50_FLOOR and mask_ap50 >= MASK_AP50_FLOOR


def test_sam_alone_with_ground_truth_boxes(tmp_path):
    stage = demo_stage("masks")
    miou, ious = mean_box_prompt_iou(stage.weights, seed=4, n=25, stage=stage)
    print(f"mean mask IoU with ground-truth boxes: {miou:.3f} over {len(ious)} objects")
    assert miou >= SAM_IOU_FLOOR and len(ious) > 50


def test_negative_control_shifted_boxes_halve_mask_ap(tmp_path):
    """Boxes moved by half their size must wreck the masks; if not, the quality test measures nothing."""
    from segflow.tasks.record import Detections
    from segflow.tasks.stages.sam import SamBoxSegmenter

    write_scene_set(tmp_path / "images", 15, seed=6, gt_dir=tmp_path / "gt", exif_fraction=0.0)
    gold = json.loads((tmp_path / "gt" / "instances.json").read_text())
    stage = demo_stage("masks")
    seg = SamBoxSegmenter(stage, stage.weights)
    ontology = {1: "circle", 2: "square", 3: "triangle"}

    def ap50(shift):
        preds, sizes, names = [], {}, {}
        for im in gold["images"]:
            pixels = np.asarray(Image.open(tmp_path / "images" / im["file_name"]).convert("RGB"))
            anns = [a for a in gold["annotations"] if a["image_id"] == im["id"]]
            boxes = np.array(
                [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
                np.float32,
            )
            boxes += (
                shift * np.repeat(boxes[:, 2:] - boxes[:, :2], 2, axis=0).reshape(-1, 4)[:, [0, 1, 0, 1]]
                if len(boxes)
                else 0
            )
            dets = Detections(pixels.shape[:2], boxes, [a["category_id"] for a in anns], np.ones(len(anns)))
            out = seg.segment([pixels], [dets])[0]
            names[im["file_name"]] = im["id"]
            sizes[im["id"]] = pixels.shape[:2]
            bb = out.mask_bboxes_xywh()
            preds += [
                {"image_id": im["id"], "category_id": int(c), "score": 1.0, "rle_counts": r, "bbox": b.tolist()}
                for c, r, b in zip(out.class_ids, out.rle_counts, bb)
            ]
        return evaluate(gold, ontology, names, preds, sizes)["mask_ap50"]

    good, shifted = ap50(0.0), ap50(0.5)
    print(f"mask AP50 with ground-truth boxes {good:.3f}, with boxes shifted by half their size {shifted:.3f}")
    assert good >= 0.8
    assert shifted <= good / 2


def test_exif_rotated_copies_get_the_same_labels(prefect_harness, tmp_path):
    scenes = write_scene_set(tmp_path / "upright", 6, seed=8, exif_fraction=0.0, size_range=(320, 640))
    src = tmp_path / "mixed"
    src.mkdir()
    for i, (_name, scene) in enumerate(scenes):
        h, w = (d - d % 16 for d in scene.pixels.shape[:2])  # whole JPEG blocks: rotation is lossless
        upright = Image.fromarray(np.ascontiguousarray(scene.pixels[:h, :w]))
        upright.save(src / f"{i}_upright.jpg", quality=100)
        stored, exif = rotate_for_exif(upright, [3, 6, 8][i % 3])
        stored.save(src / f"{i}_rotated.jpg", quality=100, exif=exif)
    job = tmp_path / "job.yaml"
    job.write_text(DEMO.read_text())
    shutil.copytree(DEMO.parent / "models", tmp_path / "models")
    assert cli.main(["run", str(job), "--source", str(src), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    masks = ds.dataset(str(tmp_path / "out" / "manifest" / "masks.parquet")).to_table().to_pylist()
    images = {
        r["image_id"]: r
        for r in ds.dataset(str(tmp_path / "out" / "manifest" / "images.parquet")).to_table().to_pylist()
    }
    assert {r["exif_orientation"] for r in images.values()} == {1, 3, 6, 8}
    by_file = {}
    for m in masks:
        by_file.setdefault(images[m["image_id"]]["file_name"], []).append(m)
    # JPEG re-encoding of rotated pixels moves scores a little, so detections near the
    # confidence threshold may flip; every label clearly above it must match across the pair.
    confident = 4 * load_config(DEMO, overrides={"source": str(ROOT), "output": "/tmp/unused"}).stages["detector"].conf
    compared = 0
    for i in range(len(scenes)):
        for a_name, b_name in ((f"{i}_upright.jpg", f"{i}_rotated.jpg"), (f"{i}_rotated.jpg", f"{i}_upright.jpg")):
            ours, theirs = by_file.get(a_name, []), by_file.get(b_name, [])
            for a in (m for m in ours if m["score"] >= confident):
                rles = [
                    {"size": [b["height"], b["width"]], "counts": b["rle_counts"]}
                    for b in theirs
                    if b["category_id"] == a["category_id"]
                ]
                best = (
                    mask_utils.iou(rles, [{"size": [a["height"], a["width"]], "counts": a["rle_counts"]}], [0]).max()
                    if rles
                    else 0.0
                )
                assert best >= 0.99, (a_name, a["annotation_id"], best)
                compared += 1
    assert compared >= 12


# Measured on this scene set (seed 3) with the shipped models: see docs/demo-models.md.
GOOD_KEPT_FLOOR = 0.7  # measured 0.76 (79/104); every kept one has IoU >= 0.85


def test_qc_gates_catch_corrupted_masks_and_keep_good_ones(demo_run):
    """Masks of the demo run, deliberately corrupted, against the default QC gates (measured rates).

    Every gate at its default, the SA-1B score gates included (predicted IoU 0.88, stability 0.95).
    "Good" masks: for each ground-truth object, the best-scoring auto-label of its class with mask
    IoU >= 0.7. Each good mask is then shifted by 35% of its box, eroded by 20% of it, or added
    again with a lower score; the gates must reject those and keep most of the good ones.
    """
    from scipy import ndimage

    from segflow.config import QcStage
    from segflow.tasks import rle
    from segflow.tasks.record import Detections
    from segflow.tasks.stages.qc import check_masks

    masks = ds.dataset(str(demo_run / "out" / "manifest" / "masks.parquet")).to_table().to_pylist()
    images = {
        r["image_id"]: r["file_name"]
        for r in ds.dataset(str(demo_run / "out" / "manifest" / "images.parquet")).to_table().to_pylist()
    }
    gt = json.loads((demo_run / "ground_truth" / "instances.json").read_text())
    gt_by_name = {im["file_name"]: [a for a in gt["annotations"] if a["image_id"] == im["id"]] for im in gt["images"]}
    by_image = {}
    for m in masks:
        by_image.setdefault(m["image_id"], []).append(m)
    cfg = QcStage(kind="qc")
    assert (cfg.predicted_iou.min, cfg.stability.min) == (0.88, 0.95)
    kept = total = 0
    sharp_kept = sharp_total = 0  # the good masks with IoU >= 0.85
    reasons = Counter()
    caught = {"shifted": [0, 0], "eroded": [0, 0], "duplicated": [0, 0]}
    rng = np.random.default_rng(0)
    for image_id, rows in by_image.items():
        h, w = rows[0]["height"], rows[0]["width"]
        rles = [{"size": [h, w], "counts": r["rle_counts"]} for r in rows]
        # "good": for each ground-truth object, the best-scoring auto-label of its class with IoU >= 0.7
        good_iou = {}
        for a in gt_by_name[images[image_id]]:
            ious = mask_utils.iou(rles, [a["segmentation"]], [0])[:, 0]
            cands = [i for i, r in enumerate(rows) if r["category_id"] == a["category_id"] and ious[i] >= 0.7]
            if cands:
                best = max(cands, key=lambda i: rows[i]["score"])
                good_iou[best] = max(good_iou.get(best, 0.0), float(ious[best]))
        good_idx = set(good_iou)
        boxes = np.array([r["prompt_box"] for r in rows], np.float32)
        base = dict(
            image_size=(h, w),
            boxes=boxes,
            class_ids=[r["category_id"] for r in rows],
            scores=[r["score"] for r in rows],
        )
        fields = dict(
            predicted_iou=np.array([r["predicted_iou"] for r in rows]),
            stability_score=np.array([r["stability_score"] for r in rows]),
        )
        record = Detections(**base).with_masks([r["rle_counts"] for r in rows], **fields)
        good = sorted(good_idx)
        v, why = check_masks(record, cfg)
        kept += int((v[good] != "reject").sum())
        reasons.update(r for g in good if v[g] == "reject" for r in why[g].split(","))
        total += len(good)
        sharp = [g for g in good if good_iou[g] >= 0.85]
        sharp_kept += int((v[sharp] != "reject").sum())
        sharp_total += len(sharp)
        if not good:
            continue
        sub = record[np.array(good)]
        dense = rle.decode_many(list(sub.rle_counts), h, w)
        for kind in caught:
            if kind == "duplicated":  # each good mask again, with a lower score: the copies must go
                rec = Detections(
                    image_size=(h, w),
                    boxes=np.concatenate([sub.boxes, sub.boxes]),
                    class_ids=np.concatenate([sub.class_ids] * 2),
                    scores=np.concatenate([sub.scores, sub.scores * 0.9]),
                )
                rec = rec.with_masks(
                    list(sub.rle_counts) * 2, **{k: np.concatenate([x, x]) for k, x in sub.fields.items()}
                )
                verdict = check_masks(rec, cfg)[0][len(good) :]
            else:
                corrupted = []
                for m, b in zip(dense, sub.boxes):
                    size = max(b[2] - b[0], b[3] - b[1])
                    if kind == "shifted":
                        c = np.roll(
                            m, (int(0.35 * size * rng.choice([-1, 1])), int(0.35 * size * rng.choice([-1, 1]))), (0, 1)
                        )
                    else:
                        c = ndimage.binary_erosion(m, iterations=max(1, int(0.2 * size)))
                    corrupted.append(c if c.any() else m)
                verdict = check_masks(
                    Detections(
                        image_size=(h, w), boxes=sub.boxes, class_ids=sub.class_ids, scores=sub.scores
                    ).with_masks(rle.encode_nhw(np.stack(corrupted)), **sub.fields),
                    cfg,
                )[0]
            caught[kind][0] += int((verdict == "reject").sum())
            caught[kind][1] += len(good)
    rates = {k: c / n for k, (c, n) in caught.items()}
    print(f"rules that rejected good masks: {dict(reasons)}")
    print(
        f"default gates: good masks kept {kept}/{total} ({kept / total:.2f}; IoU >= 0.85: {sharp_kept}/{sharp_total}); "
        "corrupted masks rejected: " + ", ".join(f"{k} {r:.2f}" for k, r in rates.items())
    )
    assert total >= 80
    assert kept / total >= GOOD_KEPT_FLOOR
    assert rates["shifted"] >= 0.9 and rates["duplicated"] >= 0.95 and rates["eroded"] >= 0.8


# -- panoptic (things from detector -> SAM, stuff from the demo Mask2Former) -------------------------

PQ_FLOOR = 0.6


def _shifted_copy(src: Path, dst: Path, frac: float) -> None:
    """The exported panoptic files with every map rolled sideways by ``frac`` of its width."""
    from segflow.tasks.stages.panoptic import panoptic_png, read_panoptic_png

    dst.mkdir(parents=True)
    for png in src.glob("*.png"):
        ids = read_panoptic_png(png.read_bytes())
        (dst / png.name).write_bytes(panoptic_png(np.roll(ids, int(frac * ids.shape[1]), axis=1)))


def test_panoptic_quality_floor_and_negative_control(demo_run, tmp_path):
    from segflow.tasks.outputs.panoptic_export import evaluate_panoptic_files

    q = json.loads((demo_run / "quality.json").read_text())
    assert {"pq", "sq", "rq", "miou"} <= set(q)
    print(
        f"PQ {q['pq']:.3f} (things {q['panoptic']['things']['pq']:.3f}, stuff {q['panoptic']['stuff']['pq']:.3f}), "
        f"mIoU {q['miou']:.3f}"
    )
    assert q["pq"] >= PQ_FLOOR and q["panoptic"]["images"] == 30
    summary = json.loads((demo_run / "out" / "summary.json").read_text())
    assert summary["quality"]["pq"] == q["pq"] and summary["panoptic"]["images"] == 30
    # negative control: the same files, maps moved by a third of the width, must fail the floor
    pred = demo_run / "out" / "coco" / "panoptic.json"
    shutil.copy(pred, tmp_path / "shifted.json")
    _shifted_copy(demo_run / "out" / "coco" / "panoptic", tmp_path / "shifted", 1 / 3)
    bad = evaluate_panoptic_files(str(demo_run / "ground_truth" / "panoptic.json"), str(tmp_path / "shifted.json"))
    print(f"PQ with maps shifted by a third of the width: {bad['pq']:.3f}")
    assert bad["images"] == 30 and bad["pq"] < PQ_FLOOR and bad["pq"] <= q["pq"] / 2


def test_exported_pq_equals_in_memory_pq(demo_run):
    """PQ of the exported PNG + JSON files equals PQ computed on the stages' in-memory output
    (the stages run on the same chunks of images as the shards did, since batching can move scores), with the
    things whose masks the calibration did not accept left out (their pixels void), as the export leaves them."""
    from segflow.tasks.io.images import ImageLoadError, decode_image
    from segflow.tasks.plan.planner import load_plan, read_shard_rows
    from segflow.tasks.shard.runner import run_stages
    from segflow.tasks.stages.cache import get_model
    from segflow.tasks.stages.panoptic import detections_to_map, evaluate_in_memory, read_panoptic_png

    out = demo_run / "out"
    job = load_config(DEMO, overrides={"source": str(demo_run / "images"), "output": str(out)})
    isthing = {c.id: c.isthing for c in job.ontology}
    models = {n: get_model(job.stages[n], job.category_names(), isthing) for n in job.stage_order()}
    merged = {}
    for shard_id in load_plan(str(out))["shard_ids"]:
        decoded = []
        for row in read_shard_rows(str(out), shard_id):
            try:
                decoded.append((row["key"], decode_image(Path(row["uri"]).read_bytes())))
            except ImageLoadError:
                continue
        for s in range(0, len(decoded), job.chunk_size()):
            chunk = decoded[s : s + job.chunk_size()]
            for (key, _), segs in zip(
                chunk, run_stages(job, [im.pixels for _, im in chunk], models)[job.panoptic_sink()]
            ):
                merged[key] = segs
    names = ds.dataset(str(out / "manifest" / "images.parquet")).to_table(["file_name", "image_id"]).to_pydict()
    image_ids = dict(zip(names["file_name"], names["image_id"]))
    masks = ds.dataset(str(out / "manifest" / "masks.parquet")).to_table(["annotation_id", "verdict"]).to_pydict()
    accepted = {a for a, v in zip(masks["annotation_id"], masks["verdict"]) if v == "accept"}
    gt = json.loads((demo_run / "ground_truth" / "panoptic.json").read_text())
    pairs, left_out = [], 0
    for im, ann in zip(gt["images"], gt["annotations"]):
        segs = merged[im["file_name"]]
        # annotation ids of the rows of the one instance stage
        ids = image_ids[im["file_name"]] * ANNOTATION_ID_STRIDE + segs.fields["source_index"] + 1
        keep = (segs.fields["source"] != job.instance_sinks()[0]) | np.isin(ids, list(accepted))
        left_out += int((~keep).sum())
        pred_ids, pred_cats = detections_to_map(segs[keep])
        gt_ids = read_panoptic_png((demo_run / "ground_truth" / "panoptic" / ann["file_name"]).read_bytes())
        pairs.append((gt_ids, {s["id"]: s["category_id"] for s in ann["segments_info"]}, pred_ids, pred_cats))
    assert left_out > 0  # the operating point does leave things out here
    mem = evaluate_in_memory(pairs, isthing, job.category_names())
    exported = json.loads((demo_run / "quality.json").read_text())
    assert (mem["pq"], mem["sq"], mem["rq"], mem["miou"]) == (
        exported["pq"],
        exported["sq"],
        exported["rq"],
        exported["miou"],
    )
    assert mem["per_class"] == exported["panoptic"]["per_class"]


def test_calibrate_a_finished_run_without_touching_its_shards(demo_run, demo_copy, tmp_path, capsys):
    """`segflow calibrate` fits per-class thresholds on the committed labels (no model runs), exports again at that
    operating point in seconds and writes the curves; committed shards and model outputs stay as they were. On a
    copy: the session's demo run is shared, and its job's gold set must stay the fitted half for other tests."""
    import hashlib

    import pyarrow.dataset as ds

    out = demo_copy

    def digests():
        return {
            p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((out / "shards").rglob("*"))
            if p.is_file() and p.name != "_RENDERED.json"  # the committed files (PNG markers follow the exports)
        }

    def manifest():
        t = ds.dataset(str(out / "manifest" / "masks.parquet")).to_table().sort_by("annotation_id")
        return t.drop_columns(["verdict", "verdict_reasons", "calibrated_score", "novelty"]), t["verdict"].to_pylist()

    def panoptic_things():
        t = ds.dataset(str(out / "manifest" / "panoptic.parquet")).to_table()
        return {a for a in t["annotation_id"].to_pylist() if a is not None}

    before, (rows_before, verdicts_before), things_before = digests(), manifest(), panoptic_things()
    gold = str(demo_run / "ground_truth" / "instances.json")
    t0 = time.time()
    assert cli.main(["calibrate", str(out), "--gold", gold, "--precision", "0.9", "--score", "detector"]) == 0
    assert time.time() - t0 < 60
    printed = capsys.readouterr().out
    assert "| circle |" in printed and "accepted (on the gold set): precision" in printed and "no model ran" in printed
    assert digests() == before
    rows_after, verdicts_after = manifest()
    assert rows_after.equals(rows_before) and verdicts_after != verdicts_before  # same labels, new operating point
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["target_precision"] == 0.9 and cal["score"] == "detector" and cal["gold_images"] == 30
    assert set(cal["classes"]) == {"circle", "square", "triangle"}
    for c in cal["classes"].values():
        assert c["status"] in ("calibrated", "review") and (c["threshold"] is None) == (c["status"] == "review")
        assert c["heldout"]["tp"] + c["heldout"]["fn"] == c["gold_instances"]
    summary = json.loads((out / "summary.json").read_text())
    exported = json.loads((out / "coco" / "instances.json").read_text())["annotations"]
    assert len(exported) == summary["verdicts"]["accept"] == verdicts_after.count("accept")
    assert json.loads((out / "job.json").read_text())["accept"]["precision"] == 0.9  # what `rerun` would use
    # panoptic things follow the operating point: drawn only while their mask is accepted, JSON and PNGs agree
    accepted = {a["id"] for a in exported}
    things_after = panoptic_things()
    assert things_after != things_before and things_after <= accepted
    assert summary["panoptic"]["images_rendered_by_finalize"] > 0
    pan_json = json.loads((out / "coco" / "panoptic.json").read_text())
    for a in pan_json["annotations"]:
        ids = set(np.unique(read_panoptic_png((out / "coco" / "panoptic" / a["file_name"]).read_bytes())).tolist())
        assert ids - {0} == {s["id"] for s in a["segments_info"]}, a["file_name"]
    assert Image.open(out / "qc" / "pr_curves.png").size[0] > 100
    assert cli.main(["calibrate", str(out), "--gold", str(demo_run / "missing.json")]) == 2
    # the published version carries the operating point: the card says it, calibration.json travels with it
    assert cli.main(["publish", str(out), str(tmp_path / "published"), "--version", "v1"]) == 0
    card = (tmp_path / "published" / "v1" / "README.md").read_text()
    assert "Operating point: per-class thresholds for precision 0.9" in card and "accepted (in coco" in card
    assert json.loads((tmp_path / "published" / "v1" / "calibration.json").read_text()) == cal


def test_saved_calibration_labels_fresh_scenes_as_estimated(demo_run, tmp_path):
    """Measure on one demo's gold images, label another seed's scenes with that calibration (`--calibration`): the
    fresh set's directly counted precision lies within the held-out estimate's interval (both 95%). A calibration of
    another ontology is refused before any flow starts."""
    from segflow.tasks.evaluate.calibration import wilson

    cal_file = demo_run / "out" / "calibration.json"
    cal = json.loads(cal_file.read_text())
    fresh = tmp_path / "fresh"
    args = ["demo", "--output", str(fresh), "--images", "20", "--seed", "5", "--no-progress"]
    assert cli.main(args + ["--calibration", str(cal_file)]) == 0
    applied = json.loads((fresh / "out" / "calibration.json").read_text())
    assert applied["applied_from"] and applied["classes"] == cal["classes"]  # applied as saved, nothing refitted
    st = json.loads((fresh / "holdout_quality.json").read_text())["set"]
    lo, hi = cal["heldout"]["precision_ci95"]
    flo, fhi = wilson(st["tp"], st["tp"] + st["fp"])
    print(f"held-out estimate {cal['heldout']['precision']} ({lo}-{hi}); fresh scenes {st['precision']} ({flo}-{fhi})")
    assert flo <= hi and lo <= fhi  # the intervals overlap
    other = dict(cal, ontology={**cal["ontology"], "1": "disc"})
    (tmp_path / "other.json").write_text(json.dumps(other))
    rc = cli.main(
        ["run", str(DEMO), "--source", str(fresh / "images"), "--output", str(tmp_path / "o")]
        + ["--calibration", str(tmp_path / "other.json"), "--no-progress"]
    )
    assert rc == 2 and not (tmp_path / "o" / "plan").exists()
