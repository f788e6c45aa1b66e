"""Training data: HR images -> 8-bit luminance -> a bank of aligned (input, target) patches, built once in memory.

The degradation follows the DRCN/VDSR MATLAB recipe, for every image, downscale factor d and scale s:

    y      = rgb2ycbcr(image)[Y], rounded to 8 bits     MATLAB's rgb2ycbcr on uint8 returns uint8
    hr     = imresize(y, d), rounded to 8 bits          augmentation: a smaller copy is a new 8-bit image
    hr_s   = mod-crop of hr (top-left kept)             so that the LR size times s is the HR size
    lr     = imresize(hr_s, 1/s), rounded to 8 bits     the LR image a user would hand to `drcn upscale`
    input  = imresize(lr, size of hr_s)                 float, never rounded: exactly what inference feeds
                                                        the network

With a JPEG step (:class:`JpegStep`, for photo models) the degradation starts from the RGB image instead, so that
the block grid and the chroma subsampling are those of a real file:

    hr_rgb = imresize(image, d), rounded to 8 bits;  hr = Y of hr_rgb, rounded to 8 bits
    lr_rgb = imresize(hr_rgb cropped, 1/s), rounded to 8 bits, then encoded as JPEG at quality q and decoded
    input  = imresize(Y of lr_rgb, size of hr_s)      float: Y of the bicubic upsample, as inference computes it

Each (image, downscale, scale) gets ``copies`` such inputs, each clean or JPEG at its own drawn quality.

The bank stores images, not patches: patches cut at stride 21 overlap about 4x, so materialising them would
take ~4 GB for T91 + BSD200 x 5 downscales x 3 scales. Instead ``hr`` holds every HR image once (uint8,
flattened and concatenated), ``inputs`` holds the network input of each scale in the same layout
(float16: 2^-11 steps, 1/8 of a grey level, where the rounding to 8 bits at inference is 1/2), and a patch
is its top-left flat index plus the row length of its image. :func:`sample_batch` gathers a batch with one
indexing operation per tensor, applying the flips and 90-degree rotations through the gather indices.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..bench.degradation import DataError, downscale, jpeg_roundtrip, mod_crop_size
from ..bench.metrics import quantize_8bit
from ..inference.color import rgb_to_ycbcr
from ..inference.resize import imresize, output_size
from .images import TrainImage, _luma8

__all__ = [
    "DEFAULT_DOWNSCALES",
    "JpegStep",
    "PatchBank",
    "build_patch_bank",
    "degrade",
    "quantize",
    "random_batch",
    "sample_batch",
]

DEFAULT_DOWNSCALES = (1.0, 0.9, 0.8, 0.7, 0.6)


quantize = quantize_8bit  # [0, 1] -> the nearest of the 256 levels k/255, clipped: one rounding everywhere


def degrade(hr: torch.Tensor, scale: float, quantize_lr: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """hr (..., H, W) float in [0, 1] -> (network input, HR target), both (..., H', W') after the mod-crop:
    the input is the bicubic of :func:`downscale`'s LR back to the cropped HR size."""
    target, lr = downscale(hr, scale, quantize_lr)
    return imresize(lr, size=(target.shape[-2], target.shape[-1])), target


@dataclass(frozen=True)
class JpegStep:
    """The JPEG step of a photo model's training data: each (image, downscale, scale) gets ``copies`` network
    inputs, each clean with probability ``clean``, else saved as JPEG at a quality drawn uniformly from
    ``qualities`` (lo, hi, both included). The draws come from ``seed``, in image order."""

    qualities: tuple[int, int]
    clean: float = 0.25
    copies: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.qualities
        if not 1 <= lo <= hi <= 100:
            raise DataError(f"JPEG qualities must be LO..HI within 1..100, got {lo}..{hi}")
        if not 0 <= self.clean <= 1:
            raise DataError(f"the share of clean inputs is in [0, 1], got {self.clean:g}")
        if self.copies < 1:
            raise DataError(f"copies must be >= 1, got {self.copies}")

    def draw(self, rng: random.Random) -> int | None:
        """A quality, or None for a clean input."""
        if rng.random() < self.clean:
            return None
        return rng.randint(*self.qualities)


