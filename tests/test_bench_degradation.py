"""drcn_cli.bench.degradation: the one degradation (mod-crop, 8-bit LR, optionally through a JPEG file) of
training, validation and `drcn bench`."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from drcn_cli.bench.degradation import DataError, downscale, jpeg_roundtrip, mod_crop_size
from drcn_cli.bench.metrics import quantize_8bit
from drcn_cli.inference.resize import imresize


def _smooth_rgb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    small = (rng.random((max(2, height // 4), max(2, width // 4), 3)) * 255).astype(np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def test_mod_crop_size_integer_and_fractional_scales():
    assert mod_crop_size(50, 49, 3) == ((48, 48), (16, 16))
    assert mod_crop_size(48, 48, 4) == ((48, 48), (12, 12))
    assert mod_crop_size(50, 41, 2.5) == ((50, 40), (20, 16))
    assert mod_crop_size(2, 2, 3) == ((0, 0), (0, 0))


def test_jpeg_roundtrip_is_a_real_jpeg_file_of_rgb_and_grey():
    rgb = torch.from_numpy(_smooth_rgb(np.random.default_rng(3), 24, 40)).permute(2, 0, 1).float() / 255
    out = jpeg_roundtrip(rgb, 30)
    assert out.shape == rgb.shape and out.dtype == torch.float32
    assert torch.equal(out, (out * 255).round() / 255)  # 8-bit levels
    assert 0 < (out - rgb).abs().mean() < 0.1  # changed, but the same picture
    # What a user's file holds: Pillow's JPEG at that quality, decoded.
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).round().byte().permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=30)
    expected = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1).float() / 255
    assert torch.equal(out, expected)
    grey = rgb[:1]
    assert jpeg_roundtrip(grey, 50).shape == (1, 24, 40)
    assert (jpeg_roundtrip(rgb, 95) - rgb).abs().mean() < (out - rgb).abs().mean()  # quality matters
    with pytest.raises(DataError, match="1..100"):
        jpeg_roundtrip(rgb, 0)


def test_downscale_without_jpeg_is_unchanged_and_with_jpeg_differs():
    hr = torch.from_numpy(_smooth_rgb(np.random.default_rng(4), 48, 40)).permute(2, 0, 1).float() / 255
    target, clean = downscale(hr, 2)
    assert torch.equal(clean, quantize_8bit(imresize(hr, size=(24, 20))))
    target_j, lr_j = downscale(hr, 2, jpeg=40)
    assert torch.equal(target_j, target) and torch.equal(lr_j, jpeg_roundtrip(clean, 40))
    assert not torch.equal(lr_j, clean)
    with pytest.raises(DataError, match="quantize_lr"):
        downscale(hr, 2, quantize_lr=False, jpeg=40)
