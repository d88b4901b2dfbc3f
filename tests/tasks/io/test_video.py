"""Video sources: probing without decoding, streamed frames in order, seeks, sampling, clips, rotation, failures."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest

from segflow.tasks.io.video import (
    Clip,
    VideoInfo,
    VideoLoadError,
    iter_folder_frames,
    iter_video_frames,
    plan_clips,
    probe_frame_folder,
    probe_video,
    sample_indices,
)
from tests.support.videos import frame, frame_number, write_video

pytest.importorskip("av")

CONTAINERS = [("mpeg4", "mp4", "container"), ("libx264", "mov", "container"), ("ffv1", "mkv", "packets")]
CONTAINERS += [("libvpx-vp9", "webm", "packets")]


@pytest.mark.parametrize(("codec", "suffix", "counted"), CONTAINERS)
def test_each_container_is_probed_and_decoded_frame_by_frame_in_order(tmp_path, codec, suffix, counted):
    path = write_video(tmp_path / f"v.{suffix}", 37, fps=12, size=(40, 72), codec=codec)
    info = probe_video(str(path))
    assert info == VideoInfo(frames=37, fps=12.0, width=72, height=40, rotation=0, counted=counted)
    frames = list(iter_video_frames(str(path), range(37), info=info))
    assert [f.index for f in frames] == list(range(37))
    assert [frame_number(f.pixels) for f in frames] == [i % 30 for i in range(37)]
    assert frames[12].timestamp_s == pytest.approx(1.0) and frames[0].pixels.shape == (40, 72, 3)


def test_a_clip_seeks_and_reads_only_its_frames_through_a_file_object(tmp_path):
    """Through fsspec (any URL): the frames asked for, the right ones, after a seek past the start; fewer bytes read
    than the file holds for a short clip near the end."""
    path = write_video(tmp_path / "v.mp4", 120, fps=10, size=(96, 128), codec="libx264")
    fs = fsspec.filesystem("file")
    with fs.open(str(path), "rb") as f:
        info = probe_video(f)
    with fs.open(str(path), "rb") as f:
        got = [(fr.index, frame_number(fr.pixels)) for fr in iter_video_frames(f, [100, 103, 104, 119], info=info)]
    assert got == [(100, 10), (103, 13), (104, 14), (119, 29)]


def test_sampling_by_every_and_by_fps():
    info = VideoInfo(frames=100, fps=30.0, width=8, height=8)
    assert sample_indices(info).tolist() == list(range(100))
    assert sample_indices(info, every=7).tolist() == list(range(0, 100, 7))
    at5 = sample_indices(info, fps=5)
    assert at5.tolist() == list(range(0, 100, 6))  # 30 fps to 5: every 6th, ticks at 0, 0.2 s, ...
    assert len(sample_indices(VideoInfo(frames=100, fps=29.97, width=8, height=8), fps=10)) == 34
    assert sample_indices(info, fps=60).tolist() == list(range(100))  # never more frames than the video has
    with pytest.raises(ValueError, match="not both"):
        sample_indices(info, every=2, fps=5)
    with pytest.raises(ValueError, match="frame rate is unknown"):
        sample_indices(VideoInfo(frames=10, fps=0.0, width=8, height=8), fps=5)


def test_clips_cover_every_sampled_frame_with_their_overlap_and_are_deterministic():
    idx = np.arange(0, 230, 2)  # 115 sampled frames
    clips = plan_clips("a.mp4", idx, clip_frames=32, overlap=4)
    assert clips == plan_clips("a.mp4", idx, clip_frames=32, overlap=4)
    assert clips[0] == Clip("a.mp4", 0, 62, 0)
    covered = set()
    for prev, nxt in zip(clips, clips[1:], strict=False):
        shared = [i for i in idx if nxt.first <= i <= prev.last]
        assert len(shared) == nxt.overlap == 4
    for c in clips:
        covered |= {int(i) for i in idx if c.first <= i <= c.last}
    assert covered == set(idx.tolist()) and clips[-1].last == 228
    sizes = [sum(c.first <= i <= c.last for i in idx) for c in clips]
    assert min(sizes) >= 16  # a short remainder joins the last clip
    assert plan_clips("b", np.arange(10), clip_frames=32) == [Clip("b", 0, 9, 0)]
    with pytest.raises(ValueError, match="overlap"):
        plan_clips("b", idx, clip_frames=4, overlap=4)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_rotation_is_applied_like_exif(tmp_path, rotation):
    """A phone's display matrix turns the stored frame: frames come out upright, the size swapped for 90 degrees;
    the white block (top-left as stored) lands where the turn puts it. Negative control: rotation 0."""
    path = write_video(tmp_path / "r.mp4", 3, size=(48, 80), codec="libx264", rotation=rotation)
    info = probe_video(str(path))
    assert info.rotation == rotation
    assert (info.width, info.height) == ((48, 80) if rotation in (90, -90) else (80, 48))
    pixels = next(iter_video_frames(str(path), [0], info=info)).pixels
    assert pixels.shape[:2] == (info.height, info.width)
    expected = np.rot90(frame(0, 48, 80), rotation // 90)
    assert np.abs(pixels.astype(int) - expected).mean() < 6
    plain = next(iter_video_frames(str(write_video(tmp_path / "p.mp4", 1, size=(48, 80), codec="libx264")), [0]))
    assert np.abs(plain.pixels.astype(int) - frame(0, 48, 80)).mean() < 6


def test_max_side_scales_frames_down(tmp_path):
    path = write_video(tmp_path / "v.mp4", 2, size=(60, 120), codec="libx264")
    f = next(iter_video_frames(str(path), [1], max_side=40))
    assert f.pixels.shape == (20, 40, 3) and frame_number(f.pixels) == 1


def test_a_truncated_video_yields_what_it_has_then_says_where_it_broke(tmp_path):
    path = write_video(tmp_path / "v.mkv", 60, size=(48, 64), codec="ffv1")
    info = probe_video(str(path))
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    got = []
    with pytest.raises(VideoLoadError, match=r"(ends|breaks) after frame \d+"):
        for f in iter_video_frames(str(cut), range(60), info=info):
            got.append(f.index)
    assert 5 < len(got) < 60 and got == list(range(len(got)))


@pytest.mark.parametrize(("data", "reason"), [(b"", "not a readable video"), (b"\x00" * 4096, "not a readable video")])
def test_what_is_not_a_video_is_refused_with_a_reason(tmp_path, data, reason):
    p = tmp_path / "x.mp4"
    p.write_bytes(data)
    with pytest.raises(VideoLoadError, match=reason):
        probe_video(str(p))


def test_only_video_containers_are_opened(tmp_path):
    """FFmpeg reads a PNG (or an image sequence, a playlist...) as a one-frame stream: refused by name."""
    import av
    from PIL import Image

    Image.fromarray(frame(0, 8, 8)).save(tmp_path / "a.mp4", format="PNG")
    with pytest.raises(VideoLoadError, match=r"not a video container \(png_pipe\)"):
        probe_video(str(tmp_path / "a.mp4"))
    with av.open(str(tmp_path / "audio.mkv"), "w", format="matroska") as out:  # a container with no video stream
        s = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        sound.sample_rate = 8000
        for p in [*s.encode(sound), *s.encode()]:
            out.mux(p)
    with pytest.raises(VideoLoadError, match="no video stream"):
        probe_video(str(tmp_path / "audio.mkv"))


def test_a_frame_folder_is_a_video_in_name_order(tmp_path):
    from PIL import Image

    names = [f"f{i:03d}.png" for i in range(12)]
    for i, n in enumerate(names):
        Image.fromarray(frame(i, 30, 50)).save(tmp_path / n)
    fs = fsspec.filesystem("file")
    files = [str(tmp_path / n) for n in names]
    info = probe_frame_folder(fs, files, fps=4)
    assert (info.frames, info.width, info.height, info.counted) == (12, 50, 30, "files")
    got = list(iter_folder_frames(fs, files, sample_indices(info, every=5), fps=4))
    assert [(f.index, frame_number(f.pixels), f.timestamp_s) for f in got] == [(0, 0, 0.0), (5, 5, 1.25), (10, 10, 2.5)]
    (tmp_path / names[5]).write_bytes(b"broken")
    with pytest.raises(VideoLoadError, match=r"frame 5 \(f005\.png\)"):
        list(iter_folder_frames(fs, files, [0, 5]))
