"""The paper's evaluation protocol: the one way `drcn bench` and training validation degrade and score an image.

Protocol (one HR image, scale s), as Table 1 of the DRCN paper, which used "the public evaluation code
used in [10]" (Huang et al.'s SelfExSR benchmark code):

    HR (8-bit) --mod-crop to a multiple of s--> HR'
    LR  = MATLAB-bicubic downscale of HR' by 1/s, rounded to 8 bits   (the LR images are stored as PNG files)
          with a JPEG quality q (`drcn bench --jpeg q`, not the paper's protocol): LR saved as a JPEG file at q
          by Pillow (RGB, 4:2:0 chroma) and read back, as a photo from the web is
    SR  = the upscaler's output from LR, rounded to 8 bits             (the SR images are stored as PNG files)
          bicubic: MATLAB-bicubic upscale of LR;
          DRCN:    the network on the Y of that upscale, Cb/Cr from the upscale (what ``drcn upscale`` does)
    PSNR and SSIM between Y(SR) and Y(HR'), ceil(s) pixels cropped from each border (:mod:`drcn_cli.bench.metrics`),
    Y = MATLAB rgb2ycbcr of the 8-bit RGB image, itself 8-bit; a one-channel image is measured on its grey values

Why these choices: with Set5 and Set14 they reproduce the paper's bicubic row (docs/bench.md, "Quickstart") best
among the variants we measured. Measuring Y in float without rounding, resizing Y alone instead of RGB, or passing
the grey ``bridge`` through rgb2ycbcr each moved the scores off the paper's, the last one most.
The downscale runs in float32 on the CPU; the upscale runs on the inference device, as ``drcn upscale`` runs it.
The paper's scales are integers; a fractional one (training may validate at x2.5) crops to the nearest
whole size and resizes by that size's exact ratio (:func:`drcn_cli.bench.degradation.mod_crop_size`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DrcnError
from ..inference.pipeline import Upscaler, open_upscaler
from .datasets import load_image
from .degradation import downscale, mod_crop_size
from .metrics import SSIM_WINDOW, quantize_8bit, score_y

__all__ = [
    "BenchError",
    "Sample",
    "Score",
    "check_size",
    "degrade",
    "evaluate",
    "evaluate_images",
    "make_sample",
    "min_image_side",
    "score_image",
    "super_resolve",
]


class BenchError(DrcnError, ValueError):
    """Input the protocol cannot measure: an image too small for the scale, a bad recursion depth."""


@dataclass(frozen=True)
class Score:
    """PSNR in dB and SSIM of an image, or their means over a set."""

    psnr: float
    ssim: float


@dataclass(frozen=True)
class Sample:
    """One HR image degraded at one scale: what the protocol upscales (``lr``) and scores against (``hr``)."""

    name: str
    scale: float
    hr: torch.Tensor  # (C, H, W) float32 on 8-bit levels, mod-cropped: H = h * scale
    lr: torch.Tensor  # (C, h, w) float32 on 8-bit levels: the LR image a user would have
    jpeg: int | None = None  # the JPEG quality the LR image went through; None: clean (the paper's protocol)


def min_image_side(scale: float) -> int:
    """The smallest (mod-cropped) HR side the protocol can measure: an 11x11 SSIM window after the border crop."""
    return SSIM_WINDOW + 2 * math.ceil(scale)


def check_size(width: int, height: int, scale: float) -> None:
    """BenchError unless an image of ``width`` x ``height`` can be measured at ``scale`` (see min_image_side)."""
    need = min_image_side(scale)
    if min(mod_crop_size(height, width, scale)[0]) < need:
        raise BenchError(
            f"image of {width}x{height} pixels is too small for x{scale:g} "
            f"(needs at least {need} pixels per side, after the crop to a multiple of {scale:g})"
        )


def degrade(hr: torch.Tensor, scale: float, jpeg: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """hr (C, H, W) in [0, 1] on 8-bit levels -> (HR mod-cropped to a multiple of ``scale``, LR rounded to 8 bits).

    The LR is MATLAB's ``imresize(hr, 1/scale, 'bicubic')``; its size is given exactly, (H/s, W/s), so a
    factor such as 1/3 cannot round the output size up. With ``jpeg`` a quality, the LR then goes through a
    JPEG file at that quality. Raises BenchError when the crop is too small to score.
    """
    check_size(hr.shape[-1], hr.shape[-2], scale)
    if jpeg is not None and not 1 <= jpeg <= 100:
        raise BenchError(f"JPEG quality must be in 1..100, got {jpeg}")
    # the one degradation (degradation.downscale): for an integer scale, MATLAB's modcrop
    return downscale(hr, scale, jpeg=jpeg)


def make_sample(hr: torch.Tensor, scale: float, name: str = "", jpeg: int | None = None) -> Sample:
    """:func:`degrade` ``hr`` once, keeping both images for any number of evaluations. Raises BenchError."""
    cropped, lr = degrade(hr, scale, jpeg)
    return Sample(name, float(scale), cropped, lr, jpeg)


def super_resolve(lr: torch.Tensor, scale: float, upscaler: Upscaler, recursions: int | None = None) -> torch.Tensor:
    """lr (C, h, w) in [0, 1], C = 1 or 3 -> (C, round(h*s), round(w*s)) on 8-bit levels, on the upscaler's device.

    The upscaler is what ``drcn upscale`` runs (Y through the network, Cb/Cr bicubic; or MATLAB bicubic alone),
    with ``recursions`` (None: the upscaler's own) of the model's recursions.
    """
    if recursions is not None:
        upscaler = dataclasses.replace(upscaler, settings=dataclasses.replace(upscaler.settings, recursions=recursions))
    size = (round(lr.shape[-2] * scale), round(lr.shape[-1] * scale))
    # An integer factor is passed on, so the resize uses it exactly as MATLAB would; a fractional one goes by size.
    factor = float(scale) if float(scale).is_integer() else None
    return quantize_8bit(upscaler.upscale_tensor(lr, size, scale=factor))


def score_image(sr: torch.Tensor, hr: torch.Tensor, scale: float) -> Score:
    """PSNR/SSIM on 8-bit Y, ceil(``scale``) border pixels cropped. sr, hr: (C, H, W) on 8-bit levels in [0, 1]."""
    return Score(*score_y(sr, hr, border=math.ceil(scale)))


def _mean(scores: Sequence[Score]) -> Score:
    return Score(sum(s.psnr for s in scores) / len(scores), sum(s.ssim for s in scores) / len(scores))


@torch.no_grad()
def evaluate(samples: Sequence[Sample], upscaler: Upscaler) -> dict[float, Score]:
    """Mean PSNR/SSIM of ``upscaler`` per scale over ``samples``, in the order the scales come. Nothing is recorded
    for autograd, so training can call it between its steps."""
    if not samples:
        raise BenchError("no images to evaluate")
    scores: dict[float, list[Score]] = {}
    for sample in samples:
        sr = super_resolve(sample.lr.to(upscaler.settings.device), sample.scale, upscaler)
        scores.setdefault(sample.scale, []).append(score_image(sr.cpu(), sample.hr.cpu(), sample.scale))
    return {scale: _mean(values) for scale, values in scores.items()}


def evaluate_images(
    images: Sequence[torch.Tensor | str | Path],
    scale: float,
    upscaler: Upscaler | None = None,
    jpeg: int | None = None,
) -> Score:
    """Mean PSNR/SSIM of ``upscaler`` (None: MATLAB bicubic on the CPU) over HR ``images`` at ``scale``, by the
    paper's protocol.

    Args:
        images: HR images, as (C, H, W) float tensors in [0, 1] on 8-bit levels (C = 1 or 3; see
            :func:`drcn_cli.bench.datasets.load_image`) or as paths to image files.
        scale: 2, 3, 4 ...
        upscaler: from :func:`drcn_cli.inference.pipeline.open_upscaler` (its device, precision, tiles and recursions).
        jpeg: a JPEG quality the LR images go through (None: the paper's clean LR).
    """
    if not images:
        raise BenchError("no images to evaluate")
    upscaler = upscaler if upscaler is not None else open_upscaler(method="bicubic", device="cpu", precision="fp32")
    samples = [make_sample(i if isinstance(i, torch.Tensor) else load_image(i), scale, jpeg=jpeg) for i in images]
    return evaluate(samples, upscaler)[float(scale)]
