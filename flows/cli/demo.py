"""``segflow demo``, ``train-demo-models`` and ``convert-weights``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from segflow.flows.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, _eprint, _quiet_prefect
from segflow.flows.cli.run import run_command
from segflow.flows.cli.show import _f3


def cmd_demo(args: argparse.Namespace) -> int:
    from segflow.flows.commands import DemoRun, run_demo

    _quiet_prefect(args)
    if args.video:
        return _video_demo(args)
    fields = ("seed", "images", "calibration", "semantic", "shift", "on_drift", "large", "unknown", "review_round")
    demo = DemoRun(args.output, **{k: getattr(args, k) for k in fields}, gold=not args.no_gold)
    shifted = (f", {args.shift}" if args.shift else "") + (
        f", {args.unknown} unknown shapes each" if args.unknown else ""
    )

    def on_scenes(images: int, seconds: float) -> None:
        print(
            f"segflow demo: {images} synthetic scenes (seed {args.seed}{shifted}) with ground "
            f"truth under {args.output} ({seconds:.1f}s)",
            flush=True,
        )

    held_out, rounds = [], []

    def call(on_plan: Any) -> Any:
        summary, quality, round_figures = run_demo(demo, on_scenes, on_plan)
        held_out.append(quality)
        rounds.append(round_figures)
        return summary

    rc = run_command(call, args, hint=_weights_hint)
    if rc == EXIT_OK:
        q = held_out[0]
        st, what = q["set"], "every image (the calibration was fitted elsewhere)"
        if args.no_gold and not args.calibration:
            what = "every image (no gold set, no calibration: every label that passes QC)"
        elif not args.calibration:
            what = f"the {q['images']} images not used to fit (ground_truth/holdout.json)"
        lines = [
            f"\nexported set on {what}:",
            f"  precision {_f3(st['precision'])}   recall {_f3(st['recall'])}   "
            f"(TP {st['tp']}, FP {st['fp']}, FN {st['fn']})",
        ]
        if os.path.exists(os.path.join(args.output, "quality.json")):  # not without a gold set
            lines.append(f"  quality         : {os.path.join(args.output, 'quality.json')}")
        lines.append(f"  held-out quality: {os.path.join(args.output, 'holdout_quality.json')}")
        lines.append(f"  ground truth    : {os.path.join(args.output, 'ground_truth')}")
        print("\n".join(lines))
        if rounds[0] is not None:
            print("\n" + _round_lines(rounds[0]))
    return rc


def _video_demo(args: argparse.Namespace) -> int:
    from segflow.flows.commands import run_video_demo

    def on_videos(videos: int, seconds: float) -> None:
        print(
            f"segflow demo --video: {videos} synthetic videos of {args.frames} frames (seed {args.seed}) with their "
            f"tracks under {args.output} ({seconds:.1f}s)",
            flush=True,
        )

    measured = []

    def call(on_plan: Any) -> Any:
        summary, quality = run_video_demo(args.output, args.seed, args.videos, args.frames, on_videos, on_plan)
        measured.append((quality, summary.tracks))
        return summary

    rc = run_command(call, args, hint=_weights_hint)
    if rc == EXIT_OK:
        q, tracks = measured[0]
        fit = (tracks or {}).get("fit") or {}
        print(
            f"\ntracks' score threshold {_f3((tracks or {}).get('threshold'))} for precision {_f3(fit.get('target'))}, "
            f"fitted on the {fit.get('tracks', 0)} tracks of the gold videos (ground_truth/fit.json)"
        )
        print(
            f"exported tracks on the held-out videos ({q.frames} frames, {q.gold_tracks} true tracks; "
            f"ground_truth/holdout.json):\n"
            f"  HOTA {_f3(q.hota)} (DetA {_f3(q.deta)}, AssA {_f3(q.assa)})   IDF1 {_f3(q.idf1)} "
            f"(IDP {_f3(q.idp)}, IDR {_f3(q.idr)})\n"
            f"  track precision {_f3(q.track_precision)}   recall {_f3(q.track_recall)}   "
            f"({q.matched} of {q.tracks} exported tracks match a true one)\n"
            f"  tracking quality: {os.path.join(args.output, 'tracking_quality.json')}\n"
            f"  ground truth    : {os.path.join(args.output, 'ground_truth', 'holdout.json')}"
        )
    return rc


def _round_lines(r: dict) -> str:
    e, t, b, a = r["estimate"] or {}, r["truth"], r["before"], r["after"]
    c = r["counts"]
    return (
        f"review round ({r['batch']}, budget {r['budget']}, the simulated reviewer): kept {c['kept']}, relabelled "
        f"{c['relabelled']}, reshaped {c['reshaped']}, deleted {c['deleted']}, added {c['added']}\n"
        f"  estimated from the audit: precision {_f3(e.get('precision'))} ({_f3(e.get('precision_low'))}-"
        f"{_f3(e.get('precision_high'))}), recall {_f3(e.get('recall'))} ({_f3(e.get('recall_low'))}-"
        f"{_f3(e.get('recall_high'))}); true: precision {_f3(t['precision'])}, recall {_f3(t['recall'])}\n"
        f"  re-fitted on {r['gold_images_after']} reviewed and gold images; "
        + (
            f"on the {r['untouched_images']} images no review touched: precision {_f3(b['precision'])} -> "
            f"{_f3(a['precision'])}, recall {_f3(b['recall'])} -> {_f3(a['recall'])}"
            if b is not None
            else "the round touched every image (more --images, or a smaller budget, leaves some to measure on)"
        )
    )


def _weights_hint(error: str) -> str | None:
    if "demo-" in error and "weights" in error:
        return (
            "the demo models are built by `segflow train-demo-models --output configs/models "
            "--update-config configs/demo.yaml configs/demo-qc.yaml`"
        )
    return None


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from segflow.demo.training import DemoTraining, train_demo_set, update_config_sha256

    out = Path(args.output)
    settings = DemoTraining(
        seed=args.seed,
        det_images=args.det_images,
        det_epochs=args.det_epochs,
        det_imgsz=args.det_imgsz,
        det_finetune_epochs=tuple(args.det_finetune_epochs),
        det_finetune_images=args.det_finetune_images,
        det_finetune_imgsz=args.det_finetune_imgsz,
        sam_minutes=args.sam_minutes,
        sam_scenes=args.sam_scenes,
        sam_zoom_minutes=tuple(args.sam_zoom_minutes),
        zoom_scenes=args.zoom_scenes,
        m2f_minutes=args.m2f_minutes,
        unet_minutes=args.unet_minutes,
        video_det_epochs=args.video_det_epochs,
        video_det_frames=args.video_det_frames,
    )
    shas = train_demo_set(out, settings, only=args.only, log=print)
    for name, sha in shas.items():
        print(f"  {out / name}: sha256 {sha} ({(out / name).stat().st_size / 1e6:.1f} MB)")
    for cfg in map(Path, args.update_config or []):
        try:
            update_config_sha256(cfg, shas)
        except ValueError as e:
            _eprint(f"error: {e}")
            return EXIT_FAILED
        print(f"updated sha256 values in {cfg}")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    if args.kind != "yolo":
        _eprint(f"error: convert-weights supports: yolo (got {args.kind!r})")
        return EXIT_CONFIG
    from segflow.tasks.stages.yolo import convert_ultralytics_checkpoint

    convert_ultralytics_checkpoint(args.src, args.dst)
    from segflow.tasks.io.weights import sha256_file

    print(f"wrote {args.dst} (sha256 {sha256_file(args.dst)})")
    return EXIT_OK


def register(sub: Any) -> None:
    _register_demo(sub)
    _register_train(sub)
    c = sub.add_parser(
        "convert-weights",
        help="convert a pickled ultralytics .pt into a weights-only segflow checkpoint (trusted files only)",
    )
    c.add_argument("kind", choices=["yolo"])
    c.add_argument("src")
    c.add_argument("dst")
    c.set_defaults(fn=cmd_convert)


def _register_demo(sub: Any) -> None:
    d = sub.add_parser("demo", help="label a generated example set offline, end to end")
    d.add_argument("--output", required=True, help="folder for the example data and the results")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--images", type=int, help="scenes (default 60; 24 with --large); the first half of them are the gold set"
    )
    d.add_argument(
        "--calibration", help="apply this saved calibration.json instead of fitting one (every image is held out)"
    )
    d.add_argument(
        "--semantic",
        action="store_true",
        help="run configs/demo-semantic.yaml: stuff from the demo U-Net (semantic stage) instead of the Mask2Former",
    )
    d.add_argument(
        "--shift",
        choices=["dark", "blur", "jpeg"],
        help="render the scenes as another camera would: darkened (x 0.55), blurred (radius 2) or JPEG quality 25 "
        "(with --calibration from an unshifted demo: the drift check, docs/gold-sets.md)",
    )
    d.add_argument("--on-drift", choices=["warn", "review", "fail"], help="accept.on_drift for this demo run")
    d.add_argument(
        "--no-gold",
        action="store_true",
        help="run with no gold set and no calibration, as a new ontology starts: every label that passes QC is "
        "exported; with --review-round, the round's re-fit is the first calibration (docs/gold-sets.md)",
    )
    d.add_argument(
        "--review-round",
        type=int,
        nargs="?",
        const=200,
        default=0,
        metavar="BUDGET",
        help="after the run, one round of the review loop (default budget 200) with a simulated reviewer that "
        "answers from the ground truth: the audit's estimate against the truth, and the exported set before and "
        "after `calibrate --from-reviews` (docs/gold-sets.md)",
    )
    d.add_argument(
        "--large",
        action="store_true",
        help="mosaics of about 3,000 px with dozens of small objects, labelled by configs/demo-large.yaml: the "
        "detector over 640-px windows (tiles), SAM in a crop around each box (docs/tiles.md)",
    )
    d.add_argument(
        "--unknown",
        type=int,
        default=0,
        help="draw this many objects of shapes outside the ontology (stars, pentagons, rings) into each scene: "
        "not in the ground truth, so every one exported is a false positive (docs/gold-sets.md, novelty)",
    )
    d.add_argument(
        "--video",
        action="store_true",
        help="videos instead of images: the shapes moving, entering, leaving and passing each other, labelled by "
        "configs/demo-video.yaml (detector -> SAM -> ByteTrack) and scored by HOTA, IDF1 and track precision and "
        "recall against their exact tracks (docs/video.md)",
    )
    d.add_argument(
        "--videos",
        type=int,
        default=10,
        help="with --video: how many videos (default 10; the first half are the gold set: a precision target of "
        "0.95 needs 20 gold tracks or more to tolerate one wrong one)",
    )
    d.add_argument("--frames", type=int, default=48, help="with --video: frames per video (default 48)")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--verbose", "-v", action="store_true")
    d.set_defaults(fn=cmd_demo)


def _register_train(sub: Any) -> None:
    t = sub.add_parser(
        "train-demo-models",
        help="train the demo detector + SAM (side by side, ~14 min), fine-tune the SAM "
        "on zoom crops (~75 min) and train the demo Mask2Former (~14 min) on synthetic "
        "scenes, CPU",
    )
    t.add_argument("--output", default="configs/models")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--det-images", type=int, default=400)
    t.add_argument("--det-epochs", type=int, default=34)
    t.add_argument("--det-imgsz", type=int, default=288)
    t.add_argument(
        "--det-finetune-epochs",
        type=int,
        nargs="*",
        default=[25, 15],
        help="then continue the detector on fresh scenes at the inference size: one cosine cycle per value, "
        "epochs each, each at half the previous peak learning rate (default: 25 15; 0 or none: skip)",
    )
    t.add_argument("--det-finetune-images", type=int, default=800)
    t.add_argument("--det-finetune-imgsz", type=int, default=320)
    t.add_argument("--sam-minutes", type=float, default=13.5)
    t.add_argument("--sam-scenes", type=int, default=600, help="scenes rendered for the SAM's box->mask training")
    t.add_argument("--zoom-scenes", type=int, default=400, help="scenes rendered for each zoom fine-tune cycle")
    t.add_argument(
        "--sam-zoom-minutes",
        type=float,
        nargs="*",
        default=[45.0, 30.0],
        help="then fine-tune the SAM on zoom-window crops (the framing the demo jobs' "
        "zoom_context gives it): one cosine cycle per value, minutes each, each "
        "at half the previous peak learning rate (default: 45 30; 0 or none: skip)",
    )
    t.add_argument(
        "--video-det-epochs",
        type=int,
        default=12,
        help="epochs of the video detector's fine-tune (demo-video-yolo.pt, from demo-yolo.pt) on video frames",
    )
    t.add_argument("--video-det-frames", type=int, default=600, help="video frames rendered for that fine-tune")
    t.add_argument("--m2f-minutes", type=float, default=14.0, help="wall-clock budget of the Mask2Former training")
    t.add_argument("--unet-minutes", type=float, default=35.0, help="wall-clock budget of the demo U-Net's training")
    t.add_argument(
        "--only",
        choices=["instances", "video", "panoptic", "semantic"],
        help="train only the detector + SAM (~1.5 h with the zoom fine-tune), only the video detector "
        "(fine-tuned from demo-yolo.pt), only the Mask2Former (~14 min) or only the semantic U-Net (~16 min); "
        "default: all, one after the other",
    )
    t.add_argument(
        "--update-config",
        nargs="*",
        help="write the new sha256 values into these job files (e.g. configs/demo.yaml configs/demo-qc.yaml)",
    )
    t.set_defaults(fn=cmd_train)
