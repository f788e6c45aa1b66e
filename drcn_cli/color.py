"""Colour conversion and image <-> tensor, with MATLAB's conventions and without losing bit depth.

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
    "pil_to_array",
    "array_to_pil",
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
    """How to turn a float tensor back into the caller's array: dtype, full-scale value and layout."""

    dtype: np.dtype
    max_value: float  # 255 for uint8, 65535 for uint16, 1.0 for float
    channels: int
    had_channel_axis: bool  # (H, W, 1) vs (H, W)


def array_to_tensor(array: np.ndarray) -> tuple[torch.Tensor, ArrayFormat]:
    """(H, W) or (H, W, C) with C in 1..4 (grey, grey+alpha, RGB, RGBA; not BGR) -> (C, H, W) float32 in [0, 1].

    uint8 and uint16 are scaled by their full range; float arrays are taken to be in [0, 1] already.
    """
    if array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise ValueError(f"expected an image array of shape (H, W) or (H, W, 1..4), got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"empty image array of shape {array.shape}")
    if array.dtype == np.uint8:
        max_value = 255.0
    elif array.dtype == np.uint16:
        max_value = 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        max_value = 1.0
    else:
        raise ValueError(f"unsupported image dtype {array.dtype} (use uint8, uint16 or float)")
    had_channel_axis = array.ndim == 3
    hwc = array if had_channel_axis else array[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)).astype(np.float32))
    if max_value != 1.0:
        tensor /= max_value
    return tensor, ArrayFormat(array.dtype, max_value, hwc.shape[2], had_channel_axis)


def tensor_to_array(tensor: torch.Tensor, fmt: ArrayFormat) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> an array in ``fmt``: clipped to the range, rounded for integer dtypes."""
    values = tensor.detach().float().clamp(0.0, 1.0).cpu()
    if fmt.max_value != 1.0:
        # Round half up, as MATLAB's im2uint8 does: floor(v * max + 0.5).
        values = torch.floor(values * fmt.max_value + 0.5)
    array = values.numpy().transpose(1, 2, 0).astype(fmt.dtype)
    return array if fmt.had_channel_axis else array[:, :, 0]


def pil_to_array(image) -> tuple[np.ndarray, str]:
    """A PIL image -> (array for :func:`array_to_tensor`, the PIL mode to rebuild in :func:`array_to_pil`).

    Grey, grey+alpha, RGB and RGBA are kept as they are; 16-bit grey (I;16*) and 32-bit integer grey (I)
    become uint16; float grey (F) stays float; bilevel (1) becomes L; palette becomes RGB or RGBA (with
    its transparency); CMYK, YCbCr, LAB and HSV become RGB.
    """
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(image), mode
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image)
        if array.dtype != np.uint16:
            array = np.clip(array, 0, 65535).astype(np.uint16)
        return array, "I;16"
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
    from PIL import Image

    dtype = {"I;16": np.uint16, "F": np.float32}.get(mode, np.uint8)
    image = Image.fromarray(np.ascontiguousarray(array.astype(dtype, copy=False)))
    if image.mode != mode:
        raise ValueError(f"array of shape {array.shape} and dtype {array.dtype} does not make a {mode} image")
    return image
