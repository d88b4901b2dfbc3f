"""`kind: sam2_video` (segflow.tasks.stages.sam2_video): streaming propagation equals transformers' own
`propagate_in_video_iterator` on the same prompts, for a tiny random-weight model of each family, on non-square
frames; the session's memory stays bounded while the stock one grows; tracks start on keyframes and end."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.tasks import rle
from segflow.tasks.record import Detections
from segflow.tasks.stages.sam2_video import FAMILIES, VideoPropagator
from segflow.tasks.stages.settings.sam2_video import Sam2VideoStage
from tests.support.tiny import make_tiny_video_model

H, W, N = 72, 100, 24  # non-square, and longer than the memory bank (16 frames) so frames are released
BOXES = np.array([[10, 10, 40, 50], [50, 20, 90, 60]], np.float32)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory):
    return request.param, make_tiny_video_model(tmp_path_factory.mktemp(request.param), request.param)


def _frames(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for _ in range(N)]


def _dets(boxes=BOXES, classes=(1, 2), scores=(0.9, 0.8)) -> Detections:
    return Detections((H, W), boxes=boxes, class_ids=np.asarray(classes, np.int64), scores=np.asarray(scores))


NONE = Detections((H, W), boxes=np.zeros((0, 4)), class_ids=np.zeros(0, np.int64), scores=np.zeros(0))


def _stock(model_dir, family, frames):
    """transformers' own loop: the whole video in the session, both boxes on frame 0, propagate_in_video_iterator."""
    import torch
    import transformers as T

    model_cls, proc_cls = (getattr(T, n) for n in FAMILIES[family])
    model = model_cls.from_pretrained(model_dir).eval()
    proc = proc_cls.from_pretrained(model_dir)
    session = proc.init_video_session(video=frames, inference_device="cpu", dtype=torch.float32)
    proc.add_inputs_to_inference_session(
        inference_session=session, frame_idx=0, obj_ids=[1, 2], input_boxes=[BOXES.tolist()]
    )
    out = {}
    with torch.inference_mode():
        model(inference_session=session, frame_idx=0)
        for o in model.propagate_in_video_iterator(session):
            logits = proc.post_process_masks([o.pred_masks], original_sizes=[[H, W]], binarize=False)[0][:, 0]
            present = torch.sigmoid(o.object_score_logits.reshape(-1)) > 0.5
            out[o.frame_idx] = {
                k + 1: logits[k].numpy() > 0 for k in range(2) if bool(present[k]) and bool((logits[k] > 0).any())
            }
    return out, session


def _ours(adapter, frames, detections, chunk=7):
    clip = adapter.session()
    out = []
    for s in range(0, len(frames), chunk):  # the runner hands a clip over in chunks
        out += clip.segment(frames[s : s + chunk], detections[s : s + chunk])
    return out, clip


def test_streaming_propagation_equals_transformers_own_loop(tiny):
    family, model_dir = tiny
    frames = _frames()
    stage = Sam2VideoStage(
        kind="sam2_video", weights=str(model_dir), keyframe_every=1000, prompt_score=0.0, end_after=1000
    )
    ours, clip = _ours(VideoPropagator(stage, str(model_dir)), frames, [_dets()] + [NONE] * (N - 1))
    stock, stock_session = _stock(model_dir, family, frames)
    assert sorted(stock) == list(range(N))
    shown = 0
    for t, dets in enumerate(ours):
        got = {int(i): rle.decode(c, H, W) for i, c in zip(dets.fields["track_id"], dets.rle_counts, strict=True)}
        assert sorted(got) == sorted(stock[t]), t
        for i, m in got.items():
            assert np.array_equal(m, stock[t][i]), (family, t, i)
            shown += 1
        assert set(dets.class_ids.tolist()) <= {1, 2}
    assert shown >= 2  # masks were compared (random weights call an object absent on many frames: compared too)
    # memory: the stock session holds every frame and every output; ours what the model reads back
    keep = clip.owner.keep_frames
    assert len(stock_session.processed_frames) == N
    assert max(len(o["non_cond_frame_outputs"]) for o in stock_session.output_dict_per_obj.values()) == N - 1
    assert len(clip.session.processed_frames) == 1
    assert max(len(o["non_cond_frame_outputs"]) for o in clip.session.output_dict_per_obj.values()) <= keep
    held = [
        f
        for o in clip.session.output_dict_per_obj.values()
        for f, v in o["non_cond_frame_outputs"].items()
        if "high_res_masks" in v
    ]
    assert set(held) <= {N - 1}  # full-size logits only for the current frame


def test_tracks_start_on_keyframes_and_covered_boxes_start_none(tiny):
    family, model_dir = tiny
    frames = _frames(1)[:12]
    stage = Sam2VideoStage(
        kind="sam2_video", weights=str(model_dir), keyframe_every=4, prompt_score=0.5, end_after=1000, cover_iou=0.9
    )
    adapter = VideoPropagator(stage, str(model_dir))
    low = _dets(scores=(0.3, 0.2))  # below prompt_score: no track
    one = _dets(BOXES[:1], (1,), (0.9,))
    two = _dets(BOXES[1:], (2,), (0.8,))
    out, clip = _ours(adapter, frames, [low, one, NONE, NONE, one] + [NONE] * 3 + [two] + [NONE] * 3)
    assert all(len(d) == 0 for d in out[:4])  # the first keyframe's boxes are too unsure; frame 1 is no keyframe
    assert set(clip.tracks) == {1, 2}  # frame 4 starts track 1; frame 8 box 2, which track 1 does not cover
    assert (clip.tracks[1].class_id, clip.tracks[2].class_id) == (1, 2)
    # negative control: on frame 8 the box track 1's mask had on frame 7 is covered, and starts nothing new
    clip3 = adapter.session()
    clip3.segment(frames[:8], [one] + [NONE] * 7)
    if clip3.tracks[1].box is not None:
        covered = _dets(clip3.tracks[1].box[None], (1,), (0.95,))
        clip3.segment(frames[8:9], [covered])
        assert set(clip3.tracks) == {1}


def test_a_track_ends_after_its_object_is_gone_for_end_after_frames(tiny):
    family, model_dir = tiny
    frames = _frames(2)[:10]
    stage = Sam2VideoStage(kind="sam2_video", weights=str(model_dir), keyframe_every=100, prompt_score=0.0, end_after=1)
    out, clip = _ours(VideoPropagator(stage, str(model_dir)), frames, [_dets()] + [NONE] * 9)
    # random weights: whichever frame the model first calls an object absent, its track ends there for good
    for obj_id in (1, 2):
        frames_with = [t for t, d in enumerate(out) if obj_id in d.fields["track_id"].tolist()]
        assert frames_with == list(range(len(frames_with)))  # no mask after the first gap
        assert clip.tracks[obj_id].alive == (len(frames_with) == 10)
