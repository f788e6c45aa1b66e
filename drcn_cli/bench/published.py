"""Published benchmark results (mean PSNR in dB / SSIM on the Y channel, ``scale`` border pixels cropped,
LR made with MATLAB's bicubic ``imresize``), for the "paper" column of ``drcn bench``.

Sources:

* Bicubic, SRCNN and DRCN: Table 1 of J. Kim, J. K. Lee and K. M. Lee, "Deeply-Recursive Convolutional
  Network for Image Super-Resolution", CVPR 2016.
* VDSR: Table 3 of J. Kim, J. K. Lee and K. M. Lee, "Accurate Image Super-Resolution Using Very Deep
  Convolutional Networks", CVPR 2016.
* DRRN (B1U25): Table 3 of Y. Tai, J. Yang and X. Liu, "Image Super-Resolution via Deep Recursive
  Residual Network", CVPR 2017.

Parameter counts are as those papers give them, rounded to thousands.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASETS", "METHODS", "PUBLISHED", "PublishedResult", "published"]

DATASETS = ("Set5", "Set14", "B100", "Urban100")
METHODS = ("Bicubic", "SRCNN", "VDSR", "DRCN", "DRRN")


@dataclass(frozen=True)
class PublishedResult:
    method: str
    dataset: str
    scale: int
    psnr: float
    ssim: float
    params: int


_PARAMS = {"Bicubic": 0, "SRCNN": 57_000, "VDSR": 665_000, "DRCN": 1_774_000, "DRRN": 297_000}

# method -> dataset -> ((PSNR, SSIM) at x2, x3, x4)
_TABLE: dict[str, dict[str, tuple[tuple[float, float], ...]]] = {
    "Bicubic": {
        "Set5": ((33.66, 0.9299), (30.39, 0.8682), (28.42, 0.8104)),
        "Set14": ((30.24, 0.8688), (27.55, 0.7742), (26.00, 0.7027)),
        "B100": ((29.56, 0.8431), (27.21, 0.7385), (25.96, 0.6675)),
        "Urban100": ((26.88, 0.8403), (24.46, 0.7349), (23.14, 0.6577)),
    },
    "SRCNN": {
        "Set5": ((36.66, 0.9542), (32.75, 0.9090), (30.48, 0.8628)),
        "Set14": ((32.42, 0.9063), (29.28, 0.8209), (27.49, 0.7503)),
        "B100": ((31.36, 0.8879), (28.41, 0.7863), (26.90, 0.7101)),
        "Urban100": ((29.50, 0.8946), (26.24, 0.7989), (24.52, 0.7221)),
    },
    "VDSR": {
        "Set5": ((37.53, 0.9587), (33.66, 0.9213), (31.35, 0.8838)),
        "Set14": ((33.03, 0.9124), (29.77, 0.8314), (28.01, 0.7674)),
        "B100": ((31.90, 0.8960), (28.82, 0.7976), (27.29, 0.7251)),
        "Urban100": ((30.76, 0.9140), (27.14, 0.8279), (25.18, 0.7524)),
    },
    "DRCN": {
        "Set5": ((37.63, 0.9588), (33.82, 0.9226), (31.53, 0.8854)),
        "Set14": ((33.04, 0.9118), (29.76, 0.8311), (28.02, 0.7670)),
        "B100": ((31.85, 0.8942), (28.80, 0.7963), (27.23, 0.7233)),
        "Urban100": ((30.75, 0.9133), (27.15, 0.8276), (25.14, 0.7510)),
    },
    "DRRN": {
        "Set5": ((37.74, 0.9591), (34.03, 0.9244), (31.68, 0.8888)),
        "Set14": ((33.23, 0.9136), (29.96, 0.8349), (28.21, 0.7720)),
        "B100": ((32.05, 0.8973), (28.95, 0.8004), (27.38, 0.7284)),
        "Urban100": ((31.23, 0.9188), (27.53, 0.8378), (25.44, 0.7638)),
    },
}

PUBLISHED: dict[tuple[str, str, int], PublishedResult] = {
    (method, dataset, scale): PublishedResult(method, dataset, scale, psnr, ssim, _PARAMS[method])
    for method, by_dataset in _TABLE.items()
    for dataset, rows in by_dataset.items()
    for scale, (psnr, ssim) in zip((2, 3, 4), rows, strict=True)
}


def published(method: str, dataset: str, scale: int) -> PublishedResult | None:
    """The published result, or None for a combination that no source reports (e.g. a custom dataset)."""
    return PUBLISHED.get((method, dataset, scale))
