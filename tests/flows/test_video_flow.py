"""A job over videos (`source.video`): video files and a frame folder labelled frame by frame in clips, through the
demo's detector and SAM; a broken video recorded with its reason while the others finish."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import yaml
from PIL import Image

from segflow.flows import cli
from segflow.tasks.io.video import iter_video_frames, labelled_pixels

pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[2]


def _scene_frames(seed: int, n: int, size=(144, 192)) -> list[np.ndarray]:
    """``n`` frames of one demo scene, panning 3 px a frame (H x W x 3 uint8)."""
    from segflow.demo.synthetic import make_scene

    h, w = size
    scene = make_scene(np.random.default_rng(seed), w + 3 * n, h, max_objects=5, min_objects=3)
    return [np.ascontiguousarray(scene.pixels[:, 3 * i : 3 * i + w]) for i in range(n)]


def _write(path: Path, frames: list[np.ndarray], codec: str, fps: int = 10) -> Path:
    from segflow.demo.video import write_video

    return write_video(path, frames, codec, fps)


def _job(tmp_path: Path, source: Path, output: Path, video: dict | None, track: dict | None = None) -> Path:
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    stages = {k: demo["stages"][k] for k in ("detector", "masks")}
    for st in stages.values():
        st["weights"] = str(ROOT / "configs" / st["weights"])
    if video:  # tracking by detection: the masks linked across each clip's frames
        stages["tracks"] = {"kind": "track", "needs": ["masks"], **(track or {})}
    job = {
        "name": "video",
        "source": {"url": str(source), **({"video": video} if video else {})},
        "output": str(output),
        "ontology": [c for c in demo["ontology"] if c.get("isthing", True)],
        "stages": stages,
    }
    path = tmp_path / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _rows(output: Path, name: str) -> list[dict]:
    return ds.dataset(str(output / "manifest" / f"{name}.parquet")).to_table().to_pylist()


def test_videos_and_a_frame_folder_are_labelled_frame_by_frame_in_clips(prefect_harness, tmp_path):
    src = tmp_path / "videos"
    (src / "park").mkdir(parents=True)
    _write(src / "walk.mp4", _scene_frames(1, 12), "libx264")
    _write(src / "road.mkv", _scene_frames(2, 7), "libx264")
    for i, f in enumerate(_scene_frames(3, 5)):
        Image.fromarray(f).save(src / "park" / f"{i:04d}.png")
    broken = (src / "walk.mp4").read_bytes()
    (src / "cut.mp4").write_bytes(broken[: len(broken) // 2])
    (src / "junk.webm").write_bytes(b"\x1a\x45\xdf\xa3 not really matroska" * 10)
    out = tmp_path / "out"
    video = {"every": 2, "clip_frames": 4, "max_side": 160, "folder_fps": 5}
    assert cli.main(["run", str(_job(tmp_path, src, out, video)), "--no-progress"]) == 0

    plan = json.loads((out / "plan" / "plan.json").read_text())
    images = {(r["video"], r["frame_index"]): r for r in _rows(out, "images")}
    walk = sorted(i for v, i in images if v == "walk.mp4")
    assert walk == [0, 2, 4, 6, 8, 10]
    assert sorted(i for v, i in images if v == "park") == [0, 2, 4]
    assert sorted(i for v, i in images if v == "road.mkv") == [0, 2, 4, 6]
    # clips are shards: walk (6 frames) 4 + 2, road 4, park 3, cut, junk
    assert len({r["shard_id"] for r in images.values() if r["video"] == "walk.mp4"}) == 2
    assert plan["num_shards"] == 2 + 1 + 1 + 1 + 1
    w0 = images[("walk.mp4", 4)]
    assert (w0["status"], w0["file_name"], w0["width"], w0["height"]) == ("ok", "walk/000004", 160, 120)
    assert w0["timestamp_s"] == pytest.approx(0.4)
    p2 = images[("park", 2)]
    assert (p2["file_name"], p2["timestamp_s"], p2["width"]) == ("park/0002.png", pytest.approx(0.4), 160)
    junk = [r for (v, _), r in images.items() if v == "junk.webm"]
    assert len(junk) == 1 and junk[0]["status"] == "failed" and "not a readable video" in junk[0]["error"]
    cut = [r for (v, _), r in images.items() if v == "cut.mp4"]  # an mp4 cut short loses its index (at the end)
    assert len(cut) == 1 and cut[0]["status"] == "failed" and cut[0]["frame_index"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_images"] == 2
    ok = [r for r in images.values() if r["status"] == "ok"]
    masks = _rows(out, "masks")
    assert len(masks) >= 2 * len(ok)  # the demo's 3-5 shapes a frame are found in frames as in images
    assert {m["image_id"] for m in masks} <= {r["image_id"] for r in ok}

    # the same frames, decoded and saved as still images, labelled by an image job: the same masks
    stills = tmp_path / "stills"
    (stills / "walk").mkdir(parents=True)
    for f in iter_video_frames(str(src / "walk.mp4"), walk, max_side=160):
        Image.fromarray(f.pixels).save(stills / "walk" / f"{f.index:06d}.png")
    out2 = tmp_path / "out-stills"
    assert cli.main(["run", str(_job(tmp_path, stills, out2, None)), "--no-progress"]) == 0
    still_ids = {r["file_name"].removesuffix(".png"): r["image_id"] for r in _rows(out2, "images")}
    frame_ids = {r["file_name"]: r["image_id"] for r in images.values() if r["video"] == "walk.mp4"}

    def by_frame(rows, ids):
        inv = {v: k for k, v in ids.items()}
        return {(inv[m["image_id"]], m["rle_counts"]): m for m in rows if m["image_id"] in inv}

    from_video, from_stills = by_frame(masks, frame_ids), by_frame(_rows(out2, "masks"), still_ids)
    assert from_video and from_video.keys() == from_stills.keys()
    # a class differs only where the track's vote (classes: vote) overruled the detector on that frame
    for key, m in from_video.items():
        assert m["category_id"] == from_stills[key]["category_id"] or m["track_id"] is not None, key

    # review and training tools need frames as image files: refused with one line, nothing written
    assert cli.main(["export", str(out), str(tmp_path / "ls"), "--format", "label-studio"]) == 2
    assert not (tmp_path / "ls").exists()

    # tracks: the walk's objects, panning a few pixels a frame, keep one id over all its frames, across its two
    # clips (the second clip labels the first's last frames again and is joined to it there), first frame included
    walk_tracks: dict[int, set[int]] = {}
    for m in masks:
        if m["video"] == "walk.mp4" and m["track_id"] is not None:
            walk_tracks.setdefault(m["track_id"], set()).add(m["frame_index"])
    assert walk_tracks and max(len(v) for v in walk_tracks.values()) == 6  # frames 0 .. 10, two clips
    assert sorted(walk_tracks) == list(range(1, len(walk_tracks) + 1))  # numbered per video
    assert {m["stage"] for m in masks} == {"masks"}  # the masks' provenance stays the mask stage's
    assert all(m["track_id"] is None for m in _rows(out2, "masks"))  # still images: no tracks
    # no context frame reaches the manifests: one row per (frame, mask), each frame in its own clip
    assert len({m["annotation_id"] for m in masks}) == len(masks)
    assert all(m["shard_id"] == images[(m["video"], m["frame_index"])]["shard_id"] for m in masks)

    tracks = ds.dataset(str(out / "manifest" / "tracks.parquet")).to_table().to_pylist()
    by_key = {(t["video"], t["track_id"]): t for t in tracks}
    assert set(by_key) == {(m["video"], m["track_id"]) for m in masks if m["track_id"] is not None}
    longest = max((t for t in tracks if t["video"] == "walk.mp4"), key=lambda t: t["frames"])
    assert (longest["first_frame"], longest["last_frame"], longest["frames"]) == (0, 10, 6)
    assert summary["tracks"]["tracks"] == len(tracks)

    # the report's video section: track lengths, and a strip of frames for the longest exported tracks
    html = (out / "report.html").read_text()
    assert 'id="video"' in html and f'alt="track {longest["track_id"]} of walk.mp4"' in html
    assert 'id="video"' not in (out2 / "report.html").read_text()  # still images: none

    # YouTube-VIS: a video per source video that has frames, one annotation per exported track, a mask per frame
    vis = json.loads((out / "vis" / "instances.json").read_text())
    names = {v["name"]: v for v in vis["videos"]}
    assert set(names) == {"walk", "road", "park"}
    assert names["walk"]["file_names"] == [f"walk/{i:06d}" for i in walk]
    walk_anns = [a for a in vis["annotations"] if a["video_id"] == names["walk"]["id"]]
    assert {m["video_id"] for m in masks if m["video"] == "walk.mp4"} == {names["walk"]["id"]}  # the manifest's
    exported = {t["track_id"] for t in tracks if t["video"] == "walk.mp4" and t["verdict"] == "accept"}
    assert {a["segflow_track_id"] for a in walk_anns} == exported
    a = next(a for a in walk_anns if a["segflow_track_id"] == longest["track_id"])
    assert all(s is not None for s in a["segmentations"]) and len(a["segmentations"]) == 6
    m0 = next(m for m in masks if m["video"] == "walk.mp4" and m["track_id"] == a["segflow_track_id"])
    assert a["segmentations"][walk.index(m0["frame_index"])]["counts"] == m0["rle_counts"]
    # MOTS: a line per mask of an exported track, masks of a frame never overlap
    lines = [line.split() for line in (out / "mots" / "walk.txt").read_text().splitlines()]
    assert len(lines) == sum(1 for m in masks if m["video"] == "walk.mp4" and m["track_id"] in exported)
    assert {int(x[1]) for x in lines} == {
        m["category_id"] * 1000 + m["track_id"] for m in masks if m["video"] == "walk.mp4" and m["track_id"] in exported
    }
    from pycocotools import mask as mask_utils

    for f in {x[0] for x in lines}:
        rles = [{"size": [int(x[3]), int(x[4])], "counts": x[5].encode()} for x in lines if x[0] == f]
        assert mask_utils.area(mask_utils.merge(rles)) == sum(mask_utils.area(rles))  # disjoint

    # a mask row says which frame it is on, and what the report and contact sheets draw it over is that frame
    m = next(m for m in masks if m["video"] == "walk.mp4" and m["frame_index"] == 6)
    assert m["image_id"] == images[("walk.mp4", 6)]["image_id"] and m["timestamp_s"] == pytest.approx(0.6)
    shown = labelled_pixels(m["image_uri"], m["frame_index"], (m["height"], m["width"]))
    assert np.array_equal(shown, np.asarray(Image.open(stills / "walk" / "000006.png")))
    other = labelled_pixels(m["image_uri"], 8, (m["height"], m["width"]))
    assert not np.array_equal(shown, other)  # negative control: the next sampled frame differs


def test_clips_joined_on_their_overlap_equal_one_clip_and_a_clip_relabelled_keeps_its_ids(prefect_harness, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    _write(src / "pan.mp4", _scene_frames(4, 9, size=(96, 128)), "libx264")

    def run(name: str, video: dict, track: dict | None = None) -> Path:
        out = tmp_path / name
        assert cli.main(["run", str(_job(tmp_path, src, out, video, track)), "--no-progress"]) == 0
        return out

    def tracks(out: Path) -> list[tuple]:
        return sorted((m["frame_index"], m["rle_counts"], m["track_id"]) for m in _rows(out, "masks"))

    three = run("three", {"clip_frames": 3, "clip_overlap": 2})
    one = run("one", {"clip_frames": 9})
    assert len(json.loads((three / "plan" / "plan.json").read_text())["shard_ids"]) == 3
    joined = tracks(three)
    assert joined == tracks(one)  # the same masks under the same ids, three clips or one
    assert max(sum(1 for r in joined if r[2] == t) for t in {r[2] for r in joined}) == 9  # a track over all 9
    # negative control: clips that label no frame of the clip before cannot be joined on it: with rejoining off,
    # new ids in every clip; with it on (the default), each clip's tracks continue the tracks heading their way
    apart = tracks(run("apart", {"clip_frames": 3, "clip_overlap": 0}, {"rejoin_gap": 0}))
    assert [r[:2] for r in apart] == [r[:2] for r in joined]
    assert len({r[2] for r in apart}) > len({r[2] for r in joined})
    rejoined = tracks(run("rejoined", {"clip_frames": 3, "clip_overlap": 0}))
    assert [r[:2] for r in rejoined] == [r[:2] for r in joined]
    # the ids of each frame are among those joined on the overlap gives it (a clip's first frame may have fewer:
    # a track is confirmed on its second frame)
    for f in range(9):
        assert {r[2] for r in rejoined if r[0] == f} - {None} <= {r[2] for r in joined if r[0] == f}, f
    assert {r[2] for r in rejoined} == {r[2] for r in joined}

    # the middle clip labelled again alone (a new commit supersedes its first): the same ids after finalize
    assert cli.main(["rerun", str(three), "--shards", "shard-00001", "--no-progress"]) == 0
    assert (three / "shards" / "shard-00001" / "_COMMIT-r1.json").exists()
    assert tracks(three) == joined


def test_a_video_job_with_sam2_video_propagation(prefect_harness, tmp_path, tiny_models):
    """detector -> `kind: sam2_video` in a flow (a tiny random-weight SAM 2.1 video model): masks with track ids
    global per video, in the manifests and tracks.parquet."""
    src = tmp_path / "videos"
    src.mkdir()
    _write(src / "pan.mp4", _scene_frames(5, 8, size=(96, 128)), "libx264")
    out = tmp_path / "out"
    path = _job(tmp_path, src, out, {"clip_frames": 4, "clip_overlap": 2})
    job = yaml.safe_load(path.read_text())
    job["stages"] = {
        "detector": job["stages"]["detector"],
        "masks": {
            "kind": "sam2_video",
            "needs": ["detector"],
            "weights": str(tiny_models["sam2_video"]),
            "keyframe_every": 2,
            "prompt_score": 0.3,
            "end_after": 100,
        },
    }
    path.write_text(yaml.safe_dump(job))
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    masks = _rows(out, "masks")
    assert masks and all(m["track_id"] is not None and m["stage"] == "masks" for m in masks)
    assert {m["prompt_model"].split(":")[0] for m in masks} == {"yolo"}
    tracks = ds.dataset(str(out / "manifest" / "tracks.parquet")).to_table().to_pylist()
    assert {(t["video"], t["track_id"]) for t in tracks} == {(m["video"], m["track_id"]) for m in masks}
    assert min(t["track_id"] for t in tracks) == 1
