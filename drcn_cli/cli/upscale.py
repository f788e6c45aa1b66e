"""`drcn upscale`: upscale files, folders, globs or stdin with DRCN (or plain bicubic), safely and resumably.

Thin: parse and check the options, plan the jobs (drcn_cli.batch), load the model once, then for each
image read (drcn_cli.imageio) -> upscale (drcn_cli.pipeline) -> write, reading ahead and writing behind
in threads. Everything the user reads goes to stderr; stdout carries only --json lines or, with `-o -`,
the image itself (the JSON lines then go to stderr so they cannot corrupt it).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import DrcnError
from ._errors import EXIT_INTERRUPTED, fail, one_line, usage
from ._options import MODEL_PANEL as _MODEL
from ._options import (
    Device,
    Method,
    ModelName,
    Precision,
    PrecisionChoice,
    SelfEnsemble,
    Threads,
    WeightsPath,
    tile_problem,
)

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

DEFAULT_MAX_MPX = 100.0
DEFAULT_MAX_OUTPUT_MPX = 1000.0

_IO = "Input and output"
_SIZE = "Size"

_SAFETY = "Limits"
_REPORT = "Reporting"


class OutputFormat(str, Enum):
    png = "png"
    jpeg = "jpeg"
    jpg = "jpg"
    webp = "webp"
    tiff = "tiff"
    tif = "tif"


@dataclass(frozen=True)
class _RunOptions:
    """The options that the per-image work needs, once checked."""

    scale: float | None
    width: int | None
    height: int | None
    model_name: str | None
    weights: Path | None
    method: Method
    recursions: int | None
    self_ensemble: bool
    tile: int
    device: str
    precision: str
    threads: int | None
    io_threads: int
    max_pixels: int | None  # pixels, None = no limit
    max_output_pixels: int | None
    quality: int | None
    overwrite: bool
    rank: int
    world: int
    skip_existing: bool = False


_SKIPPED = -1  # what save() returns when another process wrote the output meanwhile and --skip-existing


@dataclass
class _Upscaled:
    """What the upscale step hands to the write step."""

    pixels: Any
    loaded: Any  # imageio.LoadedImage
    model: str  # the model that made it (model_label)


def _usage(message: str) -> typer.Exit:
    """Print a usage error as one line and return the exit (code 2) for the caller to raise."""
    return usage(message, "upscale")


_one_line = one_line


def _mpx(pixels: int) -> str:
    """Megapixels as they read best: 144.0 Mpx, 0.00768 Mpx (never a misleading 0.0)."""
    value = pixels / 1e6
    return f"{value:.1f} Mpx" if value >= 1 else f"{value:.3g} Mpx"


def _shown(label: str | None) -> str | None:
    """A path as one line of a log: control characters (a newline in a file name) escaped as \\n, \\x1b ..."""
    if label is None or label.isprintable():
        return label
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in label)


def _reason(exc: BaseException) -> str:
    """The one-line reason for a failed file: our own errors as they are, anything else with its type."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return "out of memory even with the smallest tile: try --device cpu, or free memory on the device"
    if isinstance(exc, (DrcnError, ValueError)):
        return _one_line(str(exc))
    if isinstance(exc, OSError):
        return _one_line(exc.strerror or str(exc))
    return _one_line(f"{type(exc).__name__}: {exc}")


@contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM (kill) into KeyboardInterrupt, so a killed run cleans up as Ctrl-C does."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _no_pillow_pixel_limit():
    """--max-pixels is checked from each file's header in read_image; Pillow's own fixed limit would only
    get in the way of a user who raised ours."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _device_for_rank(device: str, world: int) -> str:
    """Under torchrun with several ranks, 'auto' means this rank's own GPU (LOCAL_RANK)."""
    import torch

    if device == "auto" and world > 1 and torch.cuda.is_available():
        from ..processes import processes

        return f"cuda:{processes().local_rank % torch.cuda.device_count()}"
    return device


def _describe_device(dev) -> str:
    import torch

    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads > 1 else ''})"
    return str(dev)


