"""`drcn quantize`'s work: an int8 calibration made from HR images and checked against fp32 by the paper's protocol.

Calibration inputs are what the network sees at run time: crops of the bicubic-upsampled luminance of each image,
degraded by the one degradation (:func:`drcn_cli.bench.degradation.downscale`) at each scale. The check scores
fp32 and int8 on benchmark images at each scale and records the largest drop, which `--precision auto` reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..inference.color import rgb_to_ycbcr
from ..inference.int8 import Int8Calibration, Int8Error, Int8Network, calibrate
from ..inference.loader import ReadyModel
from ..inference.pipeline import Upscaler, open_upscaler
from ..inference.resize import imresize
from ..weights.files import load_weights
from ..weights.resolve import sha256_file
from .datasets import load_image
from .degradation import downscale
from .protocol import evaluate, make_sample

__all__ = ["CalibrationCheck", "calibration_inputs", "check_calibration", "make_calibration"]


def calibration_inputs(
    images: Sequence[str | os.PathLike], scales: Sequence[int] = (2, 3, 4), crop: int = 96, seed: int = 0
) -> list[torch.Tensor]:
    """One network input (1, 1, h, w) per image: its bicubic-upsampled luminance at a scale taken in turn from
    ``scales``, cropped to ``crop`` x ``crop`` at a seeded place (whole where smaller)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for i, path in enumerate(images):
        hr = load_image(path)
        scale = scales[i % len(scales)]
        _hr, lr = downscale(hr, scale)
        y = rgb_to_ycbcr(lr)[:1] if lr.shape[0] == 3 else lr
        x = imresize(y[None], scale=float(scale))
        height, width = x.shape[-2:]
        top = int(torch.randint(0, max(height - crop, 0) + 1, (1,), generator=generator))
        left = int(torch.randint(0, max(width - crop, 0) + 1, (1,), generator=generator))
        inputs.append(x[..., top : top + crop, left : left + crop].contiguous())
    return inputs


def make_calibration(weights: Path, images: Sequence[str | os.PathLike], info: dict[str, str]) -> Int8Calibration:
    """The calibration of the weights file ``weights`` from HR ``images`` (see :func:`calibration_inputs`)."""
    model, _metadata = load_weights(weights)
    return calibrate(model, calibration_inputs(images), sha256_file(weights), info)


@dataclass(frozen=True)
class CalibrationCheck:
    """Per (set name, scale): (fp32 PSNR, SSIM, int8 PSNR, SSIM); and the largest drops over all cells."""

    cells: dict[tuple[str, int], tuple[float, float, float, float]]

    @property
    def psnr_drop(self) -> float:
        return max(fp_psnr - q_psnr for fp_psnr, _, q_psnr, _ in self.cells.values())

    @property
    def ssim_drop(self) -> float:
        return max(fp_ssim - q_ssim for _, fp_ssim, _, q_ssim in self.cells.values())


def check_calibration(
    weights: Path,
    calibration: Int8Calibration,
    sets: Sequence[tuple[str, Sequence[Path]]],
    scales: Sequence[int] = (2, 3, 4),
    on_cell: Callable[[str, int, tuple[float, float, float, float]], None] | None = None,
) -> CalibrationCheck:
    """fp32 against int8 with ``calibration`` (wherever it is to be written) on every set and scale, by the
    protocol. Raises Int8Error when the calibration does not fit the weights or ONNX Runtime is missing."""
    if calibration.weights_sha256 != sha256_file(weights):
        raise Int8Error(f"the calibration is not for {weights.name} (its sha256 differs)")
    model, _metadata = load_weights(weights)
    fp32 = open_upscaler(weights, "cpu", "fp32")
    ready = ReadyModel(Int8Network(model, calibration), torch.device("cpu"), "int8", weights)
    int8 = Upscaler(ready, ready.settings())
    cells = {}
    for name, images in sets:
        hrs = [load_image(p) for p in images]
        for scale in scales:
            samples = [make_sample(hr, scale) for hr in hrs]
            a, b = evaluate(samples, fp32)[float(scale)], evaluate(samples, int8)[float(scale)]
            cells[(name, scale)] = (a.psnr, a.ssim, b.psnr, b.ssim)
            if on_cell is not None:
                on_cell(name, scale, cells[(name, scale)])
    return CalibrationCheck(cells)
