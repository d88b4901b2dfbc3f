"""QC outputs of a run (written by finalize when the job has a ``qc`` stage or a calibration).

Verdicts are the final ones (``accept`` / ``review`` / ``reject``, see
:mod:`segflow.tasks.evaluate.acceptance`); ``rule`` is one of ``verdict_reasons`` (QC
rules, ``below_accept``, ``below_review``, ``uncalibrated``).

``OUTPUT/qc/``:

* ``quarantine.parquet/part-<shard>.parquet`` -- the rejected masks (all manifest
  columns, ``verdict_reasons`` says why);
* ``summary.parquet`` -- counts by shard, class, verdict and rule (``rule`` is
  ``(none)`` for masks no rule fired on); per-run totals are its sums;
* ``scores.parquet`` -- score distributions (quantiles of ``score``,
  ``predicted_iou``, ``stability_score``) per verdict;
* ``report.md`` and ``report.html`` -- the same, readable, linking the sheets;
* ``sheets/{accepted,review,rejected}.jpg`` -- contact sheets: a sample of masks
  outlined over their images (and lightly tinted) with class, scores and the reasons.
"""

from __future__ import annotations

import html
import io
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks import rle
from segflow.tasks.documents import QcReportCounts
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.storage import join, open_fs, write_bytes
from segflow.tasks.io.video import labelled_pixels, pixels_key
from segflow.tasks.records import VERDICT_COLOURS, rgb

__all__ = ["QcAccumulator", "write_qc_report", "contact_sheet"]

SHEETS = {"accept": "accepted", "review": "review", "reject": "rejected"}
_COLOURS = {k: rgb(v) for k, v in VERDICT_COLOURS.items()}  # the plots' colours (accept, review, reject, novel)
#: The manifest columns a sampled mask keeps: what :func:`contact_sheet` draws and labels.
SAMPLE_COLUMNS = [
    "annotation_id",
    "image_id",
    "image_uri",
    "width",
    "height",
    "category_name",
    "score",
    "predicted_iou",
    "stability_score",
    "rle_counts",
    "calibrated_score",
    "verdict",
    "verdict_reasons",
    "prompt_box",
    "novelty",
    "frame_index",
]


class QcAccumulator:
    """Collects QC counts, score distributions and review candidates shard by shard, in memory that does not grow
    with the rows: scores go into fixed histograms (quantiles to 0.001), candidates are a reservoir."""

    _BINS = np.linspace(0.0, 1.0, 1001)  # scores, predicted IoU and stability live in [0, 1] (clipped into it)

    def __init__(self, samples_per_verdict: int, seed: int = 0):
        self.rows: Counter = Counter()
        self.hist: dict[str, dict[str, np.ndarray]] = {
            v: {k: np.zeros(len(self._BINS) - 1, np.int64) for k in ("score", "predicted_iou", "stability_score")}
            for v in SHEETS
        }
        self.samples_per_verdict = samples_per_verdict
        self.candidates: dict[str, list[tuple[float, dict]]] = {v: [] for v in SHEETS}
        self.image_flags: Counter = Counter()
        self.rng = np.random.default_rng(seed)

    def add(self, shard_id: str, masks: pa.Table, images: pa.Table) -> None:
        n = masks.num_rows
        if n:
            reasons = masks["verdict_reasons"].combine_chunks()
            empty = pc.fill_null(pc.equal(pc.list_value_length(reasons), 0), True).to_numpy(zero_copy_only=False)
            flat = pc.list_flatten(reasons)
            parent = pc.list_parent_indices(reasons).to_numpy()
            idx = np.concatenate([parent, np.flatnonzero(empty)])
            rules = flat.to_pylist() + ["(none)"] * int(empty.sum())
            cats = masks["category_name"].to_numpy(zero_copy_only=False)[idx]
            verd = masks["verdict"].to_numpy(zero_copy_only=False)[idx]
            for (c, v, r), k in Counter(zip(cats.tolist(), verd.tolist(), rules)).items():
                self.rows[(shard_id, c, v, r)] += k
            verdicts = masks["verdict"].to_numpy(zero_copy_only=False)
            keys = self.rng.random(n)  # reservoir: each verdict keeps the rows with the smallest random keys
            for v in SHEETS:
                sel = verdicts == v
                if not sel.any():
                    continue
                for metric in ("score", "predicted_iou", "stability_score"):
                    vals = masks[metric].to_numpy(zero_copy_only=False)[sel].astype(np.float64)
                    vals = vals[~np.isnan(vals)]
                    self.hist[v][metric] += np.histogram(np.clip(vals, 0.0, 1.0), self._BINS)[0]
                rows_v = np.flatnonzero(sel)
                best = rows_v[np.argsort(keys[rows_v], kind="stable")[: max(self.samples_per_verdict, 1)]]
                cols = [c for c in SAMPLE_COLUMNS if c in masks.column_names]  # older commits lack the newest
                picked = masks.take(pa.array(best)).select(cols).to_pylist()
                cand = self.candidates[v] + list(zip(keys[best].tolist(), picked))
                cand.sort(key=lambda t: t[0])
                self.candidates[v] = cand[: max(self.samples_per_verdict, 1)]
        for flags in images["qc_flags"].to_pylist():
            for f in flags or []:
                self.image_flags[f] += 1

    def samples(self, verdict: str) -> list[dict]:
        cand = sorted(self.candidates[verdict], key=lambda t: t[0])[: self.samples_per_verdict]
        return sorted((r for _, r in cand), key=lambda r: r["annotation_id"])

    def summary_table(self) -> pa.Table:
        keys = sorted(self.rows)
        return pa.table(
            {
                "shard_id": [k[0] for k in keys],
                "category_name": [k[1] for k in keys],
                "verdict": [k[2] for k in keys],
                "rule": [k[3] for k in keys],
                "count": pa.array([self.rows[k] for k in keys], pa.int64()),
            }
        )

    def verdict_counts(self) -> dict[str, int]:
        """Masks per verdict with a detector score (a mask with several rules is in ``rows`` once per rule)."""
        return {v: int(self.hist[v]["score"].sum()) for v in SHEETS}

    def rule_counts(self) -> dict[str, int]:
        c: Counter = Counter()
        for (_, _, _, rule), n in self.rows.items():
            if rule != "(none)":
                c[rule] += n
        return dict(sorted(c.items()))

    def score_table(self) -> pa.Table:
        """Per verdict and metric: count and quantiles (read off the 0.001-wide histogram: bin upper edges)."""
        rows = []
        for v in SHEETS:
            for k, h in self.hist[v].items():
                count = int(h.sum())
                if count:
                    cum = np.cumsum(h)
                    q = [float(self._BINS[1 + np.searchsorted(cum, p * count)]) for p in (0.05, 0.25, 0.5, 0.75, 0.95)]
                    rows.append(
                        {
                            "verdict": v,
                            "metric": k,
                            "count": count,
                            "p05": q[0],
                            "p25": q[1],
                            "p50": q[2],
                            "p75": q[3],
                            "p95": q[4],
                        }
                    )
        return pa.Table.from_pylist(rows) if rows else pa.table({"verdict": pa.array([], pa.string())})


