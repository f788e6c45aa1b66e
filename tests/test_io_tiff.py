"""The TIFF encoder (drcn_cli/io/tiff.py, tifffile): exact round trips through drcn's reader, Pillow and OpenCV
(libtiff), what is kept (ICC profile, DPI, descriptive EXIF tags, drcn's mark), deflate that pays, BigTIFF by size."""

import io

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from drcn_cli.io import tiff
from drcn_cli.io.formats import written_by_drcn
from drcn_cli.io.images import read_image
from drcn_cli.io.tiff import encode_tiff, needs_bigtiff
from drcn_cli.io.write import encode_image, write_image

GIB = 2**30


def rng_pixels(shape, dtype=np.uint16, seed=0):
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, int(info.max) + 1, shape, dtype=dtype)


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def smooth_rgb16(height=256, width=256) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 200, y * 180, (x + y) * 97], axis=2).astype(np.uint16)


def assert_libtiff_reads(data: bytes, pixels: np.ndarray) -> None:
    """OpenCV decodes TIFF with libtiff; Pillow opens and loads it (through libtiff too, for deflate)."""
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    order = {3: [2, 1, 0], 4: [2, 1, 0, 3]}.get(pixels.shape[2] if pixels.ndim == 3 else 1)
    np.testing.assert_array_equal(decoded if order is None else decoded[:, :, order], pixels)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (pixels.shape[1], pixels.shape[0])


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_rgb_and_rgba_round_trip_bit_exact_with_profile_and_dpi(channels):
    pixels = rng_pixels((33, 47, channels))
    icc = srgb_profile()
    data = encode_image(pixels, "TIFF", icc_profile=icc, dpi=(300, 300))
    assert data[:4] == b"II*\x00"  # classic little-endian TIFF at this size
    loaded = read_image(data)
    assert loaded.mode == ("RGB;16" if channels == 3 else "RGBA;16") and loaded.pixels.dtype == np.uint16
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.icc_profile == icc
    assert loaded.dpi == (300.0, 300.0)
    assert_libtiff_reads(data, pixels)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.predictor == tifffile.PREDICTOR.HORIZONTAL
        assert page.extrasamples == ((tifffile.EXTRASAMPLE.UNASSALPHA,) if channels == 4 else ())
        np.testing.assert_array_equal(page.asarray(), pixels)


@pytest.mark.parametrize(
    ("pixels", "mode"),
    [
        (rng_pixels((9, 11), np.uint8), "L"),
        (rng_pixels((9, 11, 2), np.uint8), "LA"),
        (rng_pixels((9, 11, 3), np.uint8), "RGB"),
        (rng_pixels((9, 11, 4), np.uint8), "RGBA"),
        (rng_pixels((9, 11), np.uint16), "I;16"),
        (np.linspace(-7, 126000, 99).reshape(9, 11).astype(np.int32), "I"),
        (np.linspace(-3.0, 1000.0, 99).reshape(9, 11).astype(np.float32), "F"),
    ],
)
def test_every_tiff_drcn_writes_reads_back_exactly(pixels, mode):
    data = encode_image(pixels, "TIFF", dpi=(72, 72))
    loaded = read_image(data)
    assert loaded.mode == mode
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.dpi == (72.0, 72.0)
    with Image.open(io.BytesIO(data)) as image:
        np.testing.assert_array_equal(np.asarray(image), pixels)


def test_16_bit_grey_alpha_is_written_as_rgba_with_grey_profiles_left_out():
    pixels = rng_pixels((6, 8, 2))
    grey = bytes(16) + b"GRAY" + bytes(108)  # a grey profile's header: it does not fit RGBA, so it is left out
    loaded = read_image(encode_image(pixels, "TIFF", icc_profile=grey))
    assert loaded.mode == "RGBA;16" and loaded.icc_profile is None
    np.testing.assert_array_equal(loaded.pixels[:, :, 3], pixels[:, :, 1])
    np.testing.assert_array_equal(loaded.pixels[:, :, 0], pixels[:, :, 0])


def test_deflate_makes_a_smooth_image_smaller_than_its_samples():
    pixels = smooth_rgb16()
    data = encode_image(pixels, "TIFF")
    assert len(data) < pixels.nbytes / 4  # raw: 393,216 bytes
    np.testing.assert_array_equal(read_image(data).pixels, pixels)
    eight = (pixels >> 8).astype(np.uint8)
    assert len(encode_image(eight, "TIFF")) < eight.nbytes / 4


