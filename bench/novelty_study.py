"""What the novelty score does with shapes outside the ontology, measured on the demo.

Fits a calibration with `segflow demo --seed CAL` (its gold half), then runs `segflow demo --calibration` on fresh
seeds without and with `--unknown 2` (two stars, pentagons or rings drawn into free space of each scene), novelty
on and off (the same run finalized again with `accept.novelty: false` and thresholds fitted that way on the
same gold set). Per run: the exported set's precision and recall on the known classes (every image), and what
became of the unknown objects: accepted (exported as a known class), sent to review, rejected or not
labelled at all. Figures in docs/gold-sets.md come from

    python -m bench.novelty_study --out bench/results/novelty --cal-seed 4242 --seeds 5001,5002,5003,5004,5005

(about 5 minutes a seed on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "DO_NOT_TRACK": "1"}


def _cli(*args: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "segflow.flows.cli", *args, "--no-progress"], capture_output=True, text=True, env=_env()
    )
    if r.returncode != 0:
        raise RuntimeError(f"segflow {' '.join(args)} failed:\n{r.stderr[-3000:]}")


def _fate(run: Path) -> dict:
    """The known classes' exported precision and recall, and the verdict of the best mask on each unknown object."""
    from pycocotools import mask as mask_utils

    from segflow.tasks.io.parquet import read_folder

    held = json.loads((run / "holdout_quality.json").read_text())["set"]
    out = {"precision": held["precision"], "recall": held["recall"]}
    unknown_file = run / "ground_truth" / "unknown.json"
    if not unknown_file.exists():
        return out
    gt = json.loads(unknown_file.read_text())
    images = {r["file_name"]: r for r in read_folder(str(run / "out" / "manifest" / "images.parquet")).to_pylist()}
    masks = read_folder(str(run / "out" / "manifest" / "masks.parquet")).to_pylist()
    fate: Counter = Counter()
    rank = {"accept": 0, "review": 1, "reject": 2}
    for im in gt["images"]:
        mine = [m for m in masks if m["image_id"] == images[im["file_name"]]["image_id"]]
        for a in (a for a in gt["annotations"] if a["image_id"] == im["id"]):
            hits = [
                m
                for m in mine
                if mask_utils.iou(
                    [{"size": [m["height"], m["width"]], "counts": m["rle_counts"]}], [a["segmentation"]], [0]
                )[0][0]
                >= 0.5
            ]
            if not hits:
                fate["not labelled"] += 1
                continue
            best = min(hits, key=lambda m: rank[m["verdict"]])
            novel = best["verdict"] == "review" and "novel" in (best["verdict_reasons"] or [])
            fate["review (novel)" if novel else best["verdict"]] += 1
    return out | {"unknown": dict(fate), "unknown_objects": len(gt["annotations"])}


def _without_novelty(root: Path) -> str:
    """The same gold set fitted with ``accept.novelty: false`` (thresholds that do not count on the novelty limit),
    in a copy of the calibration run: the negative control's calibration."""
    import shutil

    from segflow.tasks.ops.calibrate import recalibrate_output

    copy = root / "cal-off"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root / "cal" / "out", copy)
    gold = json.loads((copy / "job.json").read_text())["gold_set"]
    recalibrate_output(str(copy), gold, novelty=False)
    return str(copy / "calibration.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/novelty")
    ap.add_argument("--cal-seed", type=int, default=4242)
    ap.add_argument("--seeds", default="5001,5002")
    args = ap.parse_args(argv)
    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _cli("demo", "--output", str(root / "cal"), "--seed", str(args.cal_seed))
    cal = str(root / "cal" / "out" / "calibration.json")
    cal_off = _without_novelty(root)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for unknown in (0, 2):
            run = root / f"s{seed}-u{unknown}"
            _cli("demo", "--output", str(run), "--seed", str(seed), "--calibration", cal, "--unknown", str(unknown))
            rows.append({"seed": seed, "unknown_per_image": unknown, "novelty": True, **_fate(run)})
            print(json.dumps(rows[-1]), flush=True)
            # negative control: the same labels finalized again without novelty (the score reported only), at
            # thresholds fitted without it
            job = json.loads((run / "out" / "job.json").read_text())
            job["accept"]["novelty"] = False
            job["accept"]["calibration"] = cal_off
            (run / "out" / "job.json").write_text(json.dumps(job))
            _cli("rerun", str(run / "out"))
            from segflow.demo.prepare import holdout_quality

            q = holdout_quality(str(run / "out"), str(run / "ground_truth" / "instances.json"))
            (run / "holdout_quality.json").write_text(json.dumps(q))
            rows.append({"seed": seed, "unknown_per_image": unknown, "novelty": False, **_fate(run)})
            print(json.dumps(rows[-1]), flush=True)
    (root / "novelty_study.json").write_text(json.dumps({"calibration_seed": args.cal_seed, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
