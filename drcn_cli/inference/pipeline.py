"""upscale_image: bicubic-upsample to the target size, run DRCN on Y, recombine CbCr, keep alpha and bit depth.

    image -> float (C, H, W) in [0, 1] -> target size -> MATLAB bicubic of every channel
          -> Y through the network in tiles (CbCr and alpha stay bicubic) -> RGB -> rounded and clipped
          -> the caller's kind of image (PIL mode, numpy dtype and layout)

Grey images (1 channel, or 2 with alpha) go through the network as they are, without YCbCr.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DrcnError, megapixels
from ..io.images import array_to_pil, pil_to_array
from ..model import DRCN
from ..weights.files import WeightsError
from ..weights.table import LOSSY_FORMATS, model_for_input
from .color import array_to_tensor, rgb_to_ycbcr, tensor_to_array, ycbcr_to_rgb
from .device import autocast_dtype, resolve_device, resolve_precision, set_threads
from .device import memory_format as preferred_memory_format
from .loader import InferenceSettings, ReadyModel, compute_dtype, open_model, prepare_for_inference
from .resize import imresize, output_size
from .tiling import check_tile, run_tiled_adaptive, tile_plan

__all__ = [
    "MAX_SCALE",
    "InferenceSettings",
    "OutputTooLargeError",
    "SizeError",
    "ReadyModel",
    "Upscaler",
    "UpscalerChoice",
    "checked_size",
    "open_model",
    "open_upscaler",
    "open_upscalers",
    "prepare_for_inference",
    "super_resolve_y",
    "target_size",
    "upscale_image",
    "upscale_tensor",
]

MAX_SCALE = 32.0


class SizeError(DrcnError, ValueError):
    """An output size that cannot be made from this input: a scale out of range, a size smaller than the input."""


class OutputTooLargeError(SizeError):
    """An output over the pixel limit the caller set (``drcn upscale --max-output-pixels``)."""


def target_size(
    height: int, width: int, scale: float | None = None, out_width: int | None = None, out_height: int | None = None
) -> tuple[int, int]:
    """Output (H, W): ceil(scale * size) as MATLAB's imresize, or an exact size (a missing side keeps the aspect).

    Raises SizeError for a scale outside [1, MAX_SCALE] or a size smaller than the input.
    """
    if scale is not None and (out_width is not None or out_height is not None):
        raise SizeError("give either a scale or an output width/height, not both")
    if scale is not None:
        if (problem := scale_problem(scale)) is not None:
            raise SizeError(f"scale {problem}")
        return output_size((height, width), scale)
    if out_width is None and out_height is None:
        raise SizeError("give a scale or an output width and/or height")
    if out_height is None:
        assert out_width is not None  # both missing was refused above
        out_height = max(1, round(height * out_width / width))
    if out_width is None:
        out_width = max(1, round(width * out_height / height))
    if out_height < height or out_width < width:
        raise SizeError(f"output size {out_width}x{out_height} is smaller than the input {width}x{height}")
    if out_height > height * MAX_SCALE or out_width > width * MAX_SCALE:
        raise SizeError(f"output size {out_width}x{out_height} is more than {MAX_SCALE:g}x the input")
    return out_height, out_width


def super_resolve_y(
    model: ReadyModel,
    y: torch.Tensor,
    settings: InferenceSettings,
    on_tile: Callable[[int, int], None] | None = None,
    on_shrink: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Run the network on bicubic-upsampled luminance y (N, 1, H, W) float32 in [0, 1].

    Returns (N, 1, H, W) float32 on y's device, not clamped. ``model`` is prepared for ``settings``' device and
    precision (:func:`open_model`): its conv weights hold the compute dtype where that is native (bf16 on the
    CPU), and the other precisions run its fp32 weights under autocast.
    """
    if model.device != settings.device or model.precision != settings.precision:
        raise ValueError(
            f"the model is prepared for {model.device} in {model.precision}, the settings ask for "
            f"{settings.device} in {settings.precision}"
        )
    network = model.network
    device = settings.device
    overlap = network.config.receptive_radius
    shrunk_tile = 0  # after an out-of-memory error: the tile that fitted, for the views still to come
    native = compute_dtype(device, settings.precision) != torch.float32
    amp = None if native else autocast_dtype(settings.precision)
    memory_format = preferred_memory_format(device)

    def forward(window: torch.Tensor, context: tuple[int, int]) -> torch.Tensor:
        window = window.to(device, torch.float32).contiguous(memory_format=memory_format)
        if amp is None:
            return network(window, settings.recursions, context).float()
        with torch.autocast(device.type, dtype=amp):
            return network(window, settings.recursions, context).float()

    def run(
        view: torch.Tensor, report: Callable[[int, int], None] | None, shrink: Callable[[int], None] | None
    ) -> torch.Tensor:
        height, width = view.shape[2], view.shape[3]
        plan = tile_plan(network.config, settings.recursions, device, settings.precision, height, width, settings.tile)
        return run_tiled_adaptive(
            forward, view, shrunk_tile or plan.tile, overlap, on_tile=report, on_shrink=shrink, by_area=plan.by_area,
            row_context_cost=plan.row_context_cost, cuts_rows=True,
        )

    with torch.inference_mode():
        if not settings.self_ensemble:
            return run(y, on_tile, on_shrink)

        def shrunk(new_tile: int) -> None:
            nonlocal shrunk_tile
            shrunk_tile = new_tile  # the transforms still to come start from the tile that fitted
            if on_shrink is not None:
                on_shrink(new_tile)

        total = torch.zeros_like(y, dtype=torch.float32)
        for index, (rotations, flip) in enumerate(_DIHEDRAL):

            def report(done: int, count: int, index: int = index) -> None:
                if on_tile is not None:
                    on_tile(index * count + done, len(_DIHEDRAL) * count)

            view = _dihedral(y, rotations, flip)
            out = run(view, report, shrunk)
            total += _dihedral_inverse(out, rotations, flip)
        return total / len(_DIHEDRAL)


