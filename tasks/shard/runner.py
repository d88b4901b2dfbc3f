"""One shard, start to commit: read -> decode -> stages -> manifest rows -> commit.

1. Skip the shard if it is already committed by this job (same fingerprint).
2. Read and decode its images through ``prefetch`` threads, one batch plus
   ``prefetch`` images ahead of the models, so storage reads overlap compute and
   memory holds only a few decoded images at a time.
3. For each chunk of decoded images, run the stages in dependency order; all
   stages share the decoded pixels and the process-wide loaded models.
4. Turn the sink stages' :class:`~segflow.tasks.record.Detections` into manifest rows.
5. Write the shard's Parquet files and commit them (:mod:`segflow.tasks.shard.commit`).

A file that cannot be read or decoded becomes an ``images`` row with
``status="failed"`` and its reason; the other images go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from segflow.tasks.evaluate.drift import histograms
from segflow.tasks.io.image_stats import image_stats
from segflow.tasks.io.images import DecodedImage, ImageLoadError, decode_image
from segflow.tasks.io.layout import OutputLayout
from segflow.tasks.io.retry import RetryPolicy, is_transient, retry_call
from segflow.tasks.io.storage import join, open_fs, redact, write_bytes
from segflow.tasks.io.video import FrameRef
from segflow.tasks.outputs.manifest import ShardTables
from segflow.tasks.outputs.panoptic_export import render_shard
from segflow.tasks.plan.planner import clip_context, read_shard_rows
from segflow.tasks.record import Detections
from segflow.tasks.records import INSTANCE_ROLES, PASS_THROUGH_ROLES, ShardResult
from segflow.tasks.shard import progress
from segflow.tasks.shard.commit import ShardConflict, commit_shard, read_commit, record_failure
from segflow.tasks.stages.allocator import keep_freed_memory
from segflow.tasks.stages.cache import LoadedModel, get_model
from segflow.tasks.stages.panoptic import detections_to_map, palette, semantic_from_segments, semantic_preview
from segflow.tasks.stages.registry import ADAPTERS

if TYPE_CHECKING:
    import numpy as np

    from segflow.config.schema import JobConfig


__all__ = ["ShardFailed", "ShardResult", "run_shard", "job_fingerprint"]


def job_fingerprint(job: JobConfig) -> str:
    """What makes two runs' shard outputs interchangeable: stages, ontology and plan inputs."""
    spec = {
        "stages": {n: s.model_dump(mode="json") for n, s in job.stages.items()},
        "ontology": [c.model_dump(mode="json") for c in job.ontology],
        "shard_size": job.shard_size,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


class ShardFailed(Exception):
    """Too many of a shard's images failed: something is wrong beyond single files."""


log = logging.getLogger("segflow.shard")

READ_RETRIES = RetryPolicy(tries=5, base=0.2, cap=5.0)


def _read_and_decode(
    row: dict, storage_options: dict, max_pixels: int, max_side: int | None = None
) -> DecodedImage | str:
    """An image (or a frame folder's frame, scaled to ``max_side``) decoded, or the reason it failed."""
    tries = [0]

    def read() -> bytes:
        tries[0] += 1
        fs, path = open_fs(row["uri"], storage_options)
        return fs.cat_file(path)

    try:
        data = retry_call(read, READ_RETRIES)
    except FileNotFoundError:
        return "file not found"
    except PermissionError as e:
        return f"permission denied: {e}"
    except Exception as e:  # noqa: BLE001 - any read failure is this image's failure
        again = f" after {tries[0]} tries" if is_transient(e) else ""
        return f"read error{again}: {type(e).__name__}: {e}"
    try:
        decoded = decode_image(data, max_pixels=max_pixels)
    except ImageLoadError as e:
        return str(e)
    if max_side and row.get("frame_source") == "image":
        from segflow.tasks.io.video import resize_max_side

        decoded = dataclasses.replace(decoded, pixels=resize_max_side(decoded.pixels, max_side))
    return dataclasses.replace(decoded, stats=image_stats(decoded.pixels, decoded.jpeg_quality))


def _video_stream(rows: list[dict], job: JobConfig) -> Iterator[tuple[dict, DecodedImage | str]]:
    """Yield ``(row, frame or error)`` for a clip's rows (frames of one video file, ascending), decoding the file
    once, frame by frame (:func:`segflow.tasks.io.video.iter_video_frames`); the rows after a failure get its
    reason."""
    from segflow.tasks.io.video import VideoLoadError, iter_video_frames, probe_video

    video = job.source.video
    max_side = video.max_side if video is not None else None
    done = 0
    try:
        fs, path = open_fs(rows[0]["uri"], job.source.storage_options)
        with fs.open(path, "rb") as f:
            if any(r.get("frame_index") is None for r in rows):  # the plan could not probe or sample it: why
                info = probe_video(f)
                raise VideoLoadError(f"{info.frames} frames at an unknown frame rate: sample it with `every`")
            by_index = {int(r["frame_index"]): r for r in rows}
            # the plan probed the video already: decode straight away (the stream's rate places frames after a seek)
            for frame in iter_video_frames(f, sorted(by_index), max_side):
                row = by_index[frame.index]
                stats = image_stats(frame.pixels, None)
                yield row, DecodedImage(pixels=frame.pixels, exif_orientation=1, stats=stats)
                done += 1
    except VideoLoadError as e:
        reason = str(e)
    except FileNotFoundError:
        reason = "file not found"
    except Exception as e:  # noqa: BLE001 - any read failure is this clip's failure
        reason = f"read error: {type(e).__name__}: {e}"
    else:
        return
    for row in rows[done:]:
        yield row, reason


def _decoded_stream(rows: list[dict], job: JobConfig) -> Iterator[tuple[dict, DecodedImage | str]]:
    """Yield ``(row, image or error)`` in plan order, ``prefetch`` threads reading and decoding (a clip of a video
    file: :func:`_video_stream`).

    Up to one batch (``job.chunk_size()``) plus ``prefetch`` images are in flight or waiting, so while the
    models work on one batch the next one is read: on an object store each read is a round trip, and a
    window of ``prefetch`` alone would leave the batch to be fetched after the models finish.
    """
    if rows and rows[0].get("frame_source") == "file":
        yield from _video_stream(rows, job)
        return
    threads = job.runtime.prefetch
    ahead = threads + job.chunk_size()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="segflow-read") as pool:
        max_side = job.source.video.max_side if job.source.video is not None else None

        def submit(row: dict) -> tuple[dict, Future]:
            return row, pool.submit(_read_and_decode, row, job.source.storage_options, job.source.max_pixels, max_side)

        it = iter(rows)
        pending: deque[tuple[dict, Future]] = deque(submit(r) for r in itertools.islice(it, ahead))
        while pending:
            row, fut = pending.popleft()
            result = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(submit(nxt))
            yield row, result


