"""`drcn upscale`'s image run: every planned job read (in reader threads), upscaled (here), written (in writer
threads) through drcn_cli.io.batch.run_pipelined, each outcome reported as it finishes; Ctrl-C completes the
writes already handed over and reports them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
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

    pixels: Any  # the upscaled image; of an animation or pages, the first frame
    loaded: Any  # io.images.LoadedImage, or io.frames.LoadedFrames
    model: str  # the upscaler that made it (Upscaler.name)
    # Seconds of each step so far ("read", "upscale"; "write" once written): what the report of an image written
    # during an interrupt shows, as batch.JobOutcome.timings does for the others.
    timings: dict[str, float] = field(default_factory=dict)
    frames: list | None = None  # every frame or page upscaled (LoadedFrames), in order; None for a still


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
        """The decoded image (stdin is read whole first): every frame of an animation or page of a TIFF
        (io.frames.LoadedFrames), unless --first-frame; refused over --max-pixels, over --max-output-pixels and
        when the output format cannot hold the frames, from the file's headers, before anything is decoded."""
        from ..inference.pipeline import checked_size
        from ..io.frames import read_frames
        from ..io.images import read_image

        started = time.perf_counter()
        opts = self.opts
        source, max_pixels = job.source.path, opts.max_pixels

        def check_output(width: int, height: int) -> None:
            checked_size(height, width, opts.scale, opts.width, opts.height,
                                               opts.max_output_pixels)  # fmt: skip

        data = read_stdin(max_pixels) if source is None else source
        if opts.first_frame:
            loaded = read_image(data, max_pixels, check_output)
        else:
            loaded = read_frames(data, max_pixels, check_output, job.fmt)
        self.read_seconds[id(job)] = time.perf_counter() - started
        return loaded

    def process(self, job, loaded) -> Upscaled:
        """The image upscaled to the size asked for, by the upscaler for its kind of file; of an animation or a
        multi-page TIFF every frame or page, in turn, each a step of the progress. OutputTooLargeError over
        --max-output-pixels, ImageFormatError before any work when the output format cannot hold a frame."""
        from ..inference.pipeline import checked_size
        from ..io.write import check_output_format

        opts, report = self.opts, self.report
        started = time.perf_counter()
        timings = {"read": self.read_seconds.pop(id(job), 0.0)}
        images = getattr(loaded, "images", [loaded])  # the frames or pages of io.frames.LoadedFrames
        sizes = []
        for image in images:  # every frame checked before the work, not after it
            check_output_format(image.pixels, job.fmt)
            sizes.append(checked_size(image.height, image.width, opts.scale, opts.width, opts.height,
                                      opts.max_output_pixels))  # fmt: skip
        upscaler = self.upscalers.for_input(loaded.source_format)
        report.start(job, loaded, sizes[0])
        frames = []
        for index, (image, size) in enumerate(zip(images, sizes, strict=True)):
            if len(images) > 1:
                report.frame(index, len(images))
            frames.append(upscaler.upscale_array(image.pixels, size, opts.scale, report.tile, report.shrink))
        timings["upscale"] = time.perf_counter() - started
        return Upscaled(frames[0], loaded, upscaler.name, timings, frames if len(images) > 1 else None)

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
        from ..io.frames import encode_frames, write_frames
        from ..io.write import encode_image, write_image

        opts = self.opts
        encode: Callable[[], bytes]
        write: Callable[[], int]
        if result.frames is not None:  # an animation or pages: written together
            frames, loaded = result.frames, result.loaded
            encode = partial(encode_frames, frames, loaded, job.fmt, quality=opts.quality)
            write = partial(write_frames, job.output, frames, loaded, job.fmt, quality=opts.quality,
                            overwrite=opts.overwrite)  # fmt: skip
        else:
            meta = dict(quality=opts.quality, icc_profile=result.loaded.icc_profile, exif=result.loaded.exif,
                        dpi=result.loaded.dpi)  # fmt: skip
            encode = partial(encode_image, result.pixels, job.fmt, **meta)
            write = partial(write_image, job.output, result.pixels, job.fmt, overwrite=opts.overwrite, **meta)
        if job.output is None:
            data = encode()
            write_stdout(data)
            return len(data)
        try:
            return write()
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
