"""Training DRCN: ``TrainConfig`` -> ``train(cfg, reporter)`` -> ``TrainResult``.

``train`` reads top to bottom: setup (processes, device, seeds) -> data -> model -> optimizer -> resume
-> loop (schedule, batch, loss, step) -> validation -> export of the best weights -> checkpoint.

The objective is the paper's recursive supervision (eq. 11-13):

    L = alpha * mean_d loss(y_d, y) + (1 - alpha) * loss(sum_d w_d y_d, y) + weight decay

with ``loss`` the mean squared error (the paper) or the mean absolute error, and alpha decaying linearly
from ``alpha_start`` to ``alpha_end`` over the first ``alpha_decay`` of the steps. The weight decay is the
paper's beta * |theta|^2 on the conv kernels, applied as MatConvNet did (the gradient gets ``beta * theta``)
by the optimiser's ``weight_decay`` (coupled for adam and sgd, decoupled for adamw).

The learning rate and alpha are pure functions of the step; each step's batch is drawn from a generator
seeded by (seed, step), the same on every device and for any number of processes. A checkpoint therefore
needs only the weights, the optimiser moments and the step to continue bit for bit.

Checkpoints (folder layout, atomic writes, resume checks) are in :mod:`drcn_cli.checkpoint`, the options in
:mod:`drcn_cli.train_config`, the process group in :mod:`drcn_cli.processes`. The loop is a few top-level
functions over one ``_Run``: ``_start`` -> ``_loop`` (``_step``, ``_log_window``, ``_validate``, ``_export``,
``_save_checkpoint``) -> ``_result``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointError,
    check_optimizer_shapes,
    check_same_recipe,
    config_from_dict,
    read_checkpoint,
    restore_rng,
    resume_config,
    write_checkpoint,
)
from .data import (
    DataError,
    JpegStep,
    PatchBank,
    TrainImage,
    build_patch_bank,
    fingerprint,
    list_images,
    load_image8,
    load_images,
    load_pack,
    random_batch,
    sample_batch,
    save_pack,
)
from .device import autocast_dtype, resolve_device, resolve_precision, reuse_freed_memory, set_threads
from .device import memory_format as preferred_memory_format
from .errors import ConfigError, DrcnError
from .loader import load_model
from .model import DRCN, DRCNConfig, widen
from .pipeline import open_upscaler
from .processes import Processes, all_mean, any_process, barrier, join, leave, processes
from .protocol import BenchError, Sample, Score, evaluate, make_sample, min_image_side
from .train_config import RECIPE_FIELDS, TrainConfig, check_config, jpeg_range
from .weights import TINY, WeightsError, save_weights

__all__ = [
    "CHECKPOINT_FORMAT",
    "RECIPE_FIELDS",
    "Checkpoint",
    "CheckpointError",
    "StepStats",
    "TrainConfig",
    "TrainReporter",
    "TrainResult",
    "TrainingError",
    "ValidationStats",
    "alpha_at",
    "batch_seed",
    "init_architecture",
    "lr_at",
    "jpeg_step",
    "prepare_validation",
    "read_checkpoint",
    "recursive_loss",
    "resume_config",
    "train",
    "write_checkpoint",
]


class TrainingError(DrcnError, RuntimeError):
    """Training cannot go on (the loss diverged, a process group failed ...)."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup, then cosine from lr to lr_min (or constant)."""
    warmup = round(cfg.warmup * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * progress))


def alpha_at(step: int, cfg: TrainConfig) -> float:
    """Weight of the intermediate-prediction loss at step ``step``: linear from alpha_start to alpha_end."""
    span = round(cfg.alpha_decay * cfg.steps)
    if span <= 0:
        return cfg.alpha_end
    t = min(1.0, step / span)
    return cfg.alpha_start + (cfg.alpha_end - cfg.alpha_start) * t


def batch_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s batch draw: well mixed, so neighbouring steps draw unrelated batches."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0]) & (2**63 - 1)


