"""MATLAB-compatible bicubic resizing (``imresize(A, scale, 'bicubic')``) in pure torch.

Super-resolution benchmarks build their low-resolution inputs with MATLAB's ``imresize``, and PSNR
figures are only comparable when the degradation matches it. ``torch.nn.functional.interpolate``
does not: it uses a different cubic kernel (a = -0.75), clamps at the border and antialiases
differently. This module follows ``imresize.m`` instead:

* Kernel: Keys' cubic with a = -0.5, support [-2, 2] (kernel width 4).
* Output size from a scale factor: ``ceil(scale * in)`` per axis, and the weights use the given scale
  itself, not ``out / in``. Given an output size, the per-axis scale is ``out / in``.
* Antialiasing when shrinking (scale < 1): the kernel is stretched, ``h(x) = scale * cubic(scale * x)``,
  and its width becomes ``4 / scale``.
* Coordinates (1-based): output pixel ``j`` maps to ``u = j / scale + 0.5 * (1 - 1 / scale)``; taps are
  ``left + 0 .. P - 1`` with ``left = floor(u - width / 2)`` and ``P = ceil(width) + 2``; the weights of
  each output are normalised to sum to 1.
* Border: tap indices outside the image are mirrored symmetrically, repeating the edge pixel
  (``0 -> 1``, ``-1 -> 2``, ..., ``n + 1 -> n``), periodically with period ``2 n``.
* Order: the axis with the smaller scale factor is resized first (rows first on a tie). The result
  is mathematically the same either way; following MATLAB keeps the rounding, hence the uint8 values
  after quantisation, the same.

Each pass is a banded matrix product: the (out x in) weight matrix is cut into blocks of consecutive
output pixels, and each block multiplies only the slice of input its taps reach. That is a handful of
dense GEMMs per pass, fast on CPU and GPU, and cheaper than a full dense product by the ratio of the
image size to the band width. The weights are computed in float64 exactly as MATLAB does, then cast to
the dtype the products run in: the input's (float32 reproduces MATLAB's uint8 results as well as float64
does), float32 for half-precision inputs, and float64 for float32 inputs when TF32/bf16 matmuls are
allowed globally. Autocast is switched off inside, so the result keeps the input dtype.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch

__all__ = ["imresize", "output_size"]

_KERNEL_WIDTH = 4.0  # support of the bicubic kernel, in input pixels at scale 1
_CACHE_SIZE = 64  # (in_len, out_len, scale, antialias, device, dtype) entries kept


class _Band(NamedTuple):
    """Weights of output pixels ``out_start:out_stop``, which read input pixels ``in_start:in_stop``."""

    out_start: int
    out_stop: int
    in_start: int
    in_stop: int
    weights: torch.Tensor  # (out_stop - out_start, in_stop - in_start)


def _scale_pair(scale: float | tuple[float, float]) -> tuple[float, float]:
    """One factor for both axes, or (sy, sx); each must be a positive finite number."""
    if not isinstance(scale, (tuple, list)):
        pair = (float(scale), float(scale))  # also numpy and 0-d tensor scalars
    else:
        if len(scale) != 2:
            raise ValueError(f"scale must be a number or a (sy, sx) pair, got {scale!r}")
        pair = (float(scale[0]), float(scale[1]))
    if not all(math.isfinite(s) and s > 0 for s in pair):
        raise ValueError(f"scale factors must be positive and finite, got {scale!r}")
    return pair


def output_size(in_size: tuple[int, int], scale: float | tuple[float, float]) -> tuple[int, int]:
    """MATLAB's rule: ceil(scale * in) per axis (H, W)."""
    sy, sx = _scale_pair(scale)
    return math.ceil(sy * in_size[0]), math.ceil(sx * in_size[1])


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5, written term for term as in imresize.m."""
    absx = x.abs()
    absx2 = absx * absx
    absx3 = absx2 * absx
    inner = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    outer = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return inner + outer


def _mirror(index: torch.Tensor, n: int) -> torch.Tensor:
    """Map 0-based indices into [0, n) by symmetric reflection that repeats the edge (period 2n)."""
    index = torch.remainder(index, 2 * n)
    return torch.where(index < n, index, 2 * n - 1 - index)


def _contributions(
    in_len: int, out_len: int, scale: float, antialias: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tap indices (0-based, mirrored) and normalised float64 weights, both (out_len, P).

    The arithmetic follows imresize.m's ``contributions`` operation by operation so the float64
    weights match MATLAB's to the last bit or nearly.
    """
    stretch = antialias and scale < 1
    width = _KERNEL_WIDTH / scale if stretch else _KERNEL_WIDTH
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    index = left[:, None] + torch.arange(taps, dtype=torch.float64)
    dist = u[:, None] - index
    weights = scale * _cubic(scale * dist) if stretch else _cubic(dist)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return _mirror(index.long() - 1, in_len), weights


