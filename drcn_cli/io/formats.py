"""What drcn reads and writes as image files: the extensions it takes from folders, the output formats and the
extensions that select them, the errors of reading and writing, and drcn's mark.

Every output carries drcn's mark (:data:`MARK`, checked by :func:`written_by_drcn`), so that a folder written into
itself is not read back as its own input. Reading is :mod:`drcn_cli.io.images`, encoding and writing
:mod:`drcn_cli.io.write`.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .. import __version__
from ..errors import DrcnError
from .atomic import WriteError

__all__ = [
    "FORMAT_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MARK",
    "ImageFormatError",
    "ImageReadError",
    "ImageWriteError",
    "format_from_path",
    "normalize_format",
    "written_by_drcn",
]

# Image files taken from folders and globs, by every command (upscale inputs, benchmark and training folders):
# what Pillow reads well. A file named on the command line is tried whatever its extension.
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".tga", ".ppm", ".pgm",
)  # fmt: skip

# Output formats and the extensions that select them; the first one is used for new names.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "WEBP": (".webp",),
    "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",),
}
_FORMAT_ALIASES = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF",
                   "gif": "GIF"}  # fmt: skip

# What every output says made it, in its own format's place for it: PNG's "Software" text, JPEG's and GIF's comment,
# an XMP packet's CreatorTool in WebP and TIFF (whose own Software tag carries the input's, which is kept). drcn checks
# it (written_by_drcn) to tell its outputs from the user's images in a folder that it writes into.
MARK = f"drcn {__version__}"
_XMP_TAG = 700
_XMP_MARK = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    f'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="{MARK}"/>'
    "</rdf:RDF></x:xmpmeta>"
).encode()
# What Pillow raises on malformed EXIF (bad offsets, wrong types, short data).
_METADATA_ERRORS = (OSError, ValueError, SyntaxError, TypeError, KeyError, IndexError, struct.error)


class ImageReadError(DrcnError, ValueError):
    """A file that cannot be read as an image; the message is the reason, without the file name."""


# An image that could not be written (folder missing or unwritable, disk full ...; nothing was left behind), and an
# output that exists or appeared while it was being written: the errors of drcn's one file writer, under the names
# they have always had here.
ImageWriteError = WriteError


class ImageFormatError(DrcnError, ValueError):
    """Pixels that the chosen output format cannot hold (alpha in JPEG, too large for WebP), or an unknown format."""


def normalize_format(name: str) -> str:
    """'png', 'jpg', 'JPEG', 'tif' ... -> 'PNG', 'JPEG', 'WEBP', 'TIFF', 'GIF'; ImageFormatError for anything else."""
    key = name.lower().lstrip(".")
    if key not in _FORMAT_ALIASES:
        raise ImageFormatError(f"unknown output format {name!r} (use png, jpeg, webp, tiff or gif)")
    return _FORMAT_ALIASES[key]


def format_from_path(path: str | os.PathLike) -> str | None:
    """The output format that a file name's extension selects, or None for an extension we do not write."""
    suffix = Path(path).suffix.lower()
    for fmt, extensions in FORMAT_EXTENSIONS.items():
        if suffix in extensions:
            return fmt
    return None


def _channels(pixels: np.ndarray) -> int:
    return 1 if pixels.ndim == 2 else int(pixels.shape[2])


def _icc_space(icc: bytes | None) -> bytes | None:
    return icc[16:20] if icc and len(icc) >= 20 else None


def written_by_drcn(path: str | os.PathLike) -> bool:
    """Whether the image file carries drcn's mark (:data:`MARK`), which every image drcn writes does; False for
    any other file, one that cannot be read included. Reads the header only."""
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # the header only: no decompression bomb to fear
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                found = [image.info.get(key) for key in ("Software", "comment", "xmp")]
                if image.format == "TIFF":
                    found.append(image.tag_v2.get(_XMP_TAG))
    except Exception:  # not an image, damaged, unreadable: not one of drcn's outputs
        return False
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    for value in found:
        text = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else value
        if isinstance(text, str) and (text == "drcn" or text.startswith("drcn ") or 'CreatorTool="drcn ' in text):
            return True
    return False
