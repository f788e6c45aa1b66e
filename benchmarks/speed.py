"""Inference speed of each bundled model against the floor set by this machine's own conv throughput.

    python benchmarks/speed.py [--models drcn-lite] [--precisions fp32 bf16 int8] [--sizes 256 512 1024]
                               [--data-dir ../datasets] [--random F] [--ablation] [--device auto]

For every model (the shipped weights; `--random F` adds an F-filter model with random weights, free of tiny
values) and precision, and every square output side, it times:

- network: `super_resolve_y`, the path `drcn upscale` takes (the model as `open_model` prepares it, auto tiles);
- floor:   the model's conv FLOPs at that size over the peak rate of one F->F 3x3 conv, measured in the same
           run: the best over NCHW and channels_last and over maps of 128², 256², 512² and each output side
           (small maps run from the caches; large ones are bound by memory); ratio = network / floor. The
           rate on a map of the output's own side is printed beside it, for comparison;
- whole:   `upscale_image` of an RGB image to that size (bicubic, colour, network); ratio to the network.
           With int8 among the precisions (the default where ONNX Runtime is installed, on the CPU), the whole
           call's speed-up of int8 over each other precision follows, measured in the same run.

Then, with the default model and precision: `drcn upscale docs/samples/pattern.png -s 3` as a command, less
the start-up of `python -c "import torch"`; with `--data-dir` (a folder holding Set14), one Set14 image x3
through `drcn upscale` and images/s over a folder of 20 images (Set14 and Set5 downscaled x3, and one more).
`--ablation` times the memory layout, the weight dtype, the conv+ReLU fusion, fp32's recon2 as separate taps
(model.py, `_residuals_by_taps`) and the thread count at 512², and the allocator settings
(`device.reuse_freed_memory` and the huge pages `drcn` asks torch for) against the defaults, in fresh processes,
with the page faults of one network call.
The CPU's model name and flags come first: every figure belongs to the machine it was measured on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from drcn_cli.cli import prefer_huge_pages

prefer_huge_pages()  # as `drcn` does, before torch is imported: the figures are those of the command

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from drcn_cli import model as model_module  # noqa: E402
from drcn_cli.inference.device import (  # noqa: E402
    cpu_has_native_bf16,
    cpu_info,
    resolve_device,
    resolve_precision,
    set_threads,
)
from drcn_cli.inference.int8 import CALIBRATION_SUFFIX, runtime_problem  # noqa: E402
from drcn_cli.inference.pipeline import (  # noqa: E402
    InferenceSettings,
    open_model,
    prepare_for_inference,
    super_resolve_y,
    upscale_image,
)
from drcn_cli.model import DRCN, DRCNConfig, conv_flops_per_pixel  # noqa: E402
from drcn_cli.weights.files import BUNDLED_DIR, flush_tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "docs" / "samples" / "pattern.png"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best of ``repeats`` wall times in seconds, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def cpu_description() -> str:
    """The CPU's model name and the flags that decide conv speed, from /proc/cpuinfo where there is one."""
    name, known = cpu_info()
    flags = known or frozenset()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    shown = [flag for flag in wanted if flag in flags] or ["(flags unknown)"]
    line = f"{name}; {os.cpu_count()} logical CPUs; {' '.join(shown)}; native bf16: {cpu_has_native_bf16()}"
    # A CPU without AVX-512 or AMX can be imitated on one that has them: oneDNN's kernels stop at
    # ONEDNN_MAX_CPU_ISA (e.g. AVX2) and torch's own at ATEN_CPU_CAPABILITY (e.g. avx2).
    limits = [f"{var}={os.environ[var]}" for var in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if var in os.environ]
    if limits:
        line += f"; limited to {', '.join(limits)} (torch kernels: {torch.backends.cpu.get_cpu_capability()})"
    return line


