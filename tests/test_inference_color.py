import numpy as np
import pytest
import torch
from PIL import Image

from drcn_cli.inference.color import array_to_tensor, rgb_to_ycbcr, tensor_to_array, ycbcr_to_rgb
from drcn_cli.io.images import array_to_pil, pil_to_array


def test_ycbcr_matches_matlab_rgb2ycbcr_on_known_colours():
    # MATLAB: rgb2ycbcr(double([1 0 0])) = [81.481 90.203 240] / 255 (red), white = [235 128 128] / 255.
    rgb = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64).T.reshape(3, 1, 3)
    ycbcr = rgb_to_ycbcr(rgb) * 255
    torch.testing.assert_close(ycbcr[:, 0, 0], torch.tensor([81.481, 90.203, 240.0], dtype=torch.float64))
    torch.testing.assert_close(ycbcr[:, 0, 1], torch.tensor([235.0, 128.0, 128.0], dtype=torch.float64))
    torch.testing.assert_close(ycbcr[:, 0, 2], torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64))


def test_ycbcr_round_trip_is_exact_in_float64_and_within_8bit_noise_in_float32():
    rgb = torch.rand(2, 3, 7, 5, dtype=torch.float64)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, rtol=0, atol=1e-12)
    rgb32 = rgb.float()
    assert (ycbcr_to_rgb(rgb_to_ycbcr(rgb32)) - rgb32).abs().max() < 1e-5


def test_ycbcr_of_8bit_image_round_trips_to_the_same_bytes():
    pixels = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    tensor, fmt = array_to_tensor(pixels)
    back = tensor_to_array(ycbcr_to_rgb(rgb_to_ycbcr(tensor)), fmt)
    assert np.array_equal(back, pixels)


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_ycbcr(torch.rand(4, 2, 2))


@pytest.mark.parametrize(
    "dtype,max_value", [(np.uint8, 255), (np.uint16, 65535)]
)
def test_integer_arrays_round_trip_bit_exactly(dtype, max_value):
    pixels = np.random.default_rng(1).integers(0, max_value + 1, (4, 3, 4)).astype(dtype)
    tensor, fmt = array_to_tensor(pixels)
    assert tensor.shape == (4, 4, 3) and tensor.dtype == torch.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    back = tensor_to_array(tensor, fmt)
    assert back.dtype == dtype and np.array_equal(back, pixels)


def test_16bit_values_are_not_reduced_to_8_bits():
    pixels = np.array([[1000, 1001], [1002, 65535]], dtype=np.uint16)
    tensor, fmt = array_to_tensor(pixels)
    assert len(torch.unique(tensor)) == 4
    assert np.array_equal(tensor_to_array(tensor, fmt), pixels)


def test_layouts_and_rounding():
    grey = np.zeros((3, 2), np.uint8)
    tensor, fmt = array_to_tensor(grey)
    assert tensor.shape == (1, 3, 2) and tensor_to_array(tensor, fmt).shape == (3, 2)
    tensor, fmt = array_to_tensor(np.zeros((3, 2, 1), np.uint8))
    assert tensor_to_array(tensor, fmt).shape == (3, 2, 1)
    # Half rounds up as MATLAB's im2uint8; out-of-range values clip.
    values = torch.tensor([[[0.5 / 255, 1.49 / 255, -0.2, 1.3]]])
    assert tensor_to_array(values, fmt).ravel().tolist() == [1, 1, 0, 255]


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 5), np.uint8), np.zeros((0, 3), np.uint8), np.zeros((2, 2), np.int64)])
def test_bad_arrays_are_refused(bad):
    with pytest.raises(ValueError):
        array_to_tensor(bad)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "I;16"])
def test_pil_modes_round_trip(mode):
    rng = np.random.default_rng(2)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (5, 4)).astype(np.uint16))
    else:
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
        shape = (5, 4) if channels == 1 else (5, 4, channels)
        image = Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8))
    assert image.mode == mode
    array, restore = pil_to_array(image)
    assert restore == mode
    back = array_to_pil(array, restore)
    assert back.mode == mode and np.array_equal(np.asarray(back), np.asarray(image))


def test_palette_with_transparency_keeps_alpha_and_cmyk_becomes_rgb():
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.info["transparency"] = 0
    array, mode = pil_to_array(palette)
    assert mode == "RGBA" and array.shape == (4, 4, 4)
    assert array[0, 0, 3] == 0 and array[1, 1, 3] == 255 and tuple(array[1, 1, :3]) == (0, 255, 0)
    array, mode = pil_to_array(Image.new("CMYK", (3, 2), (0, 0, 0, 0)))
    assert mode == "RGB" and array.shape == (2, 3, 3) and array.min() == 255


def test_values_beyond_the_usual_ranges_come_back_unclipped():
    deep = np.array([[-7, 0, 65535, 126000]], np.int32)  # Pillow's mode I: a 32-bit TIFF's samples
    tensor, fmt = array_to_tensor(deep)
    assert float(tensor.min()) == 0.0 and float(tensor.max()) == 1.0  # onto [0, 1] by the values' own span
    assert tensor_to_array(tensor, fmt).dtype == np.int32 and np.array_equal(tensor_to_array(tensor, fmt), deep)
    wide = np.array([[-3.0, 0.5, 1000.0]], np.float32)
    tensor, fmt = array_to_tensor(wide)
    np.testing.assert_allclose(tensor_to_array(tensor, fmt), wide, rtol=1e-6)
    usual = np.array([[0.0, 0.25, 1.0]], np.float32)  # [0, 1] as it always was
    tensor, fmt = array_to_tensor(usual)
    assert torch.equal(tensor, torch.from_numpy(usual)[None]) and fmt.offset == 0.0 and fmt.max_value == 1.0
    tensor, fmt = array_to_tensor(np.array([[0, 40000]], np.int32))  # fits 16 bits: the 16-bit scale
    assert fmt.max_value == 65535.0 and np.array_equal(tensor_to_array(tensor, fmt), [[0, 40000]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        array_to_tensor(np.array([[0.5, np.inf]], np.float32))


def test_a_mode_i_image_beyond_16_bits_stays_mode_i():
    image = Image.fromarray(np.array([[0, 126000], [-5, 7]], np.int32))
    array, mode = pil_to_array(image)
    assert mode == "I" and array.dtype == np.int32 and array.max() == 126000 and array.min() == -5
    assert array_to_pil(array, mode).mode == "I"
    array, mode = pil_to_array(Image.fromarray(np.array([[0, 60000]], np.int32)))
    assert mode == "I;16" and array.dtype == np.uint16
