"""What the commands print: the run summary, the drift verdict and the calibration table."""

from __future__ import annotations

from segflow.tasks.records import RunSummary


def print_summary(summary: RunSummary) -> None:
    out = summary.outputs
    v, pan = summary.verdicts, summary.panoptic
    novel = (summary.calibration or {}).get("novel")
    print(
        f"\nsegflow: {summary.job} done in {summary.seconds or 0:.1f}s\n"
        f"  images labelled : {summary.labelled_images} of {summary.images}"
        f" ({summary.images_without_masks} without masks, {summary.failed_images} failed)\n"
        f"  masks           : {summary.masks}"
        + "".join(f"\n    {k:<14}: {n}" for k, n in summary.masks_per_category.items())
        + (f"\n  verdicts        : {v['accept']} accepted, {v['review']} review, {v['reject']} rejected" if v else "")
        + (f" ({novel} of the review band: shapes unlike the gold set's, reason novel)" if novel else "")
        + f"\n  masks manifest  : {out['masks']}\n  images manifest : {out['images']}\n"
        f"  COCO instances  : {out['coco_instances']} (accepted)"
        + (f"\n  review band     : {out['review_instances']}" if summary.review_annotations else "")
        + (f"\n  calibration     : {out['calibration']}" if "calibration" in out else "")
        + (
            f"\n  panoptic        : {pan['segments']} segments on {pan['images']} images"
            f"\n  panoptic manif. : {out['panoptic']}\n  COCO panoptic   : {out['coco_panoptic']} "
            f"(+ PNGs in {out['coco_panoptic_pngs']})"
            f"\n  semantic maps   : {out['semantic_pngs']}"
            if pan is not None
            else ""
        )
        + f"\n  summary         : {out['summary']}"
        + (f"\n  quality         : {out['quality']}" if "quality" in out else "")
        + (f"\n  report not written: {summary.report_error}" if summary.report_error is not None else "")
        + (f"\n  report          : {out['report']}" if "report" in out else "")
        + "".join(f"\n{line}" for line in drift_lines(summary)),
        flush=True,
    )


def _f3(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def drift_lines(summary: RunSummary) -> list[str]:
    """The summary's unmissable lines about the calibration in force: does it hold here (the drift check), the
    gold set's precision beside this run's unlabeled estimate."""
    from segflow.tasks.evaluate.drift import DRIFT_ADVICE

    cal, drift, est = summary.calibration, summary.drift, summary.estimate or {}
    if cal is None:
        return []
    gold = cal["heldout"].get("precision")
    estimate = est.get("precision")
    figures = (
        f"precision estimated without labels {estimate:.3f} ({est['masks']} accepted masks; mean probability of "
        f"being right)"
        if estimate is not None
        else "no precision estimate (no accepted mask)"
    )
    gold_text = f"{gold:.3f}" if gold is not None else "-"
    if drift is None:
        return [f"  calibration     : not checked for drift (no reference in it); {figures}"]
    if not drift["drifted"]:
        return [
            f"  calibration     : holds (this run's images and masks look like the gold set's: "
            f"{len(drift['features'])} features tested); gold set precision {gold_text} (held out), {figures}"
        ]
    worst = sorted((f for f in drift["features"] if f["drifted"]), key=lambda f: -f["d"])[:4]
    shown = ", ".join(f"{f['name']} {_num(f['reference_median'])} -> {_num(f['run_median'])}" for f in worst)
    action = {"warn": "exported as usual", "review": "accepted masks sent to review", "fail": "nothing exported"}
    return [
        f"  CALIBRATION DOES NOT HOLD: {drift['verdict']} (medians, gold set -> this run: {shown})",
        f"    the gold set's precision {gold_text} is not this run's; {figures}",
        f"    accept.on_drift: {drift['action']} ({action[drift['action']]}); {DRIFT_ADVICE}",
    ]


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def print_calibration(cal: dict, drift: dict | None = None) -> None:
    """The per-class thresholds and held-out estimates of a calibration, as a Markdown table (``drift``: the
    run's drift check, when the figures are shown after a run: they are the gold set's, not the run's)."""
    f = lambda v: "-" if v is None else f"{v:.3f}"
    ci = lambda v: "-" if v is None else f"{v[0]:.2f}-{v[1]:.2f}"
    print(
        f"calibration: precision {cal['target_precision']} on the {cal['score']} score "
        f"({cal['folds']}-fold over {cal['gold_images']} gold images; held-out figures)"
    )
    print("  | class | gold | labels | accept >= | review >= | precision (95% CI) | recall (95% CI) | status |")
    print("  |---|---:|---:|---:|---:|---|---|---|")
    for name, c in cal["classes"].items():
        h = c["heldout"]
        print(
            f"  | {name} | {c['gold_instances']} | {c['labels']} | {f(c['threshold'])} | {f(c['review_threshold'])} "
            f"| {f(h['precision'])} ({ci(h['precision_ci95'])}) | {f(h['recall'])} ({ci(h['recall_ci95'])}) "
            f"| {c['status']} |"
        )
    where = "on the gold set" if drift is None or not drift["drifted"] else "on the gold set, NOT this run's"
    for key, what in (("heldout", "accepted"), ("heldout_with_review", "accepted + review")):
        h = cal[key]
        print(
            f"  {what} ({where}): precision {f(h['precision'])} ({ci(h['precision_ci95'])}), "
            f"recall {f(h['recall'])} ({ci(h['recall_ci95'])})"
        )
    for w in cal["warnings"]:
        print(f"  warning: {w}")
