"""Run a fully-convolutional function over an image in tiles, with a result equal to one untiled call.

Each tile's *core* is a block of the output; its *window* is the core grown by ``overlap`` pixels of
context on every side, clipped at the image border. With ``overlap`` >= the network's receptive-field
radius every core pixel sees exactly the context it would see untiled (including the zero padding at the
real image border), so stitching the cores reproduces the untiled output. Nothing here keeps state:
plan -> run each window -> paste each core.

The tile policy lives here too, in one place: the smallest tile a user may ask for (:data:`MIN_TILE`), the side
``tile=0`` picks from the device's memory and caches (:func:`auto_tile`), and the plan of a DRCN output
(:func:`tile_plan`: full-width bands that cut their context rows, or whole windows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model import DRCNConfig, context_row_cost
from .device import memory_budget

__all__ = [
    "MIN_TILE",
    "Tile",
    "TilePlan",
    "auto_tile",
    "auto_tile_size",
    "check_tile",
    "is_out_of_memory",
    "plan_tiles",
    "run_tiled",
    "run_tiled_adaptive",
    "tile_plan",
]

# The smallest tile side accepted (besides 0 = auto): every tile also computes the network's receptive radius
# (20 px for D=16) of context on each side, so tiny tiles multiply the work (a tile of 1: about 1600x).
MIN_TILE = 32


def check_tile(tile: int, name: str = "--tile") -> str | None:
    """What is wrong with a tile side (a message naming the option or argument ``name``), else None: it must be
    0 (auto) or at least MIN_TILE."""
    if tile < 0 or 0 < tile < MIN_TILE:
        return f"{name} {tile} is too small: give 0 (auto) or at least {MIN_TILE}"
    return None


@dataclass(frozen=True)
class Tile:
    """Half-open pixel ranges (top, bottom, left, right) of the output block and of its input window."""

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]


def _spans(length: int, count: int) -> list[tuple[int, int]]:
    # Equal-ish spans, so the last tile is not a sliver that costs a full window of context.
    edges = [round(i * length / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _window(length: int, count: int, overlap: int) -> int:
    """The window side of ``count`` equal-ish spans of ``length``: the longest span plus its context."""
    return min(length, math.ceil(length / count) + 2 * overlap)


def _grid(height: int, width: int, window_pixels: int, overlap: int, row_context_cost: float) -> tuple[int, int]:
    """(rows, columns) of the grid whose windows hold at most ``window_pixels`` pixels each and, together, cost
    the least (the least context computed twice; a context row costs ``row_context_cost`` of a core row); fewer
    tiles on a tie. None fits: a 1-pixel core grid."""
    best: tuple[float, int, int] | None = None
    for rows in range(1, height + 1):
        win_h = _window(height, rows, overlap)
        widest = window_pixels // win_h
        if widest < min(width, 1 + 2 * overlap):
            continue
        cols = 1 if width <= widest else math.ceil(width / (widest - 2 * overlap))
        core_h = min(win_h, math.ceil(height / rows))
        total = rows * cols * (core_h + row_context_cost * (win_h - core_h)) * _window(width, cols, overlap)
        if best is None or (total, rows * cols) < (best[0], best[1] * best[2]):
            best = (total, rows, cols)
    return (best[1], best[2]) if best is not None else (height, width)


def plan_tiles(
    height: int, width: int, tile: int, overlap: int, by_area: bool = False, row_context_cost: float = 1.0
) -> list[Tile]:
    """Tiles whose cores partition the (height, width) image; ``tile`` <= 0 means one tile for all of it.

    Cores are at most ``tile`` pixels a side; with ``by_area``, windows may take any shape that holds no more
    pixels than a square one, (tile + 2 * overlap)², in the grid that computes the least overlap (a 512² image
    with tile 400 and overlap 20: two windows of 512x296 instead of four of 296x296). ``row_context_cost``
    weighs a window's context rows against its core rows in that choice: below 1 for a function that cuts
    the context rows as it goes (:func:`run_tiled` with ``cuts_rows``).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    if tile <= 0:
        row_count, col_count = 1, 1
    elif by_area:
        row_count, col_count = _grid(height, width, (tile + 2 * overlap) ** 2, overlap, row_context_cost)
    else:
        row_count, col_count = math.ceil(height / tile), math.ceil(width / tile)
    rows, cols = _spans(height, row_count), _spans(width, col_count)
    # Every window has the same shape: the largest core plus its context, moved inwards at the image's edges
    # (more context on one side changes nothing). A new input shape costs oneDNN a kernel build for each conv,
    # which with uneven edge tiles outweighed the network itself (docs/speed.md).
    win_h = min(height, max(end - start for start, end in rows) + 2 * overlap)
    win_w = min(width, max(end - start for start, end in cols) + 2 * overlap)
    tiles = []
    for top, bottom in rows:
        wt = min(max(0, top - overlap), height - win_h)
        for left, right in cols:
            wl = min(max(0, left - overlap), width - win_w)
            tiles.append(Tile((top, bottom, left, right), (wt, wt + win_h, wl, wl + win_w)))
    return tiles


