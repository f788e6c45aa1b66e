"""`drcn train`: train DRCN on folders of HR images, with checkpoints, exact resume and torchrun/DDP.

Thin: options -> a TrainConfig (a resumed run starts from its checkpoint's config) -> drcn_cli.training.loop.train,
with a rich progress display on stderr. The options are generated from TrainConfig's fields (name, type,
default, help and panel are declared there, once); only --config and --quiet are the command's own. The
library writes the checkpoint, the CSV log (`log.csv` in the checkpoint folder) and the exported weights.
Under torchrun only rank 0 shows anything.
"""

from __future__ import annotations

import dataclasses
import inspect
import signal
from collections.abc import Callable
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_args, get_origin, get_type_hints

import typer

from ..training.config import TrainConfig, duration_seconds, value_problem
from ._errors import EXIT_INTERRUPTED, fail
from ._options import path_type, threads_in_range

if TYPE_CHECKING:
    from rich.progress import TaskID

_F = TypeVar("_F", bound=Callable[..., Any])

_RUN = "Run"  # the panel of the command's own options; the fields name theirs


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


# -- the options: generated from TrainConfig's fields, where each is declared once (name, type, default, help) ------

# Parameters that _given_options leaves out: --config and --quiet are the command's own; --resume is a field, but
# it goes to _config apart, as where the run comes from.
_NOT_CONFIG = frozenset({"config", "resume", "quiet"})
_CONFIG = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            help="A TOML recipe: TrainConfig fields (lr = 3e-4, scales = [2, 3, 4], time_limit = \"2h\" ...); "
            "options given on the command line win.",
            rich_help_panel=_RUN,
        ),
    ],
)
_QUIET = inspect.Parameter(
    "quiet",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no summary.", rich_help_panel=_RUN)],
)


def shown_default(value: Any) -> str:
    """A default as the help shows it: a float in the shorter of its plain and exponent forms (0.25, 2e-4, 1), a
    tuple as its items (2 3 4)."""
    if isinstance(value, tuple):
        return " ".join(shown_default(v) for v in value)
    if isinstance(value, float):
        mantissa, _, exponent = f"{value:.14e}".partition("e")  # 15 significant digits, as a float holds
        scientific = f"{float(mantissa):.15g}e{int(exponent)}"
        plain = f"{value:.15g}"
        return scientific if "e" in plain or len(scientific) < len(plain) else plain
    return str(value)


def option_help(field: dataclasses.Field) -> str:
    """The field's help with its default: in place of ``{default}``, else appended when there is a value to show
    (not for None, which the command or the library works out, nor for a flag's False or an empty list)."""
    text = field.metadata["help"]
    if "{default}" in text:
        return text.replace("{default}", shown_default(field.default))
    if field.default is None or isinstance(field.default, bool) or field.default == ():
        return text
    return f"{text.removesuffix('.')} (default: {shown_default(field.default)})."


def _value_type(field: dataclasses.Field, hint: Any) -> Any:
    """What the option parses: the field's type without None, a path or a choice where the metadata says, a list
    for a tuple (a repeatable option)."""
    if "choices" in field.metadata:  # an Enum, so that a bad value is a usage error listing the choices
        name = field.name.title().replace("_", "")
        return Enum(name, [(choice, choice) for choice in field.metadata["choices"]], type=str)
    repeated = get_origin(hint) is tuple
    kind = next(arg for arg in get_args(hint) if arg is not type(None)) if get_args(hint) else hint
    if "path" in field.metadata:
        kind = Path
    elif field.metadata.get("duration"):  # minutes or "2h": parsed into seconds by _given_options
        kind = str
    return list[kind] if repeated else kind  # type: ignore[valid-type]  # a type built at run time, for typer


def _value_check(field: dataclasses.Field) -> Callable[[Any, Any, Any], Any]:
    """The option's callback: the field's one value check (drcn_cli.training.config.value_problem: NaN, infinities,
    empty names, bounds), the same that a recipe's values and the Python API's get; for --threads also the
    machine's bound (drcn_cli.inference.device.threads_problem)."""

    def check(ctx: Any, param: Any, value: Any) -> Any:
        if isinstance(value, Enum):  # Typer converts what a callback returns again: give it the plain choice
            value = value.value
        if value is None or value is False:
            return value
        if (problem := value_problem(field.name, value)) is not None:
            raise typer.BadParameter(problem)
        return threads_in_range(ctx, param, value) if field.name == "threads" else value

    return check


