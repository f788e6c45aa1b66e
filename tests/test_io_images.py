import errno
import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from drcn_cli.io import atomic, formats
from drcn_cli.io.decoders import apply_orientation
from drcn_cli.io.formats import ImageFormatError, ImageReadError, ImageWriteError
from drcn_cli.io.images import read_image
from drcn_cli.io.write import encode_image, write_image


def rng_pixels(shape, dtype=np.uint8, seed=0):
    top = 65536 if dtype == np.uint16 else 256
    return np.random.default_rng(seed).integers(0, top, shape).astype(dtype)


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_with(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "drcn tests"
    return exif.tobytes()


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ 16-bit


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_round_trips_exactly_with_its_profile(fmt, channels):
    pixels = rng_pixels((5, 7, channels), np.uint16)
    icc = srgb_profile()
    data = encode_image(pixels, fmt, icc_profile=icc, dpi=(300, 300))
    loaded = read_image(data)
    assert loaded.mode == ("RGB;16" if channels == 3 else "RGBA;16")
    assert loaded.pixels.dtype == np.uint16
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.icc_profile == icc
    assert loaded.dpi is not None and abs(loaded.dpi[0] - 300) < 0.01
    # Other decoders agree: OpenCV (libpng / libtiff) sees the same 16-bit values, Pillow can open the file.
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    order = [2, 1, 0] if channels == 3 else [2, 1, 0, 3]
    np.testing.assert_array_equal(decoded[:, :, order], pixels)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (7, 5)


def test_16bit_grey_alpha_png_round_trips():
    pixels = rng_pixels((4, 6, 2), np.uint16)
    loaded = read_image(encode_image(pixels, "PNG"))
    assert loaded.mode == "LA;16"
    np.testing.assert_array_equal(loaded.pixels, pixels)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grey_round_trips(fmt):
    pixels = rng_pixels((4, 6), np.uint16)
    loaded = read_image(encode_image(pixels, fmt))
    assert loaded.mode == "I;16"
    np.testing.assert_array_equal(loaded.pixels, pixels)


def test_16bit_to_jpeg_and_webp_rounds_to_8_bits():
    pixels = np.array([[[0, 257, 65535], [128, 32896, 65534]]], np.uint16)
    expected = np.array([[[0, 1, 255], [0, 128, 255]]], np.uint8)
    lossless = read_image(encode_image(pixels, "WEBP", quality=100))
    np.testing.assert_array_equal(lossless.pixels, expected)
    assert read_image(encode_image(pixels, "JPEG")).pixels.dtype == np.uint8


# ------------------------------------------------------------------------------------------ orientation, metadata


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_and_is_applied_on_read(orientation):
    pixels = rng_pixels((6, 10, 3))
    data = pil_bytes(Image.fromarray(pixels), "PNG", exif=exif_with(orientation))
    with Image.open(io.BytesIO(data)) as image:
        expected = np.asarray(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(apply_orientation(pixels, orientation), expected)
    loaded = read_image(data)
    np.testing.assert_array_equal(loaded.pixels, expected)
    exif = Image.Exif()
    exif.load(loaded.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "drcn tests"


def test_16bit_png_orientation_is_applied():
    pixels = rng_pixels((4, 9, 3), np.uint16)
    loaded = read_image(encode_image(pixels, "PNG", exif=exif_with(6)))
    np.testing.assert_array_equal(loaded.pixels, np.rot90(pixels, -1))


def test_rotated_jpeg_keeps_profile_and_exif_through_a_write(tmp_path):
    icc = srgb_profile()
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0xA002] = 10  # PixelXDimension
    exif.get_ifd(0x8769)[0xA003] = 6
    data = pil_bytes(Image.fromarray(rng_pixels((6, 10, 3))), "JPEG", exif=exif.tobytes(), icc_profile=icc)
    loaded = read_image(data)
    assert (loaded.width, loaded.height) == (6, 10) and loaded.icc_profile == icc and loaded.source_format == "JPEG"
    write_image(tmp_path / "out.jpg", loaded.pixels, icc_profile=loaded.icc_profile, exif=loaded.exif)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (6, 10)
        assert out.info["icc_profile"] == icc
        written = out.getexif()
        assert written[0x0112] == 1
        assert written.get_ifd(0x8769)[0xA002] == 6 and written.get_ifd(0x8769)[0xA003] == 10


def test_profile_is_written_only_where_its_colour_space_fits():
    icc = srgb_profile()
    grey = rng_pixels((4, 4))
    with Image.open(io.BytesIO(encode_image(grey, "PNG", icc_profile=icc))) as image:
        assert "icc_profile" not in image.info  # an RGB profile on grey pixels would be wrong
    with Image.open(io.BytesIO(encode_image(np.dstack([grey] * 3), "PNG", icc_profile=icc))) as image:
        assert image.info["icc_profile"] == icc


@pytest.mark.parametrize(
    ("mode", "expected_mode", "channels"),
    [("L", "L", 1), ("LA", "LA", 2), ("P", "RGB", 3), ("1", "L", 1), ("I;16", "I;16", 1), ("CMYK", "RGB", 3)],
)
def test_pillow_modes_are_read(mode, expected_mode, channels):
    image = Image.fromarray(rng_pixels((5, 6, 3))).convert(mode)
    loaded = read_image(pil_bytes(image, "TIFF" if mode == "CMYK" else "PNG"))
    assert loaded.mode == expected_mode
    assert (1 if loaded.pixels.ndim == 2 else loaded.pixels.shape[2]) == channels


def test_palette_with_transparency_becomes_rgba():
    image = Image.fromarray(rng_pixels((5, 6, 3))).convert("P")
    image.info["transparency"] = 0
    loaded = read_image(pil_bytes(image, "PNG", transparency=0))
    assert loaded.mode == "RGBA"


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "TIFF"])
def test_of_an_animation_or_pages_the_first_frame_is_read_and_the_frames_counted(fmt):
    first = rng_pixels((6, 8, 3), seed=1)
    frames = [Image.fromarray(p) for p in (first, rng_pixels((6, 8, 3), seed=2), rng_pixels((6, 8, 3), seed=3))]
    lossless = {"lossless": True} if fmt == "WEBP" else {}
    data = pil_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], **lossless)
    loaded = read_image(data)
    assert loaded.frames == 3
    with Image.open(io.BytesIO(data)) as image:  # GIF is palette-quantised: compare with Pillow's first frame
        expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(loaded.pixels, expected)
    if fmt != "GIF":
        np.testing.assert_array_equal(loaded.pixels, first)
    assert read_image(pil_bytes(frames[0], fmt)).frames == 1


