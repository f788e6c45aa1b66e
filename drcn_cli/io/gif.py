"""The GIF encoder: 8-bit frames (grey, grey+alpha, RGB, RGBA) to a GIF of one image or an animation, with drcn's
mark (a GIF comment).

GIF holds 256 colours and 1-bit transparency. All frames share one palette (median cut over all of them, no
dithering, so that colours neither crawl nor flicker from frame to frame); a pixel whose alpha is under half is
transparent, every other pixel opaque. Grey without alpha is written as a grey GIF, exactly. The frames given are
whole pictures (an animation's frames composited, as :mod:`drcn_cli.io.frames` reads them): when any frame has a
transparent pixel, every frame is written with disposal 2 (the canvas cleared before the next frame), else with
disposal 1 over the previous one, so that each frame shows exactly as given. Pillow's writer stores only the part of
each frame that changed (found by comparing palette indices, which is exact with one palette), and merges a frame
identical to the one before it into that one's duration.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .formats import MARK, ImageFormatError, _channels

__all__ = ["GIF_MAX_SIDE", "encode_gif"]

GIF_MAX_SIDE = 65535  # a GIF's width and height are 16-bit fields
_TRANSPARENT = 255  # the palette index of transparency, in every frame of a GIF that has any
_PALETTE_SAMPLES = 1 << 22  # pixels the palette is made from, at most


def _rgba(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 4) 8-bit RGBA of grey, grey+alpha, RGB or RGBA pixels."""
    channels = _channels(pixels)
    hwc = pixels.reshape(pixels.shape[0], pixels.shape[1], channels)
    colour = hwc[:, :, :1].repeat(3, axis=2) if channels <= 2 else hwc[:, :, :3]
    alpha = hwc[:, :, -1:] if channels in (2, 4) else np.full(hwc.shape[:2] + (1,), 255, np.uint8)
    return np.concatenate([colour, alpha], axis=2)


def _has_holes(pixels: np.ndarray) -> bool:
    return _channels(pixels) in (2, 4) and bool((pixels[:, :, -1] < 128).any())


def _palette(frames: list[np.ndarray], colours: int) -> Image.Image:
    """One palette of ``colours`` colours for all the frames: median cut over their pixels (every n-th pixel when
    there are more than :data:`_PALETTE_SAMPLES`), as a palette image for Pillow's quantize."""
    colour = np.concatenate([_rgba(pixels)[:, :, :3].reshape(-1, 3) for pixels in frames])
    step = max(1, len(colour) // _PALETTE_SAMPLES)
    sample = np.ascontiguousarray(colour[::step][None])
    return Image.fromarray(sample).quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def _palette_frame(pixels: np.ndarray, palette: Image.Image | None, holes: bool) -> Image.Image:
    """One frame as a palette image in ``palette`` (None: grey, written as it is); index 255 where transparent when
    ``holes``."""
    if palette is None:
        return Image.fromarray(np.ascontiguousarray(pixels.reshape(pixels.shape[:2])), "L")
    rgba = _rgba(pixels)
    quantised = Image.fromarray(np.ascontiguousarray(rgba[:, :, :3])).quantize(palette=palette,
                                                                               dither=Image.Dither.NONE)
    if not holes:
        return quantised
    indices = np.array(quantised, dtype=np.uint8)
    indices[rgba[:, :, 3] < 128] = _TRANSPARENT
    frame = Image.fromarray(indices, "P")
    colours = (quantised.getpalette() or [])[: _TRANSPARENT * 3]
    frame.putpalette(colours + [0] * (768 - len(colours)))  # 256 entries: index 255 exists in every frame's table
    return frame


def encode_gif(frames: list[np.ndarray], *, durations: list[int] | None = None, loop: int | None = None) -> bytes:
    """A GIF of 8-bit ``frames`` ((H, W[, C]), C in 1..4, all of one size): one frame is a still, several an
    animation, frame i shown for ``durations[i]`` ms (GIF keeps hundredths of a second). ``loop``: Pillow's (and
    the NETSCAPE extension's) loop count, 0 = forever; None writes no loop extension (played once).
    ImageFormatError for an empty list or a side over 65535 pixels.
    """
    if not frames:
        raise ImageFormatError("a GIF needs at least one frame")
    for pixels in frames:
        height, width = pixels.shape[:2]
        if max(height, width) > GIF_MAX_SIDE:
            raise ImageFormatError(f"GIF is limited to {GIF_MAX_SIDE} pixels a side, the image is {width}x{height}")
    holes = any(_has_holes(pixels) for pixels in frames)
    grey = not holes and all(_channels(pixels) == 1 for pixels in frames)
    palette = None if grey else _palette(frames, 255 if holes else 256)
    images = [_palette_frame(pixels, palette, holes) for pixels in frames]
    options: dict = {"comment": MARK, "optimize": False}
    if holes:
        options["transparency"] = _TRANSPARENT
    if len(images) > 1:
        options.update(save_all=True, append_images=images[1:], disposal=2 if holes else 1)
        if durations is not None:
            options["duration"] = [max(0, int(round(d))) for d in durations]
        if loop is not None:
            options["loop"] = int(loop)
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", **options)
    return buffer.getvalue()