def upscale(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="INPUT...",
            help="Image files, folders, globs ('photos/*.jpg'), or - to read one image from stdin; or video files "
            "(.mp4 .mkv .mov .webm .avi; needs PyAV: pip install av).",
            show_default=False,
        ),
    ] = None,
    input_options: Annotated[
        list[str] | None,
        typer.Option(
            "-i", "--input",
            help="An input given as an option, as in Real-ESRGAN's tools (repeatable); the same as an INPUT.",
            rich_help_panel=_IO, show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output",
            help="Output file (one input), folder (several inputs; created), or - for stdout. "
            "Default: beside each input, with a suffix.",
            rich_help_panel=_IO,
        ),
    ] = None,
    scale: Annotated[
        float | None,
        typer.Option("-s", "--scale", help="Scale factor, 1 to 32 (2, 3, 2.5 ...).", rich_help_panel=_SIZE),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option("--width", min=1, help="Output width in pixels (height keeps the aspect).", rich_help_panel=_SIZE),
    ] = None,
    height: Annotated[
        int | None,
        typer.Option("--height", min=1, help="Output height in pixels (width keeps the aspect).",
                     rich_help_panel=_SIZE),
    ] = None,
    recursive: Annotated[
        bool,
        typer.Option("-r", "--recursive", help="Take folders' subfolders too; the tree is mirrored under -o.",
                     rich_help_panel=_IO),
    ] = False,
    suffix: Annotated[
        str | None,
        typer.Option("--suffix", help="Added to output names. Default: none inside another -o folder, "
                     "'_x3' (etc.) beside the inputs.", rich_help_panel=_IO),
    ] = None,
    skip_existing: Annotated[
        bool,
        typer.Option("--skip-existing", help="Skip images whose output exists (resume a batch).", rich_help_panel=_IO),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace existing outputs (never an input file).", rich_help_panel=_IO),
    ] = False,
    fmt: Annotated[
        OutputFormat | None,
        typer.Option("-f", "--format", help="Output format. Default: from -o's extension, else the input's "
                     "(PNG for other types and stdout).", rich_help_panel=_IO, case_sensitive=False),
    ] = None,
    quality: Annotated[
        int | None,
        typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality (default 95); WebP 100 = lossless. "
                     "PNG and TIFF are always lossless.", rich_help_panel=_IO, show_default=False),
    ] = None,
    model: ModelName = None,
    weights: WeightsPath = None,
    method: Annotated[
        Method,
        typer.Option("--method", help="drcn, or bicubic (MATLAB bicubic alone: a baseline, needs no weights).",
                     rich_help_panel=_MODEL),
    ] = Method.drcn,
    recursions: Annotated[
        int | None,
        typer.Option("-k", "--recursions", min=1, help="Use only the first K recursions: faster, a little softer. "
                     "Default: all.", rich_help_panel=_MODEL),
    ] = None,
    self_ensemble: SelfEnsemble = False,
    tile: Annotated[
        int,
        typer.Option("-t", "--tile", min=0, help="Tile side in pixels: 0 = from the free memory, else at least 32. "
                     "Halved automatically on out-of-memory. Never changes the result (no seams).",
                     rich_help_panel=_MODEL),
    ] = 0,
    device: Device = "auto",
    precision: PrecisionChoice = Precision.auto,
    threads: Threads = None,
    io_threads: Annotated[
        int,
        typer.Option("--io-threads", min=1, help="Images read ahead, and written behind, in background threads.",
                     rich_help_panel=_MODEL),
    ] = 2,
    max_pixels: Annotated[
        float,
        typer.Option("--max-pixels", min=0, help="Refuse inputs over this many megapixels, before decoding "
                     "(decompression bombs). 0 = no limit.", rich_help_panel=_SAFETY),
    ] = DEFAULT_MAX_MPX,
    max_output_pixels: Annotated[
        float,
        typer.Option("--max-output-pixels", min=0, help="Refuse outputs over this many megapixels. 0 = no limit.",
                     rich_help_panel=_SAFETY),
    ] = DEFAULT_MAX_OUTPUT_MPX,
    json_lines: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON object per image on stdout (stderr when the image goes to "
                     "stdout): input, output, sizes, seconds, status, error.", rich_help_panel=_REPORT),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("-q", "--quiet", help="No progress or summary; errors are still printed.",
                     rich_help_panel=_REPORT),
    ] = False,
) -> None:
    """Upscale images with DRCN: files, whole folders (--recursive), globs, or stdin to stdout (-).

    Keeps alpha, 16-bit depth, the ICC profile and EXIF (orientation applied), and writes atomically.

    A failed image is reported and the batch goes on. Exit code: 0 all done, 1 an image failed, 2 usage error.
    """
    from rich.console import Console

    from ..batch import OutputPlan, distributed_rank, expand_inputs, plan_jobs, scale_label, shard

    console = Console(stderr=True, highlight=False, soft_wrap=True)

    inputs = [*(inputs or []), *(input_options or [])]
    _check_options(inputs, scale, width, height, model, weights, method, recursions, self_ensemble, tile, suffix)
    rank, world = distributed_rank()  # RANK / WORLD_SIZE that do not fit: a ConfigError, exit 2

    options = _RunOptions(
        scale=scale, width=width, height=height, model_name=model, weights=weights, method=method,
        recursions=recursions, self_ensemble=self_ensemble, tile=tile, device=device, precision=precision.value,
        threads=threads, io_threads=io_threads, max_pixels=int(max_pixels * 1e6) or None,
        max_output_pixels=int(max_output_pixels * 1e6) or None, quality=quality, overwrite=overwrite,
        rank=rank, world=world, skip_existing=skip_existing,
    )
    sources, problems = expand_inputs(inputs, recursive)
    # A bicubic run's default name differs from the network's, so the two can be compared side by side.
    label = scale_label(scale, width, height) + ("_bicubic" if method is Method.bicubic else "")
    from ..video import is_video_path

    if any(source.path is not None and is_video_path(source.path) for source in sources):
        from ._video import upscale_videos

        code = upscale_videos(sources, problems, console, options, output=output, suffix=suffix,
                              fmt=fmt.value if fmt is not None else None, skip_existing=skip_existing, label=label,
                              quiet=quiet, json_lines=json_lines)
        raise typer.Exit(code)
    plan = OutputPlan(
        output=output,
        suffix=suffix,
        fmt=fmt.value if fmt is not None else None,
        scale_label=label,
        overwrite=overwrite,
        skip_existing=skip_existing,
    )
    jobs = plan_jobs(sources, plan)  # a combination that cannot work: batch.UsageError, exit 2
    to_stdout = any(job.output is None for job in jobs)
    _check_stdout(to_stdout, world)
    jobs = shard(jobs, rank, world)
    if rank != 0:
        problems = []  # rank 0 reports the inputs that gave nothing, once

    report = _Reporter(console, quiet=quiet, json_lines=json_lines, json_to_stderr=to_stdout, world=world, rank=rank)
    runnable = _report_planned(report, problems, jobs)
    if runnable:
        _run(runnable, console, report, options)
    report.summary()
    raise typer.Exit(1 if report.failures else 0)


