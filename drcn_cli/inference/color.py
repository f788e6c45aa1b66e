"""Colour conversion and image arrays <-> tensors, with MATLAB's conventions and without losing bit depth (a PIL
image <-> an array is :mod:`drcn_cli.io.images`'s).

Tensors here are float, channels first, values in [0, 1] for every bit depth (uint8 / 255,
uint16 / 65535), so 16-bit images are computed in float and never pass through 8 bits.
YCbCr is MATLAB's ``rgb2ycbcr`` (ITU-R BT.601, studio swing: Y in 16..235, Cb/Cr in 16..240), written
on the [0, 1] scale: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ArrayFormat",
    "array_to_tensor",
    "rgb_to_ycbcr",
    "tensor_to_array",
    "ycbcr_to_rgb",
]

# Rows: Y, Cb, Cr; columns: R, G, B; the offsets are in 8-bit units. From MATLAB's rgb2ycbcr.
_RGB_TO_YCBCR = torch.tensor(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ],
    dtype=torch.float64,
)
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64)


def _apply_matrix(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    if x.shape[-3] != 3:
        raise ValueError(f"expected 3 channels in dim -3, got shape {tuple(x.shape)}")
    m = matrix.to(device=x.device, dtype=x.dtype)
    b = offset.to(device=x.device, dtype=x.dtype).view(3, 1, 1)
    return torch.einsum("ij,...jhw->...ihw", m, x) + b


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> YCbCr on the [0, 1] scale (Y in [16/255, 235/255]). No rounding."""
    return _apply_matrix(rgb, _RGB_TO_YCBCR / 255.0, _YCBCR_OFFSET / 255.0)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`rgb_to_ycbcr` (as MATLAB's ycbcr2rgb). No clamping."""
    inverse = torch.linalg.inv(_RGB_TO_YCBCR / 255.0)
    return _apply_matrix(ycbcr, inverse, -(inverse @ (_YCBCR_OFFSET / 255.0)))


@dataclass(frozen=True)
class ArrayFormat:
    """How to turn a float tensor back into the caller's array: dtype, scale and layout. The array's values are
    ``offset + max_value * t`` for the tensor's values t in [0, 1]."""

    dtype: np.dtype
    max_value: float  # 255 for uint8, 65535 for uint16, 1.0 for float in [0, 1]; else the span of the values
    channels: int
    had_channel_axis: bool  # (H, W, 1) vs (H, W)
    offset: float = 0.0  # 0, or the lowest value of data that goes below 0


def _scale_of(array: np.ndarray) -> tuple[float, float]:
    """(offset, full scale) that map ``array`` onto [0, 1] without clipping any of its values.

    uint8 and uint16: their full range. Float: [0, 1] when the values lie in it (the usual convention), else the
    span from min(0, lowest) to max(1, highest). int32 (Pillow's mode I, 32-bit TIFF samples): the 16-bit range
    when the values fit in it (as for a mode I image read from a file, which becomes uint16 then), else the span
    from min(0, lowest) to the highest, so that values beyond 16 bits (126000 in a 32-bit TIFF) come back as they
    were, never cut at 65535.
    """
    if array.dtype == np.uint8:
        return 0.0, 255.0
    if array.dtype == np.uint16:
        return 0.0, 65535.0
    if array.dtype != np.int32 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"unsupported image dtype {array.dtype} (use uint8, uint16, int32 or float)")
    low, high = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError("the image holds NaN or infinite values, which cannot be upscaled")
        if low >= 0.0 and high <= 1.0:
            return 0.0, 1.0
        offset = min(0.0, low)
        return offset, max(1.0, high) - offset
    if low >= 0 and high <= 65535:
        return 0.0, 65535.0
    offset = min(0.0, low)
    return offset, high - offset


def array_to_tensor(array: np.ndarray) -> tuple[torch.Tensor, ArrayFormat]:
    """(H, W) or (H, W, C) with C in 1..4 (grey, grey+alpha, RGB, RGBA; not BGR) -> (C, H, W) float32 in [0, 1].

    uint8 and uint16 are scaled by their full range; float arrays in [0, 1] are taken as they are. Values beyond
    those conventions (a float image in [0, 1000], a 32-bit integer image up to 126000) are mapped by their own
    span (:func:`_scale_of`) and come back in it from :func:`tensor_to_array`: nothing is clipped away.
    """
    if array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise ValueError(f"expected an image array of shape (H, W) or (H, W, 1..4), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"empty image array of shape {array.shape}")
    offset, max_value = _scale_of(array)
    had_channel_axis = array.ndim == 3
    hwc = array if had_channel_axis else array[:, :, None]
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    if offset == 0.0 and max_value in (1.0, 255.0, 65535.0):
        tensor = torch.from_numpy(chw.astype(np.float32))
        if max_value != 1.0:
            tensor /= max_value
    else:  # in float64 first: 32-bit integers keep their precision up to the division
        tensor = torch.from_numpy(((chw.astype(np.float64) - offset) / max_value).astype(np.float32))
    return tensor, ArrayFormat(array.dtype, max_value, hwc.shape[2], had_channel_axis, offset)


def tensor_to_array(tensor: torch.Tensor, fmt: ArrayFormat) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> an array in ``fmt``: clipped to the range, rounded for integer dtypes."""
    values = tensor.detach().float().clamp(0.0, 1.0).cpu()
    integer = np.issubdtype(fmt.dtype, np.integer)
    if fmt.offset != 0.0 or fmt.max_value not in (1.0, 255.0, 65535.0):
        scaled = values.double() * fmt.max_value
        if integer:
            scaled = torch.floor(scaled + 0.5)
        array = (scaled + fmt.offset).numpy().transpose(1, 2, 0)
        if integer:
            info = np.iinfo(fmt.dtype)
            array = np.clip(array, info.min, info.max)
        array = array.astype(fmt.dtype)
        return array if fmt.had_channel_axis else array[:, :, 0]
    if fmt.max_value != 1.0:
        # Round half up, as MATLAB's im2uint8 does: floor(v * max + 0.5).
        values = torch.floor(values * fmt.max_value + 0.5)
    array = values.numpy().transpose(1, 2, 0).astype(fmt.dtype)
    return array if fmt.had_channel_axis else array[:, :, 0]
