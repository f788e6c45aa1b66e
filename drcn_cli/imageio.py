"""Read and write image files without losing what they carry: bit depth, alpha, ICC profile, EXIF, orientation.

Reading (:func:`read_image`) gives a :class:`LoadedImage`: pixels as a numpy array in RGB(A) order, upright
(the EXIF orientation is applied and reset to 1), with the ICC profile and EXIF bytes to carry into the output.
Pillow reads most files; 16-bit colour PNG and TIFF (RGB, RGBA, grey+alpha), which Pillow would reduce to
8 bits, are decoded with OpenCV instead. The pixel count is checked against ``max_pixels`` from the header,
before anything is decoded, so a decompression bomb costs nothing.

Writing (:func:`write_image`) encodes in memory, then writes through :func:`drcn_cli.atomic.write_atomic`: a
hidden temporary file in the destination folder, fsync'ed, then published under the destination's name, so that
a reader sees the old file or the complete new one, never a part; only a regular file is ever replaced. On any
failure, Ctrl-C included, the temporary file is removed.

Bit-depth rules for output:

* PNG and TIFF keep 16 bits (and 8 bits stay 8). 16-bit colour and grey+alpha are written by small
  encoders here (PNG: filter "Up" + zlib; TIFF: deflate with horizontal predictor) so that the ICC
  profile goes in too, which OpenCV's writers cannot do. Float grey (Pillow mode F) is kept as float in
  TIFF and becomes 16-bit in PNG.
* JPEG and WebP hold 8 bits: 16-bit and float images are rounded to 8 bits (v * 255 / 65535).
* Grey samples beyond those scales, 32-bit integers (Pillow mode I, 126000 in a 32-bit TIFF) or floats outside
  [0, 1], are kept as they are in TIFF, and refused with :class:`ImageFormatError` by the other formats: never
  clipped without a word.
* JPEG has no alpha channel: an alpha that is fully opaque is dropped (nothing is lost); any other alpha
  is refused with :class:`ImageFormatError` rather than flattened onto a guessed background.
* WebP has no grey mode: grey becomes RGB (grey+alpha becomes RGBA). ``quality=100`` means lossless WebP.
* An ICC profile is written only where its colour space matches the pixels (an RGB profile on RGB(A),
  a grey one on grey); a CMYK image with a CMYK profile is converted to sRGB through that profile on read.

Every output carries drcn's mark (:data:`MARK`, checked by :func:`written_by_drcn`), so that a folder written into
itself is not read back as its own input. Decoding keeps the decoders' own messages (libpng, libtiff, OpenCV's log,
Pillow's log) off stderr: what is wrong with an image is its one :class:`ImageReadError`.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import NotRegularFileError, OutputExistsError, WriteError, write_atomic
from .errors import DrcnError, megapixels

__all__ = [
    "check_output_format",
    "FORMAT_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MARK",
    "ImageFormatError",
    "ImageReadError",
    "ImageWriteError",
    "LoadedImage",
    "NotRegularFileError",
    "OutputExistsError",
    "apply_orientation",
    "encode_image",
    "format_from_path",
    "max_file_bytes",
    "normalize_format",
    "read_image",
    "write_image",
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
}
_FORMAT_ALIASES = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF"}

DEFAULT_QUALITY = 95
# What every output says made it, in its own format's place for it: PNG's "Software" text, JPEG's comment, an XMP
# packet's CreatorTool in WebP and TIFF (whose own Software tag carries the input's, which is kept). drcn checks it
# (written_by_drcn) to tell its outputs from the user's images in a folder that it writes into.
MARK = f"drcn {__version__}"
_XMP_TAG = 700
_XMP_MARK = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    f'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="{MARK}"/>'
    "</rdf:RDF></x:xmpmeta>"
).encode()
_ORIENTATION_TAG = 0x0112
_EXIF_IFD = 0x8769
_PIXEL_X_DIMENSION = 0xA002
_PIXEL_Y_DIMENSION = 0xA003
_ICC_TIFF_TAG = 34675
_WEBP_MAX_SIDE = 16383
_JPEG_MAX_SIDE = 65535
# The tags EXIF defines for its main directory (IFD0), the pointers to its sub-directories included. A TIFF's
# own directory is what Pillow gives as its "EXIF": only these are carried over from it, not its layout tags
# (ImageWidth, StripOffsets ...), which would describe the input's pixels in the output.
_EXIF_MAIN_TAGS = frozenset({270, 271, 272, 274, 282, 283, 296, 305, 306, 315, 318, 319, 529, 531, 532, 33432,
                             0x8769, 0x8825})
# What a TIFF output keeps of the EXIF: descriptive tags of the main directory. libtiff cannot write EXIF
# sub-directories, and the resolution is written from the DPI.
_TIFF_EXIF_TAGS = frozenset({270, 271, 272, 274, 305, 306, 315, 33432})
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
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


@dataclass
class LoadedImage:
    """A decoded image, upright, with the metadata to write back.

    pixels: (H, W) or (H, W, C), C in 2..4 (grey+alpha, RGB, RGBA), RGB(A) order; uint8, uint16, float32
        (Pillow mode F: [0, 1] as a rule, other values kept), or int32 (Pillow mode I, 32-bit grey whose values
        go beyond 0..65535: kept, never clipped).
    mode: what the pixels are: the Pillow mode "L", "LA", "RGB", "RGBA", "I;16" (16-bit grey), "I", "F", or
        "LA;16", "RGB;16", "RGBA;16" for 16-bit images that Pillow cannot hold.
    icc_profile: the embedded ICC profile (None if there is none).
    exif: EXIF bytes as Pillow writes them, orientation reset to 1 (the pixels are already turned).
    source_format: the decoder's name for the file type ("PNG", "JPEG", ...).
    dpi: (x, y) dots per inch, when the file says.
    frames: frames or pages in the file (animated GIF/WebP/PNG, multi-page TIFF); only the first is decoded.
    """

    pixels: np.ndarray
    mode: str
    icc_profile: bytes | None = None
    exif: bytes | None = None
    source_format: str | None = None
    dpi: tuple[float, float] | None = None
    frames: int = 1

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


# --------------------------------------------------------------------------------------------- formats


def normalize_format(name: str) -> str:
    """'png', 'jpg', 'JPEG', 'tif' ... -> 'PNG', 'JPEG', 'WEBP', 'TIFF'; ImageFormatError for anything else."""
    key = name.lower().lstrip(".")
    if key not in _FORMAT_ALIASES:
        raise ImageFormatError(f"unknown output format {name!r} (use png, jpeg, webp or tiff)")
    return _FORMAT_ALIASES[key]


def format_from_path(path: str | os.PathLike) -> str | None:
    """The output format that a file name's extension selects, or None for an extension we do not write."""
    suffix = Path(path).suffix.lower()
    for fmt, extensions in FORMAT_EXTENSIONS.items():
        if suffix in extensions:
            return fmt
    return None


