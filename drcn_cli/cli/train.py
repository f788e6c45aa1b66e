"""`drcn train`: train DRCN on folders of HR images, with checkpoints, exact resume and torchrun/DDP.

Thin: options -> a TrainConfig (a resumed run starts from its checkpoint's config) -> drcn_cli.train.train,
with a rich progress display on stderr. The library writes the checkpoint, the CSV log (`log.csv` in the
checkpoint folder) and the exported weights. Under torchrun only rank 0 shows anything.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

_DATA = "Data"
_MODEL = "Model and recipe"
_RUN = "Run"

EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(code)


@contextmanager
def _stop_on_signals(stop_asked: list[int], reporter: Any):
    """Ctrl-C or SIGTERM: the first asks the run to stop after the current step and write a checkpoint (the
    library polls ``stop_asked``); a second one interrupts at once (KeyboardInterrupt)."""

    def handler(signum, frame):
        if stop_asked:
            raise KeyboardInterrupt
        stop_asked.append(signum)
        if reporter is not None:
            reporter.console.print("stopping after this step to write a checkpoint (again to stop at once)",
                                   markup=False)

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _is_path(value: str) -> bool:
    return Path(value).is_file() or value.endswith(".safetensors") or os.sep in value or "/" in value


def _resolve_init(value: str) -> Path:
    from ..registry import ChecksumError, WeightsNotFoundError, resolve_weights

    try:
        return resolve_weights(path=value) if _is_path(value) else resolve_weights(value)
    except (WeightsNotFoundError, ChecksumError) as exc:
        raise _fail(str(exc)) from None


class _RichReporter:
    """Renders the library's progress: a bar with step, loss, lr, alpha, validation PSNR and ETA."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )
        self.prepare_task = None
        self.train_task = None
        self.val_text = "val -"

    # The methods below implement drcn_cli.train.TrainReporter.
    def preparing(self, done: int, total: int) -> None:
        if self.prepare_task is None:
            self.progress.start()
            self.prepare_task = self.progress.add_task("patches", total=total, info="")
        self.progress.update(self.prepare_task, completed=done)

    def data_ready(self, patches: dict[float, int], images: int, megabytes: float, seconds: float) -> None:
        if self.prepare_task is not None:
            self.progress.remove_task(self.prepare_task)
        counts = ", ".join(f"x{s:g}: {n}" for s, n in patches.items())
        self.console.print(
            f"data: {images} images -> {sum(patches.values())} patches ({counts}), {megabytes:.0f} MB, {seconds:.1f} s"
        )

    def started(self, start_step: int, cfg: Any, device: str, world_size: int, parameters: int) -> None:
        where = f"{device} x{world_size}" if world_size > 1 else device
        resumed = f", resumed at step {start_step}" if start_step else ""
        self.console.print(
            f"training F={cfg.features} D={cfg.recursions} ({parameters:,} parameters) on {where}, "
            f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}{resumed}"
        )
        self.progress.start()
        self.train_task = self.progress.add_task("train", total=cfg.steps, completed=start_step, info="")

    def step(self, stats: Any) -> None:
        info = (
            f"loss {stats.loss:.3e} lr {stats.lr:.2e} a {stats.alpha:.2f} |g| {stats.grad_norm:.3f} "
            f"{stats.steps_per_s:.2f} it/s {self.val_text}"
        )
        self.progress.update(self.train_task, completed=stats.step, info=info)

    def validated(self, stats: Any) -> None:
        per_scale = " ".join(f"x{s:g} {v:.2f}/{stats.ssim[s]:.4f}" for s, v in stats.psnr.items())
        marker = " (best)" if stats.best_step == stats.step else f" (best {stats.best_psnr:.3f} @ {stats.best_step})"
        self.val_text = f"val {stats.mean_psnr:.3f} dB"
        self.console.print(f"step {stats.step}: val PSNR/SSIM {per_scale}, mean {stats.mean_psnr:.3f} dB{marker}")

    def exported(self, path: Path, step: int, psnr: float | None) -> None: ...

    def checkpointed(self, path: Path, step: int) -> None: ...

    def close(self) -> None:
        self.progress.stop()