def conv_rate(device: torch.device, precision: str, features: int, side: int, repeats: int) -> tuple[float, str]:
    """FLOP/s of one features->features 3x3 conv on a side x side map, and the layout that gave it (the better of
    NCHW and channels_last), with weights and input in the precision's dtype."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32
    conv = torch.nn.Conv2d(features, features, 3, padding=1).to(device, dtype).eval()
    x = torch.rand(1, features, side, side, device=device, dtype=dtype)
    flops = 2 * 9 * features * features * side * side
    best = (0.0, "")
    for name, layout in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
        conv_l, x_l = conv.to(memory_format=layout), x.contiguous(memory_format=layout)
        with torch.inference_mode():
            seconds = timed(lambda conv_l=conv_l, x_l=x_l: conv_l(x_l), device, repeats)
        best = max(best, (flops / seconds, name))
    return best


def random_model(features: int) -> DRCN:
    """An F-filter DRCN with random weights, passed through the same flush of tiny values as every file."""
    torch.manual_seed(0)
    model = DRCN(DRCNConfig(features=features, recursions=16))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    model.load_state_dict(flush_tiny(model.state_dict()))
    return model.eval()


def network_rows(name: str, source, args, device: torch.device) -> None:
    wholes: dict[str, dict[int, float]] = {}
    for precision in args.precisions:
        if precision == "int8" and not isinstance(source, str):
            continue  # int8 needs a calibrated weights file
        ready = open_model(source, device, precision)
        config = ready.network.config
        settings = InferenceSettings(device, precision)
        print(f"\n{name} (F={config.features}, D={config.recursions}), {precision}:")
        # int8's floor is fp32's: the conv rate below is that of float convolutions
        rate_precision = "fp32" if precision == "int8" else precision
        rates = {side: conv_rate(device, rate_precision, config.features, side, args.repeats)
                 for side in sorted({128, 256, 512, *args.sizes})}
        peak_side, (peak, peak_layout) = max(rates.items(), key=lambda item: item[1][0])
        print(f"peak {config.features}->{config.features} 3x3 conv rate: {peak / 1e9:,.0f} GFLOP/s "
              f"({peak_layout}, {peak_side}x{peak_side} map)")
        print(f"{'output':>10} {'network s':>10} {'floor s':>8} {'ratio':>6} {'conv GFLOP/s here':>18} "
              f"{'whole s':>8} {'whole/net':>9}")
        for side in args.sizes:
            rate, layout = rates[side]
            floor = conv_flops_per_pixel(config) * side * side / peak
            y = torch.rand(1, 1, side, side, device=device)
            network = timed(lambda y=y, r=ready, s=settings: super_resolve_y(r, y, s), device, args.repeats)
            image = np.random.default_rng(0).integers(0, 256, (side // 2, side // 2, 3), dtype=np.uint8)
            weights = source if isinstance(source, str) else ready.network
            whole = timed(
                lambda image=image, w=weights, p=precision: upscale_image(image, 2, weights=w, device=str(device),
                                                                          precision=p),
                device, args.repeats,
            )  # fmt: skip
            wholes.setdefault(precision, {})[side] = whole
            print(f"{side:>4}x{side:<5} {network:>10.3f} {floor:>8.3f} {network / floor:>6.2f} "
                  f"{rate / 1e9:>13.0f} {layout} {whole:>8.3f} {whole / network:>9.2f}", flush=True)
    if "int8" in wholes:
        for other in (p for p in wholes if p != "int8"):
            ratios = ", ".join(f"{side}: {wholes[other][side] / wholes['int8'][side]:.2f}x" for side in args.sizes)
            print(f"{name}: whole upscale_image, int8 over {other} (same run): {ratios}")


def ablation(source, device: torch.device, repeats: int, side: int = 512) -> None:
    """The network at side², with one speed setting changed at a time (what each one is worth here)."""
    base = open_model(source, device, "fp32").network
    y = torch.rand(1, 1, side, side, device=device)
    fused, taps = model_module._fused_conv_relu_applies, model_module._taps_apply

    def run(model: DRCN, precision: str, layout: torch.memory_format, fuse: bool, threads: int | None = None,
            split_taps: bool = True) -> float:
        before = torch.get_num_threads()
        model_module._fused_conv_relu_applies = fused if fuse else (lambda conv, h: False)
        model_module._taps_apply = taps if split_taps else (lambda conv, h: False)
        try:
            if threads:
                torch.set_num_threads(threads)
            model = model.to(memory_format=layout)
            x = y.contiguous(memory_format=layout)
            amp = precision == "bf16" and model.recursive.weight.dtype == torch.float32

            def forward() -> None:
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
                    model(x)

            return timed(forward, device, repeats)
        finally:
            model_module._fused_conv_relu_applies, model_module._taps_apply = fused, taps
            torch.set_num_threads(before)

    bf16 = prepare_for_inference(base, device, "bf16")
    rows = [
        ("fp32, NCHW, unfused (the old CPU default)", lambda: run(base, "fp32", torch.contiguous_format, False)),
        ("fp32, channels_last, unfused", lambda: run(base, "fp32", torch.channels_last, False)),
        ("fp32, channels_last, fused, recon2 one 3x3 conv",
         lambda: run(base, "fp32", torch.channels_last, True, split_taps=False)),
        ("fp32, channels_last, fused, recon2 taps (fp32 default)",
         lambda: run(base, "fp32", torch.channels_last, True)),
        ("bf16 autocast, NCHW, unfused", lambda: run(base, "bf16", torch.contiguous_format, False)),
        ("bf16 autocast, channels_last, unfused", lambda: run(base, "bf16", torch.channels_last, False)),
        ("bf16 weights, channels_last, unfused", lambda: run(bf16, "bf16", torch.channels_last, False)),
        ("bf16 weights, channels_last, fused (bf16 default)", lambda: run(bf16, "bf16", torch.channels_last, True)),
        ("bf16 default, 1 thread", lambda: run(bf16, "bf16", torch.channels_last, True, threads=1)),
    ]
    threads = torch.get_num_threads()
    print(f"\nablation: the network at {side}x{side}, {base.config.features} filters, {threads} threads")
    for label, measure in rows:
        print(f"  {label:<56} {measure():8.3f} s", flush=True)


# One network call in a fresh process, with or without drcn's allocator settings: prints seconds and page faults.
# The huge pages are the environment's (set by the caller); glibc's thresholds are drcn's unless mode is default.
_ALLOCATOR_PROBE = """
import resource, sys, time, torch
import drcn_cli.inference.loader
if sys.argv[1] == "default":
    drcn_cli.inference.loader.reuse_freed_memory = lambda: False  # leave glibc's malloc as it starts
