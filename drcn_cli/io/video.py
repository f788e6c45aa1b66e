"""Video files: decode frames, hand each to a callback (the upscaler), encode, keep the audio. Uses PyAV.

PyAV rather than OpenCV (already a dependency for images): OpenCV's VideoWriter in the pip wheels drops the
audio and only writes MPEG-4 Part 2 (`mp4v`), while PyAV copies the audio packets untouched, encodes H.264
with libx264, and keeps each frame's timestamp (variable frame rates included). H.264 costs more per frame to
encode than mp4v but makes a much smaller file, and both are negligible beside the network (README.md, "Video").

What goes where:

- video: the first video stream, decoded to 8-bit RGB, upscaled by ``upscale_frame``, encoded with the
  codec of the output's container (``VIDEO_CODECS``) in 4:2:0, which needs even sides: an odd output width or
  height loses its last column or row. Timestamps and frame rate are the source's.
- audio: every audio stream the output container can hold is copied packet by packet (not re-encoded);
  the others are dropped and named in :attr:`VideoResult.dropped`. Subtitles and data streams are dropped.

The output is written by :func:`drcn_cli.io.atomic.write_atomic`: into a hidden temporary file in its folder, published
under its name when complete, so it is never seen half-written; only a regular file is ever replaced; on any
error, Ctrl-C included, the temporary file is removed.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DrcnError
from .atomic import OutputExistsError, write_atomic

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoError",
    "VideoInfo",
    "VideoResult",
    "is_video_path",
    "probe_video",
    "upscale_video",
]

# Output container (by the output's extension) -> (FFmpeg muxer, video encoder, encoder options).
VIDEO_CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    ".mp4": ("mp4", "libx264", {"crf": "18", "preset": "medium"}),
    ".m4v": ("mp4", "libx264", {"crf": "18", "preset": "medium"}),
    ".mov": ("mov", "libx264", {"crf": "18", "preset": "medium"}),
    ".mkv": ("matroska", "libx264", {"crf": "18", "preset": "medium"}),
    ".webm": ("webm", "libvpx-vp9", {"crf": "24", "b": "0"}),
    ".avi": ("avi", "mpeg4", {"qscale": "2"}),
}
VIDEO_EXTENSIONS = frozenset(VIDEO_CODECS)


class VideoError(DrcnError, ValueError):
    """A video that cannot be read (not a video, corrupt, truncated, no video stream) or written; one line that
    does not repeat the source's name (the caller reports it with the file)."""


@dataclass(frozen=True)
class VideoInfo:
    """What the header says: frame size, frame count (None when the container does not tell), frame rate."""

    width: int
    height: int
    frames: int | None
    rate: Fraction | None
    audio_streams: int


@dataclass
class VideoResult:
    """What was written: frames encoded, the output's frame size, audio streams copied and those dropped."""

    frames: int
    width: int
    height: int
    audio_copied: int
    dropped: list[str] = field(default_factory=list)
    bytes: int = 0
    last_seconds: float | None = None  # the last frame's timestamp in the source, where it has one


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether the file's extension is one of the video containers drcn reads and writes."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _require_av() -> Any:
    try:
        import av
    except ImportError:
        raise VideoError("video needs PyAV: pip install 'drcn[video]' (or pip install av)") from None
    return av