def _provenance(job: JobConfig, sink: str, models: dict[str, Any]) -> tuple[str, str, str | None]:
    """``(mask stage, mask model identity, prompt model identity)`` behind an instance sink's rows."""
    role = job.role
    mask_stage = sink
    while role(mask_stage) in PASS_THROUGH_ROLES:  # QC and trackers pass rows through: credit the mask stage
        mask_stage = next(d for d in job.stages[mask_stage].needs if role(d) in INSTANCE_ROLES)
    prompt = next((d for d in job.stages[mask_stage].needs if role(d) == "detector"), None)
    return mask_stage, models[mask_stage].identity, (models[prompt].identity if prompt else None)


def run_stages(
    job: JobConfig, images: list[Any], models: dict[str, Any], seconds: dict[str, float] | None = None
) -> dict[str, list[Detections]]:
    """Run every stage, in dependency order, on a list of H x W x 3 RGB uint8 images (``seconds``: each stage's
    wall time is added to its entry)."""
    results: dict[str, list[Detections]] = {}
    for name in job.stage_order():
        st = job.stages[name]
        inputs = {job.role(d): (d, results[d]) for d in st.needs}
        t = time.perf_counter()
        results[name] = ADAPTERS[st.kind].run(models[name].adapter, images, inputs, st)
        if seconds is not None:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
    return results


def write_previews(output: str, images: list[tuple[int, np.ndarray]], segments: list[Detections]) -> None:
    """``semantic/preview/<image_id>.jpg`` for each of ``images`` ((image id, H x W x 3 RGB) pairs) from a semantic
    stage's ``segments`` (one Detections per image). Derived views: a rerun writes them again."""
    folder = OutputLayout(output).semantic_previews
    fs, _ = open_fs(folder)
    pal = palette([])
    for (image_id, pixels), dets in zip(images, segments, strict=True):
        _, path = open_fs(join(folder, f"{int(image_id)}.jpg"))
        write_bytes(fs, path, semantic_preview(pixels, semantic_from_segments(*detections_to_map(dets)), pal))