def recursive_loss(
    predictions: torch.Tensor, final: torch.Tensor, target: torch.Tensor, alpha: float, kind: str = "l2"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, intermediate, final) losses, computed in float32.

    predictions (D, N, 1, H, W), final and target (N, 1, H, W). ``kind`` 'l2' is the mean squared error of
    the paper (without its factor 1/2), 'l1' the mean absolute error.
    """
    error = (lambda d: d.square()) if kind == "l2" else (lambda d: d.abs())
    intermediate = error(predictions.float() - target.unsqueeze(0)).mean()
    last = error(final.float() - target).mean()
    return alpha * intermediate + (1.0 - alpha) * last, intermediate, last


# -------------------------------------------------------------------------------------------- reporting


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


# ------------------------------------------------------------------------------------------- validation


def prepare_validation(
    paths: Sequence[str | os.PathLike], scales: Sequence[float], jpeg: int | None = None
) -> list[Sample]:
    """The validation images degraded once by the bench protocol (:mod:`drcn_cli.protocol`), read as training
    reads them, their LR through a JPEG file at quality ``jpeg`` if given. Colour images stay RGB (the network
    sees the Y of their bicubic upsample, as in `drcn upscale`). Raises DataError for an unreadable image or one
    too small to validate."""
    samples = []
    for path in paths:
        image = load_image8(path)
        for scale in scales:
            try:
                samples.append(make_sample(image, scale, Path(path).name, jpeg))
            except BenchError:
                raise DataError(
                    f"{path}: too small to validate at x{scale:g} (needs {min_image_side(scale)} pixels a side "
                    f"once cropped to a multiple of {scale:g})"
                ) from None
    return samples


def init_architecture(path: str | os.PathLike) -> DRCNConfig:
    """F and D of a weights file, to size a model that starts from it. Raises WeightsError."""
    model, _metadata, _file = load_model(path)
    return model.config


# ------------------------------------------------------------------------------------------------ model


class _AllPredictions(nn.Module):
    """Routes ``forward`` to DRCN.forward_all, so DistributedDataParallel sees the training forward."""

    def __init__(self, model: DRCN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_all(x)


# ------------------------------------------------------------------------------------------------ helpers


def _load_training_images(cfg: TrainConfig) -> list[TrainImage]:
    """The training images, with their colour where a JPEG step needs it."""
    color = cfg.jpeg_quality is not None
    if cfg.pack and Path(cfg.pack).is_file():
        images = load_pack(cfg.pack)
        if color and all(image.rgb is None for image in images):
            raise DataError(
                f"{cfg.pack}: the pack holds the images' luminance only, and the JPEG step needs their colour; "
                "give another --pack name to build one from --data"
            )
        return images
    if not cfg.data:
        raise DataError(f"{cfg.pack}: no such pack, and no data folders to build it from")
    return load_images(cfg.data, color=color)


def jpeg_step(cfg: TrainConfig) -> JpegStep | None:
    """The JPEG step of ``cfg``'s training data (None without --jpeg-quality)."""
    if cfg.jpeg_quality is None:
        return None
    return JpegStep(jpeg_range(cfg.jpeg_quality), cfg.jpeg_clean, cfg.jpeg_copies, cfg.seed)


def _write_problem(path: Path, folder: bool) -> str | None:
    """Why the file (or, with ``folder``, the folder) ``path`` could not be written, or None: the nearest existing
    folder at or above the place must be one this process may write in (a missing folder below it is created)."""
    above = Path(os.path.abspath(path))
    if not folder or not os.path.isdir(above):
        above = above.parent
    while not os.path.isdir(above):
        if os.path.lexists(above):
            return f"{above} is not a folder"
        above = above.parent
    if not os.access(above, os.W_OK | os.X_OK):
        return f"the folder {above} is not writable"
    return None


