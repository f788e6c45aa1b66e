"""`drcn upscale`: upscale files, folders, globs or stdin with DRCN (or plain bicubic), safely and resumably.

Thin: parse and check the options, plan the jobs (drcn_cli.io.batch), load the model once, then for each
image read (drcn_cli.io.images) -> upscale (drcn_cli.inference.pipeline) -> write, reading ahead and writing behind
in threads. Everything the user reads goes to stderr; stdout carries only --json lines or, with `-o -`,
the image itself (the JSON lines then go to stderr so they cannot corrupt it).
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._errors import usage
from ._images import run_images
from ._options import (
    EMPTY_NAME,
    Device,
    Method,
    ModelName,
    Precision,
    PrecisionChoice,
    SelfEnsemble,
    Threads,
    WeightsPath,
    finite,
    megapixels,
    model_problem,
    not_empty,
)
from ._options import MODEL_PANEL as _MODEL
from ._report import Reporter
from ._run import RunOptions
from ._stdio import check_stdout

DEFAULT_MAX_MPX = 100.0
DEFAULT_MAX_OUTPUT_MPX = 1000.0
MAX_IO_THREADS = 64  # each holds an image in memory; more cannot keep one device busier

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
    gif = "gif"


def _usage(message: str) -> typer.Exit:
    """Print a usage error as one line and return the exit (code 2) for the caller to raise."""
    return usage(message, "upscale")


def upscale(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="INPUT...",
            help="Image files, folders, globs ('photos/*.jpg'), or - to read one image from stdin; or video files "
            "(.mp4 .mkv .mov .webm .avi; needs PyAV: pip install 'drcn\\[video]').",
            show_default=False,
        ),
    ] = None,
    input_options: Annotated[
        list[str] | None,
        typer.Option(
            "-i", "--input", metavar="INPUT",
            help="An input given as an option, as in Real-ESRGAN's tools (repeatable); the same as an INPUT.",
            rich_help_panel=_IO, show_default=False, callback=not_empty,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", metavar="PATH",
            help="Output file (one input), folder (several inputs; created), or - for stdout. "
            "Default: beside each input, with a suffix.",
            rich_help_panel=_IO, callback=not_empty,
        ),
    ] = None,
    scale: Annotated[
        float | None,
        typer.Option("-s", "--scale", metavar="SCALE", help="Scale factor, 1 to 32 (2, 3, 2.5 ...).",
                     rich_help_panel=_SIZE, callback=finite),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option("--width", min=1, metavar="W", help="Output width in pixels (height keeps the aspect).",
                     rich_help_panel=_SIZE),
    ] = None,
    height: Annotated[
        int | None,
        typer.Option("--height", min=1, metavar="H", help="Output height in pixels (width keeps the aspect).",
                     rich_help_panel=_SIZE),
    ] = None,
    recursive: Annotated[
        bool,
        typer.Option("-r", "--recursive", help="Take folders' subfolders too; the tree is mirrored under -o.",
                     rich_help_panel=_IO),
    ] = False,
    suffix: Annotated[
        str | None,
        typer.Option("--suffix", metavar="TEXT", help="Added to output names. Default: none inside another -o folder, "
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
        typer.Option("--quality", min=1, max=100, metavar="Q", help="JPEG/WebP quality (default 95); WebP 100 = "
                     "lossless. PNG and TIFF are always lossless.", rich_help_panel=_IO, show_default=False),
    ] = None,
    first_frame: Annotated[
        bool,
        typer.Option("--first-frame", help="Of an animated GIF, WebP or PNG, or a multi-page TIFF, upscale the first "
                     "frame alone and write it as a still. Default: every frame (page), written as an animation "
                     "(a multi-page TIFF).",
                     rich_help_panel=_IO),
    ] = False,
    model: ModelName = None,
    weights: WeightsPath = None,
    method: Annotated[
        Method,
        typer.Option("--method", help="drcn, or bicubic (MATLAB bicubic alone: a baseline, needs no weights).",
                     rich_help_panel=_MODEL),
    ] = Method.drcn,
    recursions: Annotated[
        int | None,
        typer.Option("-k", "--recursions", min=1, metavar="K", help="Use only the first K recursions: faster, a "
                     "little softer. Default: all.", rich_help_panel=_MODEL),
    ] = None,
    self_ensemble: SelfEnsemble = False,
    tile: Annotated[
        int,
        typer.Option("-t", "--tile", min=0, metavar="N", help="Tile side in pixels: 0 = from the free memory, else "
                     "at least 32. Halved automatically on out-of-memory. Never changes the result (no seams).",
                     rich_help_panel=_MODEL),
    ] = 0,
    device: Device = "auto",
    precision: PrecisionChoice = Precision.auto,
    threads: Threads = None,
    io_threads: Annotated[
        int,
        typer.Option("--io-threads", min=1, max=MAX_IO_THREADS, metavar="N",
                     help="Images read ahead, and written behind, in background threads.", rich_help_panel=_MODEL),
    ] = 2,
    max_pixels: Annotated[
        float,
        typer.Option("--max-pixels", min=0, metavar="MPX", callback=megapixels, help="Refuse inputs over this many "
                     "megapixels, before decoding (decompression bombs). 0 = no limit.", rich_help_panel=_SAFETY),
    ] = DEFAULT_MAX_MPX,
    max_output_pixels: Annotated[
        float,
        typer.Option("--max-output-pixels", min=0, metavar="MPX", callback=megapixels,
                     help="Refuse outputs over this many megapixels. 0 = no limit.", rich_help_panel=_SAFETY),
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

    A failed image is reported and the batch goes on. Exit code: 0 all done (or skipped), 1 an image failed, 2 usage
    error, 130 interrupted (Ctrl-C or SIGTERM; every output written is complete).
    """
    from rich.console import Console

    from ..io.batch import OutputPlan, distributed_rank, plan_jobs, scale_label, shard
    from ..io.inputs import expand_inputs

    console = Console(stderr=True, highlight=False, soft_wrap=True)

    inputs = [*(inputs or []), *(input_options or [])]
    _check_options(inputs, scale, width, height, model, weights, method, recursions, self_ensemble, tile, suffix)
    rank, world = distributed_rank()  # RANK / WORLD_SIZE that do not fit: a ConfigError, exit 2

    options = RunOptions(
        scale=scale, width=width, height=height, model_name=model, weights=weights, method=method,
        recursions=recursions, self_ensemble=self_ensemble, tile=tile, device=device, precision=precision.value,
        threads=threads, io_threads=io_threads, max_pixels=int(max_pixels * 1e6) or None,
        max_output_pixels=int(max_output_pixels * 1e6) or None, quality=quality, overwrite=overwrite,
        rank=rank, world=world, skip_existing=skip_existing, first_frame=first_frame,
    )
    sources, problems = expand_inputs(inputs, recursive)
    # A bicubic run's default name differs from the network's, so the two can be compared side by side.
    label = scale_label(scale, width, height) + ("_bicubic" if method is Method.bicubic else "")
    from ..io.video import is_video_path

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
    jobs = plan_jobs(sources, plan)  # a combination that cannot work: a UsageError, exit 2
    to_stdout = any(job.output is None for job in jobs)
    check_stdout(to_stdout, world)
    jobs = shard(jobs, rank, world)
    if rank != 0:
        problems = []  # rank 0 reports the inputs that gave nothing, once

    report = Reporter(console, quiet=quiet, json_lines=json_lines, json_to_stderr=to_stdout, world=world, rank=rank)
    runnable = _report_planned(report, problems, jobs)
    if runnable:
        run_images(runnable, report, options)
    report.summary()
    raise typer.Exit(1 if report.failures else 0)