def _check_options(inputs: list[str], scale: float | None, width: int | None, height: int | None,
                   model: str | None, weights: Path | None, method: Method, recursions: int | None,
                   self_ensemble: bool, tile: int, suffix: str | None) -> None:
    """Options that cannot work together: usage errors (exit 2), before any image is read."""
    if not inputs:
        raise _usage("no input: give image files, folders, globs or - for stdin, as arguments or with -i")
    if scale is None and width is None and height is None:
        raise _usage("give a scale (-s 2) or an output size (--width / --height)")
    if scale is not None and (width is not None or height is not None):
        raise _usage("give either -s/--scale or --width/--height, not both")
    if model is not None and weights is not None:
        raise _usage("give either --model or --weights, not both")
    if method is Method.bicubic and (
        model is not None or weights is not None or recursions is not None or self_ensemble
    ):
        raise _usage("--method bicubic uses no network: drop --model / --weights / --recursions / --self-ensemble")
    from ..pipeline import MAX_SCALE

    if (problem := tile_problem(tile)) is not None:
        raise _usage(problem)
    if suffix is not None and any(sep and sep in suffix for sep in ("/", os.sep, os.altsep)):
        raise _usage(f"--suffix {suffix!r} contains a path separator: it would write outside the output folder")
    if model is not None:
        from ..registry import KNOWN_WEIGHTS

        if model not in KNOWN_WEIGHTS:
            raise _usage(f"unknown model {model!r}; known models: {', '.join(sorted(KNOWN_WEIGHTS))}")
    if scale is not None and not 1.0 <= scale <= MAX_SCALE:
        raise typer.BadParameter(f"{scale:g} is outside 1 to {MAX_SCALE:g}", param_hint="'-s' / '--scale'")