def run_tiled(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    on_tile: Callable[[int, int], None] | None = None,
    by_area: bool = False,
    row_context_cost: float = 1.0,
    cuts_rows: bool = False,
) -> torch.Tensor:
    """Apply ``fn`` to x (N, C, H, W) tile by tile (:func:`plan_tiles`); fn maps (N, C, h, w) to (N, C', h, w).

    With ``cuts_rows``, fn is called as ``fn(window, (top, bottom))``, the rows of the window above and below
    its core, and returns the core's rows alone, (N, C', h - top - bottom, w). Returns (N, C', H, W) on x's
    device and dtype. ``on_tile(done, total)`` is called after each tile. Errors from ``fn`` propagate: no
    tile is ever left undefined in the result.
    """
    n, _, height, width = x.shape
    tiles = plan_tiles(height, width, tile, overlap, by_area, row_context_cost)
    out: torch.Tensor | None = None
    for i, t in enumerate(tiles):
        wt, wb, wl, wr = t.window
        ct, cb, cl, cr = t.core
        if not cuts_rows:
            y = fn(x[:, :, wt:wb, wl:wr])[:, :, ct - wt : cb - wt]
        else:
            y = fn(x[:, :, wt:wb, wl:wr], (ct - wt, wb - cb))
        if out is None:
            out = torch.empty((n, y.shape[1], height, width), dtype=x.dtype, device=x.device)
        out[:, :, ct:cb, cl:cr] = y[:, :, :, cl - wl : cr - wl].to(x.dtype)
        if on_tile is not None:
            on_tile(i + 1, len(tiles))
    assert out is not None
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device's out-of-memory error (CUDA's, or a backend's RuntimeError saying so)."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_tiled_adaptive(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    min_tile: int = 32,
    on_tile: Callable[[int, int], None] | None = None,
    on_shrink: Callable[[int], None] | None = None,
    by_area: bool = False,
    row_context_cost: float = 1.0,
    cuts_rows: bool = False,
) -> torch.Tensor:
    """:func:`run_tiled`, halving the tile and starting again on out-of-memory until ``min_tile``.

    ``on_shrink(new_tile)`` is called each time; the last out-of-memory error propagates if even
    ``min_tile`` does not fit.
    """
    size = tile if tile > 0 else max(x.shape[-2:])
    while True:
        try:
            return run_tiled(fn, x, size, overlap, on_tile, by_area, row_context_cost, cuts_rows)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc) or size <= min_tile:
                raise
            size = max(min_tile, size // 2)
            if x.is_cuda:
                torch.cuda.empty_cache()
            if on_shrink is not None:
                on_shrink(size)


def auto_tile_size(bytes_per_pixel: int, budget_bytes: int, overlap: int, max_tile: int = 4096) -> int:
    """The largest tile side whose window (tile + 2 * overlap)^2 fits in the memory budget, a multiple of 8."""
    side = int(math.sqrt(max(budget_bytes, 0) / max(bytes_per_pixel, 1))) - 2 * overlap
    return max(64, min(max_tile, side // 8 * 8))


# -- tile policy -------------------------------------------------------------------------------------------------

# A bf16 CPU tile whose F-channel map fits in about this many bytes runs from the caches, faster than the whole
# map in one piece even with the recomputed overlap (docs/speed.md). The floor of 256 keeps that overlap (20 px a
# side) under 1.35x the work. fp32 convolutions are bound by arithmetic, not memory, so fp32 tiles are as large as
# memory allows.
_CPU_TILE_MAP_BYTES = 24 << 20


def _bytes_per_pixel(config: DRCNConfig, precision: str) -> int:
    # Live at once per pixel: the recursion state, the conv output, the reconstruction hidden map (F channels
    # each) plus fp32 input/output/accumulator; x1.5 for allocator slack and conv workspaces.
    element = 2 if precision in ("fp16", "bf16") else 4
    return int(1.5 * (3 * config.features * element + 16))


def _cache_tile_cap(config: DRCNConfig, device: torch.device, precision: str) -> int:
    if device.type != "cpu" or precision != "bf16":
        return 4096
    side = int(math.sqrt(_CPU_TILE_MAP_BYTES / (config.features * 2))) - 2 * config.receptive_radius
    return max(256, side // 8 * 8)


def auto_tile(config: DRCNConfig, device: torch.device, precision: str) -> int:
    """The tile side (output pixels) for ``tile=0``: what the memory of ``device`` holds, capped for bf16 on the
    CPU so one tile's feature maps stay in the caches."""
    return auto_tile_size(
        _bytes_per_pixel(config, precision),
        memory_budget(device),
        config.receptive_radius,
        _cache_tile_cap(config, device, precision),
    )


# Windows at most this wide run faster per pixel than wide ones in oneDNN's bf16 conv (docs/speed.md).
_NARROW_WINDOW = 256
# fp32 on the CPU: bands whose windows hold at most (512 + 2 * radius)² pixels (256 core rows at 1024 wide) beat
# one window by a small margin on the whole (docs/speed.md).
_FP32_BAND_TILE = 512


@dataclass(frozen=True)
class TilePlan:
    """How :func:`super_resolve_y` tiles an image: ``tile`` is a side, or with ``by_area`` a window area of
    (tile + 2 * radius)²; ``row_context_cost`` is what the planner counts for a context row (see plan_tiles)."""

    tile: int
    by_area: bool
    row_context_cost: float = 1.0


def tile_plan(
    config: DRCNConfig, recursions: int | None, device: torch.device, precision: str, height: int, width: int,
    tile: int = 0,
) -> TilePlan:
    """The tiles for an output of height x width; ``tile`` > 0 is the user's side, used as given.

    The network cuts context rows as its layers consume them, so bands the width of the image (rows of context,
    none of columns) do less work than windows with context on all sides. On the CPU they are planned where
    they measured faster (docs/speed.md): in bf16, but not where the whole-window plan's windows are narrow
    (those beat bands), nor as 2-D grids of cut windows (slower); in fp32, by a small margin on the whole. GPUs
    keep whole windows (not measured).
    """
    if tile > 0:
        return TilePlan(tile, by_area=False)
    auto = auto_tile(config, device, precision)
    if device.type != "cpu" or precision == "int8":  # the int8 graph computes whole windows: no rows to cut
        return TilePlan(auto, by_area=True)
    overlap, share = config.receptive_radius, context_row_cost(config, recursions)
    band_tile = auto if precision != "fp32" else min(auto, _FP32_BAND_TILE)
    bands = plan_tiles(height, width, band_tile, overlap, by_area=True, row_context_cost=share)
    whole = plan_tiles(height, width, auto, overlap, by_area=True)
    full_width = len(bands) > 1 and all(t.window[2:] == (0, width) for t in bands)
    narrow = len(whole) > 1 and whole[0].window[3] - whole[0].window[2] <= _NARROW_WINDOW
    if full_width and not narrow:
        return TilePlan(band_tile, by_area=True, row_context_cost=share)
    return TilePlan(auto, by_area=True)
