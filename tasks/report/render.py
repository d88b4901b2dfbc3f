"""``OUTPUT/report.html``: one self-contained page per run (figures and image samples embedded as data URIs).

Written by finalize and by ``segflow report OUTPUT``, from what the run saved: ``summary.json``, ``quality.json``,
``calibration.json``, ``job.json``, the commit records' timings and ``report/samples.json`` (the bounded samples
finalize gathered, :mod:`segflow.tasks.report.sampler`). Its cost does not grow with the run: at most ``per_cell``
masks per class and verdict and a few preview images are read and drawn.

Sections (element ids, for links and tests): ``summary``, ``quality``, ``samples``, ``previews``, ``timing``,
``job``.
"""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict

import numpy as np

from segflow.tasks.documents import Calibration, CommitRecord, Quality, ReportSamples, ReviewEstimate
from segflow.tasks.evaluate.drift import DRIFT_ADVICE
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.storage import join, open_fs, read_bytes, redact, scrub, write_bytes
from segflow.tasks.io.video import pixels_key
from segflow.tasks.records import RunSummary
from segflow.tasks.report import plots
from segflow.tasks.report.sampler import ReportSampler

__all__ = ["ReportError", "write_report", "report_context", "render_html"]

VERDICT_TITLES = {
    "accept": "accepted",
    "review": "review",
    "novel": "review: shape unlike the gold set's (novel)",
    "reject": "rejected",
}
WORST = {
    "accept": "lowest score first",
    "review": "lowest score first",
    "novel": "most unusual first",
    "reject": "highest score first",
}


class ReportError(Exception):
    """The output cannot be reported on (not finished, or not a segflow output)."""


class RunTiming(TypedDict, total=False):
    """Where the shards' time went (empty when no commit kept its timing)."""

    shards: int
    workers: int
    wall: float
    images_per_s: float | None
    seconds: dict[str, float]
    stage_png: str | None
    timeline_png: str | None


class ReportContext(TypedDict):
    """What ``templates/report.html.j2`` is rendered with."""

    summary: RunSummary
    failures: list[dict[str, Any]]
    failure_kinds: dict[str, int]
    counts: list[dict[str, Any]]
    quality: Quality
    calibration: Calibration | None
    figures: dict[str, str | None]
    classes: dict[str, list[dict[str, Any]]]
    previews: list[dict[str, Any]]
    timing: RunTiming
    job: dict[str, Any]
    job_text: str
    stages: list[dict[str, Any]]
    models: list[str]
    output: str
    drift_advice: str
    review_version: str | None
    review_estimate: ReviewEstimate | None
    video: VideoSection | None


def _json(url: str) -> Any:
    fs, path = open_fs(url)
    try:
        return json.loads(read_bytes(fs, path))
    except FileNotFoundError:
        return None


def _uri(data: bytes | None, mime: str = "image/png") -> str | None:
    return None if data is None else f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _read_image(row: dict) -> np.ndarray | None:
    """The pixels a sampled row's masks were drawn on (an image, or a video's frame), None when unreadable."""
    from segflow.tasks.io.video import labelled_pixels

    try:
        size = (row["height"], row["width"]) if row.get("height") and row.get("width") else None
        return labelled_pixels(row["image_uri"], row.get("frame_index"), size)
    except Exception:  # noqa: BLE001 - a sample the report cannot read is shown as unavailable
        return None


def _jpeg(pixels: np.ndarray, side: int = 320) -> bytes:
    from PIL import Image

    img = Image.fromarray(pixels)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _previews(
    layout: OutputLayout, rows: list[dict], cache: dict[tuple[str, int | None], np.ndarray | None]
) -> list[dict]:
    """Each preview image beside its panoptic map (segments in distinct colours, outlined) and semantic map (the
    palette's class colours), both blended over the image."""
    from PIL import Image

    from segflow.tasks.outputs.panoptic_export import png_name
    from segflow.tasks.stages.panoptic import borders

    out = []
    for r in rows:
        pixels = cache.get(pixels_key(r))
        name = redact(r["image_uri"]) + (f" (frame {r['frame_index']})" if r.get("frame_index") is not None else "")
        entry: dict[str, Any] = {"name": name, "image": None, "panoptic": None, "semantic": None}
        if pixels is not None:
            entry["image"] = _uri(_jpeg(pixels), "image/jpeg")
            for kind, folder in (("panoptic", layout.coco_panoptic_pngs), ("semantic", layout.semantic_pngs)):
                fs, path = open_fs(join(folder, png_name(r["image_id"])))
                try:
                    img = Image.open(io.BytesIO(read_bytes(fs, path)))
                except FileNotFoundError:
                    continue
                if kind == "panoptic":
                    rgb = np.asarray(img.convert("RGB")).astype(np.int64)
                    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
                    colours = np.random.default_rng(7).integers(40, 256, (int(ids.max()) + 1, 3))
                    colour = np.where((ids > 0)[..., None], colours[ids], 0)
                    edge = borders(ids)
                else:
                    colour, edge = np.asarray(img.convert("RGB")).astype(np.int64), None
                if colour.shape[:2] != pixels.shape[:2]:
                    continue
                blend = (0.45 * pixels + 0.55 * colour).astype(np.uint8)
                if edge is not None:
                    blend[edge] = 255
                entry[kind] = _uri(_jpeg(blend), "image/jpeg")
        out.append(entry)
    return out