def train(
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            file_okay=False,
            help="Folder of HR training images; repeat for several (T91, BSD200).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    val: Annotated[
        Path | None,
        typer.Option("--val", file_okay=False, help="Folder of HR validation images (Set5).", rich_help_panel=_DATA),
    ] = None,
    pack: Annotated[
        Path | None,
        typer.Option(
            "--pack",
            dir_okay=False,
            help="Training images' luminance as one .npz: read if it exists, else written from --data "
            "(keep it in the ignored .data/ folder).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    scale: Annotated[
        list[float] | None,
        typer.Option(
            "--scale",
            "-s",
            help="Training scale; repeat for one model of several (default: 2 3 4).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    downscale: Annotated[
        list[float] | None,
        typer.Option(
            "--downscale",
            help="HR downscale augmentation factor; repeat (default: 1 0.9 0.8 0.7 0.6).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    patch_size: Annotated[
        int | None, typer.Option("--patch-size", min=3, help="Patch side (default: 41).", rich_help_panel=_DATA)
    ] = None,
    stride: Annotated[
        int | None, typer.Option("--stride", min=1, help="Patch grid stride (default: 21).", rich_help_panel=_DATA)
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            dir_okay=False,
            help="Exported weights (.safetensors): the best validated, or the latest without --val.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint-dir",
            file_okay=False,
            help="Checkpoint folder (default: .checkpoints/<out name>, or the --resume folder).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            file_okay=False,
            help="Continue the run saved in this checkpoint folder, exactly where it stopped.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init", help="Start from these weights: a model name or a .safetensors path.", rich_help_panel=_MODEL
        ),
    ] = None,
    features: Annotated[
        int | None,
        typer.Option(
            "--features", "-F", min=1, help="Filters per conv (default: 256, or --init's).", rich_help_panel=_MODEL
        ),
    ] = None,
    recursions: Annotated[
        int | None,
        typer.Option(
            "--recursions", "-D", min=1, help="Recursions (default: 16, or --init's).", rich_help_panel=_MODEL
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", "-b", min=1, help="Patches per step, all processes (default: 64).", rich_help_panel=_MODEL
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="Total optimiser steps (default: 30000).", rich_help_panel=_MODEL),
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", min=0.0, help="Peak learning rate (default: 2e-4).", rich_help_panel=_MODEL)
    ] = None,
    lr_min: Annotated[
        float | None,
        typer.Option(
            "--lr-min", min=0.0, help="Final learning rate of the cosine (default: 2e-6).", rich_help_panel=_MODEL
        ),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule", help="cosine or constant, after the warmup (default: cosine).", rich_help_panel=_MODEL
        ),
    ] = None,
    warmup: Annotated[
        float | None,
        typer.Option(
            "--warmup", min=0.0, max=1.0, help="Warmup, fraction of steps (default: 0.02).", rich_help_panel=_MODEL
        ),
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option("--optimizer", help="adam, adamw or sgd (momentum 0.9) (default: adam).", rich_help_panel=_MODEL),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            "--loss", help="l1 (mean absolute error) or l2 (the paper's MSE) (default: l1).", rich_help_panel=_MODEL
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(
            "--weight-decay", min=0.0, help="L2 on conv kernels; use with adamw (default: 0).", rich_help_panel=_MODEL
        ),
    ] = None,
    grad_clip: Annotated[
        float | None,
        typer.Option("--grad-clip", min=0.0, help="Max gradient norm, 0 = off (default: 1.0).", rich_help_panel=_MODEL),
    ] = None,
    alpha_decay: Annotated[
        float | None,
        typer.Option(
            "--alpha-decay",
            min=0.0,
            max=1.0,
            help="alpha goes from 1 to 0 over this fraction of the steps (default: 0.25).",
            rich_help_panel=_MODEL,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Random seed of the initialisation and the batches (default: 0).", rich_help_panel=_MODEL
        ),
    ] = None,
    val_every: Annotated[
        int | None,
        typer.Option(
            "--val-every",
            min=0,
            help="Validate every N steps, 0 = only at the end (default: 1000).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            "--checkpoint-every",
            min=0,
            help="Checkpoint every N steps (and at the end) (default: 1000).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    log_every: Annotated[
        int | None,
        typer.Option("--log-every", min=1, help="Log line every N steps (default: 25).", rich_help_panel=_RUN),
    ] = None,
    time_limit: Annotated[
        float | None,
        typer.Option(
            "--time-limit",
            min=0.0,
            help="Minutes; then checkpoint and stop (continue with --resume).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    stop_at: Annotated[
        int | None,
        typer.Option("--stop-at", min=1, help="Stop after this step (continue with --resume).", rich_help_panel=_RUN),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N, mps (default: auto).", rich_help_panel=_RUN)
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision", help="auto (bf16 on CUDA and on CPUs with bf16 units, else fp32), fp32, bf16.",
            rich_help_panel=_RUN,
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=0, help="CPU threads for torch (default: torch's).", rich_help_panel=_RUN),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace an existing --out or checkpoint of another run.", rich_help_panel=_RUN
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress, no summary.", rich_help_panel=_RUN)
    ] = False,
) -> None:
    """Train DRCN (one model for every scale) on HR images, e.g. T91 + BSD200, validating on Set5.

    torchrun --nproc-per-node N -m drcn_cli train ... trains on N GPUs (DistributedDataParallel).
    """
    from ..data import DataError
    from ..train import CheckpointError, TrainConfig, TrainingError, init_architecture, resume_config
    from ..train import train as run_training
    from ..weights import WeightsError

    if time_limit is not None and time_limit <= 0:
        raise typer.BadParameter("must be positive", param_hint="--time-limit")
    init_path = _resolve_init(init) if init else None
    options: dict[str, Any] = {
        "data": tuple(str(p) for p in data) if data else None,
        "val": str(val) if val else None,
        "pack": str(pack) if pack else None,
        "scales": tuple(scale) if scale else None,
        "downscales": tuple(downscale) if downscale else None,
        "patch_size": patch_size,
        "stride": stride,
        "out": str(out) if out else None,
        "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
        "init": str(init_path) if init_path else None,
        "features": features,
        "recursions": recursions,
        "batch_size": batch_size,
        "steps": steps,
        "lr": lr,
        "lr_min": lr_min,
        "schedule": schedule,
        "warmup": warmup,
        "optimizer": optimizer,
        "loss": loss,
        "weight_decay": weight_decay,
        "grad_clip": grad_clip,
        "alpha_decay": alpha_decay,
        "seed": seed,
        "val_every": val_every,
        "checkpoint_every": checkpoint_every,
        "log_every": log_every,
        "time_limit": time_limit * 60.0 if time_limit is not None else None,
        "stop_at": stop_at,
        "device": device,
        "precision": precision,
        "threads": threads,
        "overwrite": overwrite or None,
    }
    try:
        if resume is not None:
            if options["checkpoint_dir"] is None:
                options["checkpoint_dir"] = str(resume)
            cfg = resume_config(resume, options)
        else:
            if not data and not (pack and pack.is_file()):
                raise typer.BadParameter("give at least one --data folder (or an existing --pack)", param_hint="--data")
            if out is None:
                raise typer.BadParameter("where to write the trained weights", param_hint="--out")
            if init_path is not None and (features is None or recursions is None):
                arch = init_architecture(init_path)
                options["features"] = features or arch.features
                options["recursions"] = recursions or arch.recursions
            if options["checkpoint_dir"] is None:
                options["checkpoint_dir"] = str(Path(".checkpoints") / out.stem)
            cfg = TrainConfig(**{key: value for key, value in options.items() if value is not None})
    except (CheckpointError, WeightsError, DataError) as exc:
        raise _fail(str(exc)) from None

    main_process = os.environ.get("RANK", "0") == "0"
    show = main_process and not quiet
    reporter: Any = None
    if show:
        from rich.console import Console

        reporter = _RichReporter(Console(stderr=True))
    stop_asked: list[int] = []
    try:
        with _stop_on_signals(stop_asked, reporter if show else None):
            result = run_training(cfg, reporter, should_stop=lambda: bool(stop_asked))
    except (DataError, CheckpointError, WeightsError) as exc:
        raise _fail(str(exc)) from None
    except ValueError as exc:  # an option value the library refused
        raise _fail(str(exc), 2) from None
    except (TrainingError, OSError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        folder = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
        if folder is not None and (folder / "state.json").is_file():
            typer.echo(f"interrupted; the last checkpoint is in {folder}: continue with drcn train --resume {folder}",
                       err=True)
        else:
            typer.echo("interrupted before the first checkpoint: nothing to resume from", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        if show:
            reporter.close()
    if stop_asked and not result.finished:
        if main_process:
            typer.echo(f"interrupted at step {result.step} of {cfg.steps}; checkpoint written: continue with "
                       f"drcn train --resume {result.checkpoint}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if not show:
        return
    best = f", best val PSNR {result.best_psnr:.3f} dB at step {result.best_step}" if result.best_psnr else ""
    weights = f"; weights: {result.out}" if result.out else ""
    if result.finished:
        typer.echo(f"trained {result.step} steps{best}{weights}; checkpoint: {result.checkpoint}")
    else:
        typer.echo(
            f"stopped at step {result.step} of {cfg.steps}{best}{weights}; "
            f"continue with: drcn train --resume {result.checkpoint}"
        )
