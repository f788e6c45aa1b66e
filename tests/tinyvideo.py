"""Tiny video clips for the tests, made with PyAV: a moving gradient, optionally with a sine tone."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def frame_pixels(index: int, width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 9 + index * 16) % 256, (yy * 11) % 256, ((xx + yy) * 5 + index * 30) % 256], axis=-1)
    return rgb.astype(np.uint8)


def make_clip(path: Path, width: int = 24, height: int = 16, frames: int = 6, rate: int = 25,
              audio: bool = True) -> Path:
    """An H.264 clip (MP4, MKV or MOV by the extension) with an AAC mono track when ``audio``."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=rate, options={"crf": "10"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=16000) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for index in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(frame_pixels(index, width, height), "rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            samples = int(16000 * Fraction(frames, rate))
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)).astype(np.float32)[None]
            for start in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), "fltp", "mono")
                chunk.sample_rate = 16000
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def describe(path: Path) -> dict:
    """What a reader sees: stream kinds and codecs, frame size and rate, and the decoded frames (RGB)."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        kinds = [(s.type, s.codec_context.name) for s in container.streams]
        rate = video.average_rate
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return {"streams": kinds, "size": (frames[0].shape[1], frames[0].shape[0]), "rate": rate, "frames": frames}