# (quarter turns, mirrored first): the 8 symmetries of the square, identity first.
_DIHEDRAL = tuple((rotations, flip) for flip in (False, True) for rotations in range(4))


def _dihedral(x: torch.Tensor, rotations: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, rotations, (-2, -1))


def _dihedral_inverse(x: torch.Tensor, rotations: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, -rotations, (-2, -1))
    return x.flip(-1) if flip else x


def upscale_tensor(
    image: torch.Tensor,
    size: tuple[int, int],
    model: ReadyModel | None,
    settings: InferenceSettings,
    scale: float | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    on_shrink: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """image (C, H, W) float in [0, 1], C in 1..4 (grey, grey+alpha, RGB, RGBA) -> (C, *size), clamped to [0, 1].

    With ``model`` None the result is plain MATLAB bicubic (prefer :class:`Upscaler`, which calls this).
    ``scale``, when the size came from one, is passed to the resize so its kernel uses that exact factor, as
    MATLAB does.
    """
    channels = image.shape[0]
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"expected 1 to 4 channels, got {channels}")
    x = image.to(settings.device, torch.float32)
    if scale is not None:
        upsampled = imresize(x, scale)
        if tuple(upsampled.shape[-2:]) != tuple(size):
            raise AssertionError(f"resize gave {tuple(upsampled.shape[-2:])}, expected {size}")
    else:
        upsampled = imresize(x, size=size)
    color, alpha = (upsampled[:1], upsampled[1:]) if channels <= 2 else (upsampled[:3], upsampled[3:])
    if model is not None:
        luma = color if channels <= 2 else rgb_to_ycbcr(color)
        y = super_resolve_y(model, luma[None, :1], settings, on_tile, on_shrink)[0]
        if not torch.isfinite(y).all():
            raise WeightsError("the network's output is NaN or infinite: the weights are broken")
        color = y if channels <= 2 else ycbcr_to_rgb(torch.cat([y, luma[1:]]))
    return torch.cat([color, alpha]).clamp_(0.0, 1.0)


def scale_problem(scale: float) -> str | None:
    """Why ``scale`` cannot be an upscaling factor, as a phrase about the value, or None: the one range check of
    :func:`upscale_image`'s ``scale`` and `drcn upscale -s`."""
    if not math.isfinite(scale):
        return f"{scale} is not a finite number"
    if not 1.0 <= scale <= MAX_SCALE:
        return f"{scale:g} is outside 1 to {MAX_SCALE:g}"
    return None


# PIL modes whose values are not RGB: upscaled, they would come back as RGB, so they are refused instead.
_OTHER_COLOR_SPACES = ("LAB", "HSV", "YCbCr")