def _check_stdout(to_stdout: bool, world: int) -> None:
    """Where image data cannot go to stdout: shared between ranks, closed, or a terminal."""
    if to_stdout and world > 1:
        raise _usage("stdout output cannot be shared between torchrun ranks")
    if to_stdout and sys.stdout is None:  # started with stdout closed (>&-)
        raise fail("stdout is closed: give -o FILE")
    if to_stdout and sys.stdout.isatty():
        raise _usage("refusing to write image data to a terminal: redirect stdout or give -o FILE")


def _report_planned(report: _Reporter, problems: list, jobs: list) -> list:
    """Report the inputs that gave nothing, the jobs refused and those skipped; returns the jobs to run."""
    for problem in problems:
        reason = problem.reason
        if problem.input.lower() in ("true", "false", "yes", "no", "on", "off") and "no such" in reason:
            reason += " (flags such as -r take no value: drop it)"  # e.g. `-r true`
        report.failed_input(problem.input, reason)
    for job in jobs:
        if job.error is not None:
            report.failed_input(job.input_label, job.error)
        elif job.skip:
            report.skipped(job)
    return [job for job in jobs if job.error is None and not job.skip]


def _read_stdin(max_pixels: int | None = None) -> bytes:
    """All of stdin, as bytes, but never more than an image within ``max_pixels`` can take (a stream can be
    endless: `cat /dev/zero |`); ImageReadError (one line) when it is closed, unreadable or too long."""
    from ..imageio import ImageReadError, max_file_bytes

    if sys.stdin is None:  # started with stdin closed (<&-)
        raise ImageReadError("stdin is closed")
    limit = max_file_bytes(max_pixels)
    try:
        # One byte over the limit is enough for read_image to refuse the stream.
        return typer.get_binary_stream("stdin").read(-1 if limit is None else limit + 1)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ImageReadError(f"cannot read stdin ({_one_line(getattr(exc, 'strerror', None) or exc)})") from None


def _write_stdout(data: bytes) -> None:
    """Write the image to stdout, all of it, or raise ImageWriteError: a reader that went away (broken pipe), a
    full disk, a short write. A regular file behind stdout is fsync'd, so a full disk shows here, not later."""
    import stat

    from ..imageio import ImageWriteError

    stream = typer.get_binary_stream("stdout")
    try:
        written = stream.write(data)
        if written is not None and written != len(data):
            _silence_stdout()
            raise ImageWriteError(f"cannot write to stdout: only {written} of {len(data)} bytes were taken")
        stream.flush()
        try:
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None  # not a real file (a test runner's buffer)
        if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
            try:
                os.fsync(fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EROFS):  # a file system that cannot sync
                    raise
    except BrokenPipeError:
        _silence_stdout()
        raise ImageWriteError("cannot write to stdout: the reading end of the pipe was closed") from None
    except ImageWriteError:
        raise
    except OSError as exc:
        _silence_stdout()
        reason = "disk full" if exc.errno == errno.ENOSPC else _one_line(exc.strerror or exc)
        raise ImageWriteError(f"cannot write to stdout: {reason}") from None


def _silence_stdout() -> None:
    """After a failed write to stdout, point its descriptor at /dev/null: what is still buffered would fail
    again when Python exits and print a traceback-like warning after our one error line."""
    try:
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


