"""drcn_cli.io.video: frames through a callback, the audio copied, atomic output, clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from drcn_cli.io import video

av = pytest.importorskip("av")
from tinyvideo import describe, frame_pixels, make_clip  # noqa: E402 (needs av)


def resize_to(size):
    def upscale(rgb):
        return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)

    return upscale


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_frames_rate_and_audio_are_kept(tmp_path):
    source = make_clip(tmp_path / "clip.mp4")
    info = video.probe_video(source)
    assert (info.width, info.height, info.frames, info.rate, info.audio_streams) == (24, 16, 6, 25, 1)
    seen = []
    result = video.upscale_video(source, tmp_path / "out" / "big.mkv", resize_to((32, 48)), (32, 48),
                                 on_frame=seen.append)
    assert (result.frames, result.width, result.height, result.audio_copied, result.dropped) == (6, 48, 32, 1, [])
    assert seen == [1, 2, 3, 4, 5, 6]
    out = describe(tmp_path / "out" / "big.mkv")
    assert out["streams"] == [("video", "h264"), ("audio", "aac")] and out["rate"] == 25
    assert out["size"] == (48, 32) and len(out["frames"]) == 6
    # The frames are the callback's, in order (up to the codec's loss).
    for index, frame in enumerate(out["frames"]):
        expected = resize_to((32, 48))(frame_pixels(index, 24, 16)).astype(int)
        assert np.abs(frame.astype(int) - expected).mean() < 12
    assert result.bytes == (tmp_path / "out" / "big.mkv").stat().st_size and hidden(tmp_path / "out") == []


def test_odd_sizes_lose_a_row_and_webm_drops_what_it_cannot_hold(tmp_path):
    source = make_clip(tmp_path / "clip.mp4")
    result = video.upscale_video(source, tmp_path / "odd.webm", resize_to((27, 37)), (27, 37))
    assert (result.width, result.height) == (36, 26) and result.audio_copied == 0
    assert result.dropped == ["audio stream 1 (aac: not storable in .webm)"]
    assert describe(tmp_path / "odd.webm")["streams"] == [("video", "vp9")]


def test_existing_output_and_bad_sources_write_nothing(tmp_path):
    source = make_clip(tmp_path / "clip.mp4", audio=False)
    (tmp_path / "taken.mp4").write_bytes(b"keep")
    with pytest.raises(video.VideoError, match="exists"):
        video.upscale_video(source, tmp_path / "taken.mp4", resize_to((32, 48)), (32, 48))
    assert (tmp_path / "taken.mp4").read_bytes() == b"keep"
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    (tmp_path / "text.mp4").write_text("not a video")
    for bad in (truncated, tmp_path / "text.mp4"):
        with pytest.raises(video.VideoError, match="not a video, or truncated or corrupt"):
            video.upscale_video(bad, tmp_path / "never.mp4", resize_to((32, 48)), (32, 48))
    with pytest.raises(video.VideoError, match="cannot tell the video format"):
        video.upscale_video(source, tmp_path / "frames.png", resize_to((32, 48)), (32, 48))
    assert not (tmp_path / "never.mp4").exists() and hidden(tmp_path) == []


def test_a_failing_callback_or_interrupt_leaves_no_file(tmp_path):
    source = make_clip(tmp_path / "clip.mp4")
    calls = []

    def fails_on_the_third(rgb):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return resize_to((32, 48))(rgb)

    with pytest.raises(KeyboardInterrupt):
        video.upscale_video(source, tmp_path / "big.mp4", fails_on_the_third, (32, 48))
    assert not (tmp_path / "big.mp4").exists() and hidden(tmp_path) == []


def test_is_video_path():
    assert video.is_video_path("a/clip.MP4") and video.is_video_path("x.webm")
    assert not video.is_video_path("photo.png") and not video.is_video_path("noext")


def test_variable_frame_timestamps_are_kept(tmp_path):
    from fractions import Fraction

    stamps = [0, 40, 50, 200, 210, 400]  # milliseconds, irregular
    source = tmp_path / "vfr.mkv"
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 24, 16, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for index, stamp in enumerate(stamps):
            frame = av.VideoFrame.from_ndarray(frame_pixels(index, 24, 16), "rgb24")
            frame.pts, frame.time_base = stamp, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    video.upscale_video(source, tmp_path / "out.mp4", resize_to((32, 48)), (32, 48))
    with av.open(str(tmp_path / "out.mp4")) as container:
        seconds = [float(f.pts * f.time_base) for f in container.decode(video=0)]
    assert seconds == pytest.approx([s / 1000 for s in stamps])


def test_without_pyav_the_error_says_what_to_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(video.VideoError, match=r"video needs PyAV: pip install 'drcn\[video\]'"):
        video.probe_video(tmp_path / "clip.mp4")


def test_an_output_that_is_no_regular_file_is_never_replaced(tmp_path):
    import os
    import stat

    from drcn_cli.io.atomic import NotRegularFileError

    source = make_clip(tmp_path / "clip.mp4", audio=False)
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "link.mkv").symlink_to("/dev/null")
    calls = []

    def upscale(rgb):
        calls.append(1)
        return resize_to((32, 48))(rgb)

    for target, what in ((tmp_path / "pipe.mp4", "a FIFO"), (tmp_path / "link.mkv", "a symbolic link")):
        with pytest.raises(NotRegularFileError, match=f"is {what}"):
            video.upscale_video(source, target, upscale, (32, 48), overwrite=True)
    assert calls == []  # refused before any frame is upscaled
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe.mp4").st_mode) and os.readlink(tmp_path / "link.mkv") == "/dev/null"
    assert hidden(tmp_path) == []
    umask = os.umask(0o027)
    try:
        video.upscale_video(source, tmp_path / "big.mp4", resize_to((32, 48)), (32, 48))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "big.mp4").stat().st_mode) == 0o640 and hidden(tmp_path) == []
