"""What `drcn bench` measures, as data: the results per image and per set (with the published numbers beside
the means), the timing, the whole report; and the report as JSON-ready data, CSV rows or the recursion-sweep plot
(the paper's Figures 8-9). Nothing here prints.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DrcnError
from ..io.atomic import write_atomic
from .protocol import BenchError
from .published import PublishedResult

__all__ = [
    "BenchProgress",
    "BenchReport",
    "ImageResult",
    "MissingExtraError",
    "SetResult",
    "Timing",
    "per_image_rows",
    "plot_recursion_sweep",
    "report_to_dict",
]


class MissingExtraError(DrcnError, RuntimeError):
    """An optional dependency (an extra of the drcn package) is not installed."""


@dataclass(frozen=True)
class ImageResult:
    """One image at one scale and recursion depth (None: all recursions, or bicubic)."""

    dataset: str
    image: str
    scale: int
    jpeg: int | None  # the JPEG quality the LR image went through; None: the paper's clean LR
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
    jpeg: int | None  # as ImageResult.jpeg; the published numbers are given for clean LR only
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
                "jpeg": s.jpeg,
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
        # Drawn in memory, in the format the extension names (PNG when it names none matplotlib writes), then
        # written as every file is (drcn_cli.io.atomic).
        fmt = Path(path).suffix[1:].lower()
        fmt = fmt if fmt in fig.canvas.get_supported_filetypes() else "png"
        image = io.BytesIO()
        fig.savefig(image, format=fmt, dpi=120)
    finally:
        plt.close(fig)
    write_atomic(path, image.getvalue(), overwrite=True)