@dataclass
class PatchBank:
    """Every training image and its degraded inputs, with the patch positions: the whole data set in memory.

    hr:          (T,) uint8, the HR luminance of every (image, downscale) pair, flattened and concatenated.
    inputs:      (R, T) float16, the bicubic network inputs in the same layout (0 outside the crop): one row per
                 scale, or with a JPEG step ``copies`` rows per scale (row = copy * len(scales) + scale index).
    start:       (P,) int64, flat index of each patch's top-left pixel.
    row_length:  (P,) int64, width of the image the patch lies in (the step between its rows).
    scale_index: (P,) int64, which of ``scales`` the patch belongs to.
    input_row:   (P,) int64, which row of ``inputs`` the patch's input is in.
    """

    hr: torch.Tensor
    inputs: torch.Tensor
    start: torch.Tensor
    row_length: torch.Tensor
    scale_index: torch.Tensor
    input_row: torch.Tensor
    scales: tuple[float, ...]
    patch_size: int
    images: int

    _INDEXES = ("hr", "inputs", "start", "row_length", "scale_index", "input_row")

    def __len__(self) -> int:
        return int(self.start.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in self._INDEXES)

    def to(self, device: torch.device | str) -> PatchBank:
        move = {name: getattr(self, name).to(device) for name in self._INDEXES}
        return PatchBank(**move, scales=self.scales, patch_size=self.patch_size, images=self.images)

    def patches_per_scale(self) -> dict[float, int]:
        counts = torch.bincount(self.scale_index.cpu(), minlength=len(self.scales))
        return {s: int(c) for s, c in zip(self.scales, counts.tolist(), strict=True)}


def build_patch_bank(
    images: Sequence[TrainImage],
    scales: Sequence[float],
    patch_size: int = 41,
    stride: int = 21,
    downscales: Sequence[float] = DEFAULT_DOWNSCALES,
    *,
    quantize_lr: bool = True,
    jpeg: JpegStep | None = None,
    device: torch.device | str = "cpu",
    on_image: Callable[[int, int], None] | None = None,
) -> PatchBank:
    """Degrade every image at every downscale and scale, and index the patches on a ``stride`` grid.

    With ``jpeg`` the degradation starts from the images' RGB (grey images: their luminance) and holds a JPEG
    step (:class:`JpegStep`); it needs ``quantize_lr``.

    The resizing runs on ``device`` (much faster on a GPU) and the bank is returned there. ``on_image(done,
    total)`` is called after each image, once per downscale that holds a patch (``done`` counts images, the
    current one included). Raises DataError when no image yields a single patch.
    """
    _check_bank_options(scales, patch_size, stride, downscales)
    device = torch.device(device)

    # Plan first, so the two big tensors are allocated once and filled in place (no concatenation peak).
    slots, length = _plan_slots(images, scales, patch_size, downscales)
    if not slots:
        raise DataError(
            f"no {patch_size}x{patch_size} patch fits in any of the {len(images)} images; "
            "use smaller patches or larger images"
        )
    if jpeg is not None and not quantize_lr:
        raise DataError("the JPEG step works on 8-bit LR images: it needs quantize_lr")
    copies = jpeg.copies if jpeg is not None else 1
    rng = random.Random(jpeg.seed if jpeg is not None else 0)
    hr_all = torch.empty(length, dtype=torch.uint8, device=device)
    inputs_all = torch.zeros(copies * len(scales), length, dtype=torch.float16, device=device)
    index: list[tuple[torch.Tensor, ...]] = []
    for slot in slots:
        if jpeg is None:
            _fill_slot(slot, images[slot.image].as_float().to(device), scales, quantize_lr, hr_all, inputs_all)
        else:
            _fill_slot_jpeg(slot, images[slot.image], scales, jpeg, rng, hr_all, inputs_all)
        index.extend(_slot_patches(slot, patch_size, stride, copies, len(scales)))
        if on_image is not None:
            on_image(slot.image + 1, len(images))
    starts, rows, scale_ids, input_rows = zip(*index, strict=True)  # per slot and scale -> per column
    return PatchBank(
        hr=hr_all,
        inputs=inputs_all,
        start=torch.cat(starts).to(device),
        row_length=torch.cat(rows).to(device),
        scale_index=torch.cat(scale_ids).to(device),
        input_row=torch.cat(input_rows).to(device),
        scales=tuple(float(s) for s in scales),
        patch_size=patch_size,
        images=len(images),
    )