def _check_targets(cfg: TrainConfig) -> None:
    """Refuse, before anything is written, to replace files this run does not own, or to start a run whose
    weights, checkpoints or pack could not be written where they go."""
    targets = [(cfg.out, False, "the weights"), (cfg.checkpoint_dir, True, "checkpoints")]
    if cfg.pack and not Path(cfg.pack).is_file():
        targets.append((cfg.pack, False, "the pack"))
    for target, is_folder, what in targets:
        if target and (problem := _write_problem(Path(target), is_folder)) is not None:
            raise CheckpointError(f"{target}: cannot write {what} there: {problem}")
    if cfg.out and Path(cfg.out).exists():
        if Path(cfg.out).is_dir():
            raise CheckpointError(f"{cfg.out}: is a folder, expected a .safetensors file path")
        if not (cfg.overwrite or cfg.resume):
            raise CheckpointError(f"{cfg.out}: exists; use --overwrite (overwrite=True) to replace it")
    if cfg.checkpoint_dir:
        folder = Path(cfg.checkpoint_dir)
        if folder.exists() and not folder.is_dir():
            raise CheckpointError(f"{folder}: exists and is not a folder")
        # A folder with only a log is what a run that stopped before its first checkpoint leaves behind.
        if folder.is_dir() and any(p.name != "log.csv" for p in folder.iterdir()):
            if not (folder / "state.json").is_file():
                raise CheckpointError(f"{folder}: exists and is not a drcn checkpoint; refusing to replace it")
            same = cfg.resume and Path(cfg.resume).resolve() == folder.resolve()
            if not (same or cfg.overwrite):
                raise CheckpointError(
                    f"{folder}: holds a checkpoint; continue it with --resume, or use --overwrite to start over"
                )


def _param_groups(model: DRCN, weight_decay: float) -> list[dict[str, Any]]:
    # Decay only the conv kernels: biases and the ensemble logits have no scale to keep in check.
    decay = [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() == 4]
    rest = [p for name, p in model.named_parameters() if not (name.endswith("weight") and p.dim() == 4)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _make_optimizer(model: DRCN, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # Adam by default: the gradients of the recursive convolution sum over 16 unrolled uses and are far larger
    # than those of the embedding and output layers; a per-parameter step size copes with that, where the
    # paper's SGD needed a hand-tuned step decay over days. The paper's weight decay stays (coupled, as in
    # its objective). Fused Adam on CUDA saves a few launches per step and is deterministic there too.
    groups = _param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=device.type == "cuda")


@torch.no_grad()
def _zero_tiny_(params: Sequence[torch.Tensor]) -> None:
    """Zero the weights that decayed below TINY: x86 multiplies subnormals on a slow path (fp32 inference with
    the old drcn-lite's 49k subnormal weights took 39x longer; flush-to-zero on one thread did not cure it)."""
    for param in params:
        param.masked_fill_(param.abs() < TINY, 0.0)


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded moment its parameter's memory layout (checkpoints store NCHW; channels_last
    parameters on CUDA want NHWC moments, which fused Adam expects)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)


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


# --------------------------------------------------------------------------------------------------- train


def train(
    cfg: TrainConfig, reporter: TrainReporter | None = None, should_stop: Callable[[], bool] | None = None
) -> TrainResult:
    """Train (or continue training) a DRCN as ``cfg`` says. Raises DataError, CheckpointError, WeightsError
    or ConfigError for bad input before anything is written; TrainingError if the loss diverges.

    ``should_stop`` is asked after every step (under DDP at every log step, all processes together); when it
    answers True the run stops there as at ``stop_at``: a checkpoint is written and the result is unfinished.
    """
    reporter = reporter or TrainReporter()
    wall_start = time.perf_counter()
    check_config(cfg)
    set_threads(cfg.threads)
    procs = processes()
    device = join(procs, resolve_device(cfg.device))
    if device.type == "cpu":
        # With the huge pages `drcn` asks torch for, each fresh block costs 2 MiB page faults: kept for reuse they
        # cost nothing, without they made a bf16 step 1.6x slower (docs/training.md).
        reuse_freed_memory()
    try:
        run = _start(cfg, reporter if procs.main else TrainReporter(), procs, device)
        _loop(run, wall_start, should_stop)
        return _result(run, wall_start)
    finally:
        leave(procs)


