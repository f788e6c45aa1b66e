"""The checks of a GPU window: the CUDA paths of `drcn upscale` against the CPU-tested ones, in about 30 s.

    python benchmarks/cuda_checks.py [--device cuda] [--weights drcn-lite] [--json checks.json]

1. bf16 and (on CUDA) fp16 inference against fp32 on docs/samples/pattern.png x3, 8-bit outputs: at most 4
   levels apart and 50 dB or more (the bound the CPU bf16 path is tested to);
2. tiled (64-pixel tiles) against untiled, fp32: the same output to float rounding (cuDNN may pick other
   algorithms for other shapes);
3. out-of-memory halving: the network made to raise OutOfMemoryError on windows over 120x120 pixels, so the
   tile is halved until it fits; the result must equal the untiled one;
4. the prepared model's memory layout (channels_last) and dtype.
Runs on any device (`--device cpu` is the dry run before a window). Prints one line per check and a summary;
exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from drcn_cli.inference.device import resolve_device
from drcn_cli.inference.pipeline import InferenceSettings, open_model, super_resolve_y, upscale_image

SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "samples" / "pattern.png"


def eight_bit_gap(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(largest difference in levels, PSNR of one against the other in dB) of two uint8 images."""
    difference = a.astype(np.int64) - b.astype(np.int64)
    mse = float(np.mean(difference.astype(np.float64) ** 2))
    return int(np.abs(difference).max()), (float("inf") if mse == 0 else 10 * np.log10(255**2 / mse))


def check_precisions(weights: str, device: torch.device, image: np.ndarray) -> list[dict]:
    reference = upscale_image(image, 3, weights=weights, device=str(device), precision="fp32")
    rows = []
    for precision in ("bf16", "fp16") if device.type == "cuda" else ("bf16",):
        out = upscale_image(image, 3, weights=weights, device=str(device), precision=precision)
        levels, db = eight_bit_gap(out, reference)
        rows.append({"check": f"{precision} vs fp32", "ok": bool(levels <= 4 and db >= 50),
                     "detail": f"max {levels} levels, {db:.1f} dB"})
    return rows


def check_tiling(weights: str, device: torch.device, side: int) -> list[dict]:
    ready = open_model(weights, device, "fp32")
    model = ready.network
    y = torch.rand(1, 1, side, side - 40, generator=torch.Generator().manual_seed(0)).to(device)
    whole = super_resolve_y(ready, y, InferenceSettings(device, "fp32", tile=4096))
    tiled = super_resolve_y(ready, y, InferenceSettings(device, "fp32", tile=64))
    gap = (whole - tiled).abs().max().item()
    rows = [{"check": "tiled (64) vs untiled, fp32", "ok": bool(gap <= 1e-4), "detail": f"max |diff| {gap:.2e}"}]

    forward = model.forward
    shrinks: list[int] = []

    def runs_out_of_memory_on_big_windows(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # passes forward's other arguments through as they are, so a new one cannot break this check again
        if x.shape[-2] * x.shape[-1] > 120 * 120:
            raise torch.OutOfMemoryError("CUDA out of memory (forced by cuda_checks.py)")
        return forward(x, *args, **kwargs)

    model.forward = runs_out_of_memory_on_big_windows
    try:
        halved = super_resolve_y(ready, y, InferenceSettings(device, "fp32", tile=4096), on_shrink=shrinks.append)
    finally:
        model.forward = forward
    gap = (whole - halved).abs().max().item()
    rows.append({"check": "out-of-memory halving", "ok": bool(shrinks) and bool(gap <= 1e-4),
                 "detail": f"tile halved to {shrinks}, max |diff| {gap:.2e}"})
    return rows


def check_layout(weights: str, device: torch.device) -> list[dict]:
    rows = []
    for precision in ("fp32", "bf16"):
        model = open_model(weights, device, precision).network
        weight = model.recursive.weight
        channels_last = weight.is_contiguous(memory_format=torch.channels_last)
        rows.append({"check": f"prepared model layout, {precision}", "ok": channels_last,
                     "detail": f"channels_last {channels_last}, weights {str(weight.dtype).removeprefix('torch.')}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", default="drcn-lite", help="a bundled model name or a .safetensors file")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="small images: the dry run on a CPU")
    args = parser.parse_args()
    device = resolve_device(args.device)
    start = time.perf_counter()
    with Image.open(SAMPLE) as sample:
        image = np.asarray(sample.convert("RGB"))
    if args.quick:
        image = image[:48, :64]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}); torch {torch.__version__}", flush=True)
    rows = check_precisions(args.weights, device, image)
    rows += check_tiling(args.weights, device, 160 if args.quick else 300) + check_layout(args.weights, device)
    for row in rows:
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['check']}: {row['detail']}", flush=True)
    failed = [row["check"] for row in rows if not row["ok"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed in {time.perf_counter() - start:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__, "checks": rows}, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