def _block_len(scale: float, antialias: bool) -> int:
    """Output pixels per band: spanning ~32 input pixels keeps the GEMMs efficient while the wasted
    multiplications by zero outside each output's taps stay a small multiple of the taps."""
    width = _KERNEL_WIDTH / scale if antialias and scale < 1 else _KERNEL_WIDTH
    return min(256, max(16, round(scale * max(32.0, 2 * width))))


@lru_cache(maxsize=_CACHE_SIZE)
def _bands(
    in_len: int, out_len: int, scale: float, antialias: bool, device: torch.device, dtype: torch.dtype
) -> tuple[_Band, ...]:
    """The (out_len x in_len) weight matrix as dense row blocks over the input columns they touch."""
    index, weights = _contributions(in_len, out_len, scale, antialias)
    step = _block_len(scale, antialias)
    bands = []
    for start in range(0, out_len, step):
        stop = min(start + step, out_len)
        idx, w = index[start:stop], weights[start:stop]
        # Zero-weight taps (MATLAB drops the all-zero ones) must not widen the band.
        live = w != 0
        lo = int(idx[live].min()) if live.any() else 0
        hi = int(idx[live].max()) + 1 if live.any() else 1
        block = torch.zeros(stop - start, hi - lo, dtype=torch.float64)
        # Mirrored taps can hit the same pixel twice near the border: their weights add up.
        block.scatter_add_(1, (idx - lo).clamp(0, hi - lo - 1), torch.where(live, w, 0.0))
        bands.append(_Band(start, stop, lo, hi, block.to(device=device, dtype=dtype)))
    return tuple(bands)


def _resize_rows(x: torch.Tensor, bands: tuple[_Band, ...], out_len: int, use_out: bool) -> torch.Tensor:
    """Resize dim -2 of a (N, H, W) tensor: one batched (B x L) @ (L x W) product per band.

    The weights are expanded over the batch for bmm (a stride-0 view): broadcasting ``torch.matmul``
    takes a very slow CPU path for some widths (e.g. 492).
    """
    n = x.shape[0]
    if not use_out:  # autograd cannot go through out=, so build the result from pieces
        parts = [torch.bmm(b.weights.expand(n, -1, -1), x[:, b.in_start : b.in_stop, :]) for b in bands]
        return torch.cat(parts, dim=1)
    out = x.new_empty(n, out_len, x.shape[2])
    for b in bands:
        w = b.weights.expand(n, -1, -1)
        torch.bmm(w, x[:, b.in_start : b.in_stop, :], out=out[:, b.out_start : b.out_stop, :])
    return out