@dataclass
class _Data:
    images: list[TrainImage]
    fingerprint: str
    bank: PatchBank
    val_samples: list[Sample]
    val_jpeg_samples: list[Sample]  # with a JPEG step: the validation images through JPEG at cfg.val_jpeg
    init_state: dict[str, torch.Tensor] | None
    init_steps: int  # steps the starting weights had been trained for (their own and their init's)


@dataclass
class _Run:
    """Everything the loop works with: fixed once the run has started, except the counters below the line."""

    cfg: TrainConfig
    reporter: TrainReporter
    procs: Processes
    device: torch.device
    precision: str
    data: _Data
    model: DRCN
    trainer: nn.Module  # the model as the loss sees it (all predictions), wrapped by DDP when distributed
    optimizer: torch.optim.Optimizer
    checkpoint_dir: Path | None
    log_path: Path | None
    out_path: Path | None
    ema: DRCN | None = None  # with cfg.ema: the moving average of the weights (what is validated and exported)
    # -- changes as the run goes
    step: int = 0
    stop: int = 0  # the step this call ends at
    best_psnr: float | None = None
    best_step: int | None = None
    elapsed_before: float = 0.0  # training seconds of the runs this one resumes
    loop_start: float = 0.0
    last_loss: float = math.nan
    window_start: float = 0.0  # the log window: steps since the last log line, and their summed statistics
    window_steps: int = 0
    sums: torch.Tensor | None = None  # loss, intermediate, final, grad norm: synced only at log steps


def _start(cfg: TrainConfig, reporter: TrainReporter, procs: Processes, device: torch.device) -> _Run:
    """Check everything that can be refused, then build the run: data, model, optimizer, resumed state, log."""
    precision = _training_precision(cfg, procs, device)
    _check_targets(cfg)
    checkpoint = read_checkpoint(cfg.resume) if cfg.resume else None
    if checkpoint is not None:
        check_same_recipe(config_from_dict(checkpoint.state.get("config", {})), cfg, checkpoint.path)
    data = _prepare_data(cfg, checkpoint, procs, device, reporter)
    model, trainer, optimizer = _build_model(cfg, data, checkpoint, procs, device)
    run = _Run(
        cfg, reporter, procs, device, precision, data, model, trainer, optimizer,
        checkpoint_dir=Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None,
        log_path=Path(cfg.checkpoint_dir) / "log.csv" if cfg.checkpoint_dir else None,
        out_path=Path(cfg.out) if cfg.out else None,
        ema=_build_ema(model, checkpoint) if cfg.ema else None,
    )  # fmt: skip
    if checkpoint is not None:
        _resume(run, checkpoint)
    run.stop = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
    _open_log(run, checkpoint)
    reporter.started(run.step, cfg, str(device), procs.world, sum(p.numel() for p in model.parameters()))
    return run


def _training_precision(cfg: TrainConfig, procs: Processes, device: torch.device) -> str:
    precision = resolve_precision(cfg.precision, device)
    if precision == "fp16":
        raise ConfigError("fp16 training is not supported (use bf16 or fp32)")
    if cfg.batch_size % procs.world:
        raise ConfigError(f"batch size {cfg.batch_size} does not split over {procs.world} processes")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return precision