def upscale_image(
    image: Any,
    scale: float | None = None,
    *,
    width: int | None = None,
    height: int | None = None,
    weights: str | os.PathLike | DRCN | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int = 0,
    recursions: int | None = None,
    threads: int | None = None,
    method: str = "drcn",
    self_ensemble: bool = False,
) -> Any:
    """Upscale a PIL image or a numpy array; returns the same kind (PIL mode, or numpy dtype and layout).

    Args:
        image: PIL.Image, or a numpy array (H, W) / (H, W, C) with C = 1..4 channels in RGB(A) order,
            uint8, uint16 or float in [0, 1].
        scale: a factor >= 1 (2, 2.5, 3 ...); or give ``width`` and/or ``height`` of the output.
        weights: a .safetensors path, a model name (bundled, cached or downloaded, sha256-verified), or a DRCN
            (copied: the caller's module is left as it is); default: for a PIL image read from a JPEG file
            (``image.format`` "JPEG"), the photo model drcn-lite-photo; for any other image and for arrays
            (whose history is unknown), the default model (see drcn_cli.weights.table.model_for_input).
        device: 'auto' (CUDA, MPS, CPU), or a torch device string.
        precision: 'auto' (bf16 on a CPU with native bf16 units or on CUDA, fp32 on other CPUs), 'fp32',
            'fp16' (CUDA only) or 'bf16'.
        tile: tile side in output pixels, 0 = chosen from the memory available. Tiling never changes the result.
        recursions: use only the first k of the D recursions (faster, slightly less sharp).
        threads: CPU threads for torch (default: torch's choice).
        method: 'drcn', or 'bicubic' for the MATLAB bicubic alone.
        self_ensemble: average the network over the 8 flips and rotations of the input (8x slower).

    The mode of a PIL image is kept for grey (L, I;16, F), grey+alpha, RGB and RGBA; a palette image comes back
    RGB or RGBA, bilevel (1) as L, CMYK as RGB, as `drcn upscale` writes them. LAB, HSV and YCbCr images are
    refused (ValueError): convert them to RGB first (``image.convert("RGB")``), and back if needed.

    Raises TypeError for an ``image`` that is neither a PIL image nor a numpy array, or a ``scale``, ``width``,
    ``height`` or ``threads`` that is not a number (a bool is not one); ValueError (SizeError, ConfigError,
    WeightsError ...) for a value that cannot work: a scale outside 1..32 or not finite, a size below 1, pixels
    that are NaN or infinite, a mode refused above.
    """
    if not isinstance(image, (Image.Image, np.ndarray)):
        raise TypeError(f"image must be a PIL.Image.Image or a numpy.ndarray (H, W[, C]), got {type(image).__name__}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a number, got {type(scale).__name__} {scale!r}")
        if (problem := scale_problem(float(scale))) is not None:
            raise SizeError(f"scale {problem}")
    for name, side in (("width", width), ("height", height)):
        if side is not None:
            if isinstance(side, bool) or not isinstance(side, numbers.Integral):
                raise TypeError(f"{name} must be a whole number of pixels, got {type(side).__name__} {side!r}")
            if side < 1:
                raise SizeError(f"{name} must be at least 1 pixel, got {side}")
    set_threads(threads)
    is_pil = isinstance(image, Image.Image)
    if isinstance(image, Image.Image):
        if image.mode in _OTHER_COLOR_SPACES:
            raise ValueError(f"image is in mode {image.mode}, which drcn would return as RGB: convert it first, "
                             'image.convert("RGB")')
        array, mode = pil_to_array(image)
    else:
        array = image
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError("image holds NaN or infinite pixel values (float images must be in [0, 1])")
    if weights is None and method == "drcn":
        weights = model_for_input(getattr(image, "format", None) if is_pil else None)
    upscaler = open_upscaler(weights, device, precision, method=method, tile=tile, recursions=recursions,
                             self_ensemble=self_ensemble)  # fmt: skip
    rows, columns = array.shape[:2]
    size = checked_size(rows, columns, scale, width, height)
    result = upscaler.upscale_array(array, size, scale)
    return array_to_pil(result, mode) if is_pil else result


