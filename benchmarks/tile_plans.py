"""Tile plans compared: `super_resolve_y` as drcn runs it (`tiling.tile_plan`: bands that cut their context
rows, where planned) against whole windows as before (the automatic tile as an area budget, every window run
whole, its context rows computed at every layer), in one process, alternating.

    python benchmarks/tile_plans.py [--precision bf16] [--rounds 3] [--sizes 512x512 1024x1024 ...]
    python benchmarks/tile_plans.py --scan-widths [--precision bf16]

For each output size (height x width) it prints the best time of each plan over the rounds (after one warm-up
each), their ratio, the plan each took and the largest difference of the two outputs (0: the cut rows change
nothing). The VM this was written on moved 8% between identical runs in one process: read a ratio within that
as no difference, and repeat before believing one. `--scan-widths` times one F->F 3x3 conv (fused with its
ReLU, channels_last) on maps of about 160,000 pixels, width 128 to 1400 in steps of 8: how the conv's rate
depends on the width of a window. The CPU comes first.
"""

from __future__ import annotations

import argparse
import time

from drcn_cli.cli import prefer_huge_pages

prefer_huge_pages()  # as `drcn` does, before torch is imported

import torch  # noqa: E402
from speed import cpu_description  # noqa: E402  # benchmarks/ is the script's folder

from drcn_cli.inference.pipeline import InferenceSettings, open_model, super_resolve_y  # noqa: E402
from drcn_cli.inference.tiling import (  # noqa: E402
    auto_tile,
    run_tiled,  # noqa: E402
    tile_plan,
)


def compare(precision: str, sizes: list[tuple[int, int]], rounds: int) -> None:
    ready = open_model("drcn-lite", "cpu", precision)
    settings = InferenceSettings(torch.device("cpu"), precision)
    network, overlap = ready.network, ready.config.receptive_radius
    tile = auto_tile(ready.config, settings.device, precision)

    def whole_window(window: torch.Tensor) -> torch.Tensor:
        return network(window.contiguous(memory_format=torch.channels_last)).float()

    runs = {
        "whole": lambda y: run_tiled(whole_window, y, tile, overlap, by_area=True),
        "planned": lambda y: super_resolve_y(ready, y, settings),
    }
    for height, width in sizes:
        y = torch.rand(1, 1, height, width, generator=torch.Generator().manual_seed(0))
        best, outputs = dict.fromkeys(runs, float("inf")), {}
        with torch.inference_mode():
            for round_ in range(rounds + 1):
                for name, run in runs.items():
                    start = time.perf_counter()
                    outputs[name] = run(y)
                    if round_:
                        best[name] = min(best[name], time.perf_counter() - start)
        planned = tile_plan(ready.config, None, settings.device, precision, height, width)
        difference = (outputs["whole"] - outputs["planned"]).abs().max().item()
        print(f"{height}x{width} {precision}: whole {best['whole']:.3f} s, planned {best['planned']:.3f} s, "
              f"ratio {best['planned'] / best['whole']:.3f}; planned: tile {planned.tile}, "
              f"row context cost {planned.row_context_cost:.2f}; max difference {difference:.1e}", flush=True)


def scan_widths(precision: str, pixels: int = 160_000, features: int = 64) -> None:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    weight = (0.05 * torch.randn(features, features, 3, 3, generator=gen)).to(dtype)
    bias = torch.zeros(features, dtype=dtype)
    conv = torch.ops.mkldnn._convolution_pointwise
    print("height width GFLOP/s")
    with torch.inference_mode():
        for width in range(128, 1401, 8):
            height = max(8, round(pixels / width))
            x = torch.randn(1, features, height, width, generator=gen).to(dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            times = []
            for _ in range(4):  # the first builds the kernel
                start = time.perf_counter()
                conv(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "relu", [None], "")
                times.append(time.perf_counter() - start)
            flops = 2 * 9 * features * features * height * width
            print(f"{height} {width} {flops / min(times[1:]) / 1e9:.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["512x512", "768x768", "1024x1024", "600x800", "720x1280",
                                                        "1280x960", "1440x1500"])
    parser.add_argument("--scan-widths", action="store_true")
    args = parser.parse_args()
    print(f"cpu: {cpu_description()}; {torch.get_num_threads()} threads; torch {torch.__version__}")
    if args.scan_widths:
        scan_widths(args.precision)
    else:
        sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes]
        compare(args.precision, sizes, args.rounds)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