def contact_sheet(
    samples: list[dict],
    verdict: str,
    tile: int = 200,
    columns: int = 6,
    cache: dict[tuple[str, int | None], np.ndarray | None] | None = None,
    fmt: str = "PNG",
) -> bytes:
    """A grid image (``fmt``: a PIL format): each tile is the mask's neighbourhood, the mask outlined (2 px, verdict
    colour) and lightly tinted, the prompt box in white, with class, detector / calibrated score, predicted IoU and
    reasons. ``cache``: :func:`segflow.tasks.io.video.pixels_key` -> H x W x 3 pixels (None: unreadable), filled
    with what is read here."""
    from PIL import Image, ImageDraw

    rows = max(1, (len(samples) + columns - 1) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * (tile + 30)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    cache = {} if cache is None else cache
    for i, r in enumerate(samples):
        key = pixels_key(r)
        if key not in cache:
            try:
                cache[key] = labelled_pixels(key[0], key[1], (r["height"], r["width"]))
            except Exception:  # noqa: BLE001 - a sheet tile is best effort
                cache[key] = None
        pixels = cache[key]
        x0, y0 = (i % columns) * tile, (i // columns) * (tile + 30)
        if pixels is None:
            draw.text((x0 + 4, y0 + 4), "image unavailable", fill=(200, 200, 200))
            continue
        h, w = r["height"], r["width"]
        m = rle.decode(r["rle_counts"], h, w)
        ys, xs = np.nonzero(m)
        bx0, by0, bx1, by1 = (
            (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, w, h)
        )
        pad = int(0.25 * max(bx1 - bx0, by1 - by0)) + 4
        cx0, cy0, cx1, cy1 = max(0, bx0 - pad), max(0, by0 - pad), min(w, bx1 + pad), min(h, by1 + pad)
        crop = pixels[cy0:cy1, cx0:cx1].astype(np.float32)
        mc = m[cy0:cy1, cx0:cx1]
        colour = np.array(_COLOURS[verdict], np.float32)
        crop[mc] = 0.8 * crop[mc] + 0.2 * colour
        img = Image.fromarray(crop.clip(0, 255).astype(np.uint8))
        scale = tile / max(img.width, img.height)
        size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
        pixels = np.asarray(img.resize(size)).copy()
        big = np.asarray(Image.fromarray(mc.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
        pixels[_outline(big, 2)] = _COLOURS[verdict]  # the edge drawn at tile scale: visible on any background
        img = Image.fromarray(pixels)
        d = ImageDraw.Draw(img)
        if r.get("prompt_box"):
            px0, py0, px1, py1 = r["prompt_box"]
            d.rectangle(
                [(px0 - cx0) * scale, (py0 - cy0) * scale, (px1 - cx0) * scale, (py1 - cy0) * scale],
                outline=(255, 255, 255),
            )
        sheet.paste(img, (x0, y0))
        piou = "-" if r["predicted_iou"] is None else f"{r['predicted_iou']:.2f}"
        cal = "" if r.get("calibrated_score") is None else f" c{r['calibrated_score']:.2f}"
        cal += "" if r.get("novelty") is None or verdict != "novel" else f" n{r['novelty']:.1f}"
        draw.text(
            (x0 + 3, y0 + tile + 2), f"{r['category_name']} s{r['score']:.2f}{cal} iou{piou}", fill=(235, 235, 235)
        )
        draw.text((x0 + 3, y0 + tile + 15), ",".join(r["verdict_reasons"] or []) or "ok", fill=_COLOURS[verdict])
    buf = io.BytesIO()
    sheet.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` (HxW bool) within ``width`` pixels of its edge."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def write_qc_report(output: str, acc: QcAccumulator, job_name: str) -> QcReportCounts:
    """Write summary tables, the Markdown/HTML report and the contact sheets; return headline counts."""
    import pyarrow.parquet as pq

    fs, _ = open_fs(output)
    root = OutputLayout(output).qc

    def put(rel: str, data: bytes) -> None:
        _, path = open_fs(join(root, rel))
        write_bytes(fs, path, data)

    def parquet(table: pa.Table) -> bytes:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()

    summary, scores = acc.summary_table(), acc.score_table()
    put("summary.parquet", parquet(summary))
    put("scores.parquet", parquet(scores))
    verdicts, rules = acc.verdict_counts(), acc.rule_counts()
    sheets = {}
    for v, name in SHEETS.items():
        samples = acc.samples(v)
        if samples:
            put(f"sheets/{name}.jpg", contact_sheet(samples, v, fmt="JPEG"))  # photographs: a PNG took 80x as long
            sheets[v] = f"sheets/{name}.jpg"

    md = [f"# QC report: {job_name}", "", "| verdict | masks |", "|---|---:|"]
    md += [f"| {v} | {verdicts[v]} |" for v in SHEETS]
    md += ["", "## Rules that fired", "", "| rule | masks |", "|---|---:|"] + [
        f"| {k} | {n} |" for k, n in rules.items()
    ]
    md += ["", "## By class and rule", "", "| class | verdict | rule | masks |", "|---|---|---|---:|"]
    agg: Counter = Counter()
    for r in summary.to_pylist():
        agg[(r["category_name"], r["verdict"], r["rule"])] += r["count"]
    md += [f"| {c} | {v} | {rule} | {n} |" for (c, v, rule), n in sorted(agg.items())]
    md += ["", "## Image flags", "", "| flag | images |", "|---|---:|"] + [
        f"| {k} | {n} |" for k, n in sorted(acc.image_flags.items())
    ]
    md += [
        "",
        "## Score distributions",
        "",
        "| verdict | metric | n | p05 | p50 | p95 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    md += [
        f"| {r['verdict']} | {r['metric']} | {r['count']} | {r['p05']:.3f} | {r['p50']:.3f} | {r['p95']:.3f} |"
        for r in scores.to_pylist()
    ]
    md += ["", "## Review sheets", ""] + [f"- {SHEETS[v]}: ![{SHEETS[v]}]({p})" for v, p in sheets.items()]
    markdown = "\n".join(md) + "\n"
    put("report.md", markdown.encode())
    put("report.html", _html(markdown).encode())
    return {
        "verdicts": verdicts,
        "rules": rules,
        "image_flags": dict(acc.image_flags),
        "report": join(root, "report.md"),
    }


def _html(markdown: str) -> str:
    """A small Markdown-to-HTML rendering of the report (headings, tables, lists, images)."""
    import re

    out, in_table = (
        ["<!doctype html><meta charset='utf-8'><title>segflow QC report</title><body style='font-family:sans-serif'>"],
        False,
    )
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-:") for c in cells):
                continue
            if not in_table:
                out.append("<table border='1' cellpadding='4' style='border-collapse:collapse'>")
                in_table = True
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            m = re.match(r"- (.*?): !\[(.*?)\]\((.*?)\)", line)
            if m:
                out.append(
                    f"<p>{html.escape(m.group(1))}<br><a href='{html.escape(m.group(3))}'><img "
                    f"src='{html.escape(m.group(3))}' style='max-width:100%'></a></p>"
                )
            else:
                out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out) + "</body>\n"