# --------------------------------------------------------------------------------------------- reading


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if width < 1 or height < 1:
        raise ImageReadError(f"image has no pixels ({width}x{height})")
    if max_pixels and width * height > max_pixels:
        raise ImageReadError(
            f"{width}x{height} = {megapixels(width * height)} is over --max-pixels {max_pixels / 1e6:g} Mpx"
        )


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an (H, W[, C]) array upright for an EXIF orientation 1..8, as ImageOps.exif_transpose does."""
    if orientation == 2:
        out = pixels[:, ::-1]
    elif orientation == 3:
        out = pixels[::-1, ::-1]
    elif orientation == 4:
        out = pixels[::-1]
    elif orientation == 5:
        out = pixels.swapaxes(0, 1)
    elif orientation == 6:
        out = np.rot90(pixels, -1)
    elif orientation == 7:
        out = pixels.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        out = np.rot90(pixels, 1)
    else:
        out = pixels
    return np.ascontiguousarray(out)


def _png_ihdr(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG, from its IHDR chunk (always the first), or None if not a PNG."""
    if len(data) >= 26 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return data[24], data[25]
    return None


def _needs_opencv(image, data: bytes) -> bool:
    """True for 16-bit colour or grey+alpha, which Pillow would reduce to 8 bits."""
    ihdr = _png_ihdr(data)
    if ihdr is not None:
        depth, colour_type = ihdr
        return depth == 16 and colour_type in (2, 4, 6)
    if image.format == "TIFF":
        bits = image.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) > 8 and image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
    return False


def _icc_space(icc: bytes | None) -> bytes | None:
    return icc[16:20] if icc and len(icc) >= 20 else None


def _orientation(image) -> int:
    """The EXIF orientation 1..8 of a Pillow image (1 when absent or broken)."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except _METADATA_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _exif_upright(image) -> bytes | None:
    """The image's EXIF as bytes, with the orientation set to 1 (call after turning the pixels).

    A broken EXIF block must not cost the image: it is then read as if it had none.
    """
    try:
        exif = image.getexif()
        if image.format == "TIFF":
            for tag in [tag for tag in exif if tag not in _EXIF_MAIN_TAGS]:
                del exif[tag]
        if not len(exif):
            return None
        if _ORIENTATION_TAG in exif:
            exif[_ORIENTATION_TAG] = 1
        return exif.tobytes()
    except _METADATA_ERRORS:
        return None


def _dpi(image) -> tuple[float, float] | None:
    dpi = image.info.get("dpi")
    try:
        return (float(dpi[0]), float(dpi[1])) if dpi else None
    except (TypeError, ValueError, IndexError):
        return None


_opencv_quiet_lock = threading.Lock()
_opencv_quiet_users = 0
_opencv_log_level: int | None = None


@contextmanager
def _opencv_quiet() -> Iterator[None]:
    """OpenCV's log (where libtiff's warnings and errors go: ``[ WARN:0] ... TIFFReadDirectory: Unknown field``)
    silenced while decoding: what is wrong with an image is drcn's one error line, and what OpenCV reads past is
    not the user's concern. Counted, so that threads decoding at once restore the level the last one out."""
    import cv2

    global _opencv_quiet_users, _opencv_log_level
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None or not hasattr(logging, "setLogLevel"):
        yield
        return
    with _opencv_quiet_lock:
        if _opencv_quiet_users == 0:
            _opencv_log_level = logging.getLogLevel()
            logging.setLogLevel(logging.LOG_LEVEL_SILENT)
        _opencv_quiet_users += 1
    try:
        yield
    finally:
        with _opencv_quiet_lock:
            _opencv_quiet_users -= 1
            if _opencv_quiet_users == 0 and _opencv_log_level is not None:
                logging.setLogLevel(_opencv_log_level)