def _one_line(exc: BaseException) -> str:
    """FFmpeg's reason without the errno and file name PyAV adds (the caller names the file)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _open_input(av: Any, path: Path) -> Any:
    if not path.exists():
        raise VideoError("no such file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise VideoError(f"not a video, or truncated or corrupt ({_one_line(exc)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError("holds no video stream")
    return container


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """The frame size, frame count and rate of the first video stream. Raises VideoError."""
    av = _require_av()
    with _open_input(av, Path(path)) as container:
        stream = container.streams.video[0]
        frames = stream.frames or None
        rate = stream.average_rate or stream.guessed_rate
        if frames is None and stream.duration is not None and rate:
            frames = max(1, round(float(stream.duration * stream.time_base * rate)))
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, frames,
                         Fraction(rate) if rate else None, len(container.streams.audio))


_END = object()


def _reader(av: Any, container: Any, items: queue.Queue, stop: threading.Event) -> None:
    """Demux and decode in a thread: ("frame", rgb, pts, time_base) and ("audio", packet) items in file order,
    then _END, or ("error", exception). The main thread does not touch ``container`` meanwhile."""

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        for packet in container.demux([video, *container.streams.audio]):
            if packet.stream.type == "audio":
                if packet.dts is not None and not put(("audio", packet)):
                    return
                continue
            for frame in packet.decode():
                if not put(("frame", frame.to_ndarray(format="rgb24"), frame.pts, frame.time_base)):
                    return
        put(_END)
    except av.error.FFmpegError as exc:
        put(("error", VideoError(f"truncated or corrupt video ({_one_line(exc)})")))
    except BaseException as exc:  # handed to the main thread, which raises it
        put(("error", exc))


def _missing(container: Any, rate: Fraction, result: VideoResult) -> str | None:
    """What is missing from the decoded frames against what the container declares (its frame count, else its
    duration against the last frame's timestamp), or None when nothing is. Durations round and may hold the audio's
    end too, hence the margins."""
    stream = container.streams.video[0]
    if stream.frames:
        if result.frames < 0.95 * stream.frames - 1:
            return f"{result.frames} of its {stream.frames} frames could be decoded"
        return None
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / 1_000_000
    if duration is None or result.last_seconds is None:
        return None
    if result.last_seconds < 0.9 * duration - 2 / float(rate):
        return f"frames decoded up to {result.last_seconds:.2f} s of its {duration:.2f} s"
    return None


def upscale_video(
    source: str | os.PathLike,
    output: str | os.PathLike,
    upscale_frame: Callable[[np.ndarray], np.ndarray],
    size: tuple[int, int],
    *,
    overwrite: bool = False,
    read_ahead: int = 4,
    on_frame: Callable[[int], None] | None = None,
) -> VideoResult:
    """Upscale every frame of ``source`` with ``upscale_frame`` and write the video ``output``.

    ``upscale_frame`` takes an (H, W, 3) uint8 RGB frame and returns the (h, w, 3) uint8 frame of ``size`` =
    (h, w). ``read_ahead`` frames are decoded in a background thread while the current one is upscaled.
    ``on_frame(done)`` is called after each encoded frame. The container and codec follow ``output``'s
    extension (:data:`VIDEO_CODECS`).

    Raises:
        VideoError: PyAV missing; an unknown output extension; ``output`` exists and ``overwrite`` is False;
            the source is not a video, has no video stream, or is corrupt or truncated; the encoder failed.
        drcn_cli.io.atomic.WriteError (an OSError): the output folder cannot be created or written, or a folder, FIFO,
            device or symbolic link is in the output's place (NotRegularFileError; it is left as it is).
    """
    av = _require_av()
    source, output = Path(source), Path(output)
    extension = output.suffix.lower()
    if extension not in VIDEO_CODECS:
        raise VideoError(f"cannot tell the video format from {output.name!r}: use {', '.join(sorted(VIDEO_CODECS))}")
    if output.exists() and not overwrite:
        raise VideoError(f"output {output} exists (use --overwrite or --skip-existing)")
    height, width = size[0] - size[0] % 2, size[1] - size[1] % 2  # 4:2:0 needs even sides
    if height < 2 or width < 2:
        raise VideoError(f"output {size[1]}x{size[0]} is too small for a video")

    with _open_input(av, source) as source_container:  # fails at once on a bad source, before any file is made
        return _transcode(av, source_container, source, output, upscale_frame, (height, width), overwrite,
                          read_ahead, on_frame)


def _transcode(
    av: Any,
    source_container: Any,
    source: Path,
    output: Path,
    upscale_frame: Callable[[np.ndarray], np.ndarray],
    size: tuple[int, int],
    overwrite: bool,
    read_ahead: int,
    on_frame: Callable[[int], None] | None,
) -> VideoResult:
    """Decode ``source_container`` in a reader thread while this one upscales and encodes into the temporary
    file of :func:`drcn_cli.io.atomic.write_atomic`, which publishes it once complete; it never outlives the call."""
    height, width = size
    extension = output.suffix.lower()
    muxer = VIDEO_CODECS[extension][0]
    video_in = source_container.streams.video[0]
    rate = video_in.average_rate or video_in.guessed_rate or Fraction(25)
    # The source's clock keeps every frame's exact timestamp; AVI has none but the frame rate: count frames.
    time_base = video_in.time_base if muxer != "avi" else None
    audio_in = list(source_container.streams.audio)

    items: queue.Queue = queue.Queue(maxsize=max(1, read_ahead) + 64)  # + room for the audio in between
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(av, source_container, items, stop), daemon=True,
                              name="drcn-video-read")
    result = VideoResult(0, width, height, 0)

    def encode(tmp: Path) -> None:
        with av.open(str(tmp), "w", format=muxer) as container:
            sink = _open_sink(av, container, extension, size, rate, time_base)
            result.dropped.extend(_add_audio(sink, audio_in, extension))
            result.audio_copied = len(sink.audio)
            reader.start()
            _encode_all(av, sink, items, upscale_frame, result, on_frame)
        if result.frames == 0:
            raise VideoError("no frame could be decoded (truncated or corrupt video)")
        if (missing := _missing(source_container, rate, result)) is not None:
            raise VideoError(f"truncated or damaged video: {missing}; nothing was written")

    try:
        result.bytes = write_atomic(output, encode, overwrite=overwrite)
    except OutputExistsError:
        raise VideoError(f"output {output} appeared meanwhile (use --overwrite or --skip-existing)") from None
    except av.error.FFmpegError as exc:
        raise VideoError(f"cannot write {output}: {_one_line(exc)}") from None
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(timeout=5)
    return result


@dataclass
class _Sink:
    """The output being written: its container, its video stream and clock, the audio streams copied into it."""

    container: Any
    video: Any
    size: tuple[int, int]  # (height, width), both even
    rate: Fraction
    time_base: Fraction | None  # the source's clock; None: one tick per frame
    audio: dict[int, Any] = field(default_factory=dict)  # source stream index -> output stream


def _open_sink(av: Any, container: Any, extension: str, size: tuple[int, int], rate: Fraction,
               time_base: Fraction | None) -> _Sink:
    """Add the video stream (``extension``'s encoder, 4:2:0, ``size``) to the open output ``container``."""
    _, encoder, options = VIDEO_CODECS[extension]
    try:
        video_out = container.add_stream(encoder, rate=rate, options=dict(options))
    except av.error.FFmpegError as exc:
        raise VideoError(f"encoder {encoder} is not available in this PyAV ({_one_line(exc)})") from None
    height, width = size
    video_out.width, video_out.height, video_out.pix_fmt = width, height, "yuv420p"
    if time_base is not None:  # the source's clock, so that every frame keeps its exact timestamp
        video_out.time_base = time_base
        video_out.codec_context.time_base = time_base
    return _Sink(container, video_out, size, rate, time_base)


def _add_audio(sink: _Sink, audio_in: list[Any], extension: str) -> list[str]:
    """Add a copy of each audio stream the output's container can hold to ``sink.audio``; returns what was
    dropped, one line each."""
    dropped = []
    supported = sink.container.supported_codecs
    for stream in audio_in:
        name = stream.codec_context.name
        if name in supported:
            sink.audio[stream.index] = sink.container.add_stream_from_template(stream)
        else:
            dropped.append(f"audio stream {stream.index} ({name}: not storable in {extension})")
    return dropped


def _encode_all(
    av: Any,
    sink: _Sink,
    items: queue.Queue,
    upscale_frame: Callable[[np.ndarray], np.ndarray],
    result: VideoResult,
    on_frame: Callable[[int], None] | None,
) -> None:
    """Take the reader's items up to _END: mux the audio, upscale and encode the frames (counted in
    ``result.frames``), then flush the encoder. Raises the reader's error."""
    while True:
        item = items.get()
        if item is _END:
            break
        kind = item[0]
        if kind == "error":
            raise item[1]
        if kind == "audio":
            _mux_audio(sink, item[1])
            continue
        _, rgb, pts, frame_time_base = item
        _encode_frame(av, sink, upscale_frame(rgb), pts, frame_time_base, result.frames)
        result.frames += 1
        if pts is not None and frame_time_base is not None:
            result.last_seconds = max(result.last_seconds or 0.0, float(pts * frame_time_base))
        if on_frame is not None:
            on_frame(result.frames)
    for packet in sink.video.encode():
        sink.container.mux(packet)


def _mux_audio(sink: _Sink, packet: Any) -> None:
    """Copy an audio packet into its output stream; a packet of a dropped stream is left out."""
    if packet.stream.index in sink.audio:
        packet.stream = sink.audio[packet.stream.index]
        sink.container.mux(packet)


def _encode_frame(av: Any, sink: _Sink, upscaled: np.ndarray, pts: int | None, frame_time_base: Fraction | None,
                  index: int) -> None:
    """Encode frame number ``index`` (from 0), cut to the even output size, with the source's timestamp when
    the output keeps the source's clock and the frame has one, else one tick per frame."""
    height, width = sink.size
    big = np.ascontiguousarray(upscaled[:height, :width])
    if big.shape != (height, width, 3) or big.dtype != np.uint8:
        raise VideoError(f"a frame came back as {big.shape} {big.dtype}, not ({height}, {width}, 3) uint8")
    frame = av.VideoFrame.from_ndarray(big, format="rgb24")
    if sink.time_base is None or pts is None or frame_time_base is None:  # one tick per frame
        frame.pts, frame.time_base = index, 1 / Fraction(sink.rate)
    else:
        frame.pts, frame.time_base = pts, frame_time_base
    for packet in sink.video.encode(frame):
        sink.container.mux(packet)
