"""Encode and write image files, keeping what the image carries: bit depth, alpha, ICC profile, EXIF.

Writing (:func:`write_image`) encodes in memory, then writes through :func:`drcn_cli.io.atomic.write_atomic`: a
hidden temporary file in the destination folder, fsync'ed, then published under the destination's name, so that
a reader sees the old file or the complete new one, never a part; only a regular file is ever replaced. On any
failure, Ctrl-C included, the temporary file is removed.

Bit-depth rules for output:

* PNG and TIFF keep 16 bits (and 8 bits stay 8). 16-bit colour and grey+alpha PNG is written by a small encoder
  (:mod:`drcn_cli.io.png`: filter "Up" + zlib) so that the ICC profile goes in too, which OpenCV's writer cannot
  do; every TIFF by :mod:`drcn_cli.io.tiff` (tifffile: deflate with the horizontal predictor, BigTIFF past 4 GiB).
  Float grey (Pillow mode F) is kept as float in TIFF and becomes 16-bit in PNG.
* JPEG and WebP hold 8 bits: 16-bit and float images are rounded to 8 bits (v * 255 / 65535).
* Grey samples beyond those scales, 32-bit integers (Pillow mode I, 126000 in a 32-bit TIFF) or floats outside
  [0, 1], are kept as they are in TIFF, and refused with :class:`~drcn_cli.io.formats.ImageFormatError` by the
  other formats: never clipped without a word.
* JPEG has no alpha channel: an alpha that is fully opaque is dropped (nothing is lost); any other alpha
  is refused with :class:`~drcn_cli.io.formats.ImageFormatError` rather than flattened onto a guessed background.
* WebP has no grey mode: grey becomes RGB (grey+alpha becomes RGBA). ``quality=100`` means lossless WebP.
* GIF holds 8 bits, 256 colours and 1-bit transparency (:mod:`drcn_cli.io.gif`: a median-cut palette; alpha under
  half is transparent); it has no ICC profile or EXIF.
* An ICC profile is written only where its colour space matches the pixels (an RGB profile on RGB(A),
  a grey one on grey).

Every output carries drcn's mark (:data:`~drcn_cli.io.formats.MARK`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .atomic import write_atomic
from .formats import (
    _FORMAT_ALIASES,
    _METADATA_ERRORS,
    _XMP_MARK,
    MARK,
    ImageFormatError,
    _channels,
    _icc_space,
    format_from_path,
    normalize_format,
)
from .gif import encode_gif
from .png import _encode_png16
from .tiff import encode_tiff

__all__ = ["DEFAULT_QUALITY", "check_output_format", "encode_image", "write_image"]

DEFAULT_QUALITY = 95
_EXIF_IFD = 0x8769
_PIXEL_X_DIMENSION = 0xA002
_PIXEL_Y_DIMENSION = 0xA003
_WEBP_MAX_SIDE = 16383
_JPEG_MAX_SIDE = 65535
# What a TIFF output keeps of the EXIF: descriptive tags of the main directory. The EXIF sub-directories (exposure
# ...) are not written, and the resolution is written from the DPI.
_TIFF_EXIF_TAGS = frozenset({270, 271, 272, 274, 305, 306, 315, 33432})


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    return ((_to_uint16(pixels).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _to_uint16(pixels: np.ndarray) -> np.ndarray:
    """16-bit samples: 8 bits widened, other integers as they are (:func:`_check_range` has made sure that they
    fit), floats from [0, 1]."""
    if pixels.dtype == np.uint16:
        return pixels
    if pixels.dtype == np.uint8:
        return pixels.astype(np.uint16) * 257
    if np.issubdtype(pixels.dtype, np.integer):
        return np.clip(pixels, 0, 65535).astype(np.uint16)
    return np.floor(np.clip(pixels, 0.0, 1.0) * 65535 + 0.5).astype(np.uint16)


_FORMAT_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "TIFF": "TIFF", "GIF": "GIF"}


def _keeps_as_is(pixels: np.ndarray, fmt: str) -> bool:
    """Grey samples that TIFF stores as they are: 32-bit floats, and integers within 32 bits."""
    if fmt != "TIFF" or _channels(pixels) != 1:
        return False
    if np.issubdtype(pixels.dtype, np.floating):
        return True
    info = np.iinfo(np.int32)
    return bool(pixels.size == 0 or (pixels.min() >= info.min and pixels.max() <= info.max))


def _check_range(pixels: np.ndarray, fmt: str) -> None:
    """ImageFormatError for samples that ``fmt`` would have to clip: integers beyond 0..65535 (a 32-bit TIFF's
    126000) and floats beyond [0, 1], unless TIFF keeps them as they are (grey). drcn never clips silently."""
    if pixels.dtype in (np.uint8, np.uint16) or pixels.size == 0 or _keeps_as_is(pixels, fmt):
        return
    low, high = pixels.min(), pixels.max()
    if np.issubdtype(pixels.dtype, np.integer):
        if low >= 0 and high <= 65535:
            return
        scaled = "" if fmt in ("PNG", "TIFF") else ", as 8 bits"
        span, holds = f"from {int(low)} to {int(high)}", f"0 to 65535{scaled}"
    else:
        if np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 1.0:
            return
        span, holds = f"from {float(low):g} to {float(high):g}", "0 to 1"
    name = _FORMAT_NAMES[fmt]
    way_out = ("write TIFF (--format tiff), which keeps them as they are" if _channels(pixels) == 1
               else "TIFF keeps such samples for grey images only")  # fmt: skip
    raise ImageFormatError(
        f"the image's samples go {span}, outside what {name} holds ({holds}): {name} would clip them; {way_out}"
    )


def _icc_for(icc: bytes | None, channels: int) -> bytes | None:
    """The profile if its colour space fits the pixels being written (grey: GRAY, colour: RGB), else None."""
    space = _icc_space(icc)
    if space is None:
        return None
    wanted = b"GRAY" if channels <= 2 else b"RGB "
    return icc if space == wanted else None


def _exif_for(exif: bytes | None, width: int, height: int, tiff: bool = False) -> bytes | None:
    """EXIF with its pixel dimensions set to the new size (when it records them); for TIFF the descriptive
    tags of its main directory only."""
    if not exif:
        return None

    try:
        parsed = Image.Exif()
        parsed.load(exif)
        if tiff:
            for tag in [tag for tag in parsed if tag not in _TIFF_EXIF_TAGS]:
                del parsed[tag]
            return parsed.tobytes() if len(parsed) else None
        sub = parsed.get_ifd(_EXIF_IFD)
        if _PIXEL_X_DIMENSION in sub or _PIXEL_Y_DIMENSION in sub:
            sub[_PIXEL_X_DIMENSION] = width
            sub[_PIXEL_Y_DIMENSION] = height
        return parsed.tobytes()
    except _METADATA_ERRORS:  # unparseable EXIF: write the image without it rather than fail
        return None


def _pil_image(pixels: np.ndarray):
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(pixels))


def _grey_alpha_to_rgba(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([np.repeat(pixels[:, :, :1], 3, axis=2), pixels[:, :, 1:]], axis=2)


def _tiff_pixels(pixels: np.ndarray) -> np.ndarray:
    """The pixels as TIFF gets them: 8 and 16 bits as they are, float and 32-bit integer grey as they are, the rest
    as 16 bits, 16-bit grey+alpha as RGBA (few readers know 16-bit grey+alpha TIFF)."""
    if pixels.dtype == np.uint8 or (pixels.dtype == np.uint16 and _channels(pixels) == 1):
        return pixels
    if _keeps_as_is(pixels, "TIFF"):
        return pixels.astype(np.float32 if np.issubdtype(pixels.dtype, np.floating) else np.int32, copy=False)
    pixels = _to_uint16(pixels)
    return _grey_alpha_to_rgba(pixels) if _channels(pixels) == 2 else pixels


def _pillow_options(
    fmt: str, quality: int, icc: bytes | None, exif: bytes | None, dpi: tuple[float, float] | None
) -> dict:
    """The keyword arguments of Pillow's save for ``fmt`` (PNG, JPEG or WebP; TIFF is :mod:`drcn_cli.io.tiff`'s)."""
    options: dict = {}
    if icc:
        options["icc_profile"] = icc
    if dpi:
        options["dpi"] = tuple(dpi)
    if fmt == "JPEG":
        options.update(quality=quality, subsampling=0 if quality >= 90 else 2, optimize=True)
    elif fmt == "WEBP":
        options.update(quality=quality, lossless=quality == 100, method=4)
    if exif:
        options["exif"] = exif
    if fmt == "PNG":
        options["pnginfo"] = PngInfo()
        options["pnginfo"].add_text("Software", MARK)
    elif fmt == "JPEG":
        options["comment"] = MARK
    elif fmt == "WEBP":
        options["xmp"] = _XMP_MARK
    return options


def _check_side(pixels: np.ndarray, limit: int, fmt: str) -> None:
    height, width = pixels.shape[:2]
    if max(height, width) > limit:
        raise ImageFormatError(f"{fmt} is limited to {limit} pixels a side, the image is {width}x{height}")


def check_output_format(pixels: np.ndarray, fmt: str) -> None:
    """ImageFormatError, before any work, when the upscaled ``pixels`` could not be written as ``fmt``: an input
    with transparency cannot become a JPEG (bicubic keeps an opaque alpha opaque, and a transparent one
    transparent). The encoder applies the same test to what it writes."""
    if _FORMAT_ALIASES.get(fmt.lower(), fmt) != "JPEG" or _channels(pixels) not in (2, 4):
        return
    if _to_uint8(pixels)[:, :, -1].min() < 255:
        raise ImageFormatError("JPEG cannot store transparency: write PNG, WebP or TIFF instead (--format)")


def _jpeg_pixels(pixels: np.ndarray) -> np.ndarray:
    """8-bit pixels as JPEG holds them: an opaque alpha dropped; ImageFormatError for transparency or a long side."""
    pixels = _to_uint8(pixels)
    _check_side(pixels, _JPEG_MAX_SIDE, "JPEG")
    check_output_format(pixels, "JPEG")
    return pixels[:, :, :-1] if _channels(pixels) in (2, 4) else pixels


def _webp_pixels(pixels: np.ndarray) -> np.ndarray:
    """8-bit RGB(A) pixels, grey widened (WebP has no grey mode); ImageFormatError for a long side."""
    pixels = _to_uint8(pixels)
    _check_side(pixels, _WEBP_MAX_SIDE, "WebP")
    channels = _channels(pixels)
    if channels == 1:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    elif channels == 2:
        pixels = _grey_alpha_to_rgba(pixels)
    return pixels


def _pillow_pixels(pixels: np.ndarray, fmt: str) -> np.ndarray:
    """The pixels converted for Pillow's encoder of ``fmt`` (PNG gets only 8-bit images and grey here)."""
    if fmt == "JPEG":
        return _jpeg_pixels(pixels)
    if fmt == "WEBP":
        return _webp_pixels(pixels)
    return pixels if pixels.dtype == np.uint8 else _to_uint16(pixels)


