"""`drcn upscale clip.mp4 ...`: videos, frame by frame through the same upscaler as images (drcn_cli.io.video).

Called by `drcn upscale` when an input is a video file (by extension). Videos are not mixed with images in
one run. Output names follow the image rules: `-o FILE` for one video (its extension chooses the container),
`-o FOLDER` otherwise, else beside each input with the suffix (`clip_x2.mp4`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from ._errors import EXIT_INTERRUPTED, usage
from ._report import Reporter, shown
from ._run import RunOptions, prepare, reason, sigterm_as_interrupt


def _usage(message: str) -> typer.Exit:
    return usage(message, "upscale")


@dataclass(frozen=True)
class _VideoJob:
    source: Path
    output: Path
    skip: bool = False
    error: str | None = None

    @property
    def input_label(self) -> str:
        return str(self.source)

    @property
    def output_label(self) -> str:
        return str(self.output)


def _plan(sources, output: str | None, suffix: str | None, label: str, skip_existing: bool, overwrite: bool):
    """One _VideoJob per video; raises typer.Exit(2) for a combination that cannot work."""
    from ..io.video import VIDEO_EXTENSIONS, is_video_path

    if any(s.path is None for s in sources):
        raise _usage("a video cannot be read from stdin: give its file name")
    if not all(is_video_path(s.path) for s in sources):
        raise _usage("videos and images cannot be mixed in one run: upscale them separately")
    if output == "-":
        raise _usage("a video cannot be written to stdout: give -o FILE")
    if overwrite and skip_existing:
        raise _usage("--overwrite and --skip-existing contradict each other: give one")
    from ..io.atomic import non_regular_reason
    from ..io.naming import name_problem

    out = Path(output).expanduser() if output is not None else None
    if out is not None and (problem := name_problem(out)) is not None:
        raise _usage(f"-o {shown(str(out))}: {problem}")
    single_file = (
        out is not None and len(sources) == 1 and not os.path.isdir(out) and not str(output).endswith(("/", os.sep))
        and out.suffix != ""
    )
    if single_file and out.suffix.lower() not in VIDEO_EXTENSIONS:  # type: ignore[union-attr]  # single_file: out is set
        raise _usage(f"cannot tell the video format from {out.name!r}: use {', '.join(sorted(VIDEO_EXTENSIONS))}")  # type: ignore[union-attr]  # single_file: out is set
    taken: dict[Path, Path]
    jobs, taken = [], {}
    for source in sources:
        path = source.path
        if single_file:
            assert out is not None  # single_file says so
            target = out
        else:
            beside = out is None or os.path.realpath(out) == os.path.realpath(path.parent)
            name = f"{path.stem}{suffix if suffix is not None else (f'_{label}' if beside else '')}{path.suffix}"
            target = (out if out is not None else path.parent) / name
        if (problem := name_problem(target) or non_regular_reason(target)) is not None:
            jobs.append(_VideoJob(path, target, error=f"cannot write the output: {problem}"))
            continue
        key = Path(os.path.realpath(target))
        if key == Path(os.path.realpath(path)):
            jobs.append(_VideoJob(path, target, error=f"output {target} is the input file: never overwritten "
                                  "(give -o or --suffix)"))
        elif key in taken:
            jobs.append(_VideoJob(path, target, error=f"output {target} is also the output of {taken[key]}"))
        elif os.path.lexists(target) and skip_existing:
            jobs.append(_VideoJob(path, target, skip=True))
        elif os.path.lexists(target) and not overwrite:
            jobs.append(_VideoJob(path, target, error=f"output {target} exists (use --overwrite or --skip-existing)"))
        else:
            jobs.append(_VideoJob(path, target))
        taken.setdefault(key, path)
    return jobs


def upscale_videos(sources, problems, console, opts: RunOptions, *, output: str | None, suffix: str | None,
                   fmt: str | None, skip_existing: bool, label: str, quiet: bool, json_lines: bool) -> int:
    """Upscale every video in ``sources``; returns the exit code (0 all done or skipped, 1 a failure)."""
    if fmt is not None:
        raise _usage("--format is for images: a video's container follows -o's extension (or the input's)")
    if opts.first_frame:
        raise _usage("--first-frame is for animated images and multi-page TIFFs: a video is upscaled whole")
    from ..io.batch import shard

    jobs = shard(_plan(sources, output, suffix, label, skip_existing, opts.overwrite), opts.rank, opts.world)
    report = Reporter(console, quiet=quiet, json_lines=json_lines, json_to_stderr=False, world=opts.world,
                       rank=opts.rank)
    for problem in problems if opts.rank == 0 else []:
        report.failed_input(problem.input, problem.reason)
    for job in jobs:
        if job.error is not None:
            report.failed_input(job.input_label, job.error)
        elif job.skip:
            report.skipped(job)
    runnable = [job for job in jobs if job.error is None and not job.skip]
    if runnable:
        upscaler = prepare(opts, report.info, f"{len(runnable)} video(s)").for_input("video")
        with sigterm_as_interrupt():
            try:
                for job in runnable:
                    _one_video(job, upscaler, opts, report)
            except KeyboardInterrupt:
                console.print("interrupted: the video being written was removed, the finished ones are complete; "
                              "run the same command with --skip-existing to go on", markup=False)
                raise typer.Exit(EXIT_INTERRUPTED) from None
    report.summary()
    return 1 if report.failures else 0


def _one_video(job: _VideoJob, upscaler, opts: RunOptions, report: Reporter) -> None:
    from ..errors import DrcnError
    from ..inference.pipeline import checked_size
    from ..io.video import probe_video, upscale_video

    started = time.perf_counter()
    try:
        info = probe_video(job.source)
        size = checked_size(info.height, info.width, opts.scale, opts.width, opts.height,
                                    opts.max_output_pixels)  # fmt: skip

        def upscale_frame(rgb):
            return upscaler.upscale_array(rgb, size, opts.scale)

        with _frame_progress(report, job, info.frames) as on_frame:
            result = upscale_video(job.source, job.output, upscale_frame, size, overwrite=opts.overwrite,
                                   read_ahead=opts.io_threads, on_frame=on_frame)  # fmt: skip
    except (DrcnError, OSError) as exc:
        why = reason(exc)
        report.counts["failed"] += 1
        report.console.print(f"error: {shown(job.input_label)}: {why}", markup=False)
        report.record(input=job.input_label, output=None, status="failed", error=why, input_size=None,
                      output_size=None, seconds=round(time.perf_counter() - started, 4))  # fmt: skip
        return
    seconds = round(time.perf_counter() - started, 4)
    report.counts["ok"] += 1
    for dropped in result.dropped:
        report.info(f"note: {shown(job.input_label)}: {dropped}: dropped")
    report.info(f"ok {shown(job.input_label)} -> {shown(job.output_label)} ({info.width}x{info.height} -> "
                f"{result.width}x{result.height}, {result.frames} frames, {result.audio_copied} audio stream(s) kept, "
                f"{upscaler.name}, {seconds:.2f} s)")
    report.record(input=job.input_label, output=job.output_label, status="ok", error=None,
                 input_size=[info.width, info.height], output_size=[result.width, result.height], seconds=seconds,
                 bytes=result.bytes, frames=result.frames, model=upscaler.name)


class _frame_progress:
    """A bar in frames with ETA on a terminal (nothing in a log or with --quiet); yields on_frame(done)."""

    def __init__(self, report: Reporter, job: _VideoJob, total: int | None) -> None:
        self.report, self.job, self.total = report, job, total
        self.progress = None

    def __enter__(self):
        if not self.report.live:
            return lambda done: None
        from rich.progress import TextColumn

        from ._progress import progress_bar

        self.progress = progress_bar(
            self.report.console, TextColumn(self.job.input_label, markup=False), label="frames", transient=True,
            redirect_stdout=False,
        )
        self.progress.__enter__()
        task = self.progress.add_task("frames", total=self.total)
        return lambda done: self.progress.update(task, completed=done)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