def test_16_bit_tiff_keeps_the_descriptive_exif_as_the_8_bit_one_does():
    exif = Image.Exif()
    exif[271], exif[272], exif[315], exif[33432] = "Make", "Model", "Jürgen", "someone"
    exif[274] = 1
    exif.get_ifd(0x8769)[0x829A] = 0.01  # exposure time: an EXIF sub-directory tag, not kept
    for pixels in (rng_pixels((5, 6, 3)), rng_pixels((5, 6, 3), np.uint8)):
        data = encode_image(pixels, "TIFF", exif=exif.tobytes())
        with Image.open(io.BytesIO(data)) as out:
            tags = out.getexif()
            assert (tags[271], tags[272], tags[33432], tags[274]) == ("Make", "Model", "someone", 1)
            assert tags[315] == "J?rgen"  # TIFF's ASCII holds 7 bits, as Pillow writes it
            assert 0x8769 not in tags
            assert 305 not in tags  # no "tifffile.py" Software tag: the input's only


def test_the_mark_is_in_every_tiff(tmp_path):
    for name, pixels in {"a.tif": rng_pixels((4, 5, 3)), "b.tif": rng_pixels((4, 5), np.uint8)}.items():
        write_image(tmp_path / name, pixels)
        assert written_by_drcn(tmp_path / name)


@pytest.mark.parametrize("dpi", [None, (0.0, 0.0), (float("nan"), 72.0)])
def test_no_or_meaningless_dpi_writes_no_resolution(dpi):
    loaded = read_image(encode_image(rng_pixels((4, 5, 3)), "TIFF", dpi=dpi))
    assert loaded.dpi is None


def test_bigtiff_is_decided_by_the_byte_size():
    megapixels = 10**6
    assert not needs_bigtiff(0) and not needs_bigtiff(100 * megapixels * 4 * 2)
    assert not needs_bigtiff(1000 * megapixels * 4)  # 1,000 Mpx RGBA at 8 bits: 4.0 GB, within a classic TIFF
    assert needs_bigtiff(1000 * megapixels * 3 * 2)  # 1,000 Mpx RGB at 16 bits: 6 GB
    assert needs_bigtiff(1000 * megapixels * 4 * 2)
    assert needs_bigtiff(4 * GIB) and not needs_bigtiff(4 * GIB - 64 * 2**20)  # the margin under 4 GiB holds tags


def test_encode_takes_the_decision_from_the_samples_and_tags(monkeypatch):
    pixels = rng_pixels((20, 30, 4))
    icc = srgb_profile()
    asked = []

    def decide(nbytes):
        asked.append(nbytes)
        return True

    monkeypatch.setattr(tiff, "needs_bigtiff", decide)
    data = encode_image(pixels, "TIFF", icc_profile=icc)
    assert asked and asked[0] >= pixels.nbytes + len(icc)
    assert data[:4] == b"II+\x00"  # BigTIFF, little-endian
    loaded = read_image(data)
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.icc_profile == icc
    assert_libtiff_reads(data, pixels)


def test_bigtiff_can_be_forced_and_reads_back():
    pixels = rng_pixels((7, 9, 3))
    assert encode_tiff(pixels, bigtiff=False)[:4] == b"II*\x00"
    data = encode_tiff(pixels, bigtiff=True)
    assert data[:4] == b"II+\x00"
    np.testing.assert_array_equal(read_image(data).pixels, pixels)


def test_a_16_bit_grey_upscale_stays_16_bit_grey_in_tiff(tmp_path):
    from typer.testing import CliRunner

    from drcn_cli.cli import app

    source = tmp_path / "grey16.tif"
    tifffile.imwrite(source, rng_pixels((12, 10), np.uint16))
    result = CliRunner().invoke(app, ["upscale", str(source), "-s", "2", "--method", "bicubic", "-o",
                                      str(tmp_path / "out.tif")])
    assert result.exit_code == 0, result.output
    written = tifffile.imread(tmp_path / "out.tif")
    assert written.dtype == np.uint16 and written.shape == (24, 20)
