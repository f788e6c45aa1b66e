"""The paper's evaluation protocol, and a benchmark runner that returns results (it prints nothing).

Protocol (one HR image, integer scale s), as Table 1 of the DRCN paper, which used "the public evaluation code
used in [10]" (Huang et al.'s SelfExSR benchmark code):

    HR (8-bit) --mod-crop to a multiple of s--> HR'
    LR  = MATLAB-bicubic downscale of HR' by 1/s, rounded to 8 bits   (the LR images are stored as PNG files)
    SR  = the upscaler's output from LR, rounded to 8 bits             (the SR images are stored as PNG files)
          bicubic: MATLAB-bicubic upscale of LR;
          DRCN:    the network on the Y of that upscale, Cb/Cr from the upscale (what ``drcn upscale`` does)
    PSNR and SSIM between Y(SR) and Y(HR'), s pixels cropped from each border (:mod:`drcn_cli.metrics`),
    Y = MATLAB rgb2ycbcr of the 8-bit RGB image, itself 8-bit; a one-channel image is measured on its grey values

Why these choices: with Set5 and Set14 they reproduce the paper's bicubic row best among the variants we
measured (all within 0.017 dB and 0.0004 SSIM). Measuring Y in float without rounding moves Set5 up by
0.011-0.022 dB and SSIM by up to 0.0009; resizing Y alone instead of RGB moves Set14's x4 SSIM down by
0.0008; passing the grey ``bridge`` through rgb2ycbcr moves Set14 up by 0.08-0.09 dB.
The downscale runs in float32 on the CPU; the upscale runs on the inference device, as ``drcn upscale`` runs it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .data import downscale
from .datasets import Dataset, DatasetError, load_image
from .errors import DrcnError
from .metrics import SSIM_WINDOW, quantize_8bit, score_y
from .pipeline import InferenceSettings, ReadyModel, super_resolve_y, upscale_tensor
from .published import PublishedResult, published

if TYPE_CHECKING:
    from .model import DRCN

__all__ = [
    "BenchError",
    "BenchProgress",
    "BenchReport",
    "ImageResult",
    "MissingExtraError",
    "Score",
    "SetResult",
    "Timing",
    "degrade",
    "evaluate_images",
    "min_image_side",
    "parse_recursions",
    "per_image_rows",
    "plot_recursion_sweep",
    "report_to_dict",
    "run_bench",
    "score_image",
    "super_resolve",
]


class BenchError(DrcnError, ValueError):
    """Input the protocol cannot measure: an image too small for the scale, a bad recursion depth."""


class MissingExtraError(DrcnError, RuntimeError):
    """An optional dependency (an extra of the drcn package) is not installed."""


@dataclass(frozen=True)
class Score:
    """PSNR in dB and SSIM of an image, or their means over a set."""

    psnr: float
    ssim: float


# -------------------------------------------------------------------------------------------------- protocol


def min_image_side(scale: int) -> int:
    """The smallest HR side the protocol can measure at ``scale``: an 11x11 SSIM window after the border crop."""
    return SSIM_WINDOW + 2 * scale


def degrade(hr: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """hr (C, H, W) in [0, 1] on 8-bit levels -> (HR mod-cropped to a multiple of ``scale``, LR rounded to 8 bits).

    The LR is MATLAB's ``imresize(hr, 1/scale, 'bicubic')``; its size is given exactly, (H/s, W/s), so a
    factor such as 1/3 cannot round the output size up. Raises BenchError when the image is too small.
    """
    height, width = hr.shape[-2:]
    if min(height, width) < min_image_side(scale):
        raise BenchError(
            f"image of {width}x{height} pixels is too small for x{scale} "
            f"(needs at least {min_image_side(scale)} pixels per side)"
        )
    return downscale(hr, scale)  # the one degradation (data.downscale): for an integer scale, MATLAB's modcrop


def super_resolve(
    lr: torch.Tensor,
    scale: int,
    model: ReadyModel | DRCN | None,
    settings: InferenceSettings,
    recursions: int | None = None,
) -> torch.Tensor:
    """lr (C, h, w) in [0, 1], C = 1 or 3 -> (C, h*s, w*s) on 8-bit levels, on ``settings.device``.

    ``model`` None is MATLAB bicubic; otherwise the pipeline that ``drcn upscale`` runs (Y through the network,
    Cb/Cr bicubic), with ``recursions`` (None: the settings' value) of the model's recursions.
    """
    if recursions is not None:
        settings = dataclasses.replace(settings, recursions=recursions)
    size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    return quantize_8bit(upscale_tensor(lr, size, model, settings, scale=float(scale)))


def score_image(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> Score:
    """PSNR/SSIM on 8-bit Y with ``scale`` border pixels cropped. sr, hr: (C, H, W) on 8-bit levels in [0, 1]."""
    return Score(*score_y(sr, hr, border=scale))


def _model_device(model: ReadyModel | DRCN | None) -> torch.device:
    if model is None:
        return torch.device("cpu")
    if isinstance(model, ReadyModel):
        return model.device
    return next(model.parameters()).device


@torch.no_grad()
def evaluate_images(
    images: Sequence[torch.Tensor | str | Path],
    scale: int,
    model: ReadyModel | DRCN | None = None,
    settings: InferenceSettings | None = None,
) -> Score:
    """Mean PSNR/SSIM of ``model`` (None: bicubic) over HR ``images`` at integer ``scale``, by the paper's protocol.

    Args:
        images: HR images, as (C, H, W) float tensors in [0, 1] on 8-bit levels (C = 1 or 3; see
            :func:`drcn_cli.datasets.load_image`) or as paths to image files.
        scale: 2, 3, 4 ...
        model: a ReadyModel (drcn_cli.loader.open_model), or a DRCN on ``settings.device`` (its train/eval mode
            is left as it is; nothing is recorded for autograd, so it can be called between training steps).
        settings: device, precision, tile and recursions; default: the model's device, fp32, automatic tiles,
            all recursions.

    Returns:
        Score with the mean PSNR (dB) and mean SSIM over the images.
    """
    if not images:
        raise BenchError("no images to evaluate")
    if settings is None:
        settings = InferenceSettings(_model_device(model))
    scores = []
    for image in images:
        hr = image if isinstance(image, torch.Tensor) else load_image(image)
        hr, lr = degrade(hr, scale)
        sr = super_resolve(lr.to(settings.device), scale, model, settings)
        scores.append(score_image(sr.cpu(), hr.cpu(), scale))
    return Score(sum(s.psnr for s in scores) / len(scores), sum(s.ssim for s in scores) / len(scores))


# ---------------------------------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class ImageResult:
    """One image at one scale and recursion depth (None: all recursions, or bicubic)."""

    dataset: str
    image: str
    scale: int
    recursions: int | None
    width: int  # of the (mod-cropped) HR and SR images
    height: int
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    seconds: float  # upscaling time (device synchronised), without decoding and scoring


@dataclass(frozen=True)
class SetResult:
    """Means over one dataset at one scale and recursion depth, with the published numbers beside them."""

    dataset: str
    scale: int
    recursions: int | None
    images: int
    psnr: float
    ssim: float
    bicubic_psnr: float
    bicubic_ssim: float
    paper: PublishedResult | None  # the method's published result (DRCN, or Bicubic for --method bicubic)
    paper_bicubic: PublishedResult | None

    @property
    def psnr_delta(self) -> float | None:
        return None if self.paper is None else self.psnr - self.paper.psnr

    @property
    def ssim_delta(self) -> float | None:
        return None if self.paper is None else self.ssim - self.paper.ssim


@dataclass(frozen=True)
class Timing:
    """Throughput of the upscaling itself (bicubic resize, colour conversion and network)."""

    images: int
    seconds: float
    output_megapixels: float
    device: str
    precision: str
    peak_memory_bytes: int | None
    peak_memory_kind: str  # "cuda allocated", "process RSS" or "n/a"

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.inf

    @property
    def megapixels_per_second(self) -> float:
        return self.output_megapixels / self.seconds if self.seconds > 0 else math.inf


@dataclass(frozen=True)
class BenchReport:
    method: str  # "drcn" or "bicubic"
    sets: tuple[SetResult, ...]
    images: tuple[ImageResult, ...]
    timing: Timing


@dataclass(frozen=True)
class BenchProgress:
    """Sent after each image is measured (at every scale and depth): ``done`` of ``total`` images overall."""

    dataset: str
    image: str
    index: int  # 1-based, within the dataset
    count: int  # images in the dataset
    done: int
    total: int


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
    from PIL import Image, UnidentifiedImageError

    need = min_image_side(max(scales))
    for dataset in datasets:
        for path in dataset.images:
            try:
                with Image.open(path) as image:
                    width, height = image.size
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise DatasetError(f"{path}: not a readable image ({exc})") from None
            if min(width, height) < need:
                raise BenchError(
                    f"{path}: image of {width}x{height} pixels is too small for x{max(scales)} "
                    f"(needs at least {need} pixels per side)"
                )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm_up(model: ReadyModel | DRCN | None, settings: InferenceSettings) -> None:
    """One small forward pass, so that CUDA start-up and kernel selection stay out of the timed region."""
    if model is None:
        return
    x = torch.zeros(1, 1, 64, 64, device=settings.device)
    super_resolve_y(model, x, settings)
    _sync(settings.device)


def _timed_upscale(
    lr: torch.Tensor,
    scale: int,
    model: ReadyModel | DRCN | None,
    settings: InferenceSettings,
    recursions: int | None = None,
) -> tuple[torch.Tensor, float]:
    """:func:`super_resolve` with the device synchronised around it; returns (SR on the CPU, seconds)."""
    _sync(settings.device)
    start = time.perf_counter()
    result = super_resolve(lr, scale, model, settings, recursions)
    _sync(settings.device)
    elapsed = time.perf_counter() - start
    return result.cpu(), elapsed


def _peak_memory(device: torch.device) -> tuple[int | None, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda allocated"
    try:
        import resource
        import sys
    except ImportError:  # not on Windows
        return None, "n/a"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process RSS"


def _save(image: torch.Tensor, path: Path) -> None:
    from .imageio import write_image

    pixels = (image.cpu() * 255.0).round().to(torch.uint8).numpy()
    pixels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, pixels)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


@torch.no_grad()
def run_bench(
    datasets: Sequence[Dataset],
    scales: Sequence[int],
    model: ReadyModel | DRCN | None,
    settings: InferenceSettings,
    recursions: Sequence[int | None] = (None,),
    save_dir: str | Path | None = None,
    on_progress: Callable[[BenchProgress], None] | None = None,
) -> BenchReport:
    """Measure ``model`` (None: bicubic) on every image of ``datasets`` at every scale and recursion depth.

    The model must already be on ``settings.device``. ``save_dir`` receives the SR images as
    ``<dataset>/x<scale>/<image>.png`` (``<image>_r<k>.png`` for each depth of a sweep).

    Raises BenchError (an image too small, a depth the model lacks), DatasetError (an unreadable image),
    ImageWriteError (saving failed).
    """
    if not datasets or not scales:
        raise BenchError("nothing to measure: give at least one dataset and one scale")
    if any(int(s) != s or s < 2 for s in scales):
        raise BenchError(f"scales must be integers >= 2, got {list(scales)}")
    depths = tuple(recursions) if model is not None else (None,)
    if model is not None:
        bad = [k for k in depths if k is not None and not 1 <= k <= model.config.recursions]
        if bad:
            raise BenchError(f"recursions {bad[0]} out of range: this model has 1..{model.config.recursions}")
    _check_sizes(datasets, scales)
    method = "bicubic" if model is None else "drcn"
    device = settings.device
    save_root = Path(save_dir) if save_dir is not None else None

    _warm_up(model, settings)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results: list[ImageResult] = []
    total = sum(len(d.images) for d in datasets)
    done = 0
    upscale_seconds = 0.0
    output_pixels = 0
    upscales = 0
    for dataset in datasets:
        for index, path in enumerate(dataset.images, start=1):
            image = load_image(path)
            for scale in scales:
                try:
                    hr, lr = degrade(image, scale)
                except BenchError as exc:
                    raise BenchError(f"{path}: {exc}") from None
                lr = lr.to(device)
                bicubic, bicubic_seconds = _timed_upscale(lr, scale, None, settings)
                bicubic_score = score_image(bicubic, hr, scale)
                for depth in depths:
                    if model is None:
                        sr, elapsed, score = bicubic, bicubic_seconds, bicubic_score
                    else:
                        sr, elapsed = _timed_upscale(lr, scale, model, settings, depth)
                        score = score_image(sr, hr, scale)
                    upscale_seconds += elapsed
                    output_pixels += sr.shape[-2] * sr.shape[-1]
                    upscales += 1
                    results.append(
                        ImageResult(
                            dataset=dataset.name,
                            image=path.stem,
                            scale=scale,
                            recursions=depth,
                            width=hr.shape[-1],
                            height=hr.shape[-2],
                            psnr=score.psnr,
                            ssim=score.ssim,
                            bicubic_psnr=bicubic_score.psnr,
                            bicubic_ssim=bicubic_score.ssim,
                            seconds=elapsed,
                        )
                    )
                    if save_root is not None:
                        suffix = f"_r{depth}" if len(depths) > 1 else ""
                        _save(sr, save_root / dataset.name / f"x{scale}" / f"{path.stem}{suffix}.png")
            done += 1
            if on_progress is not None:
                on_progress(BenchProgress(dataset.name, path.stem, index, len(dataset.images), done, total))

    peak, peak_kind = _peak_memory(device)
    timing = Timing(upscales, upscale_seconds, output_pixels / 1e6, str(device), settings.precision, peak, peak_kind)
    return BenchReport(method, _summarise(datasets, scales, depths, results, method), tuple(results), timing)


def _summarise(
    datasets: Sequence[Dataset],
    scales: Sequence[int],
    depths: Sequence[int | None],
    results: Sequence[ImageResult],
    method: str,
) -> tuple[SetResult, ...]:
    paper_method = "DRCN" if method == "drcn" else "Bicubic"
    sets = []
    for dataset in datasets:
        known = dataset.benchmark.name if dataset.benchmark is not None else None
        for scale in scales:
            for depth in depths:
                rows = [r for r in results if (r.dataset, r.scale, r.recursions) == (dataset.name, scale, depth)]
                sets.append(
                    SetResult(
                        dataset=dataset.name,
                        scale=scale,
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


# ------------------------------------------------------------------------------------------------ exporting


def per_image_rows(report: BenchReport) -> list[dict[str, Any]]:
    """One flat dict per image result (for CSV): dataset, image, scale, recursions, size, scores, seconds."""
    return [dataclasses.asdict(r) for r in report.images]


def _paper_dict(paper: PublishedResult | None) -> dict[str, Any] | None:
    return None if paper is None else {"method": paper.method, "psnr": paper.psnr, "ssim": paper.ssim}


def report_to_dict(report: BenchReport) -> dict[str, Any]:
    """The whole report as JSON-ready data: method, per-set means with the published numbers, timing, images."""
    timing = report.timing
    return {
        "method": report.method,
        "sets": [
            {
                "dataset": s.dataset,
                "scale": s.scale,
                "recursions": s.recursions,
                "images": s.images,
                "psnr": s.psnr,
                "ssim": s.ssim,
                "bicubic_psnr": s.bicubic_psnr,
                "bicubic_ssim": s.bicubic_ssim,
                "paper": _paper_dict(s.paper),
                "paper_bicubic": _paper_dict(s.paper_bicubic),
                "psnr_delta": s.psnr_delta,
                "ssim_delta": s.ssim_delta,
            }
            for s in report.sets
        ],
        "timing": {
            "images": timing.images,
            "seconds": timing.seconds,
            "images_per_second": timing.images_per_second,
            "output_megapixels_per_second": timing.megapixels_per_second,
            "device": timing.device,
            "precision": timing.precision,
            "peak_memory_bytes": timing.peak_memory_bytes,
            "peak_memory_kind": timing.peak_memory_kind,
        },
        "images": per_image_rows(report),
    }


def plot_recursion_sweep(report: BenchReport, path: str | Path) -> None:
    """Draw mean PSNR against recursion depth (one panel per dataset, one line per scale), as the paper's
    Figures 8-9, with each scale's bicubic PSNR as a dashed line. Needs matplotlib (``pip install 'drcn[plot]'``).

    Raises BenchError when the report holds no sweep over depths, MissingExtraError without matplotlib.
    """
    sweep = [s for s in report.sets if s.recursions is not None]
    if len({s.recursions for s in sweep}) < 2:
        raise BenchError("the plot needs results at two or more recursion depths (e.g. --recursions 1..16)")
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError("--plot needs matplotlib: pip install 'drcn[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(dict.fromkeys(s.dataset for s in sweep))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    try:
        for ax, name in zip(axes[0], names, strict=True):
            for scale in sorted({s.scale for s in sweep if s.dataset == name}):
                rows = [s for s in sweep if (s.dataset, s.scale) == (name, scale)]
                points = sorted((s.recursions, s.psnr, s.bicubic_psnr) for s in rows)
                line = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"x{scale}")[0]
                ax.axhline(points[0][2], color=line.get_color(), linestyle="--", linewidth=0.8)
            ax.set_title(f"{name} (dashed: bicubic)")
            ax.set_xlabel("recursions")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("PSNR (dB)")
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
