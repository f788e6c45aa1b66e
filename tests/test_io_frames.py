"""drcn_cli.io.frames: animations read composited and written back whole, multi-page TIFFs page by page."""

import io

import numpy as np
import pytest
from conftest import animation_bytes
from PIL import Image, ImageSequence

from drcn_cli.io import frames as frames_module
from drcn_cli.io.atomic import OutputExistsError
from drcn_cli.io.formats import ImageReadError, written_by_drcn
from drcn_cli.io.frames import FramesFormatError, LoadedFrames, encode_frames, read_frames, write_frames
from drcn_cli.io.images import LoadedImage, read_image

DURATIONS = [40, 80, 120]


def rgba_frames(count=3, seed=0, holes=True):
    """``count`` RGBA frames of 12x10 from 12 colours, the second a small change of the first (so that encoders
    store it as a patch over it), each with a transparent hole in its own place."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (12, 3)).astype(np.uint8)
    frames = []
    for index in range(count):
        rgb = palette[rng.integers(0, 12, (10, 12))] if index != 1 else frames[0][:, :, :3].copy()
        if index == 1:
            rgb[6:8, 8:10] = palette[0]
        rgba = np.concatenate([rgb, np.full((10, 12, 1), 255, np.uint8)], axis=2)
        if holes:
            rgba[2 + index:5 + index, 3:7, 3] = 0
        frames.append(rgba)
    return frames


def animation(fmt, frames, **options):
    """The bytes of an animation of ``frames`` saved by Pillow (see conftest.animation_bytes)."""
    return animation_bytes(fmt, frames, DURATIONS, **options)


def composited(data):
    """Every frame of ``data`` as Pillow composites it, RGBA."""
    with Image.open(io.BytesIO(data)) as image:
        return [np.asarray(frame.convert("RGBA")) for frame in ImageSequence.Iterator(image)]


def visible(rgba):
    """The pixels as seen: colour where opaque, all zero where transparent (WebP drops a hidden pixel's colour)."""
    return np.where(rgba[:, :, 3:] == 0, 0, rgba)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_an_animation_is_read_whole_composited_with_durations_and_loop(fmt):
    frames = rgba_frames()
    loaded = read_frames(animation(fmt, frames, loop=2))
    assert isinstance(loaded, LoadedFrames)
    assert (loaded.kind, loaded.frames, loaded.source_format) == ("animation", 3, fmt)
    assert (loaded.durations, loaded.loop, (loaded.width, loaded.height)) == (DURATIONS, 2, (12, 10))
    for image, expected in zip(loaded.images, frames, strict=True):
        assert image.mode == "RGBA"
        np.testing.assert_array_equal(visible(image.pixels), visible(expected))


@pytest.mark.parametrize("source", ["GIF", "PNG", "WEBP"])
@pytest.mark.parametrize("target", ["GIF", "PNG", "WEBP"])
def test_frames_durations_loop_and_transparency_survive_each_animated_format(source, target):
    frames = rgba_frames(seed=1)
    loaded = read_frames(animation(source, frames, loop=0))
    data = encode_frames([image.pixels for image in loaded.images], loaded, target, quality=100)
    again = read_frames(data)
    assert isinstance(again, LoadedFrames) and again.source_format == target
    assert (again.frames, again.durations, again.loop) == (3, DURATIONS, 0)
    for image, expected in zip(again.images, frames, strict=True):
        np.testing.assert_array_equal(visible(image.pixels), visible(expected))  # 12 colours: exact in GIF too
    assert frames_module._sequence(data) == ("animation", 3)
    if target == "GIF":
        with Image.open(io.BytesIO(data)) as image:
            assert image.info["transparency"] == 255


def test_an_opaque_animation_is_rgb_and_one_without_a_loop_count_plays_once():
    frames = rgba_frames(holes=False)
    loaded = read_frames(animation("GIF", frames))  # no loop given: no NETSCAPE extension
    assert loaded.loop is None and [image.mode for image in loaded.images] == ["RGB"] * 3
    for target in ("PNG", "WEBP"):
        with Image.open(io.BytesIO(encode_frames([i.pixels for i in loaded.images], loaded, target))) as image:
            assert image.info["loop"] == 1  # played once, as the GIF
    with Image.open(io.BytesIO(encode_frames([i.pixels for i in loaded.images], loaded, "GIF"))) as image:
        assert "loop" not in image.info


def test_the_default_image_of_an_apng_is_not_a_frame():
    poster, *frames = rgba_frames(count=4, holes=False)
    buffer = io.BytesIO()
    images = [Image.fromarray(rgba) for rgba in (poster, *frames)]
    images[0].save(buffer, "PNG", save_all=True, append_images=images[1:], default_image=True,
                   duration=[0, *DURATIONS])  # fmt: skip
    loaded = read_frames(buffer.getvalue())
    assert loaded.frames == 3
    for image, expected in zip(loaded.images, frames, strict=True):
        np.testing.assert_array_equal(image.pixels, expected[:, :, :3])


def test_a_still_and_a_one_frame_animation_are_read_as_read_image_reads_them():
    for data in (animation("PNG", rgba_frames(count=1)), animation("GIF", rgba_frames(count=1))):
        loaded = read_frames(data)
        assert isinstance(loaded, LoadedImage)
        np.testing.assert_array_equal(loaded.pixels, read_image(data).pixels)


def pages_tiff():
    """A TIFF of three pages of different sizes and kinds: 8-bit RGB, 16-bit grey, 16-bit RGB with a DPI."""
    rng = np.random.default_rng(3)
    pages = [
        rng.integers(0, 256, (5, 8, 3)).astype(np.uint8),
        rng.integers(0, 65536, (6, 5)).astype(np.uint16),
        rng.integers(0, 65536, (7, 9, 3)).astype(np.uint16),
    ]
    modes = ("RGB", "I;16", "RGB;16")
    images = [LoadedImage(p, m, dpi=(300.0, 300.0)) for p, m in zip(pages, modes, strict=True)]
    loaded = LoadedFrames(images, "pages", source_format="TIFF")
    return pages, encode_frames(pages, loaded, "TIFF")


def test_each_page_of_a_tiff_is_read_and_written_as_a_still_of_its_own():
    pages, data = pages_tiff()
    loaded = read_frames(data)
    assert isinstance(loaded, LoadedFrames) and (loaded.kind, loaded.frames) == ("pages", 3)
    assert [image.mode for image in loaded.images] == ["RGB", "I;16", "RGB;16"]  # 16-bit colour: OpenCV's page
    for image, expected in zip(loaded.images, pages, strict=True):
        np.testing.assert_array_equal(image.pixels, expected)
        assert image.dpi == (300.0, 300.0)
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == 3
        sizes = []
        for index in range(3):
            image.seek(index)
            image.load()
            sizes.append(image.size)
    assert sizes == [(8, 5), (5, 6), (9, 7)]
    assert read_image(data).frames == 3


def test_outputs_that_cannot_hold_the_frames_are_refused_before_decoding(monkeypatch):
    decoded = []
    monkeypatch.setattr(frames_module, "_load_strictly", lambda image: decoded.append(image))
    monkeypatch.setattr(frames_module, "_decode", lambda *args: decoded.append(args))
    gif = animation("GIF", rgba_frames())
    for fmt in ("JPEG", "TIFF"):
        with pytest.raises(FramesFormatError, match=r"cannot hold an animation \(3 frames\).*--first-frame"):
            read_frames(gif, output_format=fmt)
    with pytest.raises(FramesFormatError, match="cannot hold the 3 pages of a TIFF: write TIFF.*--first-frame"):
        read_frames(pages_tiff()[1], output_format="PNG")
    assert decoded == []


def test_the_limits_apply_to_every_page_before_any_is_decoded(monkeypatch):
    _, data = pages_tiff()
    decoded = []
    monkeypatch.setattr(frames_module, "_decode", lambda *args: decoded.append(args))
    with pytest.raises(ImageReadError, match=r"^page 3 of 3: 9x7 = .* is over --max-pixels"):
        read_frames(data, max_pixels=62)
    seen = []
    read_frames(animation("GIF", rgba_frames()), max_pixels=120, check_size=lambda w, h: seen.append((w, h)))
    assert seen == [(12, 10)]  # the canvas, once: each frame is of its size, and frames add up to nothing
    with pytest.raises(ImageReadError, match="12x10 = .* is over --max-pixels"):
        read_frames(animation("GIF", rgba_frames()), max_pixels=119)
    assert decoded == []


def test_a_damaged_frame_names_itself():
    data = animation("PNG", rgba_frames())
    with pytest.raises(ImageReadError, match=r"^frame 3 of 3: truncated or corrupt image \("):
        read_frames(data[:-40])


def test_write_frames_is_atomic_marked_and_refuses_an_existing_file(tmp_path):
    loaded = read_frames(animation("WEBP", rgba_frames()))
    target = tmp_path / "out.webp"
    size = write_frames(target, [image.pixels for image in loaded.images], loaded)
    assert size == target.stat().st_size and written_by_drcn(target)
    with pytest.raises(OutputExistsError):
        write_frames(target, [image.pixels for image in loaded.images], loaded, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.webp"]
    with pytest.raises(FramesFormatError):
        write_frames(tmp_path / "out.jpg", [image.pixels for image in loaded.images], loaded)
