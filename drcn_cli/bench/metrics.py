"""PSNR and SSIM as the super-resolution literature computes them (MATLAB conventions).

Conventions, from the evaluation code behind the published tables (Kim et al. and the SelfExSR benchmark
code they used, which builds on Wang et al.'s ``ssim_index.m``):

* Both metrics are computed on the luminance of 8-bit images: :func:`luma_8bit` is MATLAB's
  ``rgb2ycbcr`` applied to a uint8 RGB image, which returns uint8, so Y is rounded to whole grey levels.
  A one-channel image is measured on its own grey values (the standard code converts only 3-channel images).
* ``border`` pixels are cropped from each side first (the benchmarks crop ``scale`` pixels).
* PSNR: ``10 log10(peak^2 / MSE)`` over all remaining pixels, in float64; identical images give ``inf``.
* SSIM: 11x11 Gaussian window with sigma 1.5 (``fspecial('gaussian', 11, 1.5)``), K1 = 0.01, K2 = 0.03,
  L = ``peak``, 'valid' filtering (no padding), mean of the SSIM map. Images must be at least 11x11 after
  the crop.

Inputs are numpy arrays or torch tensors (any device) of shape (H, W), or with leading dimensions of size 1
(e.g. (1, 1, H, W)). Values are on the 0..``peak`` scale: ``peak=255`` (the default) for 8-bit grey levels,
``peak=1`` for images in [0, 1]. SSIM does not depend on the choice as long as ``peak`` matches the values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["SSIM_WINDOW", "crop_border", "luma_8bit", "psnr", "quantize_8bit", "score_y", "ssim"]

SSIM_WINDOW = 11  # side of the Gaussian window
_SSIM_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def crop_border(image: Any, border: int) -> Any:
    """Remove ``border`` pixels from each side of a (..., H, W) array or tensor (``shave`` in the MATLAB code)."""
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    height, width = image.shape[-2], image.shape[-1]
    if height <= 2 * border or width <= 2 * border:
        raise ValueError(f"image of {width}x{height} pixels has nothing left after cropping {border} from each side")
    if border == 0:
        return image
    return image[..., border : height - border, border : width - border]


def quantize_8bit(image: Any) -> Any:
    """Values in [0, 1] -> the nearest of the 256 levels k/255, clipped (MATLAB's im2uint8: round half up).

    Works on numpy arrays and torch tensors; keeps the type, dtype and [0, 1] scale.
    """
    if isinstance(image, np.ndarray):
        return np.floor(np.clip(image, 0.0, 1.0) * 255.0 + 0.5) / 255.0
    return (image.clamp(0.0, 1.0) * 255.0 + 0.5).floor() / 255.0


def luma_8bit(image: Any) -> np.ndarray:
    """(C, H, W) image in [0, 1] holding 8-bit values (C = 1 grey, or 3 RGB) -> (H, W) float64 Y on 0..255.

    RGB: MATLAB ``rgb2ycbcr`` on uint8, whose uint8 result rounds Y to a whole level:
    ``round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)`` with R, G, B in 0..255.
    Grey: the grey levels themselves (x 255, rounded), not passed through rgb2ycbcr.
    """
    values = _as_float64(image)
    if values.ndim != 3 or values.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1 or 3, H, W) image, got shape {values.shape}")
    if values.shape[0] == 1:
        return np.floor(values[0] * 255.0 + 0.5)
    r, g, b = values * 255.0
    return np.floor(16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0 + 0.5)


def score_y(sr: Any, hr: Any, border: int) -> tuple[float, float]:
    """(PSNR dB, SSIM) of the benchmark protocol, shared by `drcn bench` and training validation: MATLAB's 8-bit
    Y of both (C, H, W) images on 8-bit levels, ``border`` pixels cropped from each side."""
    y_sr, y_hr = luma_8bit(sr), luma_8bit(hr)
    return psnr(y_sr, y_hr, border=border), ssim(y_sr, y_hr, border=border)


def _as_float64(image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image.astype(np.float64, copy=False)
    return image.detach().to("cpu").double().numpy()


def _plane(image: Any, name: str) -> np.ndarray:
    """A 2-D float64 plane from (H, W) or (1, ..., 1, H, W)."""
    values = _as_float64(image)
    if values.ndim < 2 or any(d != 1 for d in values.shape[:-2]):
        raise ValueError(f"{name}: expected an (H, W) image (leading dimensions of size 1 allowed), got {values.shape}")
    return values.reshape(values.shape[-2:])


def _pair(a: Any, b: Any, border: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _plane(a, "first image"), _plane(b, "second image")
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape[::-1]} vs {y.shape[::-1]} (W, H)")
    return crop_border(x, border), crop_border(y, border)


def psnr(a: Any, b: Any, border: int = 0, peak: float = 255.0) -> float:
    """PSNR in dB of two (H, W) images on the 0..``peak`` scale after cropping ``border`` pixels per side.

    ``inf`` when they are identical.
    """
    x, y = _pair(a, b, border)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)


def _gaussian_1d() -> np.ndarray:
    # fspecial('gaussian', 11, 1.5) is the outer product of this normalised 1-D kernel with itself.
    offsets = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    kernel = np.exp(-(offsets**2) / (2.0 * _SSIM_SIGMA**2))
    return kernel / kernel.sum()


_GAUSSIAN = _gaussian_1d()


def _filter_valid(plane: np.ndarray) -> np.ndarray:
    """filter2(window, plane, 'valid') with the separable Gaussian window, in float64."""
    import cv2  # here: OpenCV is slow to import, and only SSIM needs it

    # sepFilter2D pads the border; the 'valid' part is what lies at least a half window inside.
    full = cv2.sepFilter2D(plane, cv2.CV_64F, _GAUSSIAN, _GAUSSIAN, borderType=cv2.BORDER_REFLECT)
    half = SSIM_WINDOW // 2
    return full[half:-half, half:-half]


def ssim(a: Any, b: Any, border: int = 0, peak: float = 255.0) -> float:
    """Mean SSIM of two (H, W) images on the 0..``peak`` scale after cropping ``border`` pixels per side.

    As Wang et al.'s ``ssim_index.m`` with its defaults (see the module docstring); no downsampling.
    Raises ValueError when less than 11x11 pixels remain.
    """
    x, y = _pair(a, b, border)
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after cropping, got {x.shape[1]}x{x.shape[0]}"
        )
    c1 = (_K1 * peak) ** 2
    c2 = (_K2 * peak) ** 2
    mu_x, mu_y = _filter_valid(x), _filter_valid(y)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = _filter_valid(x * x) - mu_xx
    var_y = _filter_valid(y * y) - mu_yy
    cov_xy = _filter_valid(x * y) - mu_xy
    ssim_map = ((2.0 * mu_xy + c1) * (2.0 * cov_xy + c2)) / ((mu_xx + mu_yy + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())