def _prepare(console, report, opts: _RunOptions, count: str):
    """Device, precision and model (loaded once), announced in one line with ``count`` ("3 image(s)").
    Returns (loader.ModelChoice or None for bicubic, InferenceSettings). Exits 1 on a model error, 2 on a bad
    device."""
    from ..device import precision_reason, resolve_device, resolve_precision, set_threads
    from ..hub import HubError
    from ..loader import InferenceSettings, open_models
    from ..registry import ChecksumError, WeightsNotFoundError

    set_threads(opts.threads)  # a device or precision that cannot work is a ConfigError: exit 2, reported above
    dev = resolve_device(_device_for_rank(opts.device, opts.world))
    precision = resolve_precision(opts.precision, dev)

    networks = None
    model_text = "bicubic (no network)"
    if opts.method is Method.drcn:
        try:
            networks = open_models(opts.weights or opts.model_name, dev, precision, on_download=report.info)
        except (WeightsNotFoundError, ChecksumError, HubError) as exc:  # no file to load: say there is a way out
            raise fail(f"{exc}{'' if opts.weights else ' (--method bicubic needs no weights)'}") from None
        config = networks.default.config
        depth = min(n.config.recursions for n in (networks.default, networks.photo) if n is not None)
        if opts.recursions is not None and opts.recursions > depth:
            raise _usage(f"--recursions {opts.recursions}: this model has {depth}")
        model_text = f"{_file_name(networks.default)} (F={config.features}, D={config.recursions})"
        if networks.photo is not None:
            model_text += f", {_file_name(networks.photo)} for JPEG inputs and video"
    settings = InferenceSettings(dev, precision, opts.tile, opts.recursions, opts.self_ensemble)
    tile_text = f"tile {opts.tile}" if opts.tile else "tile auto"
    if opts.self_ensemble and networks is not None:
        model_text += " with self-ensemble x8"
    rank_text = f"rank {opts.rank}/{opts.world}: " if opts.world > 1 else ""
    reason = precision_reason(opts.precision, precision, dev)
    precision_text = f"{precision} ({reason})" if reason else precision
    report.info(f"{rank_text}{count} on {_describe_device(dev)}, {precision_text}, {model_text}, {tile_text}")
    return networks, settings


def _file_name(network: Any) -> str:
    assert network.source is not None  # opened from a file or a name, never from a module
    return network.source.name


def model_label(network: Any) -> str:
    """The name a record gives a model: its weights file's stem (``drcn-lite``), or "bicubic" for None."""
    if network is None:
        return "bicubic"
    return network.source.stem if network.source is not None else "module"


def _run(jobs, console, report: _Reporter, opts: _RunOptions) -> None:
    """Load the model once and run every job; sets report's counts. Exits 1 on a model error, 130 on Ctrl-C."""
    from ..batch import run_pipelined

    networks, settings = _prepare(console, report, opts, f"{len(jobs)} image(s)")
    steps = _ImageSteps(opts, networks, settings, report)
    with report.progress(len(jobs)), _sigterm_as_interrupt(), _no_pillow_pixel_limit():
        outcomes = run_pipelined(jobs, steps.load, steps.process, steps.save, read_ahead=opts.io_threads,
                                 writers=opts.io_threads)
        try:
            for outcome in outcomes:
                steps.unreported.pop(id(outcome.job), None)
                _report_outcome(report, outcome)
        except KeyboardInterrupt:
            _finish_writes(outcomes)
            _report_unreported(report, steps.unreported)
            report.interrupted(len(jobs))
            raise typer.Exit(EXIT_INTERRUPTED) from None


