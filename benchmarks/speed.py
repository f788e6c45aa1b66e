"""Inference speed of the full DRCN against the floor set by the device's own conv throughput.

    python benchmarks/speed.py [--device auto] [--sizes 256 512 1024] [--features 256] [--recursions 16]

For each square output size it times the network on the Y channel (drcn_cli.pipeline.super_resolve_y, the
path `drcn upscale` takes, with tiling as chosen by default) and the whole upscale_image call (bicubic,
colour, network). The floor is the conv FLOPs of the model at that size divided by the sustained rate of a
256->256 3x3 conv measured in the same run on the same device and precision; ratio = measured / floor
(1.0 would mean no overhead at all beyond the convolutions). Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from drcn_cli.device import autocast_dtype, resolve_device, resolve_precision, set_threads
from drcn_cli.model import DRCN, DRCNConfig, conv_flops_per_pixel
from drcn_cli.pipeline import InferenceSettings, super_resolve_y, upscale_image


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: bool = True) -> float:
    """Best of ``repeats`` wall times in seconds, after one warm-up call unless ``warmup`` is False."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def sustained_conv_rate(device: torch.device, precision: str, features: int, side: int, repeats: int) -> float:
    """FLOP/s of one features->features 3x3 conv (with ReLU) on a side x side map: the device's conv ceiling."""
    conv = torch.nn.Conv2d(features, features, 3, padding=1).to(device).eval()
    x = torch.rand(1, features, side, side, device=device)
    amp = autocast_dtype(precision)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            torch.relu_(conv(x))

    seconds = timed(run, device, repeats)
    return 2 * 9 * features * features * side * side / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--recursions", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per size (default: 1 on CPU, 5 on GPU)")
    parser.add_argument("--e2e-max", type=int, default=0,
                        help="time upscale_image only up to this output side (default: all sizes on GPU, 512 on CPU)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    set_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    repeats = args.repeats or (5 if device.type == "cuda" else 1)
    # On a CPU one full-model run at 1024^2 takes minutes: warm up once on a small input, not per size.
    per_size_warmup = device.type != "cpu"
    e2e_max = args.e2e_max or (max(args.sizes) if device.type != "cpu" else 512)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    config = DRCNConfig(features=args.features, recursions=args.recursions)
    torch.manual_seed(0)
    model = DRCN(config).to(device).eval()
    settings = InferenceSettings(device, precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; precision: {precision}; F={config.features}, D={config.recursions}; "
          f"torch {torch.__version__}")

    # The probe map holds as many activations as a 256-filter map of 128^2 (CPU) or 512^2 (GPU) whatever F is:
    # a 64-filter conv on a small map underuses the CPU's caches and would set the floor too low.
    probe_side = round((128 if device.type == "cpu" else 512) * (256 / config.features) ** 0.5)
    rate = sustained_conv_rate(device, precision, config.features, probe_side, repeats + 2)
    print(f"sustained {config.features}->{config.features} 3x3 conv rate: {rate / 1e9:,.1f} GFLOP/s")
    print(f"conv FLOPs per output pixel: {conv_flops_per_pixel(config) / 1e6:.2f} M")
    super_resolve_y(model, torch.rand(1, 1, 64, 64, device=device), settings)
    print(f"{'output':>10} {'network ms':>11} {'ms/Mpx':>9} {'floor ms/Mpx':>13} {'ratio':>6} "
          f"{'upscale_image ms/Mpx':>21}")
    for side in args.sizes:
        megapixels = side * side / 1e6
        y = torch.rand(1, 1, side, side, device=device)
        network_s = timed(lambda y=y: super_resolve_y(model, y, settings), device, repeats, per_size_warmup)
        whole = "skipped"
        if side <= e2e_max:
            image = np.random.default_rng(0).integers(0, 256, (side // 2, side // 2, 3), dtype=np.uint8)
            whole_s = timed(
                lambda image=image: upscale_image(image, 2, weights=model, device=str(device), precision=precision),
                device, repeats, per_size_warmup,
            )
            whole = f"{whole_s * 1e3 / megapixels:.1f}"
        floor_ms_per_mpx = conv_flops_per_pixel(config) * 1e6 / rate * 1e3
        ms_per_mpx = network_s * 1e3 / megapixels
        print(f"{side:>4}x{side:<5} {network_s * 1e3:>11.1f} {ms_per_mpx:>9.1f} {floor_ms_per_mpx:>13.1f} "
              f"{ms_per_mpx / floor_ms_per_mpx:>6.2f} {whole:>21}", flush=True)


if __name__ == "__main__":
    main()
