"""drcn_cli.io.gif: stills and animations as GIF, one palette, 1-bit transparency, every frame shown as given."""

import io

import numpy as np
import pytest
from PIL import Image, ImageSequence

from drcn_cli.io.formats import ImageFormatError, format_from_path, normalize_format, written_by_drcn
from drcn_cli.io.gif import encode_gif
from drcn_cli.io.write import encode_image, write_image


def colours(shape, count=12, seed=0):
    """RGB pixels drawn from ``count`` colours (fewer than GIF's 256: the palette keeps them exactly)."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (count, 3)).astype(np.uint8)
    return palette[rng.integers(0, count, shape)]


def shown(data):
    """Each frame of a GIF as a viewer shows it (Pillow's compositing), RGBA, with its duration."""
    with Image.open(io.BytesIO(data)) as image:
        info = dict(image.info)
        frames = [(np.asarray(frame.convert("RGBA")), frame.info.get("duration")) for frame in
                  ImageSequence.Iterator(image)]  # fmt: skip
    return frames, info


def test_gif_is_an_output_format_chosen_by_name_or_extension():
    assert normalize_format("gif") == normalize_format(".GIF") == "GIF"
    assert format_from_path("a/b.GIF") == "GIF"


def test_a_grey_still_is_exact_and_carries_the_mark(tmp_path):
    grey = np.arange(240, dtype=np.uint8).reshape(12, 20)
    path = tmp_path / "grey.gif"
    write_image(path, grey)
    with Image.open(path) as image:
        assert image.format == "GIF" and getattr(image, "n_frames", 1) == 1
        np.testing.assert_array_equal(np.asarray(image.convert("L")), grey)
    assert written_by_drcn(path)


def test_16_bit_and_colour_stills_become_8_bit_palette_images():
    rgb = colours((10, 12)).astype(np.uint16) * 257
    frames, _ = shown(encode_image(rgb, "GIF"))
    np.testing.assert_array_equal(frames[0][0][:, :, :3], (rgb // 257).astype(np.uint8))
    assert frames[0][0][:, :, 3].min() == 255


def test_alpha_under_half_is_transparent_and_the_rest_opaque():
    rgba = np.concatenate([colours((6, 8)), np.zeros((6, 8, 1), np.uint8)], axis=2)
    rgba[:, :, 3] = np.array([0, 60, 127, 128, 200, 255, 255, 0], np.uint8)[None, :]
    frames, info = shown(encode_gif([rgba]))
    assert info["transparency"] == 255
    np.testing.assert_array_equal(frames[0][0][:, :, 3], np.where(rgba[:, :, 3] < 128, 0, 255))
    opaque = rgba[:, :, 3] >= 128
    np.testing.assert_array_equal(frames[0][0][opaque][:, :3], rgba[opaque][:, :3])


def test_each_frame_shows_as_given_with_moving_holes_and_black_edges():
    # Black opaque pixels along a frame's edges beside transparent ones: a writer that compared each frame with a
    # cleared (black, transparent) canvas by colour would leave them out and show holes there.
    frames = []
    for index in range(3):
        rgba = np.concatenate([colours((10, 12), seed=index), np.full((10, 12, 1), 255, np.uint8)], axis=2)
        rgba[:, 0, :3] = 0
        rgba[-1, :, :3] = 0
        rgba[2 + index:5 + index, 3:7, 3] = 0
        frames.append(rgba)
    got, info = shown(encode_gif(frames, durations=[40, 80, 120], loop=0))
    assert [duration for _, duration in got] == [40, 80, 120] and info["loop"] == 0
    for (pixels, _), expected in zip(got, frames, strict=True):
        np.testing.assert_array_equal(pixels[:, :, 3], expected[:, :, 3])
        visible = expected[:, :, 3] == 255
        np.testing.assert_array_equal(pixels[visible][:, :3], expected[visible][:, :3])


def test_opaque_frames_are_drawn_over_each_other_exactly():
    frames = [colours((10, 12), seed=0)]
    frames.append(frames[0].copy())
    frames[1][4:6, 4:6] = frames[0][0, 0]  # a small change: written as a patch over the first frame
    frames.append(colours((10, 12), seed=2))
    got, info = shown(encode_gif(frames, durations=[30, 30, 30]))
    assert "loop" not in info  # none given: played once
    assert len(got) == 3
    for (pixels, _), expected in zip(got, frames, strict=True):
        np.testing.assert_array_equal(pixels[:, :, :3], expected)


def test_a_frame_identical_to_the_one_before_is_merged_into_its_duration():
    first, second = colours((6, 8), seed=0), colours((6, 8), seed=1)
    got, _ = shown(encode_gif([first, first, second], durations=[50, 70, 90], loop=0))
    assert [duration for _, duration in got] == [120, 90]


def test_refusals():
    with pytest.raises(ImageFormatError, match="at least one frame"):
        encode_gif([])
    with pytest.raises(ImageFormatError, match="65535 pixels a side"):
        encode_gif([np.zeros((1, 65536), np.uint8)])
