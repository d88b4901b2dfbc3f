"""The output layout: every path under OUTPUT, in one place.

::

    OUTPUT/
      job.json                                    the resolved job, for `segflow rerun`
      plan/plan.parquet, plan/plan.json           the shard plan; plan/plan-gNNNN.{parquet,json} later generations
      shards/<shard>/_COMMIT.json                 commit record (segflow.tasks.shard.commit); _COMMIT-rN.json: redo N
      shards/<shard>/attempts/<attempt>/*.parquet data files of one attempt
      shards/<shard>/_RENDERED.json               which attempt the shard's PNGs were drawn from
      shards/_errors/<shard>.json                 last failure of an uncommitted shard
      set_aside/shards/<shard>/                   shard folders the plan does not name, moved by `rerun --corrupt`
      manifest/{masks,images,panoptic}.parquet/   one part per shard
      manifest/tracks.parquet, vis/instances.json, mots/<video>.txt   a video run's tracks (outputs.tracks)
      coco/instances.json, coco/panoptic.json, coco/panoptic/<image_id>.png
      semantic/<image_id>.png, semantic/preview/<image_id>.jpg (a semantic stage's `preview: true`)
      qc/                                         QC report, quarantine.parquet, sheets
      review/instances.json, review/masks.parquet/ the review band of the run
      reviews/<version>/                          an imported review (segflow.tasks.ops.review)
      summary.json, quality.json, calibration.json (segflow calibrate; qc/pr_curves.png beside)
      _lease/<generation>.json                    the lease of the command writing the output (segflow.tasks.io.lease);
                                                  gone when it finishes

Paths are URLs or local paths joined with ``/``; :meth:`OutputLayout.url` refuses a
relative key that would escape the root.
"""

from __future__ import annotations

from dataclasses import dataclass

from segflow.tasks.io.storage import join, safe_join

__all__ = ["OutputLayout"]


