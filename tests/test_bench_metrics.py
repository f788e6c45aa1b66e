"""PSNR / SSIM / crops / 8-bit luma against values worked out by hand on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from drcn_cli.bench.metrics import crop_border, luma_8bit, psnr, quantize_8bit, ssim

C1 = (0.01 * 255) ** 2  # 6.5025
C2 = (0.03 * 255) ** 2  # 58.5225


# ------------------------------------------------------------------------------------------------------ PSNR


def test_psnr_of_a_one_level_error_is_20_log10_255():
    a = np.zeros((20, 20))
    assert psnr(a, a + 1) == pytest.approx(48.1308036, abs=1e-6)  # 10 log10(255^2 / 1)


def test_psnr_mse_is_the_mean_over_all_pixels():
    a = np.zeros((4, 6))
    b = a.copy()
    b[:2] = 2.0  # half the pixels off by 2: MSE = (4 * 12) / 24 = 2
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 2), abs=1e-9)
    assert psnr(a, b) == pytest.approx(45.1205, abs=1e-4)


def test_psnr_with_peak_one_for_unit_range_images():
    a = np.full((8, 8), 0.5)
    assert psnr(a, a + 0.1, peak=1.0) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01


def test_psnr_identical_is_infinite():
    a = np.arange(64, dtype=float).reshape(8, 8)
    assert psnr(a, a) == math.inf


def test_psnr_border_crop_removes_the_frame():
    a = np.zeros((12, 12))
    b = a.copy()
    b[:2, :] = 50
    b[:, -2:] = 50  # errors only in a 2-pixel frame (top and right)
    assert psnr(a, b, border=2) == math.inf
    assert math.isfinite(psnr(a, b, border=1))


def test_psnr_accepts_tensors_with_leading_unit_dims():
    a = torch.zeros(1, 1, 10, 10)
    b = torch.full((1, 1, 10, 10), 3.0)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 9), abs=1e-9)
    assert psnr(a, b) == psnr(a.numpy()[0, 0], b.numpy()[0, 0])


def test_psnr_rejects_mismatched_sizes_and_colour_planes():
    with pytest.raises(ValueError, match="differ in size"):
        psnr(np.zeros((10, 10)), np.zeros((10, 11)))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        psnr(np.zeros((3, 10, 10)), np.zeros((3, 10, 10)))


# ------------------------------------------------------------------------------------------------------ SSIM


def test_ssim_identical_is_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16)).astype(float)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_two_flat_images_is_the_luminance_term():
    # Both variances and the covariance are 0, so the contrast-structure term is C2 / C2 = 1 everywhere.
    a, b = np.full((15, 15), 100.0), np.full((15, 15), 110.0)
    expected = (2 * 100 * 110 + C1) / (100**2 + 110**2 + C1)
    assert expected == pytest.approx(0.995476, abs=1e-6)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-10)


def _gaussian_window() -> np.ndarray:
    ax = np.arange(11) - 5.0
    w = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    return w / w.sum()


def _one_window_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """The SSIM formula written out for one 11x11 window (Wang et al. 2004, eq. 13 with a Gaussian window)."""
    w = _gaussian_window()
    mx, my = (w * x).sum(), (w * y).sum()
    vx = (w * x * x).sum() - mx * mx
    vy = (w * y * y).sum() - my * my
    cxy = (w * x * y).sum() - mx * my
    return ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))


def test_ssim_on_an_11x11_image_is_the_single_window_value():
    yy, xx = np.mgrid[0:11, 0:11]
    a = ((xx + yy) % 2) * 200.0 + 20  # checkerboard 20 / 220
    b = 0.5 * a + 64
    assert ssim(a, b) == pytest.approx(_one_window_ssim(a, b), abs=1e-12)


def test_ssim_is_the_mean_over_valid_windows():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (14, 13)).astype(float)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    windows = [
        _one_window_ssim(a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]) for i in range(4) for j in range(3)
    ]
    assert ssim(a, b) == pytest.approx(np.mean(windows), abs=1e-12)


def test_ssim_border_crop_and_peak_scale():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (30, 30)).astype(float)
    b = np.clip(a + rng.normal(0, 15, a.shape), 0, 255)
    assert ssim(a, b, border=3) == pytest.approx(ssim(a[3:-3, 3:-3], b[3:-3, 3:-3]), abs=1e-12)
    assert ssim(a / 255, b / 255, peak=1.0) == pytest.approx(ssim(a, b), abs=1e-12)
    t = ssim(torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float())
    assert t == pytest.approx(ssim(a, b), abs=1e-6)


def test_ssim_needs_an_11x11_window_after_the_crop():
    a = np.zeros((16, 16))
    with pytest.raises(ValueError, match="11x11"):
        ssim(a, a, border=3)  # 10x10 left


# ----------------------------------------------------------------------------------------------- crops, luma


def test_crop_border_shapes_and_errors():
    x = torch.arange(2 * 8 * 9).reshape(2, 8, 9)
    assert torch.equal(crop_border(x, 2), x[:, 2:6, 2:7])
    assert crop_border(x, 0) is x
    with pytest.raises(ValueError, match="nothing left"):
        crop_border(x, 4)


def test_luma_8bit_is_matlab_rgb2ycbcr_on_uint8():
    def rgb(r, g, b):
        return torch.tensor([r, g, b], dtype=torch.float32).view(3, 1, 1) / 255

    assert luma_8bit(rgb(255, 255, 255))[0, 0] == 235  # 16 + 219
    assert luma_8bit(rgb(0, 0, 0))[0, 0] == 16
    assert luma_8bit(rgb(255, 0, 0))[0, 0] == 81  # 16 + 65.481 -> 81.481
    assert luma_8bit(rgb(0, 255, 0))[0, 0] == 145  # 16 + 128.553 -> 144.553
    assert luma_8bit(rgb(100, 100, 100))[0, 0] == 102  # equal channels: still RGB, 16 + 219 * 100/255 = 101.88


def test_luma_8bit_of_a_grey_image_is_its_grey_level():
    grey = torch.full((1, 2, 2), 100 / 255)
    assert np.all(luma_8bit(grey) == 100)
    with pytest.raises(ValueError, match="1 or 3"):
        luma_8bit(torch.zeros(2, 4, 4))


def test_quantize_8bit_rounds_to_levels_and_clips():
    x = torch.tensor([0.3 / 255, 0.7 / 255, 100.6 / 255, 1.2, -0.1])
    assert torch.allclose(quantize_8bit(x) * 255, torch.tensor([0.0, 1.0, 101.0, 255.0, 0.0]))
    assert np.allclose(quantize_8bit(x.numpy()) * 255, [0, 1, 101, 255, 0])