# ------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_a_cut_animation_is_read_or_refused_in_one_line(fmt):
    # Counting frames seeks through the whole file, where Pillow raises IndexError (GIF) or TypeError (TIFF)
    # on a cut tail: the count must not turn a readable first frame, or a refusal, into a crash.
    frames = [Image.fromarray(rng_pixels((6, 8, 3), seed=seed)) for seed in (1, 2)]
    data = pil_bytes(frames[0], fmt, save_all=True, append_images=frames[1:])
    outcomes = set()
    for length in range(1, len(data), 3):
        try:
            outcomes.add(("read", read_image(data[:length]).frames))
        except ImageReadError:
            outcomes.add(("refused", None))
    assert ("refused", None) in outcomes and ("read", 2) in outcomes


def test_bad_inputs_give_one_line_reasons(tmp_path):
    png = pil_bytes(Image.fromarray(rng_pixels((64, 64, 3))), "PNG")
    cases = {
        b"": "empty file",
        b"hello, not an image": "not an image",
        png[: len(png) // 2]: "truncated or corrupt",
    }
    for data, reason in cases.items():
        with pytest.raises(ImageReadError, match=reason):
            read_image(data)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)


def test_decompression_bomb_is_refused_from_the_header():
    # A PNG that claims 12000x12000 pixels but carries no pixel data: refused by size, never decoded.
    header = struct.pack(">IIBBBBB", 12000, 12000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    data = b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    with pytest.raises(ImageReadError, match=r"12000x12000 = 144\.0 Mpx is over --max-pixels 100 Mpx"):
        read_image(data, max_pixels=100_000_000)


def test_jpeg_refuses_transparency_but_drops_an_opaque_alpha():
    rgba = rng_pixels((4, 5, 4))
    rgba[..., 3] = 255
    assert read_image(encode_image(rgba, "JPEG")).mode == "RGB"
    rgba[0, 0, 3] = 10
    with pytest.raises(ImageFormatError, match="JPEG cannot store transparency"):
        encode_image(rgba, "JPEG")


def test_webp_grey_becomes_rgb_and_quality_100_is_lossless():
    grey = rng_pixels((6, 5))
    loaded = read_image(encode_image(grey, "WEBP", quality=100))
    assert loaded.mode == "RGB"
    np.testing.assert_array_equal(loaded.pixels, np.dstack([grey] * 3))


def test_unknown_output_format():
    with pytest.raises(ImageFormatError, match="unknown output format"):
        encode_image(rng_pixels((2, 2)), "bmp")
    with pytest.raises(ImageFormatError, match="cannot tell the format"):
        write_image("out.xyz", rng_pixels((2, 2)))


# ------------------------------------------------------------------------------------------ atomic writes


def test_write_is_complete_and_honours_the_umask(tmp_path):
    pixels = rng_pixels((8, 9, 3))
    size = write_image(tmp_path / "a" / "b" / "out.png", pixels)
    target = tmp_path / "a" / "b" / "out.png"
    assert target.stat().st_size == size
    np.testing.assert_array_equal(read_image(target).pixels, pixels)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert leftovers(target.parent) == ["out.png"]


def test_a_write_failing_half_way_leaves_nothing(tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def failing_write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # a short write: the loop goes on
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic, "_WRITE_CHUNK", 64)
    monkeypatch.setattr(atomic.os, "write", failing_write)
    with pytest.raises(ImageWriteError, match="Input/output error"):
        write_image(tmp_path / "out.png", rng_pixels((16, 16, 3)))
    assert len(calls) == 2
    assert leftovers(tmp_path) == []


def test_full_disk_is_reported_and_the_old_file_kept(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(ImageWriteError, match="disk full"):
        write_image(target, rng_pixels((4, 4)))
    assert target.read_bytes() == b"previous"
    assert leftovers(tmp_path) == ["out.png"]


def test_interrupt_during_a_write_removes_the_temp_file(tmp_path, monkeypatch):
    def interrupted(fd, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", rng_pixels((4, 4)))
    assert leftovers(tmp_path) == []


def test_a_file_in_the_way_of_the_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImageWriteError, match="a file is in the way"):
        write_image(tmp_path / "file" / "out.png", rng_pixels((4, 4)))


def test_a_file_created_during_the_write_is_not_replaced_without_overwrite(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    real_fsync = os.fsync

    def another_writer_wins(fd):  # between the caller's existence check and the final rename
        target.write_bytes(b"the other process")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", another_writer_wins)
    with pytest.raises(atomic.OutputExistsError, match="appeared meanwhile"):
        write_image(target, rng_pixels((4, 4)), overwrite=False)
    assert target.read_bytes() == b"the other process"
    assert leftovers(tmp_path) == ["out.png"]

    size = write_image(target, rng_pixels((4, 4)), overwrite=True)  # asked for: replaced
    assert target.stat().st_size == size
    assert leftovers(tmp_path) == ["out.png"]


@pytest.mark.parametrize("exists", [False, True])
def test_no_replace_falls_back_to_check_and_rename_without_hard_links(tmp_path, monkeypatch, exists):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_links)
    target = tmp_path / "out.png"
    if exists:
        target.write_bytes(b"old")
        with pytest.raises(atomic.OutputExistsError):
            write_image(target, rng_pixels((4, 4)), overwrite=False)
        assert target.read_bytes() == b"old"
    else:
        pixels = rng_pixels((4, 4))
        write_image(target, pixels, overwrite=False)
        np.testing.assert_array_equal(read_image(target).pixels, pixels)
    assert leftovers(tmp_path) == ["out.png"]


# ------------------------------------------------------------------------------------------ hostile inputs


def png_bytes(width, height, rows: bytes, *, depth=8, colour_type=0, interlace=0) -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_png_whose_pixel_stream_ends_early_is_an_error():
    # 9000x9000 declared, one row of pixels in a complete zlib stream: Pillow alone gives a black image.
    tiny = png_bytes(9000, 9000, b"\x00" * 9001)
    assert len(tiny) < 200
    with pytest.raises(ImageReadError, match="truncated or corrupt image.*pixel data stops"):
        read_image(tiny)
    # 16-bit colour (read through OpenCV) too
    with pytest.raises(ImageReadError, match="pixel data stops"):
        read_image(png_bytes(40, 30, b"\x00" * (1 + 40 * 6) * 29, depth=16, colour_type=2))
    # one byte short of complete
    with pytest.raises(ImageReadError, match="pixel data stops"):
        read_image(png_bytes(5, 4, b"\x00" * (4 * 6 - 1)))


@pytest.mark.parametrize("interlace", [0, 1])
def test_complete_pngs_still_read(interlace):
    pixels = rng_pixels((13, 11, 3))
    image = Image.fromarray(pixels)
    data = pil_bytes(image, "PNG", interlace=interlace)
    np.testing.assert_array_equal(read_image(data).pixels, pixels)
    grey1 = pil_bytes(Image.fromarray(rng_pixels((9, 7)) > 127), "PNG")
    assert read_image(grey1).mode == "L"
    np.testing.assert_array_equal(read_image(png_bytes(5, 4, b"\x00" * (4 * 6))).pixels, np.zeros((4, 5), np.uint8))


def test_a_truncated_file_is_an_error_even_if_pillow_is_told_to_tolerate_it(monkeypatch):
    from PIL import ImageFile

    data = pil_bytes(Image.fromarray(rng_pixels((64, 64, 3))), "JPEG", quality=90)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_devices_and_pipes_are_not_read(tmp_path):
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image("/dev/zero")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(fifo)  # would block forever if it were opened


# ------------------------------------------------------------------------------------------ TIFF and EXIF


def test_tiff_tags_are_not_carried_as_exif_into_png():
    image = Image.fromarray(rng_pixels((40, 48, 3)))
    info = {271: "ScanCo", 272: "S-1", 306: "2024:01:02 03:04:05"}
    loaded = read_image(pil_bytes(image, "TIFF", tiffinfo=info))
    assert loaded.source_format == "TIFF"
    exif = Image.Exif()
    exif.load(loaded.exif)
    assert {tag: exif[tag] for tag in info} == info
    assert not {256, 257, 258, 259, 262, 273, 277, 278, 279, 284} & set(exif)  # no layout tags of the TIFF

    with Image.open(io.BytesIO(encode_image(loaded.pixels, "PNG", exif=loaded.exif))) as out:
        written = out.getexif()
        assert written[271] == "ScanCo" and 256 not in written and 273 not in written


@pytest.mark.parametrize("source", ["TIFF", "JPEG"])
def test_tiff_output_keeps_the_descriptive_exif(source):
    exif = Image.Exif()
    exif[271], exif[272], exif[33432] = "Make", "Model", "someone"
    exif.get_ifd(0x8769)[0x829A] = 0.01  # exposure time, in the EXIF sub-directory: libtiff cannot write it
    image = Image.fromarray(rng_pixels((20, 24, 3)))
    loaded = read_image(pil_bytes(image, source, exif=exif.tobytes()))

    data = encode_image(loaded.pixels, "TIFF", exif=loaded.exif, dpi=(300, 300))

    with Image.open(io.BytesIO(data)) as out:
        tags = out.getexif()
        assert (tags[271], tags[272], tags[33432]) == ("Make", "Model", "someone")
        assert out.info["dpi"] == (300, 300)
        np.testing.assert_array_equal(np.asarray(out), loaded.pixels)


def test_a_file_larger_than_any_image_within_the_pixel_limit_is_refused_unread(tmp_path):
    from drcn_cli.io.images import max_file_bytes

    path = tmp_path / "huge.png"
    with open(path, "wb") as f:  # sparse: 70 MiB on paper, nothing on disk
        f.truncate(70 << 20)
    assert max_file_bytes(1000) < path.stat().st_size
    with pytest.raises(ImageReadError, match="more than an image within the pixel limit"):
        read_image(path, max_pixels=1000)
    with pytest.raises(ImageReadError, match="more than an image within the pixel limit"):
        read_image(b"\0" * (max_file_bytes(10) + 1), max_pixels=10)
    assert max_file_bytes(None) is None and max_file_bytes(0) is None


# --------------------------------------------------------------------------------------------- 32-bit samples


def test_32_bit_integer_samples_keep_their_range_or_are_refused_never_clipped(tmp_path):
    from drcn_cli import upscale_image

    values = np.linspace(-7, 126000, 12 * 16).reshape(12, 16).astype(np.int32)
    source = tmp_path / "deep.tif"
    Image.fromarray(values).save(source)  # Pillow mode I: 32-bit signed integers
    loaded = read_image(source)
    assert loaded.mode == "I" and loaded.pixels.dtype == np.int32 and np.array_equal(loaded.pixels, values)
    write_image(tmp_path / "copy.tif", loaded.pixels)
    with Image.open(tmp_path / "copy.tif") as out:
        assert out.mode == "I" and np.array_equal(np.asarray(out), values)
    for fmt in ("PNG", "JPEG", "WEBP"):
        with pytest.raises(ImageFormatError, match=r"samples go from -7 to 126000, outside what .* would clip them; "
                                                   r"write TIFF \(--format tiff\)"):  # fmt: skip
            encode_image(values, fmt)
    assert not (tmp_path / "copy.png").exists()
    big = upscale_image(Image.open(source), 2, method="bicubic")  # through the Python API too
    assert big.mode == "I" and big.size == (32, 24)
    assert np.asarray(big).max() == 126000 and np.asarray(big).min() == -7  # bicubic's overshoot stays within
    small = Image.fromarray(np.full((4, 4), 60000, np.int32))  # fits 16 bits: read as 16-bit, as before
    assert read_image(_tiff_bytes(small)).mode == "I;16"


def _tiff_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


def test_float_samples_beyond_0_to_1_are_kept_in_tiff_and_refused_elsewhere(tmp_path):
    from drcn_cli import upscale_image

    values = np.linspace(-3.0, 1000.0, 8 * 8).reshape(8, 8).astype(np.float32)
    loaded = read_image(_tiff_bytes(Image.fromarray(values)))
    assert loaded.mode == "F" and np.array_equal(loaded.pixels, values)
    with Image.open(io.BytesIO(encode_image(values, "TIFF"))) as out:
        assert out.mode == "F" and np.array_equal(np.asarray(out), values)
    with pytest.raises(ImageFormatError, match=r"from -3 to 1000, outside what PNG holds \(0 to 1\)"):
        encode_image(values, "PNG")
    big = upscale_image(values, 2, method="bicubic")
    assert big.dtype == np.float32 and big.min() == -3.0 and big.max() == 1000.0
    with pytest.raises(ImageReadError, match="NaN or infinity"):
        read_image(_tiff_bytes(Image.fromarray(np.array([[0.5, np.nan]], np.float32))))


# --------------------------------------------------------------------------------------------- drcn's mark


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
@pytest.mark.parametrize("kind", ["rgb8", "rgb16", "grey16", "grey-alpha16", "float", "int32"])
def test_every_output_carries_drcn_s_mark(tmp_path, fmt, kind):
    pixels = {"rgb8": rng_pixels((6, 7, 3)), "rgb16": rng_pixels((6, 7, 3), np.uint16),
              "grey16": rng_pixels((6, 7), np.uint16), "grey-alpha16": rng_pixels((6, 7, 2), np.uint16),
              "float": np.full((6, 7), 0.25, np.float32), "int32": np.full((6, 7), 40000, np.int32)}[kind]  # fmt: skip
    if kind == "grey-alpha16" and fmt == "JPEG":
        pixels = pixels.copy()
        pixels[:, :, 1] = 65535  # opaque: JPEG drops it
    path = tmp_path / f"out.{fmt.lower()}"
    exif = Image.Exif()
    exif[305] = "Camera firmware 1.2"  # the input's Software tag is the input's: kept where EXIF is
    write_image(path, pixels, fmt, exif=exif.tobytes())
    assert formats.written_by_drcn(path)
    if fmt in ("PNG", "JPEG", "WEBP") and not (fmt == "PNG" and kind.endswith("16") and kind != "grey16"):
        with Image.open(path) as image:
            assert image.getexif().get(305) == "Camera firmware 1.2"


def test_other_files_carry_no_mark(tmp_path):
    plain = tmp_path / "plain.png"
    Image.fromarray(rng_pixels((4, 4, 3))).save(plain)
    tagged = tmp_path / "tagged.png"
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", "GIMP 2.10")
    Image.fromarray(rng_pixels((4, 4, 3))).save(tagged, pnginfo=info)
    (tmp_path / "text.png").write_bytes(b"not an image")
    for name in ("plain.png", "tagged.png", "text.png", "missing.png"):
        assert not formats.written_by_drcn(tmp_path / name)
    assert formats.MARK.startswith("drcn ")


# --------------------------------------------------------------------------------------------- decoders' chatter


def _png_with(pixels: np.ndarray, chunks: bytes, after_pixels: bool = False) -> bytes:
    data = cv2.imencode(".png", pixels[:, :, ::-1])[1].tobytes() if pixels.dtype == np.uint16 else _pillow_png(pixels)
    at = data.rfind(b"IEND") - 4 if after_pixels else 33
    return data[:at] + chunks + data[at:]


def _pillow_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_png_with_a_20_mb_comment_reads_fine_and_nothing_is_printed(capfd, depth, where):
    pixels = rng_pixels((10, 12, 3), np.uint16 if depth == 16 else np.uint8)
    comments = (_chunk(b"tEXt", b"Comment\x00" + b"x" * 20_000_000)
                + _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"y" * 20_000_000))  # over Pillow's limit
                + _chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + b"<x/>" * 1000))  # fmt: skip
    loaded = read_image(_png_with(pixels, comments, after_pixels=where == "after"))
    assert np.array_equal(loaded.pixels, pixels)
    assert capfd.readouterr().err == ""  # no "libpng warning: tEXt: out of memory", no Pillow complaint