def _prepare_data(
    cfg: TrainConfig, checkpoint: Checkpoint | None, procs: Processes, device: torch.device, reporter: TrainReporter
) -> _Data:
    """The training images as a patch bank, the validation images degraded once, the starting weights."""
    t0 = time.perf_counter()
    images = _load_training_images(cfg)
    data_id = fingerprint(images)
    if checkpoint is not None and checkpoint.state.get("data_fingerprint") not in (None, data_id):
        raise CheckpointError(f"{checkpoint.path}: the checkpoint was trained on other images than these")
    val_samples = prepare_validation(list_images(cfg.val), cfg.scales) if cfg.val else []
    val_jpeg_samples = []
    if cfg.val and cfg.jpeg_quality is not None:
        val_jpeg_samples = prepare_validation(list_images(cfg.val), cfg.scales, cfg.val_jpeg)
    init_state, init_steps = None, 0
    if checkpoint is not None:
        init_steps = int(checkpoint.state.get("init_steps", 0))
    elif cfg.init:  # a resumed run has its weights; the init file need not travel with it
        init_model, init_meta, _file = load_model(cfg.init)
        init_steps = _steps_behind(init_meta)
        small = init_model.config
        if small.recursions != cfg.recursions or small.features > cfg.features:
            raise WeightsError(
                f"{cfg.init}: weights are F={small.features}, D={small.recursions}, "
                f"but the run trains F={cfg.features}, D={cfg.recursions}"
            )
        if small.features < cfg.features:  # a head start: the same function (split: within its noise), room to grow
            torch.manual_seed(cfg.seed)
            init_model = widen(init_model, cfg.features, cfg.widen)
        init_state = init_model.state_dict()
    bank: PatchBank = build_patch_bank(
        images, cfg.scales, cfg.patch_size, cfg.stride, cfg.downscales,
        quantize_lr=cfg.quantize_lr, jpeg=jpeg_step(cfg), device=device, on_image=reporter.preparing,
    )  # fmt: skip
    # Everything that can be refused has been checked: from here on, files may be written.
    if cfg.pack and not Path(cfg.pack).is_file() and procs.main:
        save_pack(cfg.pack, images)
    reporter.data_ready(bank.patches_per_scale(), len(images), bank.nbytes / 2**20, time.perf_counter() - t0)
    return _Data(images, data_id, bank, val_samples, val_jpeg_samples, init_state, init_steps)


def _build_model(
    cfg: TrainConfig, data: _Data, checkpoint: Checkpoint | None, procs: Processes, device: torch.device
) -> tuple[DRCN, nn.Module, torch.optim.Optimizer]:
    """The model (seeded, from the init weights or the checkpoint's), its training wrapper, its optimizer."""
    torch.manual_seed(cfg.seed)
    model = DRCN(DRCNConfig(cfg.features, cfg.recursions))
    if data.init_state is not None:
        model.load_state_dict(data.init_state)
    if checkpoint is not None:
        try:
            model.load_state_dict({k: v.float() for k, v in checkpoint.model.items()})
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())
            raise CheckpointError(f"{checkpoint.path}: damaged checkpoint (model: {reason})") from None
    model = model.to(device, memory_format=preferred_memory_format(device)).train()  # type: ignore[call-overload]  # Module.to takes memory_format; torch's overloads omit it
    trainer: nn.Module = _AllPredictions(model)
    if procs.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trainer = DistributedDataParallel(trainer, device_ids=[device.index] if device.type == "cuda" else None)
    return model, trainer, _make_optimizer(model, cfg, device)


def _build_ema(model: DRCN, checkpoint: Checkpoint | None) -> DRCN:
    """The moving average: the checkpoint's, or a copy of the starting weights."""
    ema = copy.deepcopy(model).requires_grad_(False)
    if checkpoint is not None:
        if checkpoint.ema is None:  # the recipe check lets no run without one resume with --ema
            raise CheckpointError(f"{checkpoint.path}: damaged checkpoint (state.json names no ema file)")
        ema.load_state_dict({k: v.float() for k, v in checkpoint.ema.items()})
    return ema


