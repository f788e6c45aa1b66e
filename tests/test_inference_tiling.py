import pytest
import torch

from drcn_cli.inference.tiling import auto_tile_size, plan_tiles, run_tiled, run_tiled_adaptive
from drcn_cli.model import DRCN, DRCNConfig


def random_model(recursions=3) -> DRCN:
    torch.manual_seed(0)
    model = DRCN(DRCNConfig(features=8, recursions=recursions))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _computed_pixels(tiles) -> int:
    return sum((t.window[1] - t.window[0]) * (t.window[3] - t.window[2]) for t in tiles)


@pytest.mark.parametrize("by_area", [False, True])
@pytest.mark.parametrize("height,width,tile", [(37, 53, 16), (40, 23, 9), (17, 17, 64), (5, 70, 8), (90, 33, 10)])
def test_cores_partition_the_image_and_windows_hold_them(height, width, tile, by_area):
    tiles = plan_tiles(height, width, tile, overlap=4, by_area=by_area)
    covered = torch.zeros(height, width, dtype=torch.int32)
    for t in tiles:
        top, bottom, left, right = t.core
        covered[top:bottom, left:right] += 1
        wt, wb, wl, wr = t.window
        # The window holds the core and 4 pixels of context on each side, or reaches the image's edge there.
        assert 0 <= wt <= max(0, top - 4) and min(height, bottom + 4) <= wb <= height
        assert 0 <= wl <= max(0, left - 4) and min(width, right + 4) <= wr <= width
        if by_area:  # any shape that holds no more pixels than a square window
            assert (wb - wt) * (wr - wl) <= (tile + 8) ** 2
        else:
            assert bottom - top <= tile and right - left <= tile
    assert torch.all(covered == 1)
    # One window shape for all tiles: each new shape costs oneDNN a kernel build.
    assert len({(t.window[1] - t.window[0], t.window[3] - t.window[2]) for t in tiles}) == 1
    if by_area:  # never more work than square tiles
        assert _computed_pixels(tiles) <= _computed_pixels(plan_tiles(height, width, tile, overlap=4))


def test_by_area_picks_the_grid_with_the_least_overlap():
    # 512x512 with 400-pixel tiles and 20 pixels of context: two windows of 512x296 (1.16x the pixels) where
    # square tiles take four of 296x296 (1.34x).
    tiles = plan_tiles(512, 512, 400, overlap=20, by_area=True)
    assert [t.window for t in tiles] == [(0, 512, 0, 296), (0, 512, 216, 512)]
    assert len(plan_tiles(512, 512, 400, overlap=20)) == 4


def test_tile_zero_means_one_tile():
    assert len(plan_tiles(30, 40, 0, overlap=5)) == 1


@pytest.mark.parametrize("tile,by_area", [(8, False), (13, False), (29, False), (8, True), (13, True)])
def test_tiled_equals_untiled_with_receptive_field_overlap(tile, by_area):
    model = random_model()
    x = torch.rand(2, 1, 45, 38)
    with torch.no_grad():
        whole = model(x)
        seen = []
        tiled = run_tiled(model, x, tile, model.config.receptive_radius, on_tile=lambda i, n: seen.append((i, n)),
                          by_area=by_area)
    assert (tiled - whole).abs().max().item() <= 1e-5
    assert seen[-1][0] == seen[-1][1] == len(seen) > 1


def test_too_little_overlap_shows_seams():
    # The check above can fail: with no context the tile borders differ from the untiled output.
    model = random_model()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        difference = (run_tiled(model, x, 8, overlap=0) - model(x)).abs().max().item()
    assert difference > 1e-3


class FakeOOM(torch.OutOfMemoryError):
    pass


def test_out_of_memory_halves_the_tile_and_reports_it():
    calls, shrinks = [], []

    def fn(window):
        calls.append(window.shape[-1])
        if window.shape[-1] > 20:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return window * 2

    x = torch.rand(1, 1, 40, 40)
    out = run_tiled_adaptive(fn, x, 40, overlap=2, min_tile=8, on_shrink=shrinks.append)
    torch.testing.assert_close(out, x * 2)
    assert shrinks == [20, 10]


def test_out_of_memory_at_the_smallest_tile_propagates_and_other_errors_are_not_retried():
    def oom(window):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        run_tiled_adaptive(oom, torch.rand(1, 1, 16, 16), 16, overlap=0, min_tile=8)

    attempts = []

    def broken(window):
        attempts.append(1)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_tiled_adaptive(broken, torch.rand(1, 1, 16, 16), 16, overlap=0)
    assert len(attempts) == 1


def test_auto_tile_size_fits_budget():
    side = auto_tile_size(bytes_per_pixel=4096, budget_bytes=1 << 30, overlap=20)
    assert side % 8 == 0
    assert (side + 40) ** 2 * 4096 <= 1 << 30
    assert auto_tile_size(4096, 0, 20) == 64
    assert auto_tile_size(1, 1 << 40, 20) == 4096


@pytest.mark.parametrize(
    "tile,by_area,row_context_cost", [(8, False, 1.0), (13, True, 1.0), (13, True, 0.3), (5, True, 0.3)]
)
def test_windows_that_cut_their_context_rows_stitch_to_the_untiled_result(tile, by_area, row_context_cost):
    model = random_model()
    x = torch.rand(1, 1, 45, 38)
    windows = []

    def cutting(window, context):
        windows.append((window.shape[2], context))
        return model(window, None, context)

    with torch.no_grad():
        whole = model(x)
        tiled = run_tiled(cutting, x, tile, model.config.receptive_radius, by_area=by_area,
                          row_context_cost=row_context_cost, cuts_rows=True)
    assert (tiled - whole).abs().max().item() <= 1e-5
    assert any(top > 0 and bottom > 0 for _, (top, bottom) in windows)  # interior windows were cut


def test_cheap_context_rows_make_the_planner_pick_bands():
    # 1024² with 20 rows of context and windows of at most 432² pixels: whole windows are cheapest as 8 of
    # 552x296; context rows at 0.3 of a core row make full-width bands cheaper (8 of 168x1024).
    whole = plan_tiles(1024, 1024, 392, overlap=20, by_area=True)
    bands = plan_tiles(1024, 1024, 392, overlap=20, by_area=True, row_context_cost=0.3)
    assert {(t.window[1] - t.window[0], t.window[3] - t.window[2]) for t in whole} == {(552, 296)}
    assert {(t.window[1] - t.window[0], t.window[3] - t.window[2]) for t in bands} == {(168, 1024)}
