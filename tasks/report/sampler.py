"""What a run report shows of the labels, gathered in finalize's one pass over the shards, in bounded memory.

Per class and verdict the sampler counts every mask and keeps the ``per_cell`` worst, worst-first:

* ``accept``: lowest score first (calibrated when a calibration is in force, else the detector's): the exported
  labels most likely to be wrong;
* ``review``: lowest score first, likewise;
* ``reject``: highest score first: confident labels a rule or the threshold threw away, where a rule is most
  likely to be wrong;
* ``novel`` (a cell of its own, inside the review band): the masks sent to review for a shape unlike the gold
  set's (:mod:`segflow.tasks.evaluate.novelty`), most unusual first.

Ties go to the lower annotation id, so the pick is the same however the shards are ordered. It also keeps the
first ``failures`` failed images with their reasons (and counts reasons by kind), and ``previews`` images with
panoptic segments, spread over the run by a hash of their id. Saved as ``OUTPUT/report/samples.json``; a 1M-image
run's file is as large as the demo's.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from segflow.tasks.documents import ReportSamples
from segflow.tasks.outputs.qc_report import SAMPLE_COLUMNS

__all__ = ["ReportSampler", "failure_kind"]

_WORST_LOW = {"accept": True, "review": True, "reject": False}  # True: the lowest score is the worst


def failure_kind(error: str | None) -> str:
    """The kind of an image's failure, without the file-specific detail (``read error``, ``file not found``...)."""
    text = (error or "unknown").strip()
    head = text.split(":", 1)[0]
    return head.split(" after ")[0][:60] or "unknown"


def _hash_key(image_id: int) -> str:
    return hashlib.sha1(str(image_id).encode()).hexdigest()


class ReportSampler:
    """Counts, worst-first mask samples per class and verdict, failed images and preview images of a run."""

    def __init__(self, per_cell: int = 6, failures: int = 50, previews: int = 6):
        self.per_cell, self.max_failures, self.max_previews = per_cell, failures, previews
        self.counts: Counter = Counter()  # (class, verdict) -> masks
        self.novel: Counter = Counter()  # class -> masks in review for their shape
        self.cells: dict[tuple[str, str], list[tuple[float, int, dict]]] = {}
        self.failures: list[dict] = []
        self.failure_kinds: Counter = Counter()
        self.previews: list[tuple[str, dict]] = []
        self.models: set[str] = set()  # model identities ("kind:file@sha256:...") the labels came from

    def add(self, images: pa.Table, masks: pa.Table, panoptic: pa.Table | None = None) -> None:
        """One shard's image rows, mask rows (with ``verdict``) and panoptic segments (when the run has them)."""
        self._add_failures(images)
        if panoptic is not None and panoptic.num_rows:
            self._add_previews(images, panoptic)
        for table, col in ((masks, "model"), (masks, "prompt_model"), (panoptic, "model")):
            if table is not None and col in table.column_names:
                self.models.update(m for m in pc.unique(table[col]).to_pylist() if m)
        if not masks.num_rows:
            return
        cls = masks["category_name"].to_numpy(zero_copy_only=False)
        verdict = masks["verdict"].to_numpy(zero_copy_only=False)
        score = masks["score"].to_numpy(zero_copy_only=False).astype(np.float64)
        if "calibrated_score" in masks.column_names:
            cal = pc.fill_null(masks["calibrated_score"], np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
            score = np.where(np.isnan(cal), score, cal)
        ann = masks["annotation_id"].to_numpy(zero_copy_only=False)
        cols = [k for k in SAMPLE_COLUMNS if k in masks.column_names]
        for (c, v), n in Counter(zip(cls.tolist(), verdict.tolist())).items():
            self.counts[(c, v)] += n
            rows = np.flatnonzero((cls == c) & (verdict == v))
            key = score[rows] if _WORST_LOW.get(v, True) else -score[rows]
            best = rows[np.lexsort((ann[rows], key))[: self.per_cell]]
            picked = masks.take(pa.array(best)).select(cols).to_pylist()
            cell = self.cells.get((c, v), []) + [
                (float(key[np.searchsorted(rows, b)]), int(ann[b]), r) for b, r in zip(best, picked, strict=True)
            ]
            cell.sort(key=lambda t: (t[0], t[1]))
            self.cells[(c, v)] = cell[: self.per_cell]
        if "novelty" in masks.column_names:
            reasons = masks["verdict_reasons"].to_pylist()
            novel = np.array([bool(r) and "novel" in r for r in reasons])
            nov = pc.fill_null(masks["novelty"], 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
            for c in np.unique(cls[novel]).tolist():
                rows = np.flatnonzero(novel & (cls == c))
                self.novel[c] += len(rows)
                best = rows[np.lexsort((ann[rows], -nov[rows]))[: self.per_cell]]
                picked = masks.take(pa.array(best)).select(cols).to_pylist()
                cell = self.cells.get((c, "novel"), []) + [
                    (-float(nov[b]), int(ann[b]), r) for b, r in zip(best, picked, strict=True)
                ]
                cell.sort(key=lambda t: (t[0], t[1]))
                self.cells[(c, "novel")] = cell[: self.per_cell]

    def _add_failures(self, images: pa.Table) -> None:
        failed = images.filter(pc.equal(images["status"], "failed"))
        for r in failed.select(["image_id", "image_uri", "error"]).to_pylist():
            self.failure_kinds[failure_kind(r["error"])] += 1
            if len(self.failures) < self.max_failures:
                self.failures.append(r)

    def _add_previews(self, images: pa.Table, panoptic: pa.Table) -> None:
        ids = set(panoptic["image_id"].to_pylist())
        cols = [c for c in ("image_id", "image_uri", "width", "height", "frame_index") if c in images.column_names]
        ok = images.filter(pc.equal(images["status"], "ok")).select(cols)
        cand = self.previews + [(_hash_key(r["image_id"]), r) for r in ok.to_pylist() if r["image_id"] in ids]
        self.previews = sorted(cand, key=lambda t: t[0])[: self.max_previews]

    def to_json(self) -> ReportSamples:
        return {
            "version": 1,
            "per_cell": self.per_cell,
            "counts": [{"class": c, "verdict": v, "masks": n} for (c, v), n in sorted(self.counts.items())],
            "novel": dict(sorted(self.novel.items())),
            "samples": {f"{c}\t{v}": [r for _, _, r in cell] for (c, v), cell in sorted(self.cells.items())},
            "failures": self.failures,
            "failure_kinds": dict(self.failure_kinds.most_common()),
            "previews": [r for _, r in self.previews],
            "models": sorted(self.models),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json()).encode()