@dataclass(frozen=True)
class _Slot:
    """One image at one downscale in the bank: its HR size, its flat offset, and the scales it holds a patch
    at, each as (scale index, mod-cropped HR size)."""

    image: int
    factor: float
    height: int
    width: int
    start: int
    fits: list[tuple[int, tuple[int, int]]]


def _check_bank_options(scales: Sequence[float], patch_size: int, stride: int, downscales: Sequence[float]) -> None:
    """DataError for arguments that cannot make a bank, before any work."""
    if not scales:
        raise DataError("no scales given")
    if patch_size < 1 or stride < 1:
        raise DataError(f"patch size and stride must be positive, got {patch_size} and {stride}")
    if not downscales or not all(0 < d <= 1 for d in downscales):
        raise DataError(f"downscale factors must be in (0, 1], got {tuple(downscales)}")


def _plan_slots(
    images: Sequence[TrainImage], scales: Sequence[float], patch_size: int, downscales: Sequence[float]
) -> tuple[list[_Slot], int]:
    """The slots of every (image, downscale) that holds a patch at some scale, laid end to end; and their total
    length in pixels."""
    slots = []
    offset = 0
    for i, image in enumerate(images):
        for factor in downscales:
            height, width = tuple(image.y.shape) if factor == 1 else output_size(tuple(image.y.shape), factor)  # type: ignore[arg-type]  # y is 2-D: (H, W)
            fits = _fitting_scales(height, width, scales, patch_size)
            if fits:
                slots.append(_Slot(i, factor, height, width, offset, fits))
                offset += height * width
    return slots, offset


def _fitting_scales(
    height: int, width: int, scales: Sequence[float], patch_size: int
) -> list[tuple[int, tuple[int, int]]]:
    """(scale index, mod-cropped HR size) of each scale at which an HR image of this size holds a patch."""
    fits = []
    for s_index, scale in enumerate(scales):
        (hh, ww), (lh, lw) = mod_crop_size(height, width, scale)
        if hh >= patch_size and ww >= patch_size and lh >= 1 and lw >= 1:
            fits.append((s_index, (hh, ww)))
    return fits


def _fill_slot(
    slot: _Slot,
    y: torch.Tensor,
    scales: Sequence[float],
    quantize_lr: bool,
    hr_all: torch.Tensor,
    inputs_all: torch.Tensor,
) -> None:
    """Write the slot's 8-bit HR image (``y`` downscaled) into ``hr_all`` and its network input at each
    fitting scale into ``inputs_all``."""
    area = slot.height * slot.width
    hr = y if slot.factor == 1 else quantize(imresize(y, slot.factor))  # the factor itself, as MATLAB's imresize(y, f)
    hr_all[slot.start : slot.start + area] = (hr * 255.0).round().to(torch.uint8).flatten()
    plane = inputs_all[:, slot.start : slot.start + area].view(len(scales), slot.height, slot.width)
    for s_index, (hh, ww) in slot.fits:
        net_input, _target = degrade(hr, scales[s_index], quantize_lr)
        plane[s_index, :hh, :ww] = net_input.to(torch.float16)


