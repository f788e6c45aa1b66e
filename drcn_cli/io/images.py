"""Read image files without losing what they carry: bit depth, alpha, ICC profile, EXIF, orientation.

Reading (:func:`read_image`) gives a :class:`LoadedImage`: pixels as a numpy array in RGB(A) order, upright
(the EXIF orientation is applied and reset to 1), with the ICC profile and EXIF bytes to carry into the output.
Pillow reads most files; 16-bit colour PNG and TIFF (RGB, RGBA, grey+alpha), which Pillow would reduce to
8 bits, are decoded with OpenCV instead (:mod:`drcn_cli.io.decoders`). The pixel count is checked against
``max_pixels`` from the header, before anything is decoded, so a decompression bomb costs nothing. A CMYK image
with a CMYK profile is converted to sRGB through that profile.

Decoding keeps the decoders' own messages (libpng, libtiff, OpenCV's log, Pillow's log) off stderr: what is wrong
with an image is its one :class:`~drcn_cli.io.formats.ImageReadError`. Writing is :mod:`drcn_cli.io.write`.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import megapixels
from .decoders import _decode_opencv, _quiet_decoders
from .formats import _METADATA_ERRORS, ImageReadError, _icc_space
from .png import _PNG_SIGNATURE, _check_png_complete, _png_ihdr, _without_text

__all__ = [
    "LoadedImage",
    "array_to_pil",
    "max_file_bytes",
    "pil_to_array",
    "read_image",
]

_ORIENTATION_TAG = 0x0112
# The tags EXIF defines for its main directory (IFD0), the pointers to its sub-directories included. A TIFF's
# own directory is what Pillow gives as its "EXIF": only these are carried over from it, not its layout tags
# (ImageWidth, StripOffsets ...), which would describe the input's pixels in the output.
_EXIF_MAIN_TAGS = frozenset({270, 271, 272, 274, 282, 283, 296, 305, 306, 315, 318, 319, 529, 531, 532, 33432,
                             0x8769, 0x8825})


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
    frames: frames or pages in the file (animated GIF/WebP/PNG, multi-page TIFF); only the first is decoded
        (:func:`drcn_cli.io.frames.read_frames` decodes them all).
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


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if width < 1 or height < 1:
        raise ImageReadError(f"image has no pixels ({width}x{height})")
    if max_pixels and width * height > max_pixels:
        raise ImageReadError(
            f"{width}x{height} = {megapixels(width * height)} is over --max-pixels {max_pixels / 1e6:g} Mpx"
        )


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


def _cmyk_to_srgb(image, icc: bytes | None):
    """CMYK -> RGB through the embedded CMYK profile when there is one; returns (image, icc for the result)."""
    from PIL import ImageCms  # here: littleCMS, which only a CMYK image needs (and a Pillow may be built without)

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
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(getattr(image, "n_frames", 1))
    except Exception:  # best effort: the count only annotates the report
        return 1


def _decode(image, data: bytes, icc: bytes | None) -> tuple[np.ndarray, str, bytes | None, bytes | None]:
    """(pixels upright, mode, ICC profile, EXIF) of an opened image; the profile changes when CMYK becomes sRGB."""
    try:
        if _needs_opencv(image, data):
            grey_alpha = _png_ihdr(data) == (16, 4) or image.mode == "LA"
            pixels, mode = _decode_opencv(data, _orientation(image), grey_alpha, image.tell())  # page of a TIFF
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


# --------------------------------------------------------------------------------------------- PIL images


def pil_to_array(image) -> tuple[np.ndarray, str]:
    """A PIL image -> (array for :func:`drcn_cli.inference.color.array_to_tensor`, the PIL mode to rebuild in
    :func:`array_to_pil`).

    Grey, grey+alpha, RGB and RGBA are kept as they are; 16-bit grey (I;16*) and 32-bit integer grey (I)
    become uint16 when their values fit in 0..65535, else int32 (mode "I"): values beyond 16 bits or below 0 are
    kept, never clipped; float grey (F) stays float; bilevel (1) becomes L; palette becomes RGB or RGBA (with
    its transparency); CMYK, YCbCr, LAB and HSV become RGB.
    """
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(image), mode
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image)
        if array.dtype == np.uint16:
            return array, "I;16"
        if array.size and (array.min() < 0 or array.max() > 65535):
            return array.astype(np.int32), "I"
        return array.astype(np.uint16), "I;16"
    if mode == "F":
        return np.asarray(image, dtype=np.float32), "F"
    if mode == "1":
        return np.asarray(image.convert("L")), "L"
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        converted = image.convert("RGBA" if has_alpha else "RGB")
        return np.asarray(converted), converted.mode
    if mode == "La":
        converted = image.convert("LA")
        return np.asarray(converted), "LA"
    if mode == "RGBa":
        converted = image.convert("RGBA")
        return np.asarray(converted), "RGBA"
    converted = image.convert("RGB")
    return np.asarray(converted), "RGB"


def array_to_pil(array: np.ndarray, mode: str):
    """Inverse of :func:`pil_to_array` for an array of the same dtype and channel count."""
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}.get(mode, np.uint8)
    image = Image.fromarray(np.ascontiguousarray(array.astype(dtype, copy=False)))
    if image.mode != mode:
        raise ValueError(f"array of shape {array.shape} and dtype {array.dtype} does not make a {mode} image")
    return image
