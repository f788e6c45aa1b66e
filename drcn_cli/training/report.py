"""What a training run reports: its statistics as :func:`~drcn_cli.training.loop.train` hands them to a
:class:`TrainReporter`, its CSV log (``log.csv`` in the checkpoint folder), its result, and the metadata a weights
file carries about its training.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bench.protocol import Score
from .config import RECIPE_FIELDS, TrainConfig
from .images import TrainImage

__all__ = ["StepStats", "TrainReporter", "TrainResult", "ValidationStats"]


@dataclass(frozen=True)
class StepStats:
    """Means over the last ``log_every`` steps; ``step`` counts completed steps."""

    step: int
    steps: int
    loss: float
    loss_intermediate: float
    loss_final: float
    grad_norm: float
    lr: float
    alpha: float
    steps_per_s: float
    elapsed_s: float  # training time over all resumed parts


@dataclass(frozen=True)
class ValidationStats:
    step: int
    psnr: dict[float, float]  # mean PSNR (dB) over the validation images, per scale
    ssim: dict[float, float]
    mean_psnr: float  # the mean over scales of `psnr` (and of `jpeg_psnr`, when there is one): what "best" compares
    best_psnr: float
    best_step: int
    seconds: float
    jpeg_quality: int | None = None  # with a JPEG step: the quality of the second validation set
    jpeg_psnr: dict[float, float] = dataclasses.field(default_factory=dict)
    jpeg_ssim: dict[float, float] = dataclasses.field(default_factory=dict)


class TrainReporter:
    """Receives the progress of :func:`train` (on the main process only). Every method here does nothing;
    subclass it to display or record what you need."""

    def preparing(self, done: int, total: int) -> None: ...

    def data_ready(self, patches: dict[float, int], images: int, megabytes: float, seconds: float) -> None: ...

    def started(self, start_step: int, cfg: TrainConfig, device: str, world_size: int, parameters: int) -> None: ...

    def step(self, stats: StepStats) -> None: ...

    def validated(self, stats: ValidationStats) -> None: ...

    def exported(self, path: Path, step: int, psnr: float | None) -> None: ...

    def checkpointed(self, path: Path, step: int) -> None: ...


@dataclass(frozen=True)
class TrainResult:
    step: int  # completed steps (== cfg.steps unless the run stopped early)
    finished: bool  # all cfg.steps done
    last_loss: float
    best_psnr: float | None
    best_step: int | None
    out: Path | None
    checkpoint: Path | None
    seconds: float  # wall time of this call


# ------------------------------------------------------------------------------------------- log and metadata


_LOG_COLUMNS = (
    "kind", "step", "elapsed_s", "lr", "alpha", "loss", "loss_intermediate", "loss_final", "grad_norm",
    "steps_per_s", "val_psnr", "val_ssim",
)  # fmt: skip


def _log_columns(scales: Sequence[float]) -> list[str]:
    per_scale = [f"val_{kind}_x{s:g}" for kind in ("psnr", "ssim", "jpeg_psnr", "jpeg_ssim") for s in scales]
    return [*_LOG_COLUMNS, *per_scale]


def _start_log(path: Path, scales: Sequence[float], keep_until: int | None) -> None:
    """Create the CSV log; when resuming, keep the rows up to the checkpoint's step and drop later ones."""
    rows: list[dict[str, str]] = []
    if keep_until is not None and path.is_file():
        with path.open(newline="") as f:
            rows = [
                row for row in csv.DictReader(f) if row.get("step", "").isdigit() and int(row["step"]) <= keep_until
            ]
    columns = _log_columns(scales)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _append_log(path: Path, scales: Sequence[float], row: Mapping[str, Any]) -> None:
    def fmt(value: Any) -> str:
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=_log_columns(scales), extrasaction="ignore").writerow(
            {key: fmt(value) for key, value in row.items()}
        )


def _steps_behind(metadata: Mapping[str, str]) -> int:
    """Training steps that went into a weights file, its own --init's included (0 when it does not say)."""
    for key in ("training_steps_total", "training_steps"):
        value = metadata.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def _export_metadata(
    cfg: TrainConfig,
    images: Sequence[TrainImage],
    step: int,
    scores: Mapping[float, Score] | None,
    init_steps: int = 0,
    jpeg_scores: Mapping[float, Score] | None = None,
) -> dict[str, str]:
    """What a weights file says about its training; ``scores`` maps scale -> mean Score on the validation set.
    ``training_steps`` counts this run's steps; ``training_steps_total`` adds those behind its --init weights."""
    recipe = {name: getattr(cfg, name) for name in RECIPE_FIELDS if name not in ("features", "recursions")}
    folders = sorted({image.name.split("/", 1)[0] for image in images})
    degradation = "MATLAB bicubic degradation"
    if cfg.jpeg_quality is not None:
        degradation += f", then JPEG at quality {cfg.jpeg_quality} ({cfg.jpeg_clean:g} of the inputs clean)"
    meta = {
        "training_data": f"{', '.join(folders)} ({len(images)} images, Y channel, {degradation})",
        "training_recipe": json.dumps(recipe),
        "training_steps": str(step),
        "scales": ",".join(f"{s:g}" for s in cfg.scales),
    }
    if cfg.init:
        meta["training_init"] = Path(cfg.init).name
        meta["training_steps_total"] = str(init_steps + step)
    if scores and cfg.val:
        mean = sum(score.psnr for score in scores.values()) / len(scores)
        per_scale = ", ".join(f"x{s:g} {score.psnr:.2f} dB / {score.ssim:.4f}" for s, score in scores.items())
        meta["validation"] = f"{Path(cfg.val).name} at step {step} (PSNR/SSIM on Y, border = scale): {per_scale}"
        meta["val_psnr"] = f"{mean:.4f}"
        if jpeg_scores:
            jpeg = ", ".join(f"x{s:g} {score.psnr:.2f} dB / {score.ssim:.4f}" for s, score in jpeg_scores.items())
            meta["validation_jpeg"] = f"{Path(cfg.val).name} through JPEG q{cfg.val_jpeg} at step {step}: {jpeg}"
    return meta
