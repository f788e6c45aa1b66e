"""Starting a training run: everything that can be refused is checked before anything is written (the targets,
the checkpoint to resume, the data, the starting weights), then the run is built: the patch bank and the
validation samples, the model, its optimizer and moving average, the resumed state, the log. The run's state is
one :class:`_Run`, which the loop (:mod:`drcn_cli.training.loop`) steps.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..bench.datasets import load_image8
from ..bench.degradation import DataError
from ..bench.protocol import BenchError, Sample, make_sample, min_image_side
from ..errors import ConfigError
from ..inference.device import memory_format as preferred_memory_format
from ..inference.device import resolve_precision
from ..inference.loader import load_model
from ..model import DRCN, DRCNConfig, widen
from ..processes import Processes
from ..weights.files import WeightsError
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    check_optimizer_shapes,
    check_same_recipe,
    config_from_dict,
    read_checkpoint,
    restore_rng,
)
from .config import TrainConfig, jpeg_range
from .data import JpegStep, PatchBank, build_patch_bank
from .images import TrainImage, fingerprint, list_images, load_images, load_pack, save_pack
from .report import TrainReporter, _start_log, _steps_behind

__all__ = ["init_architecture", "jpeg_step", "prepare_validation"]


def prepare_validation(
    paths: Sequence[str | os.PathLike], scales: Sequence[float], jpeg: int | None = None
) -> list[Sample]:
    """The validation images degraded once by the bench protocol (:mod:`drcn_cli.bench.protocol`), read as training
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


class _AllPredictions(nn.Module):
    """Routes ``forward`` to DRCN.forward_all, so DistributedDataParallel sees the training forward."""

    def __init__(self, model: DRCN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_all(x)


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


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded moment its parameter's memory layout (checkpoints store NCHW; channels_last
    parameters on CUDA want NHWC moments, which fused Adam expects)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param).copy_(value)


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