def ema_decay(decay: float, step: int) -> float:
    """The decay used after optimiser step ``step`` (0-based): ``decay``, but lower over the first steps, so
    that the average does not hold on to the starting weights (timm's warm-up: (1 + step) / (10 + step))."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: DRCN, model: DRCN, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every parameter."""
    for average, param in zip(ema.parameters(), model.parameters(), strict=True):
        average.lerp_(param, 1.0 - decay)


def _resume(run: _Run, checkpoint: Checkpoint) -> None:
    """The optimizer moments, random generators, step and best score of the checkpoint."""
    # load_state_dict moves each tensor where its parameter lives (Adam's step stays on the CPU unless fused).
    try:
        run.optimizer.load_state_dict(
            {"state": checkpoint.optimizer, "param_groups": run.optimizer.state_dict()["param_groups"]}
        )
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{checkpoint.path}: damaged checkpoint (optimizer state: {exc})") from None
    check_optimizer_shapes(run.optimizer, checkpoint.path)
    _match_layouts(run.optimizer)
    restore_rng(checkpoint.rng)
    run.step = int(checkpoint.state["step"])
    run.best_psnr, run.best_step = checkpoint.state.get("best_psnr"), checkpoint.state.get("best_step")
    run.elapsed_before = float(checkpoint.state.get("elapsed_s", 0.0))


def _open_log(run: _Run, checkpoint: Checkpoint | None) -> None:
    """Start log.csv in the checkpoint folder, carrying over a resumed run's log up to its step."""
    if not run.procs.main or run.log_path is None or run.checkpoint_dir is None:
        return
    run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if (
        checkpoint is not None
        and checkpoint.path.resolve() != run.checkpoint_dir.resolve()
        and (checkpoint.path / "log.csv").is_file()
    ):
        shutil.copyfile(checkpoint.path / "log.csv", run.log_path)
    _start_log(run.log_path, run.cfg.scales, run.step if checkpoint is not None else None)


def _loop(run: _Run, wall_start: float, should_stop: Callable[[], bool] | None) -> None:
    """Step until ``run.stop``: log every ``log_every`` steps, validate, export and checkpoint on schedule."""
    cfg = run.cfg
    run.loop_start = run.window_start = time.perf_counter()
    run.sums = torch.zeros(4, device=run.device)
    params = list(run.model.parameters())
    while run.step < run.stop:
        lr, alpha = _step(run, params)
        stop_asked = should_stop is not None and should_stop()
        if stop_asked and not run.procs.distributed:
            run.stop = run.step
        logging = run.step % cfg.log_every == 0 or run.step == run.stop
        checkpointing = bool(cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0)
        validating = bool(run.data.val_samples and cfg.val_every and run.step % cfg.val_every == 0)
        if logging or checkpointing or validating:  # before anything is logged, scored or written
            _check_finite(run)
        if logging:
            _log_window(run, lr, alpha, wall_start, stop_asked)
        finishing = run.step == run.stop  # the last step, or a stop (time limit, --stop-at, Ctrl-C) before it
        if run.data.val_samples and ((cfg.val_every and run.step % cfg.val_every == 0) or finishing):
            _validate(run)
        if (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0) or finishing:
            if not run.data.val_samples:
                _export(run, None)
            _save_checkpoint(run)