def worker_name() -> str:
    """``host:pid:thread``: where a shard ran (a run report's timeline has one row per worker)."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def run_shard(job: JobConfig, shard_id: str, redo: bool = False) -> ShardResult:
    """Label one shard and commit it. Raises on failures that are not one image's fault.

    ``redo``: label a committed shard again and commit it as the next generation (see
    :func:`segflow.tasks.shard.commit.commit_shard`); its earlier commit stays valid until then.
    """
    t0 = time.perf_counter()
    fingerprint = job_fingerprint(job)
    try:
        existing = read_commit(job.output, shard_id)
        if redo:
            generation = 0 if existing is None else int(existing.get("generation", 0)) + 1
            return _label_and_commit(job, shard_id, fingerprint, t0, generation)
        if existing is not None:
            if existing.get("fingerprint") != fingerprint:
                raise ShardConflict(
                    f"{shard_id} in {redact(job.output)} was committed by a job with different stages or ontology; "
                    f"use another output or delete it"
                )
            s = existing["stats"]
            progress.advance(images=s["images"], masks=s["masks"], failed=s["failed"], shards=1)
            return ShardResult(
                shard_id, s["images"], s["ok"], s["failed"], s["masks"], time.perf_counter() - t0, skipped=True
            )
        return _label_and_commit(job, shard_id, fingerprint, t0)
    except Exception as e:
        try:
            record_failure(job.output, shard_id, f"{type(e).__name__}: {e}")
        except Exception:  # noqa: BLE001 - the shard's own error is the one to report
            pass
        raise


def _label_and_commit(job: JobConfig, shard_id: str, fingerprint: str, t0: float, generation: int = 0) -> ShardResult:
    timing: dict[str, Any] = {"started_at": round(time.time(), 3), "worker": worker_name()}
    rows = read_shard_rows(job.output, shard_id)
    if not rows:
        raise ValueError(f"{shard_id} is not in the plan of {redact(job.output)}")
    if job.runtime.malloc_tuning:  # once per worker: large tensors reuse freed memory instead of faulting in pages
        keep_freed_memory()
    labeler = _ShardLabeler(job, shard_id)
    # a clip labels the last frames of the clip before again only to join tracks: without a stage making tracks, none
    overlap = job.source.video.clip_overlap if job.source.video is not None and job.tracks() else 0
    labeler.label(rows, clip_context(job.output, shard_id, rows, overlap))
    tables, n_failed = labeler.tables, labeler.n_failed
    qc = job.qc_stage()
    if qc is not None and qc.count_outlier.action != "off":
        tables.flag_count_outliers(qc.count_outlier.mads, qc.count_outlier.min)
    limit = job.runtime.max_failed_fraction
    one_file = rows[0].get("frame_source") == "file"  # a clip of one video file: its failure is the file's, recorded
    if rows and not one_file and n_failed / len(rows) > limit:
        errors = [f"{redact(u)}: {e}" for u, e in zip(tables.images["image_uri"], tables.images["error"]) if e][:3]
        raise ShardFailed(
            f"{shard_id}: {n_failed} of {len(rows)} images failed ({n_failed / len(rows):.0%} "
            f"> runtime.max_failed_fraction {limit:.0%}); "
            f"first errors: {'; '.join(errors)}"
        )
    masks, images = tables.tables()
    context = labeler.context.tables()[0] if labeler.n_context else None
    finishers = [f for m in labeler.models.values() if callable(f := getattr(m.adapter, "finish_clip", None))]
    if finishers and "track_id" in masks.column_names and masks["track_id"].null_count < masks.num_rows:
        both = pa.concat_tables([context, masks]) if context is not None else masks
        for finish in finishers:  # a tracker's last word on the clip: first frames filled in, classes voted
            both = finish(both)
        skip = 0 if context is None else context.num_rows
        context, masks = (both.slice(0, skip) if context is not None else None), both.slice(skip)
    stats: dict[str, Any] = {
        "images": len(rows),
        "ok": len(rows) - n_failed,
        "failed": n_failed,
        "masks": labeler.n_masks,
    }
    stats["histograms"] = histograms(images, masks)  # for the drift check at finalize (segflow.tasks.evaluate.drift)
    files = {"masks": masks, "images": images}
    if context is not None:
        files["context"] = context  # the context frames' masks: finalize joins the clips' tracks on them
    pan_sink = job.panoptic_sink()
    if pan_sink:
        files["panoptic"] = tables.panoptic_table()
        stats["segments"] = files["panoptic"].num_rows
    timing["seconds"] = labeler.seconds
    commit, won = commit_shard(job.output, shard_id, files, fingerprint, stats, generation, timing)
    if won and pan_sink:
        try:  # finalize renders whatever is missing, so a failure here loses nothing
            render_shard(job.output, shard_id, commit["attempt"], images, files["panoptic"])
        except Exception as e:  # noqa: BLE001
            log.warning(
                "%s: panoptic PNGs not rendered now (%s: %s); finalize will render them", shard_id, type(e).__name__, e
            )
    progress.advance(shards=1)
    s = commit["stats"]
    return ShardResult(
        shard_id,
        s["images"],
        s["ok"],
        s["failed"],
        s["masks"],
        time.perf_counter() - t0,
        skipped=not won,
        worker_pid=os.getpid(),
        model_loads=labeler.load_stats.get("loads", 0),
    )


def _for_this_shard(model: LoadedModel) -> LoadedModel:
    """A model as one shard uses it: an adapter that keeps state across a clip's frames (a tracker) is shared by
    the worker's shards, so it gives each shard its own ``session()``; any other adapter is used as it is."""
    session = getattr(model.adapter, "session", None)
    return LoadedModel(session(), model.identity) if callable(session) else model