#: tracks the report draws a strip of frames for, and frames in each strip
VIDEO_TRACKS, STRIP_FRAMES = 6, 5


class VideoSection(TypedDict):
    """The report's Tracks section: counts, track lengths, and strips of frames of the longest exported tracks."""

    tracks: int
    videos: int
    verdicts: dict[str, int]
    length_p10: float | None
    length_median: float | None
    length_p90: float | None
    strips: list[dict[str, Any]]


def _video(layout: OutputLayout) -> VideoSection | None:
    """A video run's tracks (``manifest/tracks.parquet``): verdict counts, track lengths, and for the longest
    exported tracks (up to :data:`VIDEO_TRACKS`) a strip of frames with the track's mask drawn on them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from PIL import Image

    from segflow.tasks import rle
    from segflow.tasks.io.parquet import iter_folder_batches, read_parquet

    fs, path = open_fs(layout.tracks)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        tracks = read_parquet(f).to_pylist()
    lengths = np.array([t["frames"] for t in tracks]) if tracks else np.zeros(0)
    verdicts: dict[str, int] = {}
    for t in tracks:
        verdicts[t["verdict"]] = verdicts.get(t["verdict"], 0) + 1
    shown = sorted(
        (t for t in tracks if t["verdict"] == "accept"), key=lambda t: (-t["frames"], t["video"], t["track_id"])
    )
    cols = ["video", "track_id", "frame_index", "rle_counts", "height", "width", "image_uri"]
    shown = shown[:VIDEO_TRACKS]
    # one pass over the masks manifest keeps the shown tracks' rows (a video's ``track_id`` is unique in it)
    wanted = {(t["video"], t["track_id"]) for t in shown}
    found: dict[tuple[str, int], list[dict]] = {k: [] for k in wanted}
    for batch in iter_folder_batches(layout.manifest("masks"), cols):
        keep = pa.array(np.zeros(batch.num_rows, bool))
        for video, track_id in wanted:
            keep = pc.or_(keep, pc.and_(pc.equal(batch["video"], video), pc.equal(batch["track_id"], track_id)))
        for r in batch.filter(keep).to_pylist():
            found[(r["video"], r["track_id"])].append(r)
    strips = []
    for t in shown:
        rows = sorted(found[(t["video"], t["track_id"])], key=lambda r: r["frame_index"])
        picks = [rows[int(k)] for k in np.unique(np.linspace(0, len(rows) - 1, STRIP_FRAMES).round())] if rows else []
        tiles = []
        for r in picks:
            pixels = _read_image(r)
            if pixels is None:
                continue
            m = rle.decode(r["rle_counts"], r["height"], r["width"])
            drawn = pixels.copy()
            drawn[m] = (0.45 * drawn[m] + 0.55 * np.array([255, 64, 32])).astype(np.uint8)
            img = Image.fromarray(drawn)
            img.thumbnail((160, 160))
            tiles.append(np.asarray(img))
        strip = np.concatenate([np.pad(x, ((0, 0), (0, 4), (0, 0))) for x in tiles], axis=1) if tiles else None
        strips.append(
            {
                "video": redact(t["video"]),
                "track_id": t["track_id"],
                "category": t["category_name"],
                "frames": t["frames"],
                "first": t["first_frame"],
                "last": t["last_frame"],
                "mean_score": t["mean_score"],
                "shown": [r["frame_index"] for r in picks],
                "strip": _uri(_jpeg(strip, side=900), "image/jpeg") if strip is not None else None,
            }
        )
    quantiles = np.percentile(lengths, [10, 50, 90]).round(1).tolist() if len(lengths) else [None] * 3
    return {
        "tracks": len(tracks),
        "videos": len({t["video"] for t in tracks}),
        "verdicts": verdicts,
        "length_p10": quantiles[0],
        "length_median": quantiles[1],
        "length_p90": quantiles[2],
        "strips": strips,
    }


def _timing(commits: list[CommitRecord], images: int) -> RunTiming:
    spans: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    for c in commits:
        t = c.get("timing")
        if not t:
            continue
        spans.append({"worker": t["worker"], "start": t["started_at"], "end": t["finished_at"], "shard": c["shard_id"]})
        for k, v in t.get("seconds", {}).items():
            seconds[k] = seconds.get(k, 0.0) + v
    if not spans:
        return {}
    wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
    return {
        "shards": len(spans),
        "workers": len({s["worker"] for s in spans}),
        "wall": round(wall, 2),
        "images_per_s": round(images / wall, 2) if wall > 0 else None,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "stage_png": _uri(plots.stage_seconds(seconds)),
        "timeline_png": _uri(plots.timeline(spans)),
    }


def _rescan(output: str, commits: list[CommitRecord]) -> ReportSamples:
    """Samples of an output finalized before reports existed: one pass over its merged manifests."""
    from segflow.tasks.io.parquet import read_parquet

    layout = OutputLayout(output)
    sampler = ReportSampler()
    for c in commits:
        tables = {}
        for name in ("images", "masks", "panoptic"):
            fs, path = open_fs(layout.manifest_part(name, c["shard_id"]))
            try:
                tables[name] = read_parquet(read_bytes(fs, path))
            except FileNotFoundError:
                tables[name] = None
        if tables["images"] is None or tables["masks"] is None:
            raise ReportError(f"{redact(output)} has no merged manifest for {c['shard_id']}: finalize it first")
        sampler.add(tables["images"], tables["masks"], tables["panoptic"])
    return sampler.to_json()


def report_context(
    output: str,
    summary: RunSummary | None = None,
    samples: ReportSamples | None = None,
    commits: list[CommitRecord] | None = None,
) -> ReportContext:
    """Everything the template shows, figures and images encoded."""
    from segflow.tasks.shard.commit import collect_commits

    layout = OutputLayout(output)
    if summary is None:
        written = _json(layout.summary)
        if written is None:
            raise ReportError(f"no summary.json in {redact(output)}: the run has not been finalized")
        summary = RunSummary.from_dict(written)
    if commits is None:
        commits = collect_commits(output)[1]
    if samples is None:
        samples = _json(layout.report_samples) or _rescan(output, commits)
    quality: Quality = _json(layout.quality) or Quality()
    calibration: Calibration | None = _json(layout.calibration)
    job = scrub(_json(layout.job_json) or {})  # an output others can write to: nothing secret is shown

    rows = {pixels_key(r): r for cell in samples["samples"].values() for r in cell}
    rows |= {pixels_key(r): r for r in samples["previews"]}
    order = sorted(rows, key=lambda k: (k[0], -1 if k[1] is None else k[1]))
    with ThreadPoolExecutor(max_workers=8) as pool:  # on an object store each image is a round trip
        cache = dict(zip(order, pool.map(lambda k: _read_image(rows[k]), order), strict=True))
    stages = []
    for name, st in (job.get("stages") or {}).items():
        stages.append(
            {"name": name, "kind": st.get("kind"), "weights": redact(str(st.get("weights") or st.get("model") or "-"))}
            | {"sha256": st.get("sha256") or "not pinned"}
        )
    context: ReportContext = {
        "summary": summary,
        "failures": samples["failures"],
        "failure_kinds": samples["failure_kinds"],
        "counts": samples["counts"],
        "quality": quality,
        "calibration": calibration,
        "figures": _figures(samples, quality, calibration),
        "classes": _sample_cells(samples, cache),
        "previews": _previews(layout, samples["previews"], cache),
        "timing": _timing(commits, summary.images),
        "job": job,
        "job_text": json.dumps(job, indent=2),
        "stages": stages,
        "models": samples.get("models", []),
        "output": redact(output),
        "drift_advice": DRIFT_ADVICE[0].upper() + DRIFT_ADVICE[1:],
        "review_version": None,
        "review_estimate": None,
        "video": _video(layout),
    }
    context["review_version"], context["review_estimate"] = _review_estimate(output)
    return context


def _review_estimate(output: str) -> tuple[str | None, ReviewEstimate | None]:
    """The latest review import's version and its estimate of the exported set (None without one)."""
    from segflow.tasks.formats.labels import latest_review

    changes = latest_review(output)
    if not changes or not isinstance(changes.get("estimate"), dict):
        return None, None
    return changes.get("version"), changes["estimate"]