def _resize_cols(x: torch.Tensor, bands: tuple[_Band, ...], out_len: int, use_out: bool) -> torch.Tensor:
    """Resize dim -1 of a (N, H, W) tensor: one (N*H, L) @ (L x B) product per band, written in place
    into column slices of the output (GEMM takes a leading dimension, so no copy)."""
    rows = x.reshape(-1, x.shape[-1])
    if not use_out:
        parts = [rows[:, b.in_start : b.in_stop] @ b.weights.T for b in bands]
        return torch.cat(parts, dim=1).view(x.shape[0], x.shape[1], out_len)
    out = x.new_empty(rows.shape[0], out_len)
    for b in bands:
        torch.mm(rows[:, b.in_start : b.in_stop], b.weights.T, out=out[:, b.out_start : b.out_stop])
    return out.view(x.shape[0], x.shape[1], out_len)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the products run in: the input's, unless that would cost accuracy.

    Half-precision inputs are computed in float32. float32 falls back to float64 when
    ``torch.set_float32_matmul_precision`` allows TF32/bf16 products (~3 significant digits), which
    would shift many values by a grey level.
    """
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return torch.float64
    return dtype


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. meta) is never autocast
        return False


def _run_passes(
    y: torch.Tensor, passes: list[tuple[int, int, int, float]], antialias: bool, use_out: bool
) -> torch.Tensor:
    """Apply (axis, in_len, out_len, scale) passes in order to a (N, H, W) tensor; axis 0 is rows."""
    for axis, n_in, n_out, s in passes:
        bands = _bands(n_in, n_out, s, antialias, y.device, y.dtype)
        y = (_resize_rows if axis == 0 else _resize_cols)(y, bands, n_out, use_out)
    return y


def _resolve(
    in_size: tuple[int, int], scale: float | tuple[float, float] | None, size: tuple[int, int] | None
) -> tuple[tuple[float, float], tuple[int, int]]:
    """Per-axis scale factors and output size from exactly one of scale and size."""
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    if scale is not None:
        pair = _scale_pair(scale)
        return pair, output_size(in_size, pair)
    assert size is not None
    if len(size) != 2 or not all(int(s) == s and s > 0 for s in size):
        raise ValueError(f"size must be two positive integers (H_out, W_out), got {size!r}")
    out = (int(size[0]), int(size[1]))
    return (out[0] / in_size[0], out[1] / in_size[1]), out


def imresize(
    x: torch.Tensor,
    scale: float | tuple[float, float] | None = None,
    *,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """x: (..., H, W) float tensor (any leading batch/channel dims; float32/float64; any device).
    Exactly one of scale (per axis (sy, sx) or one float) and size ((H_out, W_out)) is given.
    Returns (..., H_out, W_out), same dtype/device. No rounding and no clamping (callers do that).

    Matches MATLAB's ``imresize(x, scale, 'bicubic')`` (``'Antialiasing'`` as ``antialias``); with
    ``size`` it matches ``imresize(x, [H_out W_out], 'bicubic')``. Differentiable with respect to x.
    """
    if x.dim() < 2:
        raise ValueError(f"expected a (..., H, W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}")
    in_h, in_w = x.shape[-2], x.shape[-1]
    if in_h == 0 or in_w == 0:
        raise ValueError(f"cannot resize an empty image of size {(in_h, in_w)}")
    (sy, sx), (out_h, out_w) = _resolve((in_h, in_w), scale, size)

    order = (0, 1) if sy <= sx else (1, 0)  # MATLAB: smaller factor first, rows first on a tie
    passes = [(axis, *((in_h, out_h, sy), (in_w, out_w, sx))[axis]) for axis in order]
    # A factor of exactly 1 with an unchanged length gives one-hot weights: that pass is the identity.
    passes = [p for p in passes if not (p[1] == p[2] and p[3] == 1)]
    if not passes:
        return x.clone()  # never hand back the caller's own tensor

    compute = _compute_dtype(x.dtype)
    use_out = not (torch.is_grad_enabled() and x.requires_grad)  # autograd refuses out= arguments
    y = x.reshape(-1, in_h, in_w).to(compute)
    if _autocast_enabled(x.device.type):  # it would run the products in bf16/fp16
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = _run_passes(y, passes, antialias, use_out)
    else:
        y = _run_passes(y, passes, antialias, use_out)
    return y.reshape(*x.shape[:-2], out_h, out_w).to(x.dtype)
