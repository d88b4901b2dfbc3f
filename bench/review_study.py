"""The review loop measured on the demo with the simulated reviewer (segflow.demo.reviewer), on fresh seeds.

A calibration is fitted once (`segflow demo --seed CAL`, its gold half); each seed's demo applies it to
``--images`` scenes with no gold set of their own (`segflow demo --calibration`), then:

1. **Estimate**: a batch whose audit is 150 masks (``--budget 334``, half of it the audit, a tenth of the audit
   images with no exported mask), answered and imported on a copy of the run. Is the true precision (and recall)
   of the exported set, on every image, inside the 95% interval? Its half-width.
2. **Fix part**: errors found per reviewed item in that batch's fix part (a wrong mask counts one, an image counts
   the objects the reviewer added on it), against the same number of accepted and review masks taken lowest
   score first, and taken at random (a wrong mask counts one), each answered from the ground truth as the
   reviewer does.
3. **One round**: a batch of 200 on the run itself, imported, then `calibrate --from-reviews`: the exported set's
   precision and recall before and after, on the images neither batch touched.

    python -m bench.review_study --out /tmp/review-study --cal-seed 4242 --seeds 6001-6020 --images 150
    python -m bench.review_study --out /tmp/review-dark --seeds 6101-6105 --shift dark \
        --results bench/results/review_study_dark.json

(about 2.5 minutes a seed on 2 cores).

Results go to ``bench/results/review_study.json`` (and the figures to docs/gold-sets.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def _demo(folder: Path, seed: int, images: int, calibration: str | None, shift: str | None = None) -> None:
    """The demo on ``images`` scenes: with ``calibration`` applied, or (None) with no gold set and no calibration."""
    from segflow.flows.commands import DemoRun, run_demo

    demo = DemoRun(str(folder), seed=seed, images=images, calibration=calibration, shift=shift, gold=bool(calibration))
    run_demo(demo)


def _truth_per_item(out: Path, truth: Path) -> tuple[dict, dict, dict, dict]:
    """From the ground truth, as the simulated reviewer answers: each accepted or review mask right or wrong, each
    image's objects no such mask found, and each mask's score."""
    from segflow.demo.reviewer import _answer
    from segflow.tasks.io.parquet import read_folder

    gold = json.loads(truth.read_text())
    names = {c["id"]: c["name"] for c in gold["categories"]}
    by_file = {im["file_name"]: im["id"] for im in gold["images"]}
    objects: dict[int, list[dict]] = {}
    for a in gold["annotations"]:
        objects.setdefault(a["image_id"], []).append(a | {"name": names[a["category_id"]]})
    images = read_folder(str(out / "manifest" / "images.parquet")).to_pylist()
    masks = read_folder(str(out / "manifest" / "masks.parquet")).to_pylist()
    shown: dict[int, list[dict]] = {}
    for m in masks:
        if m["verdict"] in ("accept", "review"):
            shown.setdefault(m["image_id"], []).append(m)
    right, missed, score, image_of = {}, {}, {}, {}
    for im in images:
        if im["status"] != "ok":
            continue
        labels = [
            {
                "id": m["annotation_id"],
                "segmentation": {"size": [im["height"], im["width"]], "counts": m["rle_counts"]},
                "name": m["category_name"],
                "attributes": {"segflow_verdict": m["verdict"]},
            }
            for m in shown.get(im["image_id"], [])
        ]
        answer, lost = _answer(labels, objects.get(by_file.get(im["file_name"], -1), []), im["height"], im["width"])
        for lab, name in answer:
            right[lab["id"]] = name == lab["name"]
        missed[im["image_id"]] = len(lost)
    for m in masks:
        score[m["annotation_id"]], image_of[m["annotation_id"]] = m["score"], m["image_id"]
    return right, missed, score, image_of


def _fix_efficiency(batch: dict, right: dict, missed: dict, image_of: dict, score: dict, rng) -> dict:
    """Errors found per reviewed item, two ways. ``per_item``: a mask item counts 1 when wrong; an image item its
    wrong labels and missed objects. ``whole_images``: every strategy's items shown on their whole images, the
    errors on those images (wrong labels and missed objects, each image once) per item; ``oracle`` there is the
    most any choice of as many whole images could find."""
    errors_on = {}
    for a, ok in right.items():
        errors_on[image_of[a]] = errors_on.get(image_of[a], 0) + (not ok)
    for i, m in missed.items():
        errors_on[i] = errors_on.get(i, 0) + m
    fix = [it for it in batch["items"] if it["part"] in ("fix", "fix-image")]
    k = max(1, len(fix))
    per_item = sum(
        (0 if right.get(it["annotation_id"], True) else 1) if it["part"] == "fix" else errors_on.get(it["image_id"], 0)
        for it in fix
    )
    lowest = sorted(right, key=lambda a: (score[a], a))[: len(fix)]
    chosen = [int(a) for a in rng.choice(sorted(right), min(len(fix), len(right)), replace=False)]
    masks = lambda ids: sum(not right[a] for a in ids) / k
    whole = lambda images: sum(errors_on.get(i, 0) for i in set(images)) / k
    return {
        "items": len(fix),
        "image_items": sum(it["part"] == "fix-image" for it in fix),
        "per_item": {
            "fix_part": round(per_item / k, 4),
            "lowest_score_first": round(masks(lowest), 4),
            "random": round(masks(chosen), 4),
        },
        "whole_images": {
            "fix_part": round(whole([it["image_id"] for it in fix]), 4),
            "lowest_score_first": round(whole([image_of[a] for a in lowest]), 4),
            "random": round(whole([image_of[a] for a in chosen]), 4),
            # the ceiling of any choice of k whole images: the k with the most errors, known from the truth
            "oracle": round(whole(sorted(errors_on, key=lambda i: (-errors_on[i], i))[:k]), 4),
        },
    }


def run_round(folder: Path, seed: int, images: int, calibration: str | None, shift: str | None, budget: int) -> dict:
    """Only part 3, one round on the run itself: the exported set before and after on the images no round touched
    (runs of a few hundred scenes, so that enough images are left untouched to measure on)."""
    from segflow.demo.prepare import holdout_quality
    from segflow.demo.reviewer import review_round

    t0 = time.time()
    _demo(folder, seed, images, calibration, shift)
    truth = folder / "ground_truth" / "instances.json"
    true = holdout_quality(str(folder / "out"), str(truth))["set"]
    right, missed, score, image_of = _truth_per_item(folder / "out", truth)  # before the re-fit changes verdicts
    one_round = review_round(folder, budget, seed=seed)
    batch_doc = json.loads((folder / "out" / "review_batches" / f"{one_round['batch']}.json").read_text())
    return {
        "seed": seed,
        "true_precision": true["precision"],
        "true_recall": true["recall"],
        "round": {k: one_round[k] for k in ("before", "after", "untouched_images", "gold_images_after", "estimate")},
        "fix": _fix_efficiency(batch_doc, right, missed, image_of, score, np.random.default_rng(seed)),
        "seconds": round(time.time() - t0, 1),
    }


def run_seed(folder: Path, seed: int, images: int, calibration: str, shift: str | None = None) -> dict:
    from segflow.demo.prepare import holdout_quality
    from segflow.demo.reviewer import review_coco, review_round
    from segflow.tasks.ops.review import import_review
    from segflow.tasks.ops.review_batch import write_batch

    t0 = time.time()
    _demo(folder, seed, images, calibration, shift)
    truth = folder / "ground_truth" / "instances.json"
    right, missed, score, image_of = _truth_per_item(folder / "out", truth)
    true = holdout_quality(str(folder / "out"), str(truth))["set"]
    copy = folder / "audit"
    shutil.copytree(folder / "out", copy / "out")
    batch, _ = write_batch(str(copy / "out"), str(copy / "batch"), 334, 0.5, "cvat", seed)
    answered = review_coco(copy / "batch" / "cvat-coco.zip", truth, copy / "reviewed.json")
    est = import_review(str(copy / "out"), str(answered), "coco", batch.batch)["estimate"]
    batch_doc = json.loads((copy / "out" / "review_batches" / f"{batch.batch}.json").read_text())
    fix = _fix_efficiency(batch_doc, right, missed, image_of, score, np.random.default_rng(seed))
    shutil.rmtree(copy)
    one_round = review_round(folder, 200, seed=seed)
    return {
        "seed": seed,
        "exported": est["exported"],
        "true_precision": true["precision"],
        "true_recall": true["recall"],
        "estimate": est,
        "precision_covered": est["precision_low"] <= true["precision"] <= est["precision_high"],
        "precision_half_width": round((est["precision_high"] - est["precision_low"]) / 2, 4),
        "recall_covered": est["recall_low"] <= true["recall"] <= est["recall_high"],
        "fix": fix,
        "round": {k: one_round[k] for k in ("before", "after", "untouched_images", "gold_images_after")},
        "seconds": round(time.time() - t0, 1),
    }


def _fix_ratios(rows: list[dict]) -> dict[str, float]:
    """The fix part's errors per item over each baseline's, two ways (:func:`_fix_efficiency`), means over seeds."""
    mean = lambda way, key: float(np.mean([r["fix"][way][key] for r in rows]))
    return {
        f"{way}_fix_vs_{base}": round(mean(way, "fix_part") / max(1e-9, mean(way, base)), 2)
        for way in ("per_item", "whole_images")
        for base in ("lowest_score_first", "random")
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--cal-seed", type=int, default=4242)
    p.add_argument("--seeds", default="6001-6020")
    p.add_argument("--images", type=int, default=150)
    p.add_argument("--shift", choices=["dark", "blur", "jpeg"], help="render the seeds' scenes shifted (drift)")
    p.add_argument(
        "--no-gold", action="store_true", help="with --round-only: runs with no gold set and no calibration at all"
    )
    p.add_argument("--keep", action="store_true", help="keep each seed's folder (images, run, batches)")
    p.add_argument("--round-only", type=int, metavar="BUDGET", help="only one round of BUDGET on each seed")
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "review_study.json"))
    args = p.parse_args()
    root = Path(args.out)
    cal = root / f"cal-{args.cal_seed}"
    if not args.no_gold and not (cal / "out" / "calibration.json").exists():
        from segflow.flows.commands import DemoRun, run_demo

        run_demo(DemoRun(str(cal), seed=args.cal_seed, images=60))
    rows = []
    for seed in _seeds(args.seeds):
        calibration = None if args.no_gold else str(cal / "out" / "calibration.json")
        if args.round_only:
            row = run_round(root / f"seed-{seed}", seed, args.images, calibration, args.shift, args.round_only)
        else:
            row = run_seed(root / f"seed-{seed}", seed, args.images, calibration, args.shift)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(root / f"seed-{seed}", ignore_errors=True)
    setup = {"cal_seed": args.cal_seed, "images": args.images, "shift": args.shift, "seeds": args.seeds}
    setup |= {"no_gold": args.no_gold, "round_budget": args.round_only}
    if args.round_only:
        mean = lambda part, k: round(float(np.mean([r["round"][part][k] for r in rows])), 4)
        summary = {
            "seeds": len(rows),
            "budget": args.round_only,
            **{part: {k: mean(part, k) for k in ("precision", "recall")} for part in ("before", "after")},
            "precision_rose": sum(r["round"]["after"]["precision"] > r["round"]["before"]["precision"] for r in rows),
            "recall_rose": sum(r["round"]["after"]["recall"] > r["round"]["before"]["recall"] for r in rows),
            **_fix_ratios(rows),
        }
        Path(args.results).write_text(json.dumps({"setup": setup, "summary": summary, "runs": rows}, indent=1))
        print(json.dumps(summary, indent=1))
        return
    summary = {
        "seeds": len(rows),
        "precision_covered": sum(r["precision_covered"] for r in rows),
        "recall_covered": sum(r["recall_covered"] for r in rows),
        "mean_precision_half_width": round(float(np.mean([r["precision_half_width"] for r in rows])), 4),
        "max_precision_half_width": max(r["precision_half_width"] for r in rows),
        **_fix_ratios(rows),
        "round_before": {
            k: round(float(np.mean([r["round"]["before"][k] for r in rows])), 4) for k in ("precision", "recall")
        },
        "round_after": {
            k: round(float(np.mean([r["round"]["after"][k] for r in rows])), 4) for k in ("precision", "recall")
        },
    }
    Path(args.results).write_text(json.dumps({"setup": setup, "summary": summary, "runs": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