def _parameter(field: dataclasses.Field, hint: Any) -> inspect.Parameter:
    meta = field.metadata
    flags = [meta.get("flag", "--" + field.name.replace("_", "-")), *([meta["short"]] if "short" in meta else [])]
    path = meta.get("path")
    option = typer.Option(
        *flags,
        help=option_help(field),
        rich_help_panel=meta["panel"],
        min=meta.get("min"),
        max=meta.get("max"),
        metavar=meta.get("metavar"),
        # a path refuses an empty name itself: Typer turns '' into Path('.') before the callback sees it
        click_type=path_type(file_okay=path != "dir", dir_okay=path != "file") if path else None,
        callback=_value_check(field),
    )
    kind = _value_type(field, hint)
    if kind is bool:  # a flag turns something on; not given is False
        return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=False,
                                 annotation=Annotated[bool, option])
    # Default None for every other option, so that "given" (it overrides a recipe, a resumed run) is "not None".
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[kind | None, option])


def option_fields() -> list[dataclasses.Field]:
    """The TrainConfig fields that are `drcn train` options: those with a help text."""
    return [field for field in dataclasses.fields(TrainConfig) if "help" in field.metadata]


def _signature() -> inspect.Signature:
    hints = get_type_hints(TrainConfig)
    options = [_parameter(field, hints[field.name]) for field in option_fields()]
    return inspect.Signature([_CONFIG, *options, _QUIET], return_annotation=None)


def train_options(command: _F) -> _F:
    """Give ``command`` (which takes ``**flags``) the parameters of `drcn train`, generated from TrainConfig's
    fields. Typer reads them through inspect.signature, which honours ``__signature__``, and
    typing.get_type_hints, which reads ``__annotations__``."""
    signature = _signature()
    command.__signature__ = signature  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()} | {"return": None}
    return command


def _given_options(flags: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields of the options given (on the command line, then in the --config recipe): paths
    as strings, lists as tuples, choices as their values, --time-limit in seconds (duration_seconds), --init
    resolved to a file."""
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
        options[name] = value
    for field in option_fields():
        if field.metadata.get("duration") and field.name in options:  # checked already (_value_check)
            options[field.name] = duration_seconds(options[field.name])
    if flags["config"] is not None:
        from ..training.config import read_recipe

        options = read_recipe(flags["config"]) | options
    if options.get("init"):
        options["init"] = str(_resolve_init(options["init"]))
    return options


def _config(options: dict[str, Any], resume: Path | None) -> Any:
    """The run's TrainConfig: a resumed run's stored one with ``options`` applied, or a new one from them."""
    from ..training.checkpoint import resume_config
    from ..training.setup import init_architecture

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
    from ..weights.resolve import resolve_weights, split_source

    return resolve_weights(*split_source(value))


class _RichReporter:
    """Renders the library's progress: a bar with step, loss, lr, alpha, validation PSNR and ETA."""

    def __init__(self, console: Any) -> None:
        from rich.progress import TextColumn

        from ._progress import progress_bar

        self.console = console
        self.progress = progress_bar(console, TextColumn("{task.fields[info]}"), elapsed=True)
        self.prepare_task: TaskID | None = None
        self.train_task: TaskID | None = None
        self.val_text = "val -"

    # The methods below implement drcn_cli.training.report.TrainReporter.
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
        assert self.train_task is not None  # started() comes first
        self.progress.update(self.train_task, completed=stats.step, info=info)

    def validated(self, stats: Any) -> None:
        per_scale = " ".join(f"x{s:g} {v:.2f}/{stats.ssim[s]:.4f}" for s, v in stats.psnr.items())
        if stats.jpeg_psnr:
            jpeg = " ".join(f"x{s:g} {v:.2f}/{stats.jpeg_ssim[s]:.4f}" for s, v in stats.jpeg_psnr.items())
            per_scale = f"clean {per_scale}; JPEG q{stats.jpeg_quality} {jpeg};"
        marker = " (best)" if stats.best_step == stats.step else f" (best {stats.best_psnr:.3f} @ {stats.best_step})"
        self.val_text = f"val {stats.mean_psnr:.3f} dB"
        self.console.print(f"step {stats.step}: val PSNR/SSIM {per_scale}, mean {stats.mean_psnr:.3f} dB{marker}")

    def exported(self, path: Path, step: int, psnr: float | None) -> None: ...

    def checkpointed(self, path: Path, step: int) -> None: ...

    def close(self) -> None:
        if self.prepare_task is not None or self.train_task is not None:  # else it never started: nothing to end
            self.progress.stop()


@train_options
def train(**flags: Any) -> None:
    """Train DRCN (one model for every scale) on HR images, e.g. T91 + BSD200, validating on Set5.

    torchrun --nproc-per-node N -m drcn_cli train ... trains on N GPUs (DistributedDataParallel).
    """
    from ..training.loop import train as run_training

    # Each option's value was checked as it was parsed (_value_check), the recipe's as it was read; what does not
    # work together is refused here, before anything is shown.
    cfg = _config(_given_options(flags), flags["resume"])
    from ..training.config import check_config

    check_config(cfg)

    from ..processes import processes

    main_process = processes().main
    show = main_process and not flags["quiet"]
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