@dataclass
class _ImageSteps:
    """The three steps of one image for batch.run_pipelined: read (in a reader thread), upscale (in this one),
    write (in a writer thread)."""

    opts: _RunOptions
    networks: Any  # loader.ModelChoice; None for bicubic
    settings: Any  # loader.InferenceSettings
    report: _Reporter
    # Images whose write finished but is not reported yet: on an interrupt, the writes already handed over are
    # completed (atomically), and must then be counted and get their --json line too.
    unreported: dict[int, tuple[Any, _Upscaled, int]] = field(default_factory=dict)

    def load(self, job):
        """The decoded image (stdin is read whole first); refused over --max-pixels."""
        from ..imageio import read_image

        source, max_pixels = job.source.path, self.opts.max_pixels
        return read_image(_read_stdin(max_pixels) if source is None else source, max_pixels)

    def process(self, job, loaded) -> _Upscaled:
        """The image upscaled to the size asked for; ValueError when that is over --max-output-pixels."""
        from ..color import array_to_tensor, tensor_to_array
        from ..pipeline import target_size, upscale_tensor

        opts, report = self.opts, self.report
        size = target_size(loaded.height, loaded.width, opts.scale, opts.width, opts.height)
        if opts.max_output_pixels and size[0] * size[1] > opts.max_output_pixels:
            raise ValueError(
                f"output {size[1]}x{size[0]} = {_mpx(size[0] * size[1])} is over "
                f"--max-output-pixels {opts.max_output_pixels / 1e6:g} Mpx"
            )
        report.start(job, loaded, size)
        tensor, fmt = array_to_tensor(loaded.pixels)
        network = self.networks.for_input(loaded.source_format) if self.networks is not None else None
        out = upscale_tensor(
            tensor, size, network, self.settings, scale=opts.scale, on_tile=report.tile, on_shrink=report.shrink
        )
        return _Upscaled(tensor_to_array(out, fmt), loaded, model_label(network))

    def save(self, job, result: _Upscaled) -> int:
        """:meth:`_write`, then note the image as written but not yet reported."""
        size = self._write(job, result)
        self.unreported[id(job)] = (job, result, size)
        return size

    def _write(self, job, result: _Upscaled) -> int:
        """Write the image (atomically, or to stdout); its size in bytes, or _SKIPPED."""
        from ..imageio import OutputExistsError, encode_image, write_image

        opts = self.opts
        meta = dict(quality=opts.quality, icc_profile=result.loaded.icc_profile, exif=result.loaded.exif,
                    dpi=result.loaded.dpi)
        if job.output is None:
            data = encode_image(result.pixels, job.fmt, **meta)
            _write_stdout(data)
            return len(data)
        try:
            return write_image(job.output, result.pixels, job.fmt, overwrite=opts.overwrite, **meta)
        except OutputExistsError as exc:
            if opts.skip_existing:  # another process wrote it meanwhile: as if it had been there at the start
                return _SKIPPED
            raise OutputExistsError(f"{exc} (use --overwrite or --skip-existing)") from None


def _report_outcome(report: _Reporter, outcome) -> None:
    """One finished job: upscaled, skipped (its output appeared meanwhile) or failed."""
    if outcome.ok and outcome.saved is _SKIPPED:
        report.skipped(outcome.job, planned=False)
    elif outcome.ok:
        report.done(outcome)
    else:
        report.failed(outcome, _reason(outcome.error))


def _finish_writes(outcomes) -> None:
    """After Ctrl-C: wait for the writes already handed over (a no-op if the run has ended)."""
    try:
        outcomes.close()
    except KeyboardInterrupt:
        pass  # a second signal: stop waiting


def _report_unreported(report: _Reporter, unreported: dict[int, tuple[Any, _Upscaled, int]]) -> None:
    """Count the images written but not reported when the run was interrupted, as done (or skipped)."""
    from ..batch import JobOutcome

    for job, result, size in list(unreported.values()):
        if size is _SKIPPED:
            report.skipped(job, planned=False)
        else:
            report.done(JobOutcome(job, loaded=result.loaded, processed=result, saved=size))