def _decode_opencv(data: bytes, orientation: int, grey_alpha: bool) -> tuple[np.ndarray, str]:
    import cv2

    if data[:8] == _PNG_SIGNATURE:
        data = _png_for_libpng(data)
    try:
        with _opencv_quiet():
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV's own checks (a side over its limit ...): its message's last part says which
        raise ImageReadError(f"truncated or corrupt image ({_opencv_reason(exc)})") from None
    if pixels is None:
        raise ImageReadError("truncated or corrupt image")
    if pixels.dtype != np.uint16:
        raise ImageReadError(f"unsupported sample type {pixels.dtype} (8- and 16-bit integer images are read)")
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        pixels, mode = pixels[:, :, ::-1], "RGB;16"
    elif pixels.ndim == 3 and pixels.shape[2] == 4 and grey_alpha:
        pixels, mode = pixels[:, :, [0, 3]], "LA;16"  # OpenCV widens grey+alpha to BGRA
    elif pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels, mode = pixels[:, :, [2, 1, 0, 3]], "RGBA;16"
    elif pixels.ndim == 3 and pixels.shape[2] == 2:
        mode = "LA;16"
    elif pixels.ndim == 2:
        mode = "I;16"
    else:
        raise ImageReadError(f"unsupported channel layout {pixels.shape}")
    return apply_orientation(pixels, orientation), mode


def _opencv_reason(exc: BaseException) -> str:
    """The gist of a cv2.error: ``(-215:Assertion failed) size.width > 0 in function ...`` -> ``size.width > 0``."""
    text = " ".join(str(exc).split())
    if "error: (" in text:
        text = text.split("error: (", 1)[1]
        text = text.split(")", 1)[1] if ")" in text else text
        text = text.split(" in function")[0]
    return text.strip() or "OpenCV could not decode it"


# --------------------------------------------------------------------------------------------- PNG chunks

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_EXIF_AS_TEXT = b"Raw profile type exif"  # ImageMagick's old way to store EXIF in PNG; Pillow reads it as the EXIF
_LIBPNG_MAX_SIDE = 1_000_000  # libpng's default user limit on width and height (PNG_USER_WIDTH_MAX)


