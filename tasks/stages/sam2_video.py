"""``kind: sam2_video``: masks propagated through a clip's frames by a SAM 2-style video model (transformers).

Families (``FAMILIES``): SAM 2.1 (``Sam2VideoModel``), EdgeTAM (``EdgeTamVideoModel``) and the SAM 3 tracker
(``Sam3TrackerVideoModel``), each with its processor, from a ``save_pretrained`` directory.

How a clip is labelled (:class:`ClipPropagation`, one per shard through :meth:`VideoPropagator.session`):

* **Keyframes** are the clip's first frame and every ``keyframe_every``-th frame after it. On a keyframe each box
  of the detector scoring ``prompt_score`` or more (best first) that no live track covers -- box IoU below
  ``cover_iou`` with every live track's mask box on the frame before -- starts a track: a new object of the
  model's session prompted with that box, its class and score the box's.
* **Every frame** enters the session as it comes (``model(inference_session=..., frame=...)``: transformers'
  streaming inference) and every live track gets a mask. A track whose object score logit is below 0 (the model
  says the object is not there) gives no mask on that frame; after ``end_after`` such frames in a row it ends.
* **Bounded memory.** After each frame the session keeps only what the model reads back: the current frame's
  pixels, for each track the outputs of the last ``max(num_maskmem, max_object_pointers_in_encoder)`` frames
  (memory features and object pointers) and of its ``max_cond_frames`` most recent prompted frames; earlier frames
  and their full-size mask logits are released. The stock session keeps every frame and every output.
* **Rows.** Per frame, one row per track with a mask: ``rle_counts``, ``boxes`` the mask's tight box (XYXY,
  pixels), ``class_ids`` the prompting box's class, ``scores`` the prompting box's score times the frame's object
  probability (sigmoid of the object score logit), and the fields ``object_score`` (that probability: a per-frame
  quality of the propagation) and ``track_id`` (the clip's object id, 1, 2, ... in the order tracks start;
  finalize makes them global per video, :mod:`segflow.tasks.outputs.tracks`).

With prompts on the first frame only and no track ending, the masks equal transformers' own
``propagate_in_video_iterator`` over the whole clip (tested for each family).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.stages.qc import box_iou_pairs
from segflow.tasks.stages.settings.sam2_video import Sam2VideoStage

__all__ = ["FAMILIES", "VideoPropagator", "ClipPropagation", "video_family_of"]

#: family -> (model class, processor class), names in ``transformers``
FAMILIES: dict[str, tuple[str, str]] = {
    "sam2_video": ("Sam2VideoModel", "Sam2VideoProcessor"),
    "edgetam_video": ("EdgeTamVideoModel", "Sam2VideoProcessor"),
    "sam3_tracker_video": ("Sam3TrackerVideoModel", "Sam3TrackerVideoProcessor"),
}


def video_family_of(model_dir: str, setting: str = "auto") -> str:
    """The family of a ``save_pretrained`` directory: ``setting`` unless ``auto``, else its ``model_type``."""
    from segflow.tasks.stages.sam2 import family_of

    return family_of(model_dir, setting, {f: f for f in FAMILIES}, "video model")


class VideoPropagator:
    """The ``sam2_video`` stage's adapter: the model and processor, shared by the worker's shards; each shard
    propagates in its own :meth:`session`."""

    role = "segmenter"

    def __init__(self, stage: Sam2VideoStage, weights_path: str, ontology: dict[int, str] | None = None):
        from segflow.tasks.stages.sam2 import load_pretrained

        self.stage = stage
        self.family = video_family_of(weights_path, stage.family)
        self.model, self.processor, self.device = load_pretrained(
            weights_path, self.family, FAMILIES[self.family], stage.device
        )
        cfg = self.model.config
        self.keep_frames = max(int(cfg.num_maskmem), int(getattr(cfg, "max_object_pointers_in_encoder", 16)))

    def session(self) -> ClipPropagation:
        """A fresh propagation for one clip (frames in order)."""
        return ClipPropagation(self)

    def segment(self, images: Sequence[np.ndarray], detections: list[Detections]) -> list[Detections]:
        raise RuntimeError("sam2_video stage: call session() per clip (the runner does)")


@dataclass
class _Track:
    obj_id: int
    class_id: int
    score: float
    misses: int = 0
    alive: bool = True
    box: np.ndarray | None = None  # its mask's box on the last frame it had one (XYXY)


class ClipPropagation:
    """One clip's propagation: :meth:`segment` is called with the clip's frames in order."""

    def __init__(self, owner: VideoPropagator):
        import torch

        self.owner, self.stage = owner, owner.stage
        self.session = owner.processor.init_video_session(inference_device=owner.device, dtype=torch.float32)
        self.tracks: dict[int, _Track] = {}
        self.seen = 0  # the clip's frames so far (keyframes count from here)
        self.fed = 0  # frames given to the session (none before the first track)

    def segment(self, images: Sequence[np.ndarray], detections: list[Detections]) -> list[Detections]:
        """``detections`` (one per frame, the detector's; boxes N x 4, XYXY, pixels) -> each frame's tracked masks."""
        return [self._frame(np.asarray(img), dets) for img, dets in zip(images, detections, strict=True)]

    def finish_clip(self, masks: pa.Table) -> pa.Table:
        """The clip's mask rows (context frames first, frame order) once all are labelled: a track starts on the
        frame it is prompted, with its mask, so there is nothing to fill in; the rows as they are."""
        return masks

    def _frame(self, image: np.ndarray, dets: Detections) -> Detections:
        import torch

        owner, st = self.owner, self.stage
        h, w = image.shape[:2]
        keyframe = self.seen % st.keyframe_every == 0
        self.seen += 1
        inputs = owner.processor(images=image, device=owner.device, return_tensors="pt")
        if keyframe:
            self._prompt(dets, inputs)
        if not self.tracks:
            return _empty((h, w))
        frame_idx = self.fed  # given, not counted by the session: it holds only the current frame (_release)
        with torch.inference_mode():
            out = owner.model(inference_session=self.session, frame=inputs["pixel_values"][0], frame_idx=frame_idx)
        self.fed += 1
        logits = owner.processor.post_process_masks(
            [out.pred_masks], original_sizes=inputs["original_sizes"], binarize=False
        )[0]  # objects x 1 x H x W
        presence = torch.sigmoid(out.object_score_logits.reshape(-1)).float().cpu().numpy()
        masks = (logits[:, 0] > st.mask_threshold).cpu().numpy()
        self._release(frame_idx)
        rows: list[tuple[_Track, np.ndarray, float]] = []
        for k, obj_id in enumerate(self.session.obj_ids):
            t = self.tracks[int(obj_id)]
            if not t.alive:
                continue
            if presence[k] <= 0.5 or not masks[k].any():
                t.misses += 1
                t.alive = t.misses < st.end_after
                continue
            t.misses = 0
            rows.append((t, masks[k], float(presence[k])))
        if not rows:
            return _empty((h, w))
        stack = np.stack([m for _, m, _ in rows])
        counts = rle.encode_nhw(stack)
        boxes = rle.bbox_xywh(counts, h, w)
        boxes[:, 2:] += boxes[:, :2]
        for (t, _, _), b in zip(rows, boxes, strict=True):
            t.box = b
        return Detections(
            image_size=(h, w),
            boxes=boxes.astype(np.float32),
            class_ids=np.array([t.class_id for t, _, _ in rows], np.int64),
            scores=np.array([t.score * p for t, _, p in rows], np.float32),
            rle_counts=np.asarray(counts, dtype=object),
            fields={
                "object_score": np.array([p for _, _, p in rows], np.float32),
                "track_id": np.array([t.obj_id for t, _, _ in rows], np.int64),
            },
        )

    def _prompt(self, dets: Detections, inputs: Any) -> None:
        """Start a track for each confident box no live track covers."""
        st = self.stage
        keep = np.flatnonzero(np.asarray(dets.scores) >= st.prompt_score)
        keep = keep[np.argsort(-np.asarray(dets.scores)[keep], kind="stable")]
        live = [t for t in self.tracks.values() if t.alive and t.box is not None]
        covered = np.asarray([t.box for t in live], np.float32).reshape(-1, 4)
        new_ids, new_boxes = [], []
        for i in keep:
            box = np.asarray(dets.boxes[i], np.float32)
            if len(covered) and box_iou_pairs(box[None], covered).max() >= st.cover_iou:
                continue
            obj_id = len(self.tracks) + 1
            self.tracks[obj_id] = _Track(obj_id, int(dets.class_ids[i]), float(dets.scores[i]), box=box)
            covered = np.concatenate([covered, box[None]])
            new_ids.append(obj_id)
            new_boxes.append([float(v) for v in box])
        if new_ids:
            self.owner.processor.add_inputs_to_inference_session(
                inference_session=self.session,
                frame_idx=self.fed,
                obj_ids=new_ids,
                input_boxes=[new_boxes],
                original_size=inputs["original_sizes"][0],
            )

    def _release(self, frame_idx: int) -> None:
        """Drop what the model will not read again (module docs: bounded memory)."""
        s, keep = self.session, self.owner.keep_frames
        if s.processed_frames is not None:
            for f in [f for f in s.processed_frames if f < frame_idx]:
                del s.processed_frames[f]
        oldest = frame_idx - keep + 1  # the next frame reads at most keep - 1 frames back
        for obj_idx, outputs in s.output_dict_per_obj.items():
            non_cond = outputs["non_cond_frame_outputs"]
            for f in [f for f in non_cond if f < oldest]:
                del non_cond[f]
            cond = outputs["cond_frame_outputs"]
            for f in sorted(cond)[: -self.stage.max_cond_frames]:
                del cond[f]
            for f, out in list(non_cond.items()) + list(cond.items()):
                if f < frame_idx:  # full-size logits are read only on their own frame
                    out.pop("high_res_masks", None)
            tracked = s.frames_tracked_per_obj.get(obj_idx, {})
            for f in [f for f in tracked if f < oldest]:
                del tracked[f]
            for per in (s.point_inputs_per_obj.get(obj_idx, {}), s.mask_inputs_per_obj.get(obj_idx, {})):
                for f in [f for f in per if f < frame_idx]:
                    del per[f]


def _empty(size: tuple[int, int]) -> Detections:
    return Detections(
        image_size=size,
        boxes=np.zeros((0, 4), np.float32),
        class_ids=np.zeros(0, np.int64),
        scores=np.zeros(0, np.float32),
        rle_counts=np.empty(0, dtype=object),
        fields={"object_score": np.zeros(0, np.float32), "track_id": np.zeros(0, np.int64)},
    )