def _sample_cells(samples: ReportSamples, cache: dict) -> dict[str, list[dict]]:
    """Per class, its sample mosaics (one per verdict, and ``novel``), in :data:`VERDICT_TITLES` order."""
    from segflow.tasks.outputs.qc_report import contact_sheet

    classes: dict[str, list[dict]] = {}
    totals = {(r["class"], r["verdict"]): r["masks"] for r in samples["counts"]}
    totals |= {(c, "novel"): n for c, n in (samples.get("novel") or {}).items()}
    for key, rows in samples["samples"].items():
        cls, verdict = key.split("\t")
        sheet = contact_sheet(rows, verdict, tile=150, columns=samples["per_cell"], cache=cache, fmt="JPEG")
        classes.setdefault(cls, []).append(
            {
                "verdict": verdict,
                "title": VERDICT_TITLES.get(verdict, verdict),
                "order": WORST.get(verdict, ""),
                "shown": len(rows),
                "total": totals.get((cls, verdict), len(rows)),
                "mosaic": _uri(sheet, "image/jpeg"),
            }
        )
    order = list(VERDICT_TITLES)
    for cells in classes.values():
        cells.sort(key=lambda c: order.index(c["verdict"]) if c["verdict"] in order else 9)
    return dict(sorted(classes.items()))


