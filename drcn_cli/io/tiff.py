"""The TIFF encoder, through tifffile: every TIFF drcn writes (grey, grey+alpha, RGB and RGBA at 8 or 16 bits,
32-bit integer and float grey).

Little-endian; deflate (zlib, level 6) with the horizontal predictor for integer samples, deflate alone for float
ones (the floating-point predictor needs imagecodecs, and fewer readers know it); strips of about 256 KB. Kept: the
ICC profile, the resolution (DPI), the descriptive tags of the EXIF's main directory (make, model, artist ...) and
drcn's mark (an XMP packet). Alpha is unassociated. BigTIFF (64-bit offsets) when the file could pass the 4 GiB a
classic TIFF can address (:func:`needs_bigtiff`). libtiff (Pillow, OpenCV, GIMP ...) reads them all.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from .formats import _METADATA_ERRORS, _XMP_MARK, _XMP_TAG, _channels

__all__ = ["encode_tiff", "needs_bigtiff"]

# A classic TIFF addresses its bytes with 32-bit offsets. tifffile's own margin below 4 GiB (32 MiB) holds the tags
# and strip tables and what deflate adds to data it cannot compress (5 bytes per 16 KiB stored block: 0.03%).
_CLASSIC_TIFF_LIMIT = 2**32 - 2**25
_DEFLATE_LEVEL = 6
# Tags written from the other arguments (resolution, ICC profile, XMP), or that tifffile writes itself.
_NOT_FROM_EXIF = frozenset({282, 283, 296, _XMP_TAG, 34675}) | tifffile.TIFF.TAG_FILTERED


def needs_bigtiff(nbytes: int) -> bool:
    """Whether a TIFF of ``nbytes`` (the uncompressed samples plus the profile and tags) needs BigTIFF.

    Decided before compressing, from the uncompressed size: deflate's output is known only afterwards, and may be
    a little larger than its input. BigTIFF is read by libtiff since 4.0 (2011), Pillow and OpenCV.
    """
    return nbytes > _CLASSIC_TIFF_LIMIT


def _ascii(value: str) -> str:
    """TIFF's ASCII type holds 7-bit text: other characters become "?", as Pillow writes them."""
    return value.encode("ascii", "replace").decode("ascii").replace("\0", "")


def _exif_tags(exif: bytes | None) -> list[tuple]:
    """tifffile's ``extratags`` for the EXIF's main-directory tags with a text or an integer value (Make, Model,
    Artist, Copyright, Orientation ...); its sub-directories and the tags that describe the layout are not written.
    """
    if not exif:
        return []
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        items = sorted(parsed.items())
    except _METADATA_ERRORS:  # unparseable EXIF: the image without it rather than no image
        return []
    tags: list[tuple] = []
    for tag, value in items:
        if tag in _NOT_FROM_EXIF or not 0 < tag < 65535:
            continue
        if isinstance(value, str):
            tags.append((tag, "s", 0, _ascii(value), True))
        elif isinstance(value, int) and 0 <= value < 2**32:
            tags.append((tag, "H" if value < 2**16 else "I", 1, value, True))
    return tags


def _resolution(dpi) -> dict[str, Any]:
    """tifffile's resolution arguments for ``dpi`` (x, y), when both are finite and positive."""
    if not dpi or not all(math.isfinite(v) and v > 0 for v in dpi[:2]):
        return {}
    return {"resolution": (float(dpi[0]), float(dpi[1])), "resolutionunit": "INCH"}


def encode_tiff(
    pixels: np.ndarray,
    icc: bytes | None = None,
    exif: bytes | None = None,
    dpi: tuple[float, float] | None = None,
    *,
    bigtiff: bool | None = None,
) -> bytes:
    """The TIFF file of (H, W[, C]) ``pixels`` (C 1..4: grey, grey+alpha, RGB, RGBA; uint8, uint16, int32 or float32).

    ``icc`` is written as it is (the caller checks that its colour space fits), ``exif`` gives its descriptive
    tags (:func:`_exif_tags`), ``dpi`` the resolution. ``bigtiff`` None decides by the size (:func:`needs_bigtiff`).
    """
    channels = _channels(pixels)
    if pixels.ndim == 3 and channels == 1:
        pixels = pixels[:, :, 0]
    tags = [(_XMP_TAG, 1, len(_XMP_MARK), _XMP_MARK, True), *_exif_tags(exif)]
    if bigtiff is None:
        bigtiff = needs_bigtiff(pixels.nbytes + len(icc or b"") + len(exif or b"") + len(_XMP_MARK))
    options = _resolution(dpi)
    if pixels.ndim == 3:
        options["planarconfig"] = "CONTIG"
    if channels in (2, 4):
        options["extrasamples"] = ["UNASSALPHA"]
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        np.ascontiguousarray(pixels),
        bigtiff=bigtiff,
        byteorder="<",
        photometric="RGB" if channels >= 3 else "MINISBLACK",
        compression="ADOBE_DEFLATE",
        compressionargs={"level": _DEFLATE_LEVEL},
        predictor=pixels.dtype.kind in "iu",  # horizontal differencing (2) for integers
        iccprofile=icc or None,
        metadata=None,  # no JSON shape in ImageDescription
        software=False,  # the input's Software tag, if any, comes with the EXIF; drcn's mark is the XMP packet
        extratags=tags,
        **options,
    )
    return buffer.getvalue()
