"""PNG files at the byte level: their chunks walked, what libpng would complain of checked before it decodes,
the pixel stream checked complete, and the 16-bit PNG encoder (grey+alpha, RGB and RGBA at 16 bits, with the
ICC profile, which OpenCV's writer cannot do).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import PngImagePlugin

from .formats import MARK, ImageReadError, _channels

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = frozenset({b"tEXt", b"zTXt", b"iTXt"})
_EXIF_AS_TEXT = b"Raw profile type exif"  # ImageMagick's old way to store EXIF in PNG; Pillow reads it as the EXIF
_LIBPNG_MAX_SIDE = 1_000_000  # libpng's default user limit on width and height (PNG_USER_WIDTH_MAX)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_ihdr(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG, from its IHDR chunk (always the first), or None if not a PNG."""
    if len(data) >= 26 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return data[24], data[25]
    return None


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
