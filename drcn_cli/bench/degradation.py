"""The one degradation of training, validation and `drcn bench`: an HR image -> its mod-crop and its LR image, as
the DRCN/VDSR MATLAB recipe makes it (MATLAB's bicubic imresize to the exact LR size, rounded to 8 bits as an image
file is), optionally through a JPEG file at a given quality, as a photo from the web is.

The protocol (:mod:`drcn_cli.bench.protocol`) measures with it; training (:mod:`drcn_cli.training.data`) builds its
inputs with it.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from ..errors import DrcnError
from ..inference.resize import imresize
from .metrics import quantize_8bit

__all__ = ["DataError", "downscale", "jpeg_roundtrip", "mod_crop_size"]


class DataError(DrcnError, ValueError):
    """Training or validation data that cannot be used (missing, unreadable, empty, too small)."""


def _levels(image: torch.Tensor) -> torch.Tensor:
    """Float on 8-bit levels -> uint8."""
    return (image * 255.0).round().to(torch.uint8)


def mod_crop_size(height: int, width: int, scale: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H', W') of the HR crop, (h, w) of its LR image) for a scale factor.

    The LR side is floor(side / scale); the HR crop is that times the scale, which for an integer scale is
    MATLAB's modcrop. For a fractional scale the crop is rounded, and the resize uses the exact size ratio.
    """
    lr = (math.floor(height / scale + 1e-9), math.floor(width / scale + 1e-9))
    hr = (min(height, round(lr[0] * scale)), min(width, round(lr[1] * scale)))
    return hr, lr


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """image (C, h, w) float on 8-bit levels, C = 3 (RGB) or 1 (grey) -> the same image saved as a JPEG file at
    ``quality`` (1..95, Pillow's encoder with its default 4:2:0 chroma subsampling for colour) and read back."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise DataError(f"the JPEG step takes a (C, h, w) image with C = 1 or 3, got shape {tuple(image.shape)}")
    if not 1 <= quality <= 100:
        raise DataError(f"JPEG quality must be in 1..100, got {quality}")
    pixels = _levels(image.detach().cpu().clamp(0, 1)).permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[..., 0] if image.shape[0] == 1 else pixels, "L" if image.shape[0] == 1 else "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(buffer).convert(picture.mode))
    out = torch.from_numpy(decoded.copy()).float().div_(255.0)
    return (out[None] if out.dim() == 2 else out.permute(2, 0, 1)).to(image.device)


def downscale(
    hr: torch.Tensor, scale: float, quantize_lr: bool = True, jpeg: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one degradation of training, validation and `drcn bench`: hr (..., H, W) float in [0, 1] ->
    (HR mod-cropped, LR), with LR = MATLAB's imresize of the crop to its exact LR size (:func:`mod_crop_size`),
    rounded to 8 bits as an image file is (unless ``quantize_lr`` is False); with ``jpeg`` a quality, the LR
    image (C, h, w) is then saved as JPEG at that quality and read back (:func:`jpeg_roundtrip`).

    Raises DataError when the LR image would be empty.
    """
    (hh, ww), (lh, lw) = mod_crop_size(hr.shape[-2], hr.shape[-1], scale)
    if lh < 1 or lw < 1:
        raise DataError(f"an image of {hr.shape[-1]}x{hr.shape[-2]} is too small for scale {scale:g}")
    if jpeg is not None and not quantize_lr:
        raise DataError("the JPEG step works on 8-bit LR images: it needs quantize_lr")
    target = hr[..., :hh, :ww]
    lr = imresize(target, size=(lh, lw))
    lr = quantize_8bit(lr) if quantize_lr else lr
    return target, jpeg_roundtrip(lr, jpeg) if jpeg is not None else lr
