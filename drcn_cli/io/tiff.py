"""The 16-bit TIFF encoder: little-endian, deflate with the horizontal predictor, one strip, with the ICC profile
and drcn's mark (colour and grey+alpha at 16 bits, which Pillow cannot write and OpenCV's writer writes without
the profile).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .formats import _XMP_MARK, _XMP_TAG, _channels

_ICC_TIFF_TAG = 34675


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