@dataclass(frozen=True)
class OutputLayout:
    root: str

    def url(self, relative: str) -> str:
        """``root/relative`` for a key read from data (a commit record, a plan): never outside the root."""
        return safe_join(self.root, relative)

    # -- job and plan
    @property
    def job_json(self) -> str:
        return join(self.root, "job.json")

    def plan_parquet(self, generation: int = 0) -> str:
        name = "plan.parquet" if generation == 0 else f"plan-g{generation:04d}.parquet"
        return join(self.root, "plan", name)

    @property
    def plan_json(self) -> str:
        return join(self.root, "plan", "plan.json")

    def plan_claim(self, generation: int) -> str:
        return join(self.root, "plan", f"plan-g{generation:04d}.json")

    # -- shards
    @property
    def shards(self) -> str:
        return join(self.root, "shards")

    def shard(self, shard_id: str) -> str:
        return join(self.root, "shards", shard_id)

    def commit_record(self, shard_id: str, generation: int = 0) -> str:
        """The shard's commit record; a redo of a committed shard writes generation 1, 2, ... (it supersedes)."""
        name = "_COMMIT.json" if generation == 0 else f"_COMMIT-r{generation}.json"
        return join(self.root, "shards", shard_id, name)

    @staticmethod
    def attempt_dir(shard_id: str, attempt: str) -> str:
        """Relative to the root (commit records name their files relative to it)."""
        return f"shards/{shard_id}/attempts/{attempt}"

    def rendered_record(self, shard_id: str) -> str:
        return join(self.root, "shards", shard_id, "_RENDERED.json")

    def set_aside(self, shard_id: str) -> str:
        """Where ``segflow rerun --corrupt`` moves a shard folder the plan does not name (nothing is deleted)."""
        return join(self.root, "set_aside", "shards", shard_id)

    def error_record(self, shard_id: str) -> str:
        return join(self.root, "shards", "_errors", f"{shard_id}.json")

    # -- keys relative to the root (as commit records, manifest/_parts.json and problems name files)
    MANIFEST_PARTS_KEY = "manifest/_parts.json"
    REVIEW_MASKS_KEY = "review/masks.parquet"
    QUARANTINE_KEY = "qc/quarantine.parquet"

    @staticmethod
    def manifest_key(name: str) -> str:
        """``manifest/<name>.parquet``: the folder of ``masks``, ``images`` or ``panoptic`` parts."""
        return f"manifest/{name}.parquet"

    @staticmethod
    def part_key(folder: str, shard_id: str) -> str:
        """``<folder>/part-<shard>.parquet``: one shard's part of a partitioned Parquet folder (a relative key)."""
        return f"{folder}/part-{shard_id}.parquet"

    @staticmethod
    def part_shard(file_name: str) -> str:
        """The shard a part's file name (``part-<shard>.parquet``) belongs to."""
        return file_name.removeprefix("part-").removesuffix(".parquet")

    @staticmethod
    def commit_key(shard_id: str) -> str:
        return f"shards/{shard_id}/_COMMIT.json"

    @staticmethod
    def shard_key(shard_id: str) -> str:
        return f"shards/{shard_id}"

    # -- merged outputs
    def manifest(self, name: str) -> str:
        """``masks``, ``images``, ``panoptic``: a folder of one Parquet part per shard."""
        return join(self.root, self.manifest_key(name))

    def manifest_part(self, name: str, shard_id: str) -> str:
        """One shard's part of the ``name`` manifest."""
        return join(self.root, self.part_key(self.manifest_key(name), shard_id))

    @property
    def manifest_parts(self) -> str:
        """sha256 and size of every manifest part finalize wrote (``segflow verify`` checks them)."""
        return join(self.root, self.MANIFEST_PARTS_KEY)

    # -- imported reviews: reviews/<version>/ (segflow.tasks.ops.review)
    @property
    def reviews(self) -> str:
        return join(self.root, "reviews")

    def review_version(self, version: str, *names: str) -> str:
        """``reviews/<version>/`` or a file in it (``changes.json``, ``review.json``, ``_DONE.json``, ``coco``,
        ``instances.json``...)."""
        return join(self.root, "reviews", version, *names)

    def review_part(self, version: str, shard_id: str) -> str:
        """One shard's part of a review version's reviewed label set."""
        return join(self.root, "reviews", version, self.part_key("masks.parquet", shard_id))

    @property
    def review_instances(self) -> str:
        return join(self.root, "review", "instances.json")

    @property
    def review_masks(self) -> str:
        return join(self.root, self.REVIEW_MASKS_KEY)

    @property
    def coco_instances(self) -> str:
        return join(self.root, "coco", "instances.json")

    @property
    def tracks(self) -> str:
        return join(self.root, "manifest", "tracks.parquet")

    @property
    def vis_instances(self) -> str:
        return join(self.root, "vis", "instances.json")

    @property
    def mots(self) -> str:
        return join(self.root, "mots")

    @property
    def coco_panoptic(self) -> str:
        return join(self.root, "coco", "panoptic.json")

    @property
    def coco_panoptic_pngs(self) -> str:
        return join(self.root, "coco", "panoptic")

    @property
    def semantic_pngs(self) -> str:
        return join(self.root, "semantic")

    @property
    def semantic_previews(self) -> str:
        return join(self.root, "semantic", "preview")

    @property
    def qc(self) -> str:
        return join(self.root, "qc")

    @property
    def quarantine(self) -> str:
        return join(self.root, self.QUARANTINE_KEY)

    @property
    def calibration(self) -> str:
        return join(self.root, "calibration.json")

    @property
    def pr_curves(self) -> str:
        return join(self.root, "qc", "pr_curves.png")

    @property
    def semantic_confusion(self) -> str:
        return join(self.root, "qc", "semantic_confusion.png")

    @property
    def summary(self) -> str:
        return join(self.root, "summary.json")

    @property
    def report(self) -> str:
        """The run report: one self-contained HTML page (:mod:`segflow.tasks.report`)."""
        return join(self.root, "report.html")

    @property
    def report_samples(self) -> str:
        """What finalize gathered for the report in its pass over the shards (``segflow report`` renders from it)."""
        return join(self.root, "report", "samples.json")

    @property
    def quality(self) -> str:
        return join(self.root, "quality.json")
