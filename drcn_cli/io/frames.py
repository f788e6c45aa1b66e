"""Animations and multi-page TIFFs: every frame read, and written back, where :func:`~drcn_cli.io.images.read_image`
reads the first alone.

:func:`read_frames` gives a still (one frame, or a format whose frames drcn does not keep) as ``read_image`` does, and
an animated GIF, an animated WebP, an APNG or a multi-page TIFF as :class:`LoadedFrames`:

* An animation is read frame by frame *composited*: each frame as Pillow's ImageSequence gives it, converted to RGBA,
  with the disposal and blending of the frames before it applied, so that it is the whole picture a viewer shows at
  that moment. The frames are upscaled as they are and written back as whole frames (:func:`encode_frames`): the
  simplest thing that is right whatever disposal and blending the input used, at the cost of some file size (the
  encoders store only what changed from one frame to the next, which wins most of it back). Kept: the frames, each
  one's duration, the loop count, transparency (alpha in APNG and WebP; in GIF, which holds 1 bit, a pixel under
  half alpha is transparent), the ICC profile, EXIF and DPI where the format holds them. Frames are 8 bits (what
  Pillow composites): RGBA, or RGB when no frame has a transparent pixel. An APNG's default image that is not part
  of its animation is left out. Encoders merge a frame identical to the one before it into that one's duration.
* A multi-page TIFF is read page by page, each as ``read_image`` reads a still (16-bit, float, alpha, ICC profile,
  EXIF, orientation: the page's own), and written as a multi-page TIFF: each page encoded as
  :func:`~drcn_cli.io.write.encode_image` encodes a TIFF, the pages then chained (Pillow's AppendingTiffWriter), so
  pages may differ in size and kind.

The size limits are checked from the headers before anything is decoded: an animation's frames all have its canvas
size, checked once; each page of a TIFF is checked. An animation can be written as GIF, PNG (APNG) or WebP, pages as
TIFF; any other output is refused before decoding (:class:`FramesFormatError`). The frames are held in memory
together, since the encoders take them all at once.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, TiffImagePlugin
from PIL.PngImagePlugin import PngInfo

from .atomic import write_atomic
from .decoders import _quiet_decoders, apply_orientation
from .formats import _XMP_MARK, MARK, ImageFormatError, ImageReadError, format_from_path, normalize_format
from .gif import encode_gif
from .images import (
    LoadedImage,
    _check_pixels,
    _decode,
    _dpi,
    _exif_upright,
    _load_strictly,
    _open_image,
    _orientation,
    _source_bytes,
    _upright_size,
    read_image,
)
from .png import _PNG_SIGNATURE, _check_png_complete, _without_text
from .write import DEFAULT_QUALITY, _exif_for, _icc_for, _to_uint8, encode_image

__all__ = [
    "ANIMATION_OUTPUTS",
    "PAGE_OUTPUTS",
    "FramesFormatError",
    "LoadedFrames",
    "check_frames_format",
    "encode_frames",
    "read_frames",
    "write_frames",
]

ANIMATION_OUTPUTS = ("GIF", "PNG", "WEBP")  # the output formats that hold an animation
PAGE_OUTPUTS = ("TIFF",)  # and pages
_ANIMATED = frozenset({"GIF", "PNG", "WEBP"})  # Pillow's names of the formats whose frames are an animation
_PAGED = frozenset({"TIFF"})
_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "TIFF": "TIFF", "GIF": "GIF"}
_WEBP_MAX_SIDE = 16383
# What Pillow raises on a damaged frame or page, besides its usual OSError: seeking into a cut tail raises
# IndexError (GIF) or TypeError (TIFF), a damaged directory KeyError.
_FRAME_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error, zlib.error)


class FramesFormatError(ImageFormatError):
    """An output format that cannot hold the frames of an animation or the pages of a TIFF (JPEG; TIFF for an
    animation, whose timing it cannot keep; GIF, PNG or WebP for pages)."""


@dataclass
class LoadedFrames:
    """Every frame of an animation, or every page of a multi-page TIFF, decoded (see the module's notes).

    images: each frame (8-bit RGB or RGBA, upright, all of one size) or page (as read_image reads a still), with the
        file's (a page's own) ICC profile, EXIF and DPI.
    kind: "animation" or "pages".
    durations: each frame's duration in milliseconds (an animation; empty for pages).
    loop: an animation's loop count as Pillow gives it (0: forever); None when the file has none (GIF: played once).
    source_format: the decoder's name for the file type ("GIF", "PNG", "WEBP", "TIFF").
    """

    images: list[LoadedImage]
    kind: str
    durations: list[int] = field(default_factory=list)
    loop: int | None = None
    source_format: str | None = None

    @property
    def width(self) -> int:
        """The first frame's width (pages may differ)."""
        return self.images[0].width

    @property
    def height(self) -> int:
        return self.images[0].height

    @property
    def frames(self) -> int:
        """How many frames or pages there are (all of them are decoded)."""
        return len(self.images)