from drcn_cli.inference.pipeline import InferenceSettings, open_model, super_resolve_y
name, precision, side, repeats, threads = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if threads:
    torch.set_num_threads(threads)
model = open_model(name, "cpu", precision)
y, settings = torch.rand(1, 1, side, side), InferenceSettings(torch.device("cpu"), precision)
super_resolve_y(model, y, settings)
best, faults = float("inf"), 0
for _ in range(repeats):
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    super_resolve_y(model, y, settings)
    best = min(best, time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(best, faults)
"""


# (label, glibc thresholds, huge pages): drcn's settings, then each taken away.
_ALLOCATOR_MODES = (("drcn", "drcn", "1"), ("4k-pages", "drcn", "0"), ("default", "default", "0"))


def allocator_rows(name: str, precisions: list[str], sizes: list[int], repeats: int) -> None:
    """The network on the CPU with drcn's allocator settings, without huge pages, and with neither (glibc's and
    torch's defaults), each in a fresh process."""
    if not sys.platform.startswith("linux"):
        return
    print(f"\nallocator: {name}, the network in a fresh process; page faults of the last call")
    for precision in precisions:
        for side in sizes:
            cells = []
            for label, thresholds, huge_pages in _ALLOCATOR_MODES:
                argv = [sys.executable, "-c", _ALLOCATOR_PROBE, thresholds, name, precision, str(side), str(repeats),
                        str(torch.get_num_threads())]
                env = {**os.environ, "THP_MEM_ALLOC_ENABLE": huge_pages}
                run = subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
                seconds, faults = run.stdout.split()
                cells.append(f"{label:>8} {float(seconds):7.3f} s {int(faults):>7} faults")
            print(f"  {precision} {side:>4}x{side:<5} " + "   ".join(cells), flush=True)


def command_seconds(argv: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def drcn_command() -> list[str]:
    return [sys.executable, "-c", "from drcn_cli.cli import main; main()"]


def end_to_end(args) -> None:
    """Whole commands, as a user runs them (default model, precision auto)."""
    work = Path(tempfile.mkdtemp(prefix="drcn-speed-"))
    try:
        start_up = command_seconds([sys.executable, "-c", "import torch"], 3)
        sample = command_seconds([*drcn_command(), "upscale", str(SAMPLE), "-s", "3", "-o", str(work / "p.png"),
                                  "--overwrite", "-q"], 3)
        print(f"\nstart-up of `python -c 'import torch'`: {start_up:.2f} s")
        print(f"`drcn upscale docs/samples/pattern.png -s 3` (160x120 -> 480x360): {sample:.2f} s, "
              f"{sample - start_up:.2f} s beyond start-up")
        set14 = Path(args.data_dir) / "Set14" if args.data_dir else None
        if set14 is None or not set14.is_dir():
            print("(no --data-dir with Set14: the photo and folder rows are skipped)")
            return
        photo = set14 / "baboon.png"
        with Image.open(photo) as image:
            size = image.size
        seconds = command_seconds([*drcn_command(), "upscale", str(photo), "-s", "3", "-o", str(work / "b.png"),
                                   "--overwrite", "-q"], 1)
        print(f"`drcn upscale Set14/baboon.png -s 3` ({size[0]}x{size[1]} -> {size[0] * 3}x{size[1] * 3}): "
              f"{seconds:.2f} s")
        folder = work / "lr"
        folder.mkdir()
        sources = sorted(set14.glob("*.png")) + sorted((set14.parent / "Set5").glob("*.png")) + [SAMPLE]
        for path in sources[:20]:
            with Image.open(path) as image:
                image = image.convert("RGB")
                image.resize((image.width // 3, image.height // 3), Image.BICUBIC).save(folder / path.name)
        count = len(list(folder.iterdir()))
        seconds = command_seconds([*drcn_command(), "upscale", str(folder), "-s", "3", "-o", str(work / "out"),
                                   "--overwrite", "-q"], 1)
        print(f"`drcn upscale` of a folder of {count} images (Set14 and Set5 at 1/3 size, and the sample) x3: "
              f"{seconds:.1f} s, {count / seconds:.2f} images/s (start-up included)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", nargs="+", default=None, help="bundled model names (default: all bundled)")
    parser.add_argument("--random", type=int, nargs="*", default=[], metavar="F",
                        help="also time an F-filter model with random weights (e.g. 256 for the full model)")
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32, and bf16 where native")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per row, after one warm-up")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="folder holding Set14 and Set5, for the end-to-end rows")
    parser.add_argument("--ablation", action="store_true", help="time each speed setting at 512^2")
    parser.add_argument("--no-end-to-end", action="store_true")
    args = parser.parse_args()

    set_threads(args.threads)
    device = resolve_device(args.device)
    if args.precisions is None:
        native = resolve_precision("auto", device)
        args.precisions = ["fp32"] + ([native] if native != "fp32" else [])
        if device.type == "cpu" and runtime_problem() is None:
            args.precisions.append("int8")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}")
    print(f"cpu: {cpu_description()}")

    bundled = (p for p in BUNDLED_DIR.glob("*.safetensors") if not p.name.endswith(CALIBRATION_SUFFIX))
    names = args.models or sorted(p.stem for p in bundled)
    sources = [(name, name) for name in names] + [(f"random F={f}", random_model(f)) for f in args.random]
    for name, source in sources:
        network_rows(name, source, args, device)
    if args.ablation and sources:
        ablation(sources[0][1], device, args.repeats)
        if device.type == "cpu" and names:
            allocator_rows(names[0], args.precisions, args.sizes, args.repeats)
    if not args.no_end_to_end:
        end_to_end(args)


if __name__ == "__main__":
    main()
