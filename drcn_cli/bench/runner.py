"""`drcn bench`'s runner: every image of some datasets at every scale and recursion depth, scored by the paper's
protocol (:mod:`drcn_cli.bench.protocol`) and timed, with the published numbers beside the means
(:mod:`drcn_cli.bench.results`). It prints nothing. The LR images may also go through JPEG files (``jpeg``
qualities): the same protocol on the inputs photos are.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..inference.pipeline import Upscaler, super_resolve_y
from ..io.write import write_image
from .datasets import Dataset, DatasetError, load_image
from .protocol import BenchError, Sample, check_size, make_sample, score_image, super_resolve
from .published import published
from .results import BenchProgress, BenchReport, ImageResult, SetResult, Timing

__all__ = ["parse_recursions", "run_bench"]


def parse_recursions(spec: str, depth: int) -> tuple[int, ...]:
    """``"K"``, ``"A..B"`` or ``"A,B,C"`` (mixable: ``"1..4,8,16"``), or ``"all"`` (1..depth) -> sorted depths.

    Raises BenchError for a malformed spec or a depth outside 1..``depth``.
    """
    values: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if part == "all":
            values.update(range(1, depth + 1))
        elif match := re.fullmatch(r"(\d+)\.\.(\d+)", part):
            low, high = int(match[1]), int(match[2])
            if low > high:
                raise BenchError(f"recursions {part!r}: the range is empty")
            values.update(range(low, high + 1))
        elif part.isdigit():
            values.add(int(part))
        else:
            raise BenchError(f"recursions {spec!r}: use K, A..B, a comma-separated list, or all")
    bad = sorted(v for v in values if not 1 <= v <= depth)
    if bad:
        raise BenchError(f"recursions {bad[0]} out of range: this model has 1..{depth}")
    return tuple(sorted(values))


def _check_sizes(datasets: Sequence[Dataset], scales: Sequence[int]) -> None:
    """Read every image's header before any work, so that a bad file fails at once, not an hour in."""
    for dataset in datasets:
        for path in dataset.images:
            try:
                with Image.open(path) as image:
                    width, height = image.size
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise DatasetError(f"{path}: not a readable image ({exc})") from None
            for scale in scales:
                try:
                    check_size(width, height, scale)
                except BenchError as exc:
                    raise BenchError(f"{path}: {exc}") from None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm_up(upscaler: Upscaler) -> None:
    """One small forward pass, so that CUDA start-up and kernel selection stay out of the timed region."""
    if upscaler.network is None:
        return
    x = torch.zeros(1, 1, 64, 64, device=upscaler.settings.device)
    super_resolve_y(upscaler.network, x, upscaler.settings)
    _sync(upscaler.settings.device)


def _timed_upscale(
    lr: torch.Tensor, scale: int, upscaler: Upscaler, recursions: int | None = None
) -> tuple[torch.Tensor, float]:
    """:func:`super_resolve` with the device synchronised around it; returns (SR on the CPU, seconds)."""
    device = upscaler.settings.device
    _sync(device)
    start = time.perf_counter()
    result = super_resolve(lr, scale, upscaler, recursions)
    _sync(device)
    elapsed = time.perf_counter() - start
    return result.cpu(), elapsed


def _peak_memory(device: torch.device) -> tuple[int | None, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda allocated"
    try:
        import resource
    except ImportError:  # not on Windows
        return None, "n/a"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process RSS"


def _save(image: torch.Tensor, path: Path) -> None:
    pixels = (image.cpu() * 255.0).round().to(torch.uint8).numpy()
    pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, pixels)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _depths(upscaler: Upscaler, recursions: Sequence[int | None]) -> tuple[int | None, ...]:
    """The recursion depths to measure (bicubic has one); BenchError for a depth the model lacks."""
    if upscaler.network is None:
        return (None,)
    depth = upscaler.network.config.recursions
    bad = [k for k in recursions if k is not None and not 1 <= k <= depth]
    if bad:
        raise BenchError(f"recursions {bad[0]} out of range: this model has 1..{depth}")
    return tuple(recursions)


@dataclass
class _Tally:
    """Upscaling time and output size summed over a run, for its Timing."""

    seconds: float = 0.0
    pixels: int = 0
    upscales: int = 0

    def add(self, sr: torch.Tensor, seconds: float) -> None:
        self.seconds += seconds
        self.pixels += sr.shape[-2] * sr.shape[-1]
        self.upscales += 1