def check_frames_format(kind: str, count: int, fmt: str) -> None:
    """FramesFormatError when the output format ``fmt`` cannot hold ``count`` frames of ``kind`` ("animation" or
    "pages"); the message says which formats can, and that --first-frame makes a still of the first."""
    fmt = normalize_format(fmt)
    if fmt in (ANIMATION_OUTPUTS if kind == "animation" else PAGE_OUTPUTS):
        return
    if kind == "animation":
        raise FramesFormatError(f"{_NAMES[fmt]} cannot hold an animation ({count} frames): write GIF, PNG (APNG) or "
                                "WebP, or give --first-frame to upscale the first frame alone, as a still")
    raise FramesFormatError(f"{_NAMES[fmt]} cannot hold the {count} pages of a TIFF: write TIFF, or give "
                            "--first-frame to upscale the first page alone")


def _sequence(data: bytes) -> tuple[str | None, int]:
    """("animation" or "pages", frames) for a file whose frames drcn keeps, else (None, 1): a still, another
    format, or a file Pillow cannot open or count (read_image then reads it, or says why it cannot)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt = image.format
            if fmt not in _ANIMATED and fmt not in _PAGED:
                return None, 1
            count = int(getattr(image, "n_frames", 1)) - (1 if image.info.get("default_image") else 0)
    except Exception:  # any failure: the file is read as read_image reads it, which reports its damage in one line
        return None, 1
    if count < 2:
        return None, 1
    return ("animation" if fmt in _ANIMATED else "pages"), count


def read_frames(
    source: str | os.PathLike | bytes,
    max_pixels: int | None = None,
    check_size: Callable[[int, int], object] | None = None,
    output_format: str | None = None,
) -> LoadedImage | LoadedFrames:
    """Decode an image file (a path, or its bytes) with all its frames: a LoadedImage for a still (as
    :func:`~drcn_cli.io.images.read_image`), LoadedFrames for an animated GIF/WebP, an APNG or a multi-page TIFF.

    ``max_pixels`` and ``check_size(width, height)`` apply to every frame or page, from the headers, before anything
    is decoded, as in read_image (an animation's frames share its canvas size). With ``output_format``, a format
    that cannot hold the frames raises FramesFormatError before decoding too. Raises ImageReadError with a one-line
    reason for a file that cannot be read, after the frame or page at fault (``frame 3 of 12: truncated ...``).
    """
    _quiet_decoders()
    data = _source_bytes(source, max_pixels)
    if data[:8] == _PNG_SIGNATURE:
        data = _without_text(data)
    with warnings.catch_warnings():
        # As in read_image: the sizes are checked against max_pixels here, and damaged metadata is dropped quietly.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        kind, count = _sequence(data)
        if kind is None:
            return read_image(data, max_pixels, check_size)
        if output_format is not None:
            check_frames_format(kind, count, output_format)
        image = _open_image(data)
        if kind == "animation":
            return _read_animation(image, data, count, max_pixels, check_size)
        return _read_pages(image, data, count, max_pixels, check_size)


def _read_animation(image, data: bytes, count: int, max_pixels: int | None,
                    check_size: Callable[[int, int], object] | None) -> LoadedFrames:
    """The composited frames of an animation (see the module's notes)."""
    width, height = image.size
    _check_pixels(width, height, max_pixels)
    if image.format == "PNG":
        _check_png_complete(data)
    if check_size is not None:
        check_size(*_upright_size(image, width, height))
    orientation, icc, dpi = _orientation(image), image.info.get("icc_profile") or None, _dpi(image)
    exif, loop = _exif_upright(image), image.info.get("loop")
    first = 1 if image.info.get("default_image") else 0  # an APNG's default image, not part of the animation
    frames: list[np.ndarray] = []
    durations: list[int] = []
    for index in range(first, first + count):
        try:
            image.seek(index)
            _load_strictly(image)
            rgba = np.asarray(image.convert("RGBA"))
        except _FRAME_ERRORS as exc:
            raise ImageReadError(f"frame {index - first + 1} of {count}: truncated or corrupt image ({exc})") from None
        durations.append(max(0, round(float(image.info.get("duration") or 0))))
        frames.append(apply_orientation(rgba, orientation))
    if all(frame[:, :, 3].min() == 255 for frame in frames):
        frames, mode = [np.ascontiguousarray(frame[:, :, :3]) for frame in frames], "RGB"
    else:
        mode = "RGBA"
    images = [LoadedImage(frame, mode, icc, exif, image.format, dpi) for frame in frames]
    return LoadedFrames(images, "animation", durations, None if loop is None else int(loop), image.format)


def _read_pages(image, data: bytes, count: int, max_pixels: int | None,
                check_size: Callable[[int, int], object] | None) -> LoadedFrames:
    """Every page of a multi-page TIFF, each as read_image reads a still; every page's size checked first."""
    for index in range(count):
        where = f"page {index + 1} of {count}"
        try:
            image.seek(index)
            width, height = image.size
        except _FRAME_ERRORS as exc:
            raise ImageReadError(f"{where}: truncated or corrupt image ({exc})") from None
        try:
            _check_pixels(width, height, max_pixels)
        except ImageReadError as exc:
            raise ImageReadError(f"{where}: {exc}") from None
        if check_size is not None:
            check_size(*_upright_size(image, width, height))
    pages = []
    for index in range(count):
        try:
            image.seek(index)
            icc, dpi = image.info.get("icc_profile") or None, _dpi(image)
            pixels, mode, icc, exif = _decode(image, data, icc)
        except ImageReadError as exc:
            raise ImageReadError(f"page {index + 1} of {count}: {exc}") from None
        except _FRAME_ERRORS as exc:
            raise ImageReadError(f"page {index + 1} of {count}: truncated or corrupt image ({exc})") from None
        pages.append(LoadedImage(np.ascontiguousarray(pixels), mode, icc, exif, image.format, dpi))
    return LoadedFrames(pages, "pages", source_format=image.format)


# --------------------------------------------------------------------------------------------- writing


def encode_frames(frames: list[np.ndarray], loaded: LoadedFrames, fmt: str, *, quality: int | None = None) -> bytes:
    """Encode ``frames`` (``loaded``'s frames or pages, upscaled: one array each, in order) as ``fmt``, with
    ``loaded``'s durations, loop count and metadata (see the module's notes). ``quality`` as in encode_image (WebP;
    100 = lossless). FramesFormatError when ``fmt`` cannot hold them, ImageFormatError for pixels it cannot hold.
    Every output carries drcn's mark.
    """
    fmt = normalize_format(fmt)
    check_frames_format(loaded.kind, len(frames), fmt)
    if len(frames) != len(loaded.images):
        raise ValueError(f"{len(frames)} frames given for the {len(loaded.images)} read")
    if loaded.kind == "pages":
        return _encode_pages(frames, loaded.images, quality)
    frames = [_to_uint8(frame) for frame in frames]  # an animation's frames are 8-bit already: a no-op
    if fmt == "GIF":
        return encode_gif(frames, durations=loaded.durations, loop=loaded.loop)
    first = loaded.images[0]
    height, width = frames[0].shape[:2]
    channels = 1 if frames[0].ndim == 2 else int(frames[0].shape[2])
    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]
    options: dict = {
        "save_all": True,
        "append_images": images[1:],
        "duration": loaded.durations,
        "loop": 1 if loaded.loop is None else loaded.loop,  # no loop count (a GIF's): played once
    }
    if (icc := _icc_for(first.icc_profile, channels)) is not None:
        options["icc_profile"] = icc
    if (exif := _exif_for(first.exif, width, height)) is not None:
        options["exif"] = exif
    if first.dpi:
        options["dpi"] = tuple(first.dpi)
    if fmt == "PNG":
        info = PngInfo()
        info.add_text("Software", MARK)
        # Whole frames, each replacing the canvas: what was composited is what is shown.
        options.update(pnginfo=info, disposal=0, blend=0)
    else:
        if max(height, width) > _WEBP_MAX_SIDE:
            raise ImageFormatError(f"WebP is limited to {_WEBP_MAX_SIDE} pixels a side, the image is {width}x{height}")
        quality = DEFAULT_QUALITY if quality is None else int(quality)
        options.update(quality=quality, lossless=quality == 100, method=4, xmp=_XMP_MARK)
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _encode_pages(pages: list[np.ndarray], loaded: list[LoadedImage], quality: int | None) -> bytes:
    """A multi-page TIFF: each page encoded as encode_image encodes a TIFF, with that page's metadata, chained."""
    buffer = io.BytesIO()
    try:
        chain = TiffImagePlugin.AppendingTiffWriter(buffer)
        for pixels, page in zip(pages, loaded, strict=True):
            chain.write(encode_image(pixels, "TIFF", quality=quality, icc_profile=page.icc_profile, exif=page.exif,
                                     dpi=page.dpi))  # fmt: skip
            chain.newFrame()
    except (RuntimeError, struct.error) as exc:  # pages of different byte orders, or past 4 GiB together
        raise ImageFormatError(f"the pages cannot be chained into one TIFF ({exc})") from None
    return buffer.getvalue()


def write_frames(
    path: str | os.PathLike,
    frames: list[np.ndarray],
    loaded: LoadedFrames,
    fmt: str | None = None,
    *,
    quality: int | None = None,
    overwrite: bool = True,
) -> int:
    """:func:`encode_frames`, then written atomically (:func:`~drcn_cli.io.atomic.write_atomic`, with the errors
    and ``overwrite`` rule of :func:`~drcn_cli.io.write.write_image`); returns the bytes written. ``fmt`` defaults
    to the one the extension selects."""
    if fmt is None:
        fmt = format_from_path(path)
        if fmt is None:
            raise ImageFormatError(f"cannot tell the format from {Path(path).name!r} (use .gif, .png, .webp, .tif)")
    return write_atomic(path, encode_frames(frames, loaded, fmt, quality=quality), overwrite=overwrite)