def checked_size(
    height: int,
    width: int,
    scale: float | None = None,
    out_width: int | None = None,
    out_height: int | None = None,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """:func:`target_size`, refused with OutputTooLargeError over ``max_pixels`` (None or 0: no limit)."""
    size = target_size(height, width, scale, out_width, out_height)
    if max_pixels and size[0] * size[1] > max_pixels:
        raise OutputTooLargeError(
            f"output {size[1]}x{size[0]} = {megapixels(size[0] * size[1])} is over --max-output-pixels "
            f"{max_pixels / 1e6:g} Mpx"
        )
    return size


# -- the one upscaler -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upscaler:
    """One way to upscale images, ready to run: the DRCN pipeline with a prepared network, or MATLAB's bicubic
    alone (``network`` None). ``drcn upscale`` (images and video frames) and :func:`upscale_image` call it.

    ``settings`` holds the resolved device and precision, the tile side, the recursions and the self-ensemble.
    """

    network: ReadyModel | None
    settings: InferenceSettings

    @property
    def name(self) -> str:
        """What a record calls it: the weights file's stem ("drcn-lite"), "bicubic", or "module" for a DRCN
        passed in."""
        if self.network is None:
            return "bicubic"
        return self.network.source.stem if self.network.source is not None else "module"

    def upscale_tensor(
        self,
        image: torch.Tensor,
        size: tuple[int, int],
        scale: float | None = None,
        on_tile: Callable[[int, int], None] | None = None,
        on_shrink: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """image (C, H, W) float in [0, 1], C in 1..4 -> (C, *size) in [0, 1]; see :func:`upscale_tensor`."""
        return upscale_tensor(image, size, self.network, self.settings, scale, on_tile, on_shrink)

    def upscale_array(
        self,
        pixels: np.ndarray,
        size: tuple[int, int],
        scale: float | None = None,
        on_tile: Callable[[int, int], None] | None = None,
        on_shrink: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """pixels (H, W) or (H, W, C), C in 1..4, uint8, uint16 or float32 in [0, 1] -> the same layout and dtype
        at ``size`` (H', W'). ``scale``, when the size came from one, is the exact factor the resize uses."""
        tensor, fmt = array_to_tensor(pixels)
        return tensor_to_array(self.upscale_tensor(tensor, size, scale, on_tile, on_shrink), fmt)


def open_upscaler(
    weights: str | os.PathLike | DRCN | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    *,
    method: str = "drcn",
    tile: int = 0,
    recursions: int | None = None,
    self_ensemble: bool = False,
    on_download: Callable[[str], None] | None = None,
) -> Upscaler:
    """The upscaler for ``method`` "drcn" (the network of ``weights``, see :func:`open_model`; None: the default
    model) or "bicubic" (no network; ``weights`` must be None). Raises ValueError for an unknown method or
    a bicubic with network options, and as :func:`open_model`."""
    if method not in ("drcn", "bicubic"):
        raise ValueError(f"unknown method {method!r} (use drcn or bicubic)")
    if (problem := check_tile(tile, "tile")) is not None:
        raise ValueError(problem)
    if method == "bicubic":
        if weights is not None or self_ensemble or recursions is not None:
            raise ValueError("method 'bicubic' runs no network: weights, recursions and self_ensemble need 'drcn'")
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        return Upscaler(None, InferenceSettings(dev, resolve_precision(precision, dev), tile))
    network = open_model(weights, device, precision, on_download=on_download)
    return Upscaler(network, network.settings(tile, recursions, self_ensemble))


@dataclass(frozen=True)
class UpscalerChoice:
    """The upscalers of a run: one for every input, or, when no model was named, the default model's for lossless
    inputs and the photo model's for lossy ones (JPEG files, video frames; see
    :func:`drcn_cli.weights.table.model_for_input`)."""

    default: Upscaler
    photo: Upscaler | None = None  # None: the default serves every input

    def for_input(self, source_format: str | None) -> Upscaler:
        """The upscaler for an input of this decoder format ("JPEG", "PNG" ..., "video"; None: unknown)."""
        lossy = source_format in LOSSY_FORMATS
        return self.photo if self.photo is not None and lossy else self.default

    def all(self) -> tuple[Upscaler, ...]:
        return (self.default,) if self.photo is None else (self.default, self.photo)


def open_upscalers(
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    **options: Any,
) -> UpscalerChoice:
    """:func:`open_upscaler` (``options``: its keyword arguments) for every input; or, for the network with
    ``weights`` None, the default model's and, where another model serves lossy inputs, that one's too. Raises as
    :func:`open_upscaler`."""
    method = options.get("method", "drcn")
    if weights is not None or method == "bicubic":
        return UpscalerChoice(open_upscaler(weights, device, precision, **options))
    default_name, photo_name = model_for_input(None), model_for_input("JPEG")
    default = open_upscaler(default_name, device, precision, **options)
    if photo_name == default_name:
        return UpscalerChoice(default)
    return UpscalerChoice(default, open_upscaler(photo_name, device, precision, **options))
