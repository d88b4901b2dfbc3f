"""``segflow demo``: label a generated scene set offline with the shipped models and measure it.

1. Render ``--images`` synthetic scenes (seeded) into ``DIR/images`` with exact
   ground truth in ``DIR/ground_truth`` (COCO instances, panoptic, semantic),
   plus a truncated and an empty file, as real buckets have them.
2. Split the instance ground truth by image into ``fit.json`` (the first
   half, the run's gold set: the acceptance thresholds are fitted on it) and
   ``holdout.json`` (the rest, never used to fit).
3. Run ``configs/demo.yaml`` -- the detector, SAM and Mask2Former trained by
   ``segflow train-demo-models`` and shipped in ``configs/models`` (package data of :mod:`segflow.configs`) -- through
   the normal flow with ``fit.json`` and ``DIR/ground_truth/panoptic.json`` as the gold sets (with a saved
   calibration, ``instances.json``: nothing is fitted).
4. The run evaluates its labels against the gold set (``DIR/out/quality.json``,
   copied to ``DIR/quality.json``); :func:`holdout_quality` measures the exported
   set on the held-out images.
"""

from __future__ import annotations

import json
import shutil
from importlib.resources import files
from pathlib import Path

from segflow.demo.synthetic import write_large_scene_set, write_scene_set
from segflow.tasks.documents import Quality

__all__ = ["DEMO_CONFIG", "holdout_quality", "prepare_demo", "split_gold"]

DEMO_CONFIG = Path(str(files("segflow.configs") / "demo.yaml"))  # package data: works from a wheel too


def split_gold(gold_file: Path, fit_file: Path, holdout_file: Path) -> tuple[int, int]:
    """Write the first half of a COCO file's images (and their annotations) to ``fit_file``, the rest to
    ``holdout_file``. Returns the image counts."""
    gold = json.loads(gold_file.read_text())
    images = sorted(gold["images"], key=lambda im: im["id"])
    halves = images[: len(images) // 2], images[len(images) // 2 :]
    for part, path in zip(halves, (fit_file, holdout_file), strict=True):
        ids = {im["id"] for im in part}
        anns = [a for a in gold["annotations"] if a["image_id"] in ids]
        path.write_text(json.dumps(gold | {"images": part, "annotations": anns}))
    return len(halves[0]), len(halves[1])


def holdout_quality(output: str, holdout_file: str) -> Quality:
    """The quality (AP, exported set's precision / recall) of a finished run on the images of ``holdout_file``."""
    import pyarrow.compute as pc

    from segflow.config.schema import JobConfig
    from segflow.tasks.evaluate.quality import evaluate, load_gold
    from segflow.tasks.io.layout import OutputLayout
    from segflow.tasks.io.parquet import read_folder

    layout = OutputLayout(output)
    job = JobConfig.model_validate(json.loads(Path(layout.job_json).read_text()))
    images = read_folder(layout.manifest("images"))
    images = images.filter(pc.equal(images["status"], "ok")).to_pylist()
    masks = read_folder(layout.manifest("masks"))
    masks = masks.filter(pc.fill_null(pc.not_equal(masks["qc_verdict"], "reject"), True))
    cols = ["image_id", "category_id", "score", "rle_counts", "bbox", "verdict"]
    return evaluate(
        load_gold(holdout_file),
        job.category_names(),
        {r["file_name"]: r["image_id"] for r in images},
        masks.select(cols).to_pylist(),
        {r["image_id"]: (r["height"], r["width"]) for r in images},
    )


def prepare_demo(
    folder: str | Path,
    seed: int = 0,
    num_images: int = 40,
    calibration: str | None = None,
    shift: str | None = None,
    unknown: int = 0,
    large: bool = False,
    gold: bool = True,
) -> dict[str, str]:
    """Write the scene set and its ground truth; return the CLI overrides for the demo job.

    ``gold=False`` (and no ``calibration``): the job runs with no gold set and no calibration, as a user starting
    a new ontology does: every label that passes QC is exported (the review loop's starting point).

    ``shift``: render the scenes darkened, blurred or as JPEG quality 25
    (:data:`segflow.demo.synthetic.SHIFTS`), the ground truth unchanged. ``unknown``: objects of shapes outside
    the ontology per image (stars, pentagons, rings; not in the ground truth). ``large``: mosaics of about
    3,000 px (:func:`segflow.demo.synthetic.write_large_scene_set`; instances ground truth only).
    """
    folder = Path(folder).resolve()
    for owned in ("images", "ground_truth", "out"):  # a new demo never reuses an earlier one's plan or commits
        if (folder / owned).exists():
            shutil.rmtree(folder / owned)
    for owned in ("quality.json", "holdout_quality.json"):  # nor shows an earlier one's figures
        (folder / owned).unlink(missing_ok=True)
    gt = folder / "ground_truth"
    if large:
        write_large_scene_set(folder / "images", num_images, seed=seed, gt_dir=gt)
    else:
        write_scene_set(folder / "images", num_images, seed=seed, corrupt=True, gt_dir=gt, shift=shift, unknown=unknown)
    split_gold(gt / "instances.json", gt / "fit.json", gt / "holdout.json")
    if not gold and not calibration:
        return {"source": str(folder / "images"), "output": str(folder / "out")}
    return (
        {
            "source": str(folder / "images"),
            "output": str(folder / "out"),
            "gold_set": str(gt / ("instances.json" if calibration else "fit.json")),
        }
        | ({} if large else {"gold_panoptic": str(gt / "panoptic.json"), "gold_semantic": str(gt / "semantic")})
        | ({"calibration": str(Path(calibration).resolve())} if calibration else {})
    )


def finish_demo(folder: str | Path, output: str, fitted_here: bool = True) -> Quality:
    """After the demo's run: its ``quality.json`` copied beside the scenes, and the exported set measured on the
    images the calibration did not see (``holdout_quality.json``: the gold set's other half when it was
    ``fitted_here``, else every image). Returns that measurement."""
    folder = Path(folder)
    if (Path(output) / "quality.json").exists():  # not without a gold set
        shutil.copyfile(Path(output) / "quality.json", folder / "quality.json")
    holdout = folder / "ground_truth" / ("holdout.json" if fitted_here else "instances.json")
    q = holdout_quality(output, str(holdout))
    (folder / "holdout_quality.json").write_text(json.dumps(q, indent=2))
    return q