def _fill_slot_jpeg(
    slot: _Slot,
    image: TrainImage,
    scales: Sequence[float],
    jpeg: JpegStep,
    rng: random.Random,
    hr_all: torch.Tensor,
    inputs_all: torch.Tensor,
) -> None:
    """As :func:`_fill_slot`, from the image's RGB (grey: its luminance), with ``jpeg.copies`` inputs per scale,
    each clean or saved as JPEG at a quality drawn from ``rng``."""
    device = hr_all.device
    pixels = image.rgb if image.rgb is not None else image.y[None]
    full = pixels.to(device).float() / 255.0
    hr = full if slot.factor == 1 else quantize(imresize(full, slot.factor))
    area = slot.height * slot.width
    hr_all[slot.start : slot.start + area] = _luma8(hr).to(device).flatten()
    plane = inputs_all[:, slot.start : slot.start + area].view(inputs_all.shape[0], slot.height, slot.width)
    for s_index, (hh, ww) in slot.fits:
        _target, lr = downscale(hr, scales[s_index])
        for copy in range(jpeg.copies):
            quality = jpeg.draw(rng)
            degraded = lr if quality is None else jpeg_roundtrip(lr, quality)
            luma = rgb_to_ycbcr(degraded)[0] if degraded.shape[0] == 3 else degraded[0]
            plane[copy * len(scales) + s_index, :hh, :ww] = imresize(luma, size=(hh, ww)).to(torch.float16)


def _slot_patches(
    slot: _Slot, patch_size: int, stride: int, copies: int = 1, n_scales: int = 1
) -> list[tuple[torch.Tensor, ...]]:
    """The slot's patches on the ``stride`` grid, per fitting scale and input copy: (flat top-left corners, row
    lengths, scale indices, input rows)."""
    patches: list[tuple[torch.Tensor, ...]] = []
    for s_index, (hh, ww) in slot.fits:
        grid_y = torch.arange(0, hh - patch_size + 1, stride, dtype=torch.int64)
        grid_x = torch.arange(0, ww - patch_size + 1, stride, dtype=torch.int64)
        corner = (grid_y[:, None] * slot.width + grid_x[None, :]).flatten() + slot.start
        for copy in range(copies):
            patches.append((
                corner, torch.full_like(corner, slot.width), torch.full_like(corner, s_index),
                torch.full_like(corner, copy * n_scales + s_index),
            ))  # fmt: skip
    return patches


def sample_batch(
    bank: PatchBank, index: torch.Tensor, transform: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather patches ``index`` (B,) -> (input, target), each (B, 1, p, p) float32 on the bank's device.

    ``transform`` (B,) in 0..7 picks one of the 8 flips/rotations per patch (bit 2: transpose, bit 1:
    mirror left-right, bit 0: flip upside down), the same for input and target; None keeps the patches as
    they are. The transforms are applied through the gather indices, so they cost nothing.
    """
    device = bank.hr.device
    p = bank.patch_size
    index = index.to(device)
    b = index.shape[0]
    dy = torch.arange(p, device=device).view(1, p, 1).expand(b, p, p)
    dx = torch.arange(p, device=device).view(1, 1, p).expand(b, p, p)
    if transform is not None:
        t = transform.to(device).view(b, 1, 1)
        swap = (t & 4) != 0
        dy, dx = torch.where(swap, dx, dy), torch.where(swap, dy, dx)
        dy = torch.where((t & 1) != 0, p - 1 - dy, dy)
        dx = torch.where((t & 2) != 0, p - 1 - dx, dx)
    flat = bank.start[index].view(b, 1, 1) + dy * bank.row_length[index].view(b, 1, 1) + dx
    target = bank.hr[flat].float().div_(255.0)
    net_input = bank.inputs[bank.input_row[index].view(b, 1, 1), flat].float()
    return net_input.unsqueeze(1), target.unsqueeze(1)


def random_batch(
    bank: PatchBank, batch_size: int, generator: torch.Generator, augment: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) patch indices drawn uniformly with replacement, and (B,) transforms (0 without ``augment``),
    from ``generator`` on the CPU, so the draw is the same on every device."""
    index = torch.randint(len(bank), (batch_size,), generator=generator)
    transform = torch.randint(8, (batch_size,), generator=generator) if augment else torch.zeros_like(index)
    return index, transform