def _check_finite(run: _Run) -> None:
    """TrainingError when a weight of the model (or of its moving average), this log window's loss, or the
    network's output on a small probe is NaN or infinite: the run stops before such weights are validated,
    exported or checkpointed, so no file holds them (the probe catches weights that are still finite but so large
    that the next step's output overflows). One device sync; called at the steps that log, validate or write."""
    networks = [("the weights", run.model), *([("the averaged weights", run.ema)] if run.ema is not None else [])]
    probe = torch.full((1, 1, 8, 8), 0.5, device=run.device)
    with torch.no_grad():
        outputs = [network(probe) for _, network in networks]
    tensors = [*(p for _, network in networks for p in network.parameters()), *outputs]
    if run.sums is not None:
        tensors.append(run.sums)
    if bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        return
    what = "the loss (or the gradient norm)"
    for (label, network), output in zip(reversed(networks), reversed(outputs), strict=True):
        if not bool(torch.isfinite(output).all()):
            what = f"the network's output ({label} are finite, but too large)"
        broken = next((name for name, p in network.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if broken is not None:
            what = f"{label} ({broken} first)"
    raise TrainingError(
        f"training diverged: {what} became NaN or infinite by step {run.step}; nothing of it was written. "
        f"Lower the learning rate (lr {run.cfg.lr:g}) or keep --grad-clip on"
    )


def _step(run: _Run, params: Sequence[torch.Tensor]) -> tuple[float, float]:
    """One optimisation step on this process's share of the step's batch; returns (lr, alpha) it used."""
    cfg, procs, device = run.cfg, run.procs, run.device
    lr, alpha = lr_at(run.step, cfg), alpha_at(run.step, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    generator = torch.Generator().manual_seed(batch_seed(cfg.seed, run.step))
    index, transform = random_batch(run.data.bank, cfg.batch_size, generator, cfg.augment)
    local_batch = cfg.batch_size // procs.world
    share = slice(procs.rank * local_batch, (procs.rank + 1) * local_batch)
    net_input, target = sample_batch(run.data.bank, index[share], transform[share])
    net_input = net_input.contiguous(memory_format=preferred_memory_format(device))
    amp_dtype = autocast_dtype(run.precision)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        predictions, final = run.trainer(net_input)
    loss, intermediate, last = recursive_loss(predictions, final, target, alpha, cfg.loss)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    run.optimizer.step()
    _zero_tiny_(params)
    if run.ema is not None:
        update_ema(run.ema, run.model, ema_decay(cfg.ema, run.step))
        _zero_tiny_(list(run.ema.parameters()))
    run.step += 1
    run.window_steps += 1
    assert run.sums is not None  # set by _loop before the first step
    run.sums += torch.stack([loss.detach(), intermediate.detach(), last.detach(), grad_norm.detach().float()])
    return lr, alpha


def _log_window(run: _Run, lr: float, alpha: float, wall_start: float, stop_asked: bool) -> None:
    """Report the means of the steps since the last report; stop every process when one is out of time or asked
    to stop. Raises TrainingError when the loss is no longer finite."""
    cfg = run.cfg
    assert run.sums is not None  # set by _loop before the first step
    means = (all_mean(run.sums, run.procs) / run.window_steps).tolist()
    run.sums.zero_()
    run.last_loss = means[0]
    if not math.isfinite(run.last_loss):
        raise TrainingError(f"the loss became {run.last_loss} by step {run.step}; lower the learning rate")
    now = time.perf_counter()
    stats = StepStats(
        run.step, cfg.steps, means[0], means[1], means[2], means[3], lr, alpha,
        run.window_steps / max(now - run.window_start, 1e-9), run.elapsed_before + now - run.loop_start,
    )  # fmt: skip
    run.window_start, run.window_steps = now, 0
    run.reporter.step(stats)
    if run.procs.main and run.log_path is not None:
        _append_log(run.log_path, cfg.scales, dataclasses.asdict(stats) | {"kind": "train"})
    out_of_time = cfg.time_limit is not None and now - wall_start > cfg.time_limit
    if any_process(out_of_time or stop_asked, run.procs, run.device):
        run.stop = run.step


def _validate(run: _Run) -> None:
    """Score the model on the validation images (main process); a new best is exported."""
    if run.procs.main:
        t = time.perf_counter()
        upscaler = open_upscaler(_scored(run), run.device, run.precision)  # a copy, as `drcn upscale` runs it
        scores = evaluate(run.data.val_samples, upscaler)
        jpeg_scores = evaluate(run.data.val_jpeg_samples, upscaler) if run.data.val_jpeg_samples else {}
        by_psnr = {scale: score.psnr for scale, score in scores.items()}
        by_ssim = {scale: score.ssim for scale, score in scores.items()}
        cells = [*by_psnr.values(), *(score.psnr for score in jpeg_scores.values())]
        mean = sum(cells) / len(cells)  # a photo model is chosen on clean and JPEG inputs alike
        if run.best_psnr is None or mean > run.best_psnr:
            run.best_psnr, run.best_step = mean, run.step
            _export(run, scores, jpeg_scores)
        seconds = time.perf_counter() - t
        run.reporter.validated(
            ValidationStats(
                run.step, by_psnr, by_ssim, mean, run.best_psnr, run.best_step, seconds,  # type: ignore[arg-type]  # a resumed checkpoint may hold best_psnr with a null best_step
                run.cfg.val_jpeg if jpeg_scores else None,
                {scale: score.psnr for scale, score in jpeg_scores.items()},
                {scale: score.ssim for scale, score in jpeg_scores.items()},
            )
        )  # fmt: skip
        if run.log_path is not None:
            row = {"kind": "val", "step": run.step, "val_psnr": mean, "val_ssim": sum(by_ssim.values()) / len(by_ssim)}
            row.update({f"val_psnr_x{s:g}": v for s, v in by_psnr.items()})
            row.update({f"val_ssim_x{s:g}": v for s, v in by_ssim.items()})
            row.update({f"val_jpeg_psnr_x{s:g}": v.psnr for s, v in jpeg_scores.items()})
            row.update({f"val_jpeg_ssim_x{s:g}": v.ssim for s, v in jpeg_scores.items()})
            _append_log(run.log_path, run.cfg.scales, row)
    barrier(run.procs)


def _scored(run: _Run) -> DRCN:
    """The weights validation scores and the export writes: the moving average where the run keeps one."""
    return run.ema if run.ema is not None else run.model


def _export(
    run: _Run, scores: Mapping[float, Score] | None, jpeg_scores: Mapping[float, Score] | None = None
) -> None:
    """Write the weights to ``out`` (main process), with the run's description in their metadata."""
    if run.procs.main and run.out_path is not None:
        metadata = _export_metadata(run.cfg, run.data.images, run.step, scores, run.data.init_steps, jpeg_scores)
        save_weights(_scored(run), run.out_path, metadata)
        mean = sum(score.psnr for score in scores.values()) / len(scores) if scores else None
        run.reporter.exported(run.out_path, run.step, mean)


def _save_checkpoint(run: _Run) -> None:
    """Write the checkpoint folder (main process): weights, optimizer, random state, log and state.json."""
    if run.procs.main and run.checkpoint_dir is not None:
        cfg, step = run.cfg, run.step
        state = {
            "step": step,
            "best_psnr": run.best_psnr,
            "best_step": run.best_step,
            "elapsed_s": run.elapsed_before + (time.perf_counter() - run.loop_start),
            "lr": lr_at(max(step - 1, 0), cfg),
            "alpha": alpha_at(max(step - 1, 0), cfg),
            "data_fingerprint": run.data.fingerprint,
            "init_steps": run.data.init_steps,
            "world_size": run.procs.world,
            "torch_version": torch.__version__,
            "config": dataclasses.asdict(cfg),
        }
        write_checkpoint(run.checkpoint_dir, run.model, run.optimizer, state, run.log_path, ema=run.ema)
        run.reporter.checkpointed(run.checkpoint_dir, step)
    barrier(run.procs)


def _result(run: _Run, wall_start: float) -> TrainResult:
    out, folder = run.out_path, run.checkpoint_dir
    return TrainResult(
        step=run.step,
        finished=run.step >= run.cfg.steps,
        last_loss=run.last_loss,
        best_psnr=run.best_psnr,
        best_step=run.best_step,
        out=out if out is not None and out.exists() else None,
        checkpoint=folder if folder is not None and (folder / "state.json").is_file() else None,
        seconds=time.perf_counter() - wall_start,
    )