def test_exif_kept_as_png_text_is_still_read():
    exif = Image.Exif()
    exif[271] = "Canon"
    raw = exif.tobytes()
    text = "\nexif\n" + f"{len(raw):8d}\n" + raw.hex() + "\n"  # ImageMagick's "Raw profile type exif"
    comment = _chunk(b"tEXt", b"Comment\x00" + b"x" * 2_000_000)
    data = _png_with(rng_pixels((4, 4, 3)), _chunk(b"tEXt", b"Raw profile type exif\x00" + text.encode()) + comment)
    loaded = read_image(data)
    parsed = Image.Exif()
    parsed.load(loaded.exif)
    assert parsed.get(271) == "Canon"


def _png16(raw_rows: bytes, width: int, height: int, compressed: bytes | None = None, extra: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    idat = compressed if compressed is not None else zlib.compress(raw_rows)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))  # fmt: skip


def test_what_libpng_would_complain_of_is_one_reason_and_nothing_is_printed(capfd):
    width, height = 8, 4
    rows = rng_pixels((height, width, 3), np.uint16).astype(">u2").view(np.uint8).reshape(height, -1)
    good = b"".join(b"\x00" + row.tobytes() for row in rows)
    adler = bytearray(zlib.compress(good))
    adler[-1] ^= 1
    crc = bytearray(_png16(good, width, height))
    at = crc.find(b"IDAT")
    crc[at + 4 + struct.unpack(">I", crc[at - 4:at])[0]] ^= 0xFF  # the chunk's CRC itself; its data is intact
    cases = {  # what is wrong: (the file, what the reason says)
        "a row filter that does not exist": (_png16(b"".join(b"\x07" + r.tobytes() for r in rows), width, height),
                                             "a row of pixels has an unknown filter"),
        "more data than the image": (_png16(good + b"\x00" * 100, width, height), "more pixel data than"),
        "a wrong stream checksum": (_png16(good, width, height, bytes(adler)), "incorrect data check"),
        "data after the stream": (_png16(good, width, height, zlib.compress(good) + b"junk"), "data after the end"),
        "a chunk failing its CRC": (bytes(crc), "the IDAT chunk fails its checksum"),
    }
    for data, reason in cases.values():
        with pytest.raises(ImageReadError, match=reason):
            read_image(data)
    bad_profile = _png16(good, width, height, extra=_chunk(b"iCCP", b"x\x00\x00" + zlib.compress(b"short")))
    assert read_image(bad_profile).pixels.shape == (height, width, 3)  # metadata libpng dislikes: read past
    assert capfd.readouterr().err == ""


def test_mutated_16_bit_png_and_tiff_files_never_print(capfd):
    import random

    from drcn_cli.io.tiff import encode_tiff

    pixels = rng_pixels((20, 20, 3), np.uint16)
    interlaced = bytearray(cv2.imencode(".png", pixels)[1].tobytes())
    bases = [encode_image(pixels, "PNG"), bytes(interlaced), encode_tiff(pixels, None, None, (72, 72)),
             encode_image(pixels.astype(np.uint8), "TIFF")]  # fmt: skip
    rng = random.Random("drcn-decoders-quiet")
    outcomes = {"read": 0, "refused": 0}
    for base in bases:
        for _ in range(60):
            data = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                top = min(len(data), 64) if rng.random() < 0.5 else len(data)
                data[rng.randrange(top)] ^= rng.randrange(1, 256)
            if rng.random() < 0.3:
                data = data[:rng.randrange(1, len(data))]
            try:
                read_image(bytes(data), max_pixels=10**6)
                outcomes["read"] += 1
            except ImageReadError:
                outcomes["refused"] += 1
    assert outcomes["read"] and outcomes["refused"]
    assert capfd.readouterr().err == ""  # libpng, libtiff, OpenCV and Pillow's log kept quiet
