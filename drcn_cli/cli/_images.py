"""`drcn upscale`'s image run: every planned job read (in reader threads), upscaled (here), written (in writer
threads) through drcn_cli.io.batch.run_pipelined, each outcome reported as it finishes; Ctrl-C completes the
writes already handed over and reports them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import typer

from ._errors import EXIT_INTERRUPTED
from ._report import Reporter
from ._run import RunOptions, no_pillow_pixel_limit, prepare, reason, sigterm_as_interrupt
from ._stdio import read_stdin, write_stdout

SKIPPED = -1  # what save() returns when another process wrote the output meanwhile and --skip-existing


@dataclass
class Upscaled:
    """What the upscale step hands to the write step."""

    pixels: Any
    loaded: Any  # io.images.LoadedImage
    model: str  # the upscaler that made it (Upscaler.name)
    # Seconds of each step so far ("read", "upscale"; "write" once written): what the report of an image written
    # during an interrupt shows, as batch.JobOutcome.timings does for the others.
    timings: dict[str, float] = field(default_factory=dict)


def run_images(jobs: list, report: Reporter, opts: RunOptions) -> None:
    """Load the models once and run every job; sets report's counts. Exits 1 on a model error, 130 on Ctrl-C."""
    from ..io.batch import run_pipelined

    steps = _ImageSteps(opts, prepare(opts, report.info, f"{len(jobs)} image(s)"), report)
    with report.progress(len(jobs)), sigterm_as_interrupt(), no_pillow_pixel_limit():
        outcomes = run_pipelined(jobs, steps.load, steps.process, steps.save, read_ahead=opts.io_threads,
                                 writers=opts.io_threads)  # fmt: skip
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

    opts: RunOptions
    upscalers: Any  # pipeline.UpscalerChoice
    report: Reporter
    # Images whose write finished but is not reported yet: on an interrupt, the writes already handed over are
    # completed (atomically), and must then be counted and get their --json line too.
    unreported: dict[int, tuple[Any, Upscaled, int]] = field(default_factory=dict)
    read_seconds: dict[int, float] = field(default_factory=dict)  # id(job) -> its read's seconds, until upscaled

    def load(self, job):
        """The decoded image (stdin is read whole first); refused over --max-pixels, and over
        --max-output-pixels, from the file's header, before anything is decoded."""
        from ..inference.pipeline import checked_size
        from ..io.images import read_image

        started = time.perf_counter()
        opts = self.opts
        source, max_pixels = job.source.path, opts.max_pixels

        def check_output(width: int, height: int) -> None:
            checked_size(height, width, opts.scale, opts.width, opts.height,
                                               opts.max_output_pixels)  # fmt: skip

        loaded = read_image(read_stdin(max_pixels) if source is None else source, max_pixels, check_output)
        self.read_seconds[id(job)] = time.perf_counter() - started
        return loaded

    def process(self, job, loaded) -> Upscaled:
        """The image upscaled to the size asked for, by the upscaler for its kind of file; OutputTooLargeError
        over --max-output-pixels, ImageFormatError before any work when the output format cannot hold it."""
        from ..inference.pipeline import checked_size
        from ..io.write import check_output_format

        opts, report = self.opts, self.report
        started = time.perf_counter()
        timings = {"read": self.read_seconds.pop(id(job), 0.0)}
        check_output_format(loaded.pixels, job.fmt)  # before the work, not after it
        upscaler = self.upscalers.for_input(loaded.source_format)
        size = checked_size(loaded.height, loaded.width, opts.scale, opts.width, opts.height,
                                    opts.max_output_pixels)  # fmt: skip
        report.start(job, loaded, size)
        pixels = upscaler.upscale_array(loaded.pixels, size, opts.scale, report.tile, report.shrink)
        timings["upscale"] = time.perf_counter() - started
        return Upscaled(pixels, loaded, upscaler.name, timings)

    def save(self, job, result: Upscaled) -> int:
        """:meth:`_write`, then note the image as written but not yet reported (with the write's seconds)."""
        started = time.perf_counter()
        size = self._write(job, result)
        result.timings["write"] = time.perf_counter() - started
        self.unreported[id(job)] = (job, result, size)
        return size

    def _write(self, job, result: Upscaled) -> int:
        """Write the image (atomically, or to stdout); its size in bytes, or SKIPPED."""
        from ..io.atomic import OutputExistsError
        from ..io.write import encode_image, write_image

        opts = self.opts
        meta = dict(quality=opts.quality, icc_profile=result.loaded.icc_profile, exif=result.loaded.exif,
                    dpi=result.loaded.dpi)  # fmt: skip
        if job.output is None:
            data = encode_image(result.pixels, job.fmt, **meta)
            write_stdout(data)
            return len(data)
        try:
            return write_image(job.output, result.pixels, job.fmt, overwrite=opts.overwrite, **meta)
        except OutputExistsError as exc:
            if opts.skip_existing:  # another process wrote it meanwhile: as if it had been there at the start
                return SKIPPED
            raise OutputExistsError(f"{exc} (use --overwrite or --skip-existing)") from None


def _report_outcome(report: Reporter, outcome) -> None:
    """One finished job: upscaled, skipped (its output appeared meanwhile) or failed."""
    if outcome.ok and outcome.saved == SKIPPED:
        report.skipped(outcome.job, planned=False)
    elif outcome.ok:
        report.done(outcome)
    else:
        report.failed(outcome, reason(outcome.error))


def _finish_writes(outcomes) -> None:
    """After Ctrl-C: wait for the writes already handed over (a no-op if the run has ended)."""
    try:
        outcomes.close()
    except KeyboardInterrupt:
        pass  # a second signal: stop waiting


def _report_unreported(report: Reporter, unreported: dict[int, tuple[Any, Upscaled, int]]) -> None:
    """Count the images written but not reported when the run was interrupted, as done (or skipped), with the
    seconds their read, upscale and write took."""
    from ..io.batch import JobOutcome

    for job, result, size in list(unreported.values()):
        if size == SKIPPED:
            report.skipped(job, planned=False)
        else:
            report.done(JobOutcome(job, loaded=result.loaded, processed=result, saved=size,
                                   timings=dict(result.timings)))  # fmt: skip