def _png_chunks(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(offset, type, payload length) of each whole chunk of a PNG, up to IEND, or to where the chunk structure
    breaks (a length past the end of the file): what follows is not walked."""
    offset = 8
    while offset + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if offset + 12 + length > len(data):
            return
        yield offset, kind, length
        if kind == b"IEND":
            return
        offset += 12 + length


def _small_exif_text(data: bytes, offset: int, length: int) -> bool:
    """Whether the text chunk at ``offset`` is an EXIF block kept as text and small enough for Pillow's limits."""
    from PIL import PngImagePlugin

    payload = data[offset + 8:offset + 8 + length]
    if not payload.startswith(_EXIF_AS_TEXT + b"\x00") or length > PngImagePlugin.MAX_TEXT_CHUNK:
        return False
    if data[offset + 4:offset + 8] != b"zTXt":
        return True
    inflater = zlib.decompressobj()
    try:
        inflater.decompress(payload[len(_EXIF_AS_TEXT) + 2:], PngImagePlugin.MAX_TEXT_CHUNK + 1)
    except zlib.error:
        return False
    return not inflater.unconsumed_tail  # inflates to no more than Pillow takes


def _without_text(data: bytes) -> bytes:
    """The PNG without its text chunks (tEXt, zTXt, iTXt: comments, descriptions, XMP), which drcn does not carry
    into its outputs. Pillow would read them all, and refuse a whole image over a comment that inflates past its
    limit (``Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK``); libpng would print warnings about
    them (``libpng warning: tEXt: out of memory`` for a 20 MB one). Kept: a small EXIF block stored as text."""
    cuts = [(offset, offset + 12 + length) for offset, kind, length in _png_chunks(data)
            if kind in _PNG_TEXT and not _small_exif_text(data, offset, length)]  # fmt: skip
    if not cuts:
        return data
    parts, last = [], 0
    for start, end in cuts:
        parts.append(data[last:start])
        last = end
    parts.append(data[last:])
    return b"".join(parts)


def _png_for_libpng(data: bytes) -> bytes:
    """The PNG as OpenCV's libpng gets it: only the chunks decoding needs (IHDR, tRNS, IDAT, IEND), after the
    checks libpng would make.

    libpng prints its warnings and errors itself, on the process's stderr (``libpng warning: iCCP: too short``,
    ``libpng error: IDAT: CRC error``), where drcn cannot turn them into its one line. So metadata that it could
    dislike is left out (drcn reads the profile, EXIF and resolution with Pillow from the file itself), and any
    damage it would speak of is an ImageReadError here, before it gets the file: a chunk failing its CRC, a header
    it refuses, a pixel stream that is corrupt, too short, too long or followed by other data, a row with an
    unknown filter.
    """
    chunks = list(_png_chunks(data))
    if not chunks or chunks[0][1] != b"IHDR" or chunks[0][2] != 13:
        raise ImageReadError("truncated or corrupt image (no PNG header chunk)")
    width, height, depth, colour_type, compression, filtering, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if compression != 0 or filtering != 0 or interlace not in (0, 1) or colour_type not in _PNG_CHANNELS:
        raise ImageReadError("truncated or corrupt image (the PNG header holds values no decoder knows)")
    if max(width, height) > _LIBPNG_MAX_SIDE:
        raise ImageReadError(f"{width}x{height}: a 16-bit PNG is read up to {_LIBPNG_MAX_SIDE} pixels a side")
    header, transparency = data[8:8 + 25], b""
    pixel_data: list[bytes] = []
    for index, (offset, kind, length) in enumerate(chunks):
        whole = data[offset:offset + 12 + length]
        first_trns = kind == b"tRNS" and not transparency and not pixel_data and _trns_fits(colour_type, length)
        if not (index == 0 or kind == b"IDAT" or first_trns):
            continue  # metadata (read with Pillow), or a chunk out of place that libpng would complain of
        if zlib.crc32(whole[4:-4]) != struct.unpack(">I", whole[-4:])[0]:
            name = kind.decode("latin-1") if kind.isalpha() else repr(kind)
            raise ImageReadError(f"truncated or corrupt image (the {name} chunk fails its checksum)")
        if kind == b"IDAT":
            pixel_data.append(whole[8:-4])
        elif first_trns:
            transparency = whole
    _check_pixel_stream(pixel_data, width, height, depth, colour_type, interlace == 1)
    idat = _png_chunk(b"IDAT", b"".join(pixel_data))
    return b"".join([_PNG_SIGNATURE, header, transparency, idat, _png_chunk(b"IEND", b"")])


def _trns_fits(colour_type: int, length: int) -> bool:
    """A tRNS chunk libpng takes without a word: 2 bytes for grey, 6 for RGB; none with an alpha channel."""
    return (colour_type, length) in ((0, 2), (2, 6))


def _row_starts(width: int, height: int, depth: int, colour_type: int, interlaced: bool) -> np.ndarray:
    """Where each row (with its filter byte) starts in the inflated pixel stream, pass after pass for Adam7."""
    bits = depth * _PNG_CHANNELS[colour_type]
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    starts, position = [], 0
    for x0, y0, dx, dy in passes:
        columns, rows = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if columns <= 0 or rows <= 0:
            continue
        row_bytes = 1 + (columns * bits + 7) // 8
        starts.append(position + row_bytes * np.arange(rows, dtype=np.int64))
        position += row_bytes * rows
    return np.concatenate(starts) if starts else np.zeros(0, np.int64)


def _check_pixel_stream(pieces: list[bytes], width: int, height: int, depth: int, colour_type: int,
                        interlaced: bool) -> None:
    """ImageReadError unless the IDAT data inflates, checksum included, to exactly the image's rows, each with a
    known filter (0 to 4), with nothing after the stream."""
    expected = _png_pixel_bytes(width, height, depth, colour_type, interlaced)
    starts = _row_starts(width, height, depth, colour_type, interlaced)
    inflater = zlib.decompressobj()
    produced = 0

    def take(out: bytes) -> None:
        nonlocal produced
        if produced + len(out) > expected:
            raise ImageReadError("truncated or corrupt image (more pixel data than the image holds)")
        rows = starts[np.searchsorted(starts, produced):np.searchsorted(starts, produced + len(out))]
        if rows.size and (np.frombuffer(out, np.uint8)[rows - produced] > 4).any():
            raise ImageReadError("truncated or corrupt image (a row of pixels has an unknown filter)")
        produced += len(out)
        if inflater.eof and inflater.unused_data:
            raise ImageReadError("truncated or corrupt image (data after the end of the pixel stream)")

    try:
        for piece in pieces:
            pending = piece
            while pending:
                if inflater.eof:
                    raise ImageReadError("truncated or corrupt image (data after the end of the pixel stream)")
                take(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
        while not inflater.eof:  # output the inflater still holds
            out = inflater.decompress(b"", 1 << 20)
            if not out:
                break
            take(out)
    except zlib.error as exc:
        raise ImageReadError(f"truncated or corrupt image (pixel data: {exc})") from None
    if produced < expected or not inflater.eof:
        share = f"{100 * produced / expected:.0f}%" if expected else "0%"
        raise ImageReadError(
            f"truncated or corrupt image (the pixel data stops at {share} of the {width}x{height} image)"
        )


def _png_pixel_bytes(width: int, height: int, depth: int, colour_type: int, interlaced: bool) -> int:
    """How many bytes a complete PNG pixel stream inflates to: every row with its filter byte, per Adam7 pass."""
    bits = depth * _PNG_CHANNELS[colour_type]

    def size(w: int, h: int) -> int:
        return 0 if w <= 0 or h <= 0 else h * (1 + (w * bits + 7) // 8)

    if not interlaced:
        return size(width, height)
    return sum(size((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7)


def _check_png_complete(data: bytes) -> None:
    """Raise ImageReadError when the PNG's pixel stream ends before the image does.

    Pillow (and libpng through OpenCV) accept a zlib stream that ends early and leave the missing rows black:
    a 100-byte file can then claim 9000x9000 pixels. Inflate the IDAT chunks (in bounded pieces, without
    keeping the output) and count.
    """
    if len(data) < 33:
        return  # too short for an IHDR: the decoder reports it
    width, height, depth, colour_type, _compression, _filter, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour_type not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        return
    expected = _png_pixel_bytes(width, height, depth, colour_type, interlace == 1)
    inflater = zlib.decompressobj()
    produced = 0
    offset = 8
    try:
        while offset + 8 <= len(data) and produced < expected and not inflater.eof:
            length, kind = struct.unpack(">I4s", data[offset:offset + 8])
            if kind == b"IEND":
                break
            if kind == b"IDAT":
                pending = data[offset + 8:offset + 8 + length]
                while pending and produced < expected and not inflater.eof:
                    produced += len(inflater.decompress(pending, 1 << 20))
                    pending = inflater.unconsumed_tail
            offset += 12 + length
    except zlib.error as exc:
        raise ImageReadError(f"truncated or corrupt image (pixel data: {exc})") from None
    if produced < expected:
        raise ImageReadError(
            f"truncated or corrupt image (the pixel data stops at {100 * produced / expected:.0f}% of the "
            f"{width}x{height} image)"
        )


def _cmyk_to_srgb(image, icc: bytes | None):
    """CMYK -> RGB through the embedded CMYK profile when there is one; returns (image, icc for the result)."""
    from PIL import ImageCms

    if _icc_space(icc) == b"CMYK":
        assert icc is not None  # _icc_space found a header in it
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
            return converted, ImageCms.ImageCmsProfile(srgb).tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to the naive conversion below, without a profile
    return image.convert("RGB"), None


def _load_strictly(image) -> None:
    """image.load(), with a truncated file an error even where a caller has set Pillow's LOAD_TRUNCATED_IMAGES."""
    from PIL import ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            image.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = True
    else:
        image.load()


def max_file_bytes(max_pixels: int | None) -> int | None:
    """The largest file that can hold an image of at most ``max_pixels`` pixels (None: no limit): 16-bit RGBA
    stored raw is 8 bytes a pixel; 64 MiB more covers metadata, thumbnails and incompressible data."""
    return max_pixels * 8 + (64 << 20) if max_pixels else None


def _check_file_size(size: int, max_pixels: int | None) -> None:
    limit = max_file_bytes(max_pixels)
    if limit is not None and size > limit:
        assert max_pixels is not None  # a limit comes only from a pixel limit
        raise ImageReadError(
            f"{size / 2**20:,.0f} MiB is more than an image within the pixel limit ({megapixels(max_pixels)}) can take"
        )


def _source_bytes(source: str | os.PathLike | bytes, max_pixels: int | None) -> bytes:
    """The bytes of ``source`` (bytes, or the path of a regular file); a file too large for ``max_pixels`` is
    refused before it is read."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_file_size(len(data), max_pixels)
        return data
    path = Path(source)
    try:
        kind = path.stat().st_mode
        if stat.S_ISDIR(kind):
            raise IsADirectoryError
        if not stat.S_ISREG(kind):
            # A device (/dev/zero), a pipe or a socket could be endless, or block: only files are read.
            raise ImageReadError("not a regular file (a device, pipe or socket); use - to read stdin")
        _check_file_size(path.stat().st_size, max_pixels)
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError("no such file") from None
    except IsADirectoryError:
        raise ImageReadError("is a folder, not an image file") from None
    except PermissionError:
        raise ImageReadError("permission denied") from None
    except OSError as exc:
        raise ImageReadError(f"cannot read ({exc.strerror or exc})") from None


def _open_image(data: bytes):
    """Image.open on the bytes (which reads the header only), its failures as ImageReadError."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageReadError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageReadError(f"truncated or corrupt image ({exc})") from None


def _frame_count(data: bytes) -> int:
    """Frames or pages in the file, counted on an image of its own: Pillow seeks through the file to count, and
    on a damaged tail raises errors of any type (a damaged tail counts as no more frames; the first frame's
    decode reports damage of its own)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(getattr(image, "n_frames", 1))
    except Exception:  # best effort: the count only annotates the report
        return 1


def _decode(image, data: bytes, icc: bytes | None) -> tuple[np.ndarray, str, bytes | None, bytes | None]:
    """(pixels upright, mode, ICC profile, EXIF) of an opened image; the profile changes when CMYK becomes sRGB."""
    from PIL import ImageOps

    from .color import pil_to_array

    try:
        if _needs_opencv(image, data):
            grey_alpha = _png_ihdr(data) == (16, 4) or image.mode == "LA"
            pixels, mode = _decode_opencv(data, _orientation(image), grey_alpha)
        else:
            _load_strictly(image)
            upright = ImageOps.exif_transpose(image) if _orientation(image) != 1 else image
            if upright.mode == "CMYK":
                upright, icc = _cmyk_to_srgb(upright, icc)
            pixels, mode = pil_to_array(upright)
            if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
                raise ImageReadError("its float samples include NaN or infinity, which cannot be upscaled")
        exif = _exif_upright(image)  # after exif_transpose, which reads the orientation from the same object
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise ImageReadError(f"truncated or corrupt image ({exc})") from None
    return pixels, mode, icc, exif


_decoders_quiet = False


def _quiet_decoders() -> None:
    """Keep the decoders' own diagnostics off stderr, where they would stand beside drcn's one line per image
    (the damage they speak of is that line's reason, or was read past): once per process.

    * Pillow reports some damage through the logging module too (``More samples per pixel than can be decoded``)
      before raising; with no handler configured, Python's last resort prints it. A NullHandler on Pillow's
      logger stops only that last resort: an application that configures logging still gets the records.
    * libtiff, which Pillow decodes compressed TIFF with, prints its warnings and errors itself
      (``TIFFFetchDirectory: Can not read TIFF directory.``) unless its handlers are unset: they are, in the
      libtiff that Pillow loaded (found among the process's mapped files; best effort, Linux).
    * OpenCV routes libtiff's messages to its log, silenced while it decodes (:func:`_opencv_quiet`); libpng's
      cannot be routed, so libpng gets only files it has nothing to say about (:func:`_png_for_libpng`).
    """
    import logging

    global _decoders_quiet
    if _decoders_quiet:
        return
    _decoders_quiet = True
    pillow = logging.getLogger("PIL")
    if not any(isinstance(handler, logging.NullHandler) for handler in pillow.handlers):
        pillow.addHandler(logging.NullHandler())
    _unset_libtiff_handlers()


def _unset_libtiff_handlers() -> None:
    import ctypes

    from PIL import Image  # noqa: F401  (loads Pillow's core, and with it its libtiff)

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            libraries = {line.split()[-1] for line in maps if "libtiff" in line.rsplit("/", 1)[-1]}
    except OSError:
        return
    for library in sorted(libraries):
        try:
            tiff = ctypes.CDLL(library)
            for setter in (tiff.TIFFSetErrorHandler, tiff.TIFFSetWarningHandler):
                setter.restype = ctypes.c_void_p
                setter.argtypes = [ctypes.c_void_p]
                setter(None)
        except (OSError, AttributeError):
            continue


def _upright_size(image: object, width: int, height: int) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied: orientations 5 to 8 turn the image a quarter."""
    try:
        orientation = int(image.getexif().get(0x0112, 1))  # type: ignore[attr-defined]  # a PIL image
    except Exception:  # damaged EXIF is dropped when the image is decoded; here it only cannot turn the size
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def read_image(
    source: str | os.PathLike | bytes,
    max_pixels: int | None = None,
    check_size: Callable[[int, int], object] | None = None,
) -> LoadedImage:
    """Decode an image file (a path, or its bytes), upright, with its ICC profile and EXIF.

    Raises ImageReadError with a one-line reason: missing file, a folder, empty file, not an image,
    truncated or corrupt, or more than ``max_pixels`` pixels (checked before decoding; None or 0: no limit).
    ``check_size(width, height)`` is called with the header's size before decoding too (e.g. the output limit
    of the upscale to come): what it raises is raised, and nothing is decoded.
    """
    from PIL import Image

    _quiet_decoders()
    data = _source_bytes(source, max_pixels)
    if not data:
        raise ImageReadError("empty file")
    if data[:8] == _PNG_SIGNATURE:
        data = _without_text(data)

    with warnings.catch_warnings():
        # The size is checked against max_pixels below; Pillow's own bomb warning would only repeat it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Pillow warns about damaged metadata ("Corrupt EXIF data") on stderr; a damaged image is our error to
        # report, in one line, and damaged metadata alone is dropped (see _exif_upright).
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        image = _open_image(data)
        width, height = image.size
        _check_pixels(width, height, max_pixels)
        if image.format == "PNG" and not _needs_opencv(image, data):  # else _png_for_libpng checks it all
            _check_png_complete(data)
        if check_size is not None:
            check_size(*_upright_size(image, width, height))
        # Read before decoding: loading a PNG adds the chunks after its pixel data to image.info.
        source_format = image.format
        icc = image.info.get("icc_profile") or None
        dpi = _dpi(image)
        frames = _frame_count(data)
        pixels, mode, icc, exif = _decode(image, data, icc)

    return LoadedImage(np.ascontiguousarray(pixels), mode, icc, exif, source_format, dpi, frames)


# --------------------------------------------------------------------------------------------- encoding


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


_FORMAT_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "TIFF": "TIFF"}


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


def _channels(pixels: np.ndarray) -> int:
    return 1 if pixels.ndim == 2 else int(pixels.shape[2])


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
    from PIL import Image

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


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode_png16(pixels: np.ndarray, icc: bytes | None, exif: bytes | None, dpi) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA) with optional iCCP, eXIf and pHYs chunks."""
    height, width = pixels.shape[:2]
    channels = _channels(pixels)
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = np.ascontiguousarray(pixels.astype(">u2")).view(np.uint8).reshape(height, -1)
    # Filter "Up" on every row (the byte above, mod 256): cheap, and smooth images compress much better.
    above = np.zeros_like(rows)
    above[1:] = rows[:-1]
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2
    filtered[:, 1:] = rows - above
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    chunks = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header)]
    if icc:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    if dpi:
        ppm = [max(1, round(d / 0.0254)) for d in dpi]
        chunks.append(_png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    if exif:
        chunks.append(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    chunks.append(_png_chunk(b"tEXt", b"Software\x00" + MARK.encode("latin-1")))
    chunks.append(_png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6)))
    chunks.append(_png_chunk(b"IEND", b""))
    return b"".join(chunks)


def _encode_tiff16(pixels: np.ndarray, icc: bytes | None, dpi) -> bytes:
    """A little-endian, deflate-compressed (horizontal predictor) 16-bit TIFF with an optional ICC tag."""
    height, width = pixels.shape[:2]
    channels = _channels(pixels)
    hwc = pixels.reshape(height, width, channels).astype(np.uint16)
    predicted = hwc.copy()
    predicted[:, 1:] = hwc[:, 1:] - hwc[:, :-1]  # uint16 arithmetic wraps mod 2^16, as the predictor wants
    strip = zlib.compress(predicted.astype("<u2").tobytes(), 6)

    # Tag entries: (tag, type, count, value bytes); types: 3 SHORT, 4 LONG, 5 RATIONAL, 7 UNDEFINED.
    entries: list[tuple[int, int, int, bytes]] = [
        (256, 4, 1, struct.pack("<I", width)),
        (257, 4, 1, struct.pack("<I", height)),
        (258, 3, channels, struct.pack(f"<{channels}H", *([16] * channels))),
        (259, 3, 1, struct.pack("<H", 8)),
        (262, 3, 1, struct.pack("<H", 2 if channels >= 3 else 1)),
        (273, 4, 1, b""),  # strip offset, filled in below
        (277, 3, 1, struct.pack("<H", channels)),
        (278, 4, 1, struct.pack("<I", height)),
        (279, 4, 1, struct.pack("<I", len(strip))),
        (284, 3, 1, struct.pack("<H", 1)),
        (317, 3, 1, struct.pack("<H", 2)),
    ]
    if dpi:
        entries += [
            (282, 5, 1, struct.pack("<II", max(1, round(dpi[0] * 1000)), 1000)),
            (283, 5, 1, struct.pack("<II", max(1, round(dpi[1] * 1000)), 1000)),
            (296, 3, 1, struct.pack("<H", 2)),
        ]
    if channels in (2, 4):
        entries.append((338, 3, 1, struct.pack("<H", 2)))  # unassociated alpha
    if icc:
        entries.append((_ICC_TIFF_TAG, 7, len(icc), icc))
    entries.append((_XMP_TAG, 1, len(_XMP_MARK), _XMP_MARK))
    entries.sort()

    # Layout: header (8 bytes), the one IFD, values too long to sit in their entry, then the strip.
    base = 8 + 2 + 12 * len(entries) + 4
    extra = bytearray()
    offsets = {}
    for tag, _kind, _count, value in entries:
        if len(value) > 4:
            extra += b"\x00" * ((base + len(extra)) % 2)  # values start on a word boundary
            offsets[tag] = base + len(extra)
            extra += value
    extra += b"\x00" * ((base + len(extra)) % 2)
    strip_offset = base + len(extra)
    ifd = bytearray(struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        if tag in offsets:
            ifd += struct.pack("<HHII", tag, kind, count, offsets[tag])
        else:
            value = struct.pack("<I", strip_offset) if tag == 273 else value
            ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
    ifd += struct.pack("<I", 0)  # no next IFD
    return b"II*\x00" + struct.pack("<I", 8) + bytes(ifd) + bytes(extra) + strip


def _pil_image(pixels: np.ndarray):
    from PIL import Image

    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(pixels))


def _grey_alpha_to_rgba(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([np.repeat(pixels[:, :, :1], 3, axis=2), pixels[:, :, 1:]], axis=2)


def _encode_16bit(
    pixels: np.ndarray, fmt: str, icc_profile: bytes | None, exif: bytes | None, dpi: tuple[float, float] | None
) -> bytes:
    """PNG or TIFF of 16-bit colour or grey+alpha, which Pillow cannot write, by the encoders here."""
    pixels = _to_uint16(pixels)
    if fmt == "PNG":
        return _encode_png16(pixels, _icc_for(icc_profile, _channels(pixels)), exif, dpi)
    if _channels(pixels) == 2:  # few readers know 16-bit grey+alpha TIFF: write it as RGBA
        pixels = _grey_alpha_to_rgba(pixels)
    return _encode_tiff16(pixels, _icc_for(icc_profile, _channels(pixels)), dpi)


def _pillow_options(
    fmt: str, quality: int, icc: bytes | None, exif: bytes | None, dpi: tuple[float, float] | None
) -> dict:
    """The keyword arguments of Pillow's save for ``fmt``."""
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
        from PIL.PngImagePlugin import PngInfo

        options["pnginfo"] = PngInfo()
        options["pnginfo"].add_text("Software", MARK)
    elif fmt == "JPEG":
        options["comment"] = MARK
    elif fmt == "WEBP":
        options["xmp"] = _XMP_MARK
    else:  # TIFF: the XMP tag goes in with the EXIF tags (Pillow drops the EXIF when given tiffinfo too)
        options["exif"] = _with_xmp_mark(exif)
        options["compression"] = "tiff_adobe_deflate"
    return options


def _with_xmp_mark(exif: bytes | None) -> bytes:
    """TIFF tags as Pillow takes them through ``exif``: ``exif``'s, and the XMP packet with drcn's mark."""
    from PIL import Image

    tags = Image.Exif()
    if exif:
        try:
            tags.load(exif)
        except _METADATA_ERRORS:
            tags = Image.Exif()
    tags[_XMP_TAG] = _XMP_MARK
    return tags.tobytes()


def written_by_drcn(path: str | os.PathLike) -> bool:
    """Whether the image file carries drcn's mark (:data:`MARK`), which every image drcn writes does; False for
    any other file, one that cannot be read included. Reads the header only."""
    from PIL import Image

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
    """The pixels converted for Pillow's encoder of ``fmt`` (PNG and TIFF get only 8-bit images and grey here)."""
    if fmt == "JPEG":
        return _jpeg_pixels(pixels)
    if fmt == "WEBP":
        return _webp_pixels(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    if _keeps_as_is(pixels, fmt):  # float or 32-bit integer grey, which TIFF keeps as it is
        return pixels.astype(np.float32 if np.issubdtype(pixels.dtype, np.floating) else np.int32, copy=False)
    return _to_uint16(pixels)


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
    icc = _icc_for(icc_profile, channels if fmt != "WEBP" else max(channels, 3))
    exif = _exif_for(exif, width, height, tiff=fmt == "TIFF")
    options = _pillow_options(fmt, quality, icc, exif, dpi)
    if fmt in ("PNG", "TIFF") and channels >= 2 and pixels.dtype != np.uint8:
        return _encode_16bit(pixels, fmt, icc_profile, exif, dpi)
    buffer = io.BytesIO()
    _pil_image(_pillow_pixels(pixels, fmt)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- writing


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
    """Encode and write an image atomically (:func:`drcn_cli.atomic.write_atomic`); returns the bytes written.

    ``fmt`` defaults to the one the extension selects. Raises ImageFormatError before touching the disk
    when the format is unknown or cannot hold the pixels, ImageWriteError when writing fails, and
    OutputExistsError (an ImageWriteError) when ``overwrite`` is False and the file exists, even if it
    appeared during the call, NotRegularFileError (one too) when a folder, FIFO, socket, device or symbolic link
    is in the way.
    """
    if fmt is None:
        fmt = format_from_path(path)
        if fmt is None:
            raise ImageFormatError(f"cannot tell the format from {Path(path).name!r} (use .png, .jpg, .webp, .tif)")
    data = encode_image(pixels, fmt, quality=quality, icc_profile=icc_profile, exif=exif, dpi=dpi)
    return write_atomic(path, data, overwrite=overwrite)