def _check_options(inputs: list[str], scale: float | None, width: int | None, height: int | None,
                   model: str | None, weights: Path | None, method: Method, recursions: int | None,
                   self_ensemble: bool, tile: int, suffix: str | None) -> None:
    """Options that cannot work together: usage errors (exit 2), before any image is read."""
    if not inputs:
        raise _usage("no input: give image files, folders, globs or - for stdin, as arguments or with -i")
    if "" in inputs:  # Path("") is the current folder: `drcn upscale "$UNSET" -s 2` would upscale all of it
        raise _usage(f"an input name {EMPTY_NAME}: give image files, folders, globs or -")
    if scale is None and width is None and height is None:
        raise _usage("give a scale (-s 2) or an output size (--width / --height)")
    if scale is not None and (width is not None or height is not None):
        raise _usage("give either -s/--scale or --width/--height, not both")
    problem = model_problem(model, weights, method=method, recursions=recursions, self_ensemble=self_ensemble,
                            tile=tile)  # fmt: skip
    if problem is not None:
        raise _usage(problem)
    from ..inference.pipeline import scale_problem

    if suffix is not None and any(sep and sep in suffix for sep in ("/", os.sep, os.altsep)):
        raise _usage(f"--suffix {suffix!r} contains a path separator: it would write outside the output folder")
    if scale is not None and (problem := scale_problem(scale)) is not None:  # the API's check (upscale_image)
        raise typer.BadParameter(problem, param_hint="'-s' / '--scale'")


def _report_planned(report: Reporter, problems: list, jobs: list) -> list:
    """Report the inputs that gave nothing, the jobs refused and those skipped; returns the jobs to run."""
    for problem in problems:
        reason = problem.reason
        if problem.input.lower() in ("true", "false", "yes", "no", "on", "off") and "no such" in reason:
            reason += " (flags such as -r take no value: drop it)"  # e.g. `-r true`
        report.failed_input(problem.input, reason)
    for job in jobs:
        if job.error is not None and not job.exists:
            report.failed_input(job.input_label, job.error)
    if skipped := [job for job in jobs if job.skip]:
        report.skipped_planned(skipped)
    if existing := [job for job in jobs if job.exists]:
        report.outputs_exist(existing)
    return [job for job in jobs if job.error is None and not job.skip]