class _Reporter:
    """Everything the user sees: rich progress and one line per event on stderr, JSON lines for scripts."""

    def __init__(self, console, *, quiet: bool, json_lines: bool, json_to_stderr: bool, world: int, rank: int):
        self.console = console
        self.quiet = quiet
        self.json_lines = json_lines
        self.json_to_stderr = json_to_stderr
        self.rank = rank if world > 1 else None
        self.live = console.is_terminal and not quiet  # a live bar on a terminal; one line per image in logs
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.started = time.perf_counter()
        self._progress: Progress | None = None
        self._files: TaskID | None = None
        self._tiles: TaskID | None = None
        self._shrunk = False

    @property
    def failures(self) -> int:
        return self.counts["failed"]

    # ---- lines
    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False)

    def _json(self, **record) -> None:
        if self.json_lines:
            if self.rank is not None:
                record["rank"] = self.rank
            typer.echo(json.dumps(record), err=self.json_to_stderr)

    def failed_input(self, label: str, reason: str) -> None:
        self.counts["failed"] += 1
        self.console.print(f"error: {_shown(label)}: {_one_line(reason)}", markup=False)
        self._json(input=label, output=None, status="failed", error=_one_line(reason), input_size=None,
                   output_size=None, seconds=0.0)

    def skipped(self, job, planned: bool = True) -> None:
        """An output that exists: found while planning, or (``planned`` False) written by another process
        while this one upscaled the image."""
        self.counts["skipped"] += 1
        if not self.quiet:
            self.console.print(f"skip {_shown(job.input_label)}: {_shown(job.output_label)} exists", markup=False)
        self._json(input=job.input_label, output=job.output_label, status="skipped", error=None, input_size=None,
                   output_size=None, seconds=0.0)
        if not planned:
            self._advance()  # it was counted in the progress bar's total

    def done(self, outcome) -> None:
        self.counts["ok"] += 1
        job = outcome.job
        loaded, result = outcome.loaded, outcome.processed
        in_size = [loaded.width, loaded.height]
        out_size = [int(result.pixels.shape[1]), int(result.pixels.shape[0])]
        seconds = round(sum(outcome.timings.values()), 4)
        if not self.quiet:  # on a terminal too, above the bar: the user sees where each output went
            first_only = f"; the first of {loaded.frames} frames" if loaded.frames > 1 else ""
            self.console.print(
                f"ok {_shown(job.input_label)} -> {_shown(job.output_label)} ({in_size[0]}x{in_size[1]} -> "
                f"{out_size[0]}x{out_size[1]}, {result.model}, {seconds:.2f} s{first_only})", markup=False,
            )
        self._json(input=job.input_label, output=job.output_label, status="ok", error=None, input_size=in_size,
                   output_size=out_size, seconds=seconds, bytes=outcome.saved, frames_in_file=loaded.frames,
                   model=result.model)
        self._advance()

    def failed(self, outcome, reason: str) -> None:
        self.counts["failed"] += 1
        job = outcome.job
        self.console.print(f"error: {_shown(job.input_label)}: {reason}", markup=False)
        loaded = outcome.loaded
        self._json(input=job.input_label, output=None, status="failed", error=reason,
                   input_size=[loaded.width, loaded.height] if loaded is not None else None, output_size=None,
                   seconds=round(sum(outcome.timings.values()), 4))
        self._advance()

    def interrupted(self, total: int) -> None:
        self.console.print(
            f"interrupted after {self.counts['ok']} of {total} image(s): every output written is complete, none is "
            "partial; run the same command with --skip-existing to go on", markup=False,
        )

    def summary(self) -> None:
        seconds = time.perf_counter() - self.started
        c = self.counts
        if not self.quiet:
            self.console.print(f"done: {c['ok']} upscaled, {c['skipped']} skipped, {c['failed']} failed "
                               f"in {seconds:.1f} s", markup=False)

    # ---- progress
    @contextmanager
    def progress(self, total: int):
        if not self.live:
            yield
            return
        from rich.progress import TextColumn

        from ._progress import progress_bar

        with progress_bar(
            self.console, TextColumn("{task.fields[name]}", markup=False), transient=True,
            redirect_stdout=False,  # stdout carries --json lines or the image: never through the stderr console
        ) as progress:
            self._progress = progress
            self._files = progress.add_task("files", total=total, name="")
            self._tiles = progress.add_task("tiles", total=1, visible=False, name="")
            try:
                yield
            finally:
                self._progress = None

    def start(self, job, loaded, size) -> None:
        self._shrunk = False
        if self._progress is not None:
            assert self._files is not None and self._tiles is not None  # added with the progress
            name = f"{_shown(job.input_label)} ({loaded.width}x{loaded.height} -> {size[1]}x{size[0]})"
            self._progress.update(self._files, name=name)
            self._progress.update(self._tiles, visible=False, completed=0)

    def tile(self, done: int, total: int) -> None:
        if self._progress is not None and total > 1:
            assert self._tiles is not None  # added with the progress
            self._progress.update(self._tiles, visible=True, completed=done, total=total)

    def shrink(self, new_tile: int) -> None:
        if not self._shrunk:
            self.info(f"out of memory: retrying with smaller tiles ({new_tile} px)")
            self._shrunk = True

    def _advance(self) -> None:
        if self._progress is not None:
            assert self._files is not None and self._tiles is not None  # added with the progress
            self._progress.advance(self._files)
            self._progress.update(self._tiles, visible=False)
