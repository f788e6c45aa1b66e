"""`drcn train`: train DRCN on folders of HR images, with checkpoints, exact resume and torchrun/DDP.

Thin: options -> a TrainConfig (a resumed run starts from its checkpoint's config) -> drcn_cli.train.train,
with a rich progress display on stderr. The library writes the checkpoint, the CSV log (`log.csv` in the
checkpoint folder) and the exported weights. Under torchrun only rank 0 shows anything.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..train_config import LOSSES, OPTIMIZERS, SCHEDULES
from ._errors import EXIT_INTERRUPTED, fail

_DATA = "Data"
_MODEL = "Model and recipe"
_RUN = "Run"



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


Optimizer = Enum("Optimizer", [(name, name) for name in OPTIMIZERS], type=str)
Schedule = Enum("Schedule", [(name, name) for name in SCHEDULES], type=str)
Loss = Enum("Loss", [(name, name) for name in LOSSES], type=str)
TrainPrecision = Enum("TrainPrecision", [(name, name) for name in ("auto", "fp32", "bf16")], type=str)

# Parameters of the command that are not TrainConfig fields, and those named differently there.
_NOT_CONFIG = frozenset({"config", "resume", "quiet"})
_FIELD_NAMES = {"scale": "scales", "downscale": "downscales"}


def _given_options(flags: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields of the options given (on the command line, then in the --config recipe): paths
    as strings, lists as tuples, choices as their values, --time-limit in seconds, --init resolved to a file."""
    options: dict[str, Any] = {}
    for name, value in flags.items():
        if name in _NOT_CONFIG or value is None or value is False:
            continue
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, list):
            value = tuple(str(v) if isinstance(v, Path) else v for v in value)
        elif isinstance(value, Path):
            value = str(value)
        options[_FIELD_NAMES.get(name, name)] = value
    if "time_limit" in options:
        options["time_limit"] *= 60.0
    if flags["config"] is not None:
        from ..train_config import read_recipe

        options = read_recipe(flags["config"]) | options
    if options.get("init"):
        options["init"] = str(_resolve_init(options["init"]))
    return options


def _config(options: dict[str, Any], resume: Path | None) -> Any:
    """The run's TrainConfig: a resumed run's stored one with ``options`` applied, or a new one from them."""
    from ..train import TrainConfig, init_architecture, resume_config

    if resume is not None:
        options.setdefault("checkpoint_dir", str(resume))
        return resume_config(resume, options)
    pack = options.get("pack")
    if not options.get("data") and not (pack and Path(pack).is_file()):
        raise typer.BadParameter("give at least one --data folder (or an existing --pack)", param_hint="--data")
    if not options.get("out"):
        raise typer.BadParameter("where to write the trained weights", param_hint="--out")
    if options.get("init") and ("features" not in options or "recursions" not in options):
        arch = init_architecture(options["init"])
        options.setdefault("features", arch.features)
        options.setdefault("recursions", arch.recursions)
    options.setdefault("checkpoint_dir", str(Path(".checkpoints") / Path(options["out"]).stem))
    return TrainConfig(**options)


def _resolve_init(value: str) -> Path:
    from ..registry import resolve_weights, split_source

    return resolve_weights(*split_source(value))


class _RichReporter:
    """Renders the library's progress: a bar with step, loss, lr, alpha, validation PSNR and ETA."""

    def __init__(self, console: Any) -> None:
        from rich.progress import TextColumn

        from ._progress import progress_bar

        self.console = console
        self.progress = progress_bar(console, TextColumn("{task.fields[info]}"), elapsed=True)
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
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            exists=True,
            dir_okay=False,
            help="A TOML recipe: TrainConfig fields (lr = 3e-4, scales = [2, 3, 4], time_limit in seconds ...); "
            "options given on the command line win.",
            rich_help_panel=_RUN,
        ),
    ] = None,
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
            "--init",
            help="Start from these weights: a model name or a .safetensors path (a narrower model, e.g. drcn-lite "
            "for -F 256, is widened without changing what it computes).",
            rich_help_panel=_MODEL,
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
        Schedule | None,
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
        Optimizer | None,
        typer.Option("--optimizer", help="adam, adamw or sgd (momentum 0.9) (default: adam).", rich_help_panel=_MODEL),
    ] = None,
    loss: Annotated[
        Loss | None,
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
        TrainPrecision | None,
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
    flags = dict(locals())  # every parameter as given: the options are declared once, in the signature above
    from ..train import train as run_training

    if time_limit is not None and time_limit <= 0:
        raise typer.BadParameter("must be positive", param_hint="--time-limit")
    cfg = _config(_given_options(flags), resume)

    from ..processes import processes

    main_process = processes().main
    show = main_process and not quiet
    reporter: Any = None
    if show:
        from rich.console import Console

        reporter = _RichReporter(Console(stderr=True))
    stop_asked: list[int] = []
    # drcn's own errors (bad data, a checkpoint that does not fit, a refused option: ConfigError, exit 2) are
    # reported by the command's wrapper (cli._errors.reported); any other exception is a bug, with its traceback.
    try:
        with _stop_on_signals(stop_asked, reporter if show else None):
            result = run_training(cfg, reporter, should_stop=lambda: bool(stop_asked))
    except OSError as exc:
        raise fail(exc) from None
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