def _figures(samples: ReportSamples, quality: Quality, calibration: Calibration | None) -> dict[str, str | None]:
    """The report's plots as data URIs (None where the run has nothing to plot)."""
    figures = dict.fromkeys(["confusion", "panoptic", "miou", "semantic_confusion"])
    figures.update(verdicts=_uri(plots.verdict_bars(samples["counts"])), pr=_uri(plots.pr_grid(calibration)))
    conf = quality.get("confusion")
    if conf:
        figures["confusion"] = _uri(
            plots.confusion(conf["classes"], conf["matrix"], "exported label's class", "gold class")
        )
    pan = quality.get("panoptic")
    if pan:
        figures["panoptic"] = _uri(plots.class_bars(pan["per_class"], ["pq", "sq", "rq"], "panoptic quality per class"))
    iou = dict(pan.get("per_class_iou") or {}) if pan else {}
    sem = quality.get("semantic")
    if sem:
        ious: dict[str, dict[str, float | None]] = {n: {"IoU": v} for n, v in sem["per_class_iou"].items()}
        figures["miou"] = _uri(plots.class_bars(ious, ["IoU"], "semantic IoU per class (against the gold maps)"))
        c = sem["confusion"]  # rows: gold classes; columns: void, then the same classes (void left out here)
        figures["semantic_confusion"] = _uri(
            plots.confusion(c["labels"][1:], [row[1:] for row in c["matrix"]], "predicted class", "gold class")
        )
    elif iou:
        figures["miou"] = _uri(plots.class_bars({n: {"IoU": v} for n, v in iou.items()}, ["IoU"], "mIoU per class"))
    return figures


def _num(v: Any, digits: int = 3) -> str:
    """A table cell: ``-`` for a missing value, floats to ``digits`` decimals."""
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def render_html(context: ReportContext) -> str:
    """The page, from ``templates/report.html.j2`` (autoescaped)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("segflow.tasks.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = _num
    return env.get_template("report.html.j2").render(**context)


def write_report(
    output: str,
    summary: RunSummary | None = None,
    samples: ReportSamples | None = None,
    commits: list[CommitRecord] | None = None,
) -> str:
    """Render ``OUTPUT/report.html`` (and save ``samples`` when given). Returns the report's URL."""
    from segflow.tasks.io.lease import hold

    layout = OutputLayout(output)
    fs, _ = open_fs(output)
    with hold(output, "report"):  # finalize already holds it: re-entrant
        if samples is not None:
            write_bytes(fs, open_fs(layout.report_samples)[1], json.dumps(samples).encode())
        page = render_html(report_context(output, summary, samples, commits))
        write_bytes(fs, open_fs(layout.report)[1], page.encode())
    return layout.report