def _measure(
    dataset: str,
    path: Path,
    sample: Sample,
    upscaler: Upscaler,
    depths: Sequence[int | None],
    tally: _Tally,
    save_root: Path | None,
) -> list[ImageResult]:
    """One sample, bicubic and at every depth (bicubic alone for a bicubic upscaler): a result per depth."""
    lr, scale = sample.lr.to(upscaler.settings.device), int(sample.scale)
    bicubic, bicubic_seconds = _timed_upscale(lr, scale, Upscaler(None, upscaler.settings))
    bicubic_score = score_image(bicubic, sample.hr, scale)
    results = []
    for depth in depths:
        if upscaler.network is None:
            sr, elapsed, score = bicubic, bicubic_seconds, bicubic_score
        else:
            sr, elapsed = _timed_upscale(lr, scale, upscaler, depth)
            score = score_image(sr, sample.hr, scale)
        tally.add(sr, elapsed)
        height, width = sample.hr.shape[-2:]
        results.append(
            ImageResult(dataset, path.stem, scale, sample.jpeg, depth, width, height, score.psnr, score.ssim,
                        bicubic_score.psnr, bicubic_score.ssim, seconds=elapsed)
        )  # fmt: skip
        if save_root is not None:
            suffix = f"_r{depth}" if len(depths) > 1 else ""
            folder = f"x{scale}" if sample.jpeg is None else f"x{scale}_jpeg{sample.jpeg}"
            _save(sr, save_root / dataset / folder / f"{path.stem}{suffix}.png")
    return results


@torch.no_grad()
def run_bench(
    datasets: Sequence[Dataset],
    scales: Sequence[int],
    upscaler: Upscaler,
    recursions: Sequence[int | None] = (None,),
    save_dir: str | Path | None = None,
    on_progress: Callable[[BenchProgress], None] | None = None,
    jpeg: Sequence[int | None] = (None,),
) -> BenchReport:
    """Measure ``upscaler`` (a network's, or bicubic's) on every image of ``datasets`` at every scale and recursion
    depth, with the LR images as the paper makes them (None in ``jpeg``) or through JPEG at each quality in ``jpeg``.
 ``save_dir`` receives the SR images as
    ``<dataset>/x<scale>/<image>.png`` (``x<scale>_jpeg<q>/`` for JPEG inputs; ``<image>_r<k>.png`` for each
    depth of a sweep).

    Raises BenchError (an image too small, a depth the model lacks), DatasetError (an unreadable image),
    ImageWriteError (saving failed).
    """
    if not datasets or not scales:
        raise BenchError("nothing to measure: give at least one dataset and one scale")
    if any(int(s) != s or s < 2 for s in scales):
        raise BenchError(f"scales must be integers >= 2, got {list(scales)}")
    if not jpeg or any(q is not None and not 1 <= q <= 100 for q in jpeg):
        raise BenchError(f"JPEG qualities must be in 1..100, got {list(jpeg)}")
    depths = _depths(upscaler, recursions)
    _check_sizes(datasets, scales)
    save_root = Path(save_dir) if save_dir is not None else None
    _warm_up(upscaler)
    settings = upscaler.settings
    if settings.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(settings.device)
    results: list[ImageResult] = []
    tally = _Tally()
    total, done = sum(len(d.images) for d in datasets), 0
    for dataset in datasets:
        for index, path in enumerate(dataset.images, start=1):
            image = load_image(path)
            for scale in scales:
                for quality in jpeg:
                    sample = _sample(image, scale, path, quality)
                    results += _measure(dataset.name, path, sample, upscaler, depths, tally, save_root)
            done += 1
            if on_progress is not None:
                on_progress(BenchProgress(dataset.name, path.stem, index, len(dataset.images), done, total))
    peak, peak_kind = _peak_memory(settings.device)
    timing = Timing(
        tally.upscales, tally.seconds, tally.pixels / 1e6, str(settings.device), settings.precision, peak, peak_kind
    )
    method = "bicubic" if upscaler.network is None else "drcn"
    sets = _summarise(datasets, scales, jpeg, depths, results, method)
    return BenchReport(method, sets, tuple(results), timing)


def _sample(image: torch.Tensor, scale: int, path: Path, jpeg: int | None) -> Sample:
    try:
        return make_sample(image, scale, path.name, jpeg)
    except BenchError as exc:
        raise BenchError(f"{path}: {exc}") from None


def _summarise(
    datasets: Sequence[Dataset],
    scales: Sequence[int],
    qualities: Sequence[int | None],
    depths: Sequence[int | None],
    results: Sequence[ImageResult],
    method: str,
) -> tuple[SetResult, ...]:
    paper_method = "DRCN" if method == "drcn" else "Bicubic"
    sets = []
    for dataset, scale, jpeg, depth in itertools.product(datasets, scales, qualities, depths):
        known = dataset.benchmark.name if dataset.benchmark is not None and jpeg is None else None
        key = (dataset.name, scale, jpeg, depth)
        rows = [r for r in results if (r.dataset, r.scale, r.jpeg, r.recursions) == key]
        sets.append(
            SetResult(
                dataset=dataset.name,
                scale=scale,
                jpeg=jpeg,
                recursions=depth,
                images=len(rows),
                psnr=_mean([r.psnr for r in rows]),
                ssim=_mean([r.ssim for r in rows]),
                bicubic_psnr=_mean([r.bicubic_psnr for r in rows]),
                bicubic_ssim=_mean([r.bicubic_ssim for r in rows]),
                paper=published(paper_method, known, scale) if known else None,
                paper_bicubic=published("Bicubic", known, scale) if known else None,
            )
        )
    return tuple(sets)