def encode_image(
    pixels: np.ndarray,
    fmt: str,
    *,
    quality: int | None = None,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    dpi: tuple[float, float] | None = None,
) -> bytes:
    """Encode (H, W[, C]) pixels (uint8, uint16 or float32 in [0, 1]; RGB(A) order) as PNG, JPEG, WEBP or TIFF.

    Follows the module's bit-depth and alpha rules. ``quality`` (1..100, default 95) is used by JPEG and WebP
    (100 = lossless WebP) and ignored by the lossless PNG and TIFF. Grey samples beyond those ranges (32-bit
    integers, floats outside [0, 1]) are kept as they are in TIFF and refused elsewhere. Raises ImageFormatError
    for pixels the format cannot hold (never clips them silently). Every output carries :data:`MARK`.
    """
    fmt = normalize_format(fmt)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and not 1 <= pixels.shape[2] <= 4):
        raise ImageFormatError(f"cannot encode an array of shape {pixels.shape}")
    quality = DEFAULT_QUALITY if quality is None else int(quality)
    if not 1 <= quality <= 100:
        raise ImageFormatError(f"quality must be between 1 and 100, got {quality}")
    height, width = pixels.shape[:2]
    channels = _channels(pixels)
    if pixels.ndim == 3 and channels == 1:
        pixels = pixels[:, :, 0]
    _check_range(pixels, fmt)
    if fmt == "GIF":  # 8 bits, one palette, 1-bit transparency: io/gif.py's rules
        return encode_gif([_to_uint8(pixels)])
    exif = _exif_for(exif, width, height, tiff=fmt == "TIFF")
    if fmt == "TIFF":
        pixels = _tiff_pixels(pixels)
        return encode_tiff(pixels, _icc_for(icc_profile, _channels(pixels)), exif, dpi)
    icc = _icc_for(icc_profile, channels if fmt != "WEBP" else max(channels, 3))
    options = _pillow_options(fmt, quality, icc, exif, dpi)
    if fmt == "PNG" and channels >= 2 and pixels.dtype != np.uint8:  # 16-bit colour or grey+alpha: not Pillow's
        return _encode_png16(_to_uint16(pixels), icc, exif, dpi)
    buffer = io.BytesIO()
    _pil_image(_pillow_pixels(pixels, fmt)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_image(
    path: str | os.PathLike,
    pixels: np.ndarray,
    fmt: str | None = None,
    *,
    quality: int | None = None,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    dpi: tuple[float, float] | None = None,
    overwrite: bool = True,
) -> int:
    """Encode and write an image atomically (:func:`drcn_cli.io.atomic.write_atomic`); returns the bytes written.

    ``fmt`` defaults to the one the extension selects. Raises ImageFormatError before touching the disk
    when the format is unknown or cannot hold the pixels, ImageWriteError when writing fails, and
    OutputExistsError (an ImageWriteError) when ``overwrite`` is False and the file exists, even if it
    appeared during the call, NotRegularFileError (one too) when a folder, FIFO, socket, device or symbolic link
    is in the way.
    """
    if fmt is None:
        fmt = format_from_path(path)
        if fmt is None:
            raise ImageFormatError(
                f"cannot tell the format from {Path(path).name!r} (use .png, .jpg, .webp, .tif, .gif)"
            )
    data = encode_image(pixels, fmt, quality=quality, icc_profile=icc_profile, exif=exif, dpi=dpi)
    return write_atomic(path, data, overwrite=overwrite)