class _ShardLabeler:
    """A shard's images through the stages into its tables: decoded ahead (:func:`_decoded_stream`), labelled in
    chunks of ``job.chunk_size()``; ``seconds`` per step, ``n_failed`` and ``n_masks`` as they go."""

    def __init__(self, job: JobConfig, shard_id: str):
        self.job = job
        ontology = job.category_names()
        isthing = {c.id: c.isthing for c in job.ontology}
        prompts = {c.id: c.text_prompts() for c in job.ontology}
        self.load_stats: dict[str, int] = {}
        self.models = {
            name: _for_this_shard(get_model(job.stages[name], ontology, isthing, self.load_stats, prompts))
            for name in job.stage_order()
        }
        self.sinks = job.instance_sinks()
        # what each sink's rows came from: (mask stage name, mask model, prompt model)
        self.provenance = {name: _provenance(job, name, self.models) for name in self.sinks}
        self.pan_sink = job.panoptic_sink()
        self.preview = next((n for n, st in job.stages.items() if getattr(st, "preview", False)), None)
        self.identities = {name: m.identity for name, m in self.models.items()}
        self.tables = ShardTables(shard_id, ontology)
        self.context = ShardTables(shard_id, ontology)  # a clip's context frames (labelled again, not its own)
        self.n_context = 0
        self.seconds: dict[str, float] = {"read": 0.0}
        self.chunk: list[tuple[dict, DecodedImage]] = []
        self.n_failed = self.n_masks = 0

    def label(self, rows: list[dict], context: list[dict] | None = None) -> None:
        """Every image of ``rows`` (the shard's plan rows) into the tables; a failed image as its error.
        ``context``: plan rows of the clip before, labelled first into :attr:`context` (a failed one is skipped)."""
        size = self.job.chunk_size()
        stream = _decoded_stream([{**r, "context": True} for r in context or []] + rows, self.job)
        while True:
            t = time.perf_counter()
            item = next(stream, None)
            self.seconds["read"] += time.perf_counter() - t  # waiting for images: what reads ahead did not hide
            if item is None:
                break
            row, result = item
            if isinstance(result, str) and row.get("context"):
                continue
            if isinstance(result, str):
                self.tables.add_failed_image(row["image_id"], row["uri"], row["key"], result, FrameRef.of_row(row))
                self.n_failed += 1
                progress.advance(images=1, failed=1)
                continue
            self.chunk.append((row, result))
            if len(self.chunk) >= size:
                self._flush()
        self._flush()

    def _flush(self) -> None:
        chunk = self.chunk
        if not chunk:
            return
        results = run_stages(self.job, [img.pixels for _, img in chunk], self.models, self.seconds)
        if self.preview:
            own = [k for k, (row, _) in enumerate(chunk) if not row.get("context")]
            pixels = [(chunk[k][0]["image_id"], chunk[k][1].pixels) for k in own]
            write_previews(self.job.output, pixels, [results[self.preview][k] for k in own])
        for i, (row, img) in enumerate(chunk):
            outputs = [(*self.provenance[s], results[s][i]) for s in self.sinks]
            pan = (self.pan_sink, self.identities, results[self.pan_sink][i]) if self.pan_sink else None
            size = (img.height, img.width)
            frame = FrameRef.of_row(row)
            tables = self.context if row.get("context") else self.tables
            k = tables.add_image(
                row["image_id"], row["uri"], row["key"], size, img.exif_orientation, outputs, pan, img.stats, frame
            )
            if row.get("context"):
                self.n_context += 1
                continue
            self.n_masks += k
            progress.advance(images=1, masks=k)
        chunk.clear()
