"""Run a fully-convolutional function over an image in tiles, with a result equal to one untiled call.

Each tile's *core* is a block of the output; its *window* is the core grown by ``overlap`` pixels of
context on every side, clipped at the image border. With ``overlap`` >= the network's receptive-field
radius every core pixel sees exactly the context it would see untiled (including the zero padding at the
real image border), so stitching the cores reproduces the untiled output. Nothing here keeps state:
plan -> run each window -> paste each core.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Tile", "auto_tile_size", "is_out_of_memory", "plan_tiles", "run_tiled", "run_tiled_adaptive"]


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
    # which for a 1500x1440 output in tiles of a few shapes took longer than the network itself.
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
