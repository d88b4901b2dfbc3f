"""Publishing a finished run to a bucket as an immutable, versioned dataset.

Layout under the destination::

    DEST/<version>/manifest/...          the Parquet manifests
    DEST/<version>/coco/...              COCO files (instances; panoptic JSON + PNGs when the run has them)
    DEST/<version>/semantic/...          semantic label maps (when the run has a panoptic stage)
    DEST/<version>/qc/...                QC report (when the run has one)
    DEST/<version>/quality.json, summary.json, job.json, calibration.json
    DEST/<version>/report.html           the run report (one self-contained page)
    DEST/<version>/reviews/<review>/...  the latest review version (``segflow import-review``): the reviewed set
    DEST/<version>/README.md             dataset card: counts per class, images, models and hashes, job, time
    DEST/<version>/SHA256SUMS            sha256 of every file above
    DEST/<version>/_PUBLISHED.json       written after every file, create-if-absent: the version exists once this does
    DEST/LATEST                          the newest version's name, written last

Rules: only a complete run is published (its summary matches its commit
records); a version is never overwritten (a different run under an existing
version name is refused); publishing the same run again is a no-op that
returns the existing version. A reader who follows ``LATEST`` or checks
``_PUBLISHED.json`` never sees a half-published version.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from segflow.tasks.documents import ReviewImport
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.storage import create_exclusive, join, open_fs, read_bytes, read_json, redact, scrub, write_bytes
from segflow.tasks.records import Publication, RunSummary
from segflow.tasks.shard.commit import IncompleteRunError, collect_commits, commits_digest

__all__ = ["PublishError", "publish"]

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PUBLISHED_DIRS = ("manifest", "coco", "semantic", "qc")
_PUBLISHED_FILES = ("summary.json", "quality.json", "job.json", "calibration.json", "report.html")


class PublishError(Exception):
    """The run cannot be published (incomplete, or the version name is taken by other content)."""


def _run_files(output: str, review: str | None = None) -> list[str]:
    """Relative paths of the files a version holds, sorted (with the named review version's)."""
    fs, root = open_fs(output)
    rels = []
    for d in _PUBLISHED_DIRS + ((f"reviews/{review}",) if review else ()):
        _, p = open_fs(join(output, d))
        if fs.exists(p):
            rels += [f[len(root.rstrip("/")) + 1 :] for f in fs.find(p)]
    for f in _PUBLISHED_FILES:
        _, p = open_fs(join(output, f))
        if fs.exists(p):
            rels.append(f)
    return sorted(r for r in rels if ".tmp-" not in r)


def _review_text(review: ReviewImport | None) -> str:
    if not review:
        return ""
    c, v = review["counts"], review["version"]
    return (
        f"\n## Reviewed by people\n\nReview {v} ({review['format']} file, sha256 `{review['review_sha256'][:16]}`, "
        f"imported {review['imported_at']}) checked the labels of {review['images_reviewed']} images: "
        f"{review['labels_checked']} of the {review['labels']} labels in the reviewed set were checked by people "
        f"({review['labels_by_source']['human']} drawn or reshaped by them). This review: kept {c['kept']}, "
        f"relabelled {c['relabelled']}, reshaped {c['reshaped']}, deleted {c['deleted']}, added {c['added']}. "
        f"Train on `reviews/{v}/coco/instances.json` (or `reviews/{v}/masks.parquet`, column `source`); "
        "`coco/instances.json` and the manifest keep the auto labels.\n"
    )


def _md(text: object) -> str:
    """Text from a job or an output (names others chose) as one inert Markdown table cell or heading: one line,
    no table, code or HTML syntax of its own."""
    s = " ".join(str(text).split())
    for ch, esc in (
        ("&", "&amp;"),
        ("<", "&lt;"),
        (">", "&gt;"),
        ("|", "\\|"),
        ("`", "\\`"),
        ("*", "\\*"),
        ("_", "\\_"),
    ):
        s = s.replace(ch, esc)
    return s.lstrip("#=-+ ")


def _card(
    summary: RunSummary, job: dict, version: str, checksums: dict[str, str], review: ReviewImport | None = None
) -> str:
    import yaml

    job = scrub(job)
    models = []
    for name, st in job.get("stages", {}).items():
        if "weights" in st:
            models.append(
                f"| {_md(name)} | {_md(st['kind'])} | {_md(st['weights'].rsplit('/', 1)[-1])} "
                f"| {_md(st.get('sha256') or '-')} |"
            )
    per_class = "\n".join(f"| {_md(k)} | {v} |" for k, v in summary.masks_per_category.items())
    qtext = _quality_text(summary)
    counts = (
        f"| {summary.images} | {summary.labelled_images} | {summary.failed_images} | {summary.masks} "
        f"| {summary.coco_annotations} |"
    )
    job_yaml = "\n".join("    " + line for line in yaml.safe_dump(job, sort_keys=False).strip().splitlines())
    return f"""# {_md(summary.job)} -- dataset {_md(version)}

Auto-labelled by segflow. Created {time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}.

| images | labelled | failed | masks | COCO annotations |
|---:|---:|---:|---:|---:|
{counts}

## Masks per class

| class | masks |
|---|---:|
{per_class}
{qtext}{_review_text(review)}
## Models

| stage | kind | weights | sha256 |
|---|---|---|---|
{chr(10).join(models)}

## Files

`manifest/masks.parquet` (one row per mask, COCO RLE), `manifest/images.parquet`,
`coco/instances.json`{_optional_files(checksums)}; `SHA256SUMS` lists the sha256 of every file.

## Job

{job_yaml}
"""


def _quality_text(summary: RunSummary) -> str:
    """The card's paragraphs on label quality, the operating point, verdicts and panoptic segments."""
    quality = summary.quality or {}
    text = ""
    if "box_ap50" in quality:
        text += (
            f"\nLabel quality against the gold set ({quality['images']} images): box AP50 {quality['box_ap50']}, "
            f"mask AP50 {quality['mask_ap50']}, mask AP {quality['mask_ap']}, mean mask "
            f"IoU {quality['mean_mask_iou']} (see quality.json).\n"
        )
    if "set" in quality:
        st = quality["set"]
        text += (
            f"\nThe published labels (verdict `accept`) as a set, matched one to one at mask IoU >= 0.5 on the gold "
            f"images: precision {st['precision']}, recall {st['recall']} "
            f"(TP {st['tp']}, FP {st['fp']}, FN {st['fn']}).\n"
        )
    cal = summary.calibration
    if cal:
        h = cal["heldout"]
        without = (
            f" Classes without a threshold (all sent to review): {', '.join(cal['review_classes'])}."
            if cal["review_classes"]
            else ""
        )
        text += (
            f"\nOperating point: per-class thresholds for precision {cal['target_precision']} on the "
            f"{cal['score']} score ({cal['source']}); held-out estimate precision {h['precision']} "
            f"(95% CI {h['precision_ci95']}), recall {h['recall']} (95% CI {h['recall_ci95']}); see calibration.json."
            f"{without}\n"
        )
    verdicts = summary.verdicts
    if verdicts:
        text += (
            f"\nVerdicts: {verdicts['accept']} accepted (in coco/instances.json), {verdicts['review']} review, "
            f"{verdicts['reject']} rejected; every mask is in manifest/masks.parquet with `verdict`.\n"
        )
    if "pq" in quality:
        text += (
            f"\nPanoptic quality against the gold set: PQ {quality['pq']}, SQ {quality['sq']}, "
            f"RQ {quality['rq']}, mIoU {quality['miou']}.\n"
        )
    pan = summary.panoptic
    if pan:
        rows = "\n".join(f"| {_md(k)} | {v} |" for k, v in pan["segments_per_category"].items())
        text += (
            f"\n## Panoptic segments per class\n\n{pan['segments']} segments on {pan['images']} images.\n\n"
            f"| class | segments |\n|---|---:|\n{rows}\n"
        )
    return text


def _optional_files(checksums: dict[str, str]) -> str:
    """The card's list of the files only some runs have (panoptic, previews, QC, report)."""
    text = (
        ", `manifest/panoptic.parquet`, `coco/panoptic.json` + `coco/panoptic/*.png` (COCO panoptic), "
        "`semantic/*.png` (class-id maps)"
        if "coco/panoptic.json" in checksums
        else ""
    )
    if any(k.startswith("semantic/preview/") for k in checksums):
        text += ", `semantic/preview/*.jpg` (class maps blended over the images, for eyes only)"
    text += ", `qc/` (QC report, quarantine)" if any(k.startswith("qc/") for k in checksums) else ""
    return text + (", `report.html` (the run report)" if "report.html" in checksums else "")


def publish(output: str, dest: str, version: str | None = None) -> Publication:
    """Publish the finished run in ``output`` under ``dest``: the version published (or published already).

    Holds ``dest``'s lease (:mod:`segflow.tasks.io.lease`), so two publishers never write one version, and refuses
    while another command writes ``output``; every manifest part copied is checked against the output's pointer.
    """
    from segflow.tasks.io.lease import LeaseHeld, hold, require_no_writer

    try:
        require_no_writer(output)
        done = _publish(output, dest, version, write=False)  # published already: nothing is written, no lease
        if done is not None:
            return done
        with hold(dest, "publish"):
            written = _publish(output, dest, version, write=True)
    except LeaseHeld as e:
        raise PublishError(str(e)) from None
    if written is None:  # pragma: no cover - with write=True a version is always written
        raise PublishError(f"{redact(output)}: nothing was published")
    return written


def _publish(output: str, dest: str, version: str | None, write: bool) -> Publication | None:
    """Publish (see :func:`publish`); with ``write`` False, only the existing version of this run, or None."""
    summary, job, digest = _finished_run(output)
    if version is not None and not _VERSION.match(version):
        raise PublishError(f"invalid version name {version!r}: letters, digits, '.', '_' and '-'")

    from segflow.tasks.ops.review import latest_review

    review = latest_review(output)
    review_version = review["version"] if review else None
    fs_dest, dest_root = open_fs(dest)
    existing = _published(fs_dest, dest, dest_root, digest, review_version, version)
    if existing is not None or not write:
        return existing
    version = version or f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{(digest or '0' * 8)[:8]}"
    target = join(dest, version)
    _, marker_path = open_fs(join(target, "_PUBLISHED.json"))
    if fs_dest.exists(marker_path):
        raise PublishError(
            f"version {version!r} already exists at {redact(dest)} with other content; "
            f"published versions are never overwritten"
        )
    checksums = _copy_run_files(output, fs_dest, target, review_version)
    card = _card(summary, job, version, checksums, review).encode()
    checksums["README.md"] = hashlib.sha256(card).hexdigest()
    _, p = open_fs(join(target, "README.md"))
    write_bytes(fs_dest, p, card)
    sums = "".join(f"{h}  {rel}\n" for rel, h in sorted(checksums.items())).encode()
    _, p = open_fs(join(target, "SHA256SUMS"))
    write_bytes(fs_dest, p, sums)
    record = {
        "version": version,
        "commits_digest": digest,
        "review_version": review_version,
        "files": sorted(checksums),
        "source": redact(output),
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not create_exclusive(fs_dest, marker_path, json.dumps(record, indent=1).encode()):
        raise PublishError(f"version {version!r} was published concurrently by someone else")
    _, latest = open_fs(join(dest, "LATEST"))
    write_bytes(fs_dest, latest, (version + "\n").encode())  # last: readers following LATEST see complete versions only
    return Publication(version, redact(target), True, len(checksums))


def _finished_run(output: str) -> tuple[RunSummary, dict, str | None]:
    """The run's summary, job and commits digest; refuses a run that is incomplete, not finalized, or whose
    summary was built from other commits."""
    layout = OutputLayout(output)
    fs_out, _ = open_fs(output)
    summary = read_json(fs_out, layout.summary)
    try:
        _, commits = collect_commits(output)
    except IncompleteRunError as e:
        raise PublishError(f"refusing to publish an incomplete run: {e}") from None
    if summary is None:
        raise PublishError(
            f"refusing to publish {redact(output)}: it was not finalized (no summary.json); "
            f"run `segflow rerun {redact(output)}`"
        )
    run = RunSummary.from_dict(summary)
    digest = run.commits_digest
    job = read_json(fs_out, layout.job_json) or {}
    if digest != commits_digest(commits, job):
        raise PublishError(
            f"refusing to publish {redact(output)}: its summary does not match its committed "
            f"shards; run `segflow rerun {redact(output)}` first"
        )
    return run, job, digest


def _published(
    fs_dest: Any, dest: str, dest_root: str, digest: str | None, review_version: str | None, version: str | None
) -> Publication | None:
    """The version this run (and review) was already published as (under ``version`` if given), or None:
    publishing is idempotent."""
    existing = fs_dest.glob(f"{dest_root.rstrip('/')}/*/_PUBLISHED.json") if fs_dest.exists(dest_root) else []
    for marker in sorted(existing):
        rec = json.loads(fs_dest.cat_file(marker))
        same = rec.get("commits_digest") == digest and rec.get("review_version") == review_version
        if same and (version is None or rec["version"] == version):
            return Publication(rec["version"], redact(join(dest, rec["version"])), False, len(rec["files"]))
    return None


def _copy_run_files(output: str, fs_dest: Any, target: str, review_version: str | None) -> dict[str, str]:
    """Copy the run's published files under ``target``: relative path -> sha256. A manifest part that no longer
    matches the pointer finalize wrote (a finalize started meanwhile) stops the publication."""
    fs_out, _ = open_fs(output)
    checksums: dict[str, str] = {}
    pointer = read_json(fs_out, OutputLayout(output).manifest_parts) or {}
    for rel in _run_files(output, review_version):
        _, src = open_fs(join(output, rel))
        data = read_bytes(fs_out, src)
        checksums[rel] = hashlib.sha256(data).hexdigest()
        folder, _, part = rel.rpartition("/")
        shard = OutputLayout.part_shard(part) if part.startswith("part-") else None
        want = pointer.get(folder, {}).get(shard, {}).get("sha256") if shard else None
        if want is not None and want != checksums[rel]:
            raise PublishError(
                f"{redact(output)}: {rel} changed while it was being published (a finalize started); publish again"
            )
        _, dst = open_fs(join(target, rel))
        write_bytes(fs_dest, dst, data)
    return checksums
