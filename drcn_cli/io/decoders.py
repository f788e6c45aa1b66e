"""The decoders kept in line: OpenCV for 16-bit colour and grey+alpha (which Pillow would reduce to 8 bits), its
PNGs checked first; the decoders' own diagnostics (Pillow's log, libtiff's and libpng's messages, OpenCV's log)
kept off stderr, where they would stand beside drcn's one line per image; arrays turned upright.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .formats import ImageReadError
from .png import _PNG_SIGNATURE, _png_for_libpng


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


_opencv_quiet_lock = threading.Lock()
_opencv_quiet_users = 0
_opencv_log_level: int | None = None


@contextmanager
def _opencv_quiet() -> Iterator[None]:
    """OpenCV's log (where libtiff's warnings and errors go: ``[ WARN:0] ... TIFFReadDirectory: Unknown field``)
    silenced while decoding: what is wrong with an image is drcn's one error line, and what OpenCV reads past is
    not the user's concern. Counted, so that threads decoding at once restore the level the last one out."""
    import cv2  # here: OpenCV is slow to import, and only 16-bit colour images need it

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


def _decode_opencv(data: bytes, orientation: int, grey_alpha: bool, page: int = 0) -> tuple[np.ndarray, str]:
    """16-bit pixels and their mode, decoded by OpenCV; ``page``: which page of a multi-page TIFF (from 0)."""
    import cv2  # here: OpenCV is slow to import, and only 16-bit colour images need it

    if data[:8] == _PNG_SIGNATURE:
        data = _png_for_libpng(data)
    try:
        with _opencv_quiet():
            buffer = np.frombuffer(data, np.uint8)
            pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if page == 0 else _opencv_page(cv2, buffer, page)
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


def _opencv_page(cv2, buffer: np.ndarray, page: int) -> np.ndarray | None:
    """Page ``page`` of a multi-page file (None if OpenCV cannot read it): that page alone where OpenCV takes a range
    of pages (4.9 and later), else every page, of which the one asked for."""
    try:
        ok, pages = cv2.imdecodemulti(buffer, cv2.IMREAD_UNCHANGED, range=(page, page + 1))
        return pages[0] if ok and len(pages) == 1 else None
    except (TypeError, cv2.error):  # an OpenCV without the range argument
        ok, pages = cv2.imdecodemulti(buffer, cv2.IMREAD_UNCHANGED)
        return pages[page] if ok and len(pages) > page else None


def _opencv_reason(exc: BaseException) -> str:
    """The gist of a cv2.error: ``(-215:Assertion failed) size.width > 0 in function ...`` -> ``size.width > 0``."""
    text = " ".join(str(exc).split())
    if "error: (" in text:
        text = text.split("error: (", 1)[1]
        text = text.split(")", 1)[1] if ")" in text else text
        text = text.split(" in function")[0]
    return text.strip() or "OpenCV could not decode it"


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
    global _decoders_quiet
    if _decoders_quiet:
        return
    _decoders_quiet = True
    pillow = logging.getLogger("PIL")
    if not any(isinstance(handler, logging.NullHandler) for handler in pillow.handlers):
        pillow.addHandler(logging.NullHandler())
    _unset_libtiff_handlers()


def _unset_libtiff_handlers() -> None:
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
