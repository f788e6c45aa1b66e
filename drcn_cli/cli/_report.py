"""What `drcn upscale` shows: rich progress and one line per event on stderr, JSON lines for scripts."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from ._errors import one_line

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def shown(label: str | None) -> str | None:
    """A path as one line of a log: control characters (a newline in a file name) escaped as \\n, \\x1b ..."""
    if label is None or label.isprintable():
        return label
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in label)


def _reason_line(reason: str) -> str:
    """A reason as one line of a log: its whitespace runs made one space, then any control character left (an
    escape sequence in a file name the reason quotes) escaped as in :func:`shown`, so that it cannot rewrite the
    terminal. The --json record's ``error`` is the same text."""
    return shown(one_line(reason)) or ""


class Reporter:
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
        self._files_done = 0  # images finished (done, failed, or skipped while running): the files bar's count
        self._name = ""  # the current image, as the files bar names it
        self._frame, self._frames = 0, 1  # the current image's frame being upscaled (from 0), of how many

    @property
    def failures(self) -> int:
        return self.counts["failed"]

    # ---- lines
    def info(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False)

    def record(self, **record) -> None:
        """One --json line (nothing without --json)."""
        if self.json_lines:
            if self.rank is not None:
                record["rank"] = self.rank
            typer.echo(json.dumps(record), err=self.json_to_stderr)

    def failed_input(self, label: str, reason: str) -> None:
        self.counts["failed"] += 1
        reason = _reason_line(reason)
        self.console.print(f"error: {shown(label)}: {reason}", markup=False)
        self.record(input=label, output=None, status="failed", error=reason, input_size=None,
                   output_size=None, seconds=0.0)

    def outputs_exist(self, jobs: list) -> None:
        """Planned jobs whose outputs exist (no --overwrite, no --skip-existing): a failure each, with its --json
        record, but one line for all of them, saying which flag decides."""
        if len(jobs) == 1:
            self.failed_input(jobs[0].input_label, jobs[0].error)
            return
        self.counts["failed"] += len(jobs)
        first = shown(str(jobs[0].output))
        self.console.print(
            f"error: {len(jobs)} outputs exist already ({first} and {len(jobs) - 1} more): --skip-existing keeps "
            "them and counts them as done, --overwrite replaces them", markup=False,
        )
        for job in jobs:
            self.record(input=job.input_label, output=None, status="failed", error=one_line(job.error),
                        input_size=None, output_size=None, seconds=0.0)  # fmt: skip

    def skipped_planned(self, jobs: list) -> None:
        """Jobs skipped while planning (--skip-existing, the output exists): a --json record each, one line for all
        of them (a line naming the file when there is one)."""
        if len(jobs) == 1:
            self.skipped(jobs[0])
            return
        for job in jobs:
            self.skipped(job, line=False)
        if not self.quiet:
            first = shown(str(jobs[0].output_label))
            self.console.print(f"skip {len(jobs)} images whose outputs exist ({first} and {len(jobs) - 1} more)",
                               markup=False)  # fmt: skip

    def skipped(self, job, planned: bool = True, line: bool = True) -> None:
        """An output that exists: found while planning, or (``planned`` False) written by another process
        while this one upscaled the image."""
        self.counts["skipped"] += 1
        if not self.quiet and line:
            self.console.print(f"skip {shown(job.input_label)}: {shown(job.output_label)} exists", markup=False)
        self.record(input=job.input_label, output=job.output_label, status="skipped", error=None, input_size=None,
                   output_size=None, seconds=0.0)
        if not planned:
            self._advance()  # it was counted in the progress bar's total

    def done(self, outcome) -> None:
        self.counts["ok"] += 1
        job = outcome.job
        loaded, result = outcome.loaded, outcome.processed
        in_size = [loaded.width, loaded.height]  # of an animation or pages, the first frame's
        out_size = [int(result.pixels.shape[1]), int(result.pixels.shape[0])]
        seconds = round(sum(outcome.timings.values()), 4)
        frames = len(result.frames) if getattr(result, "frames", None) is not None else 1  # upscaled, as video's
        if not self.quiet:  # on a terminal too, above the bar: the user sees where each output went
            first_only = f"; the first of {loaded.frames} frames" if frames == 1 and loaded.frames > 1 else ""
            count = f"{frames} frames, " if frames > 1 else ""
            self.console.print(
                f"ok {shown(job.input_label)} -> {shown(job.output_label)} ({in_size[0]}x{in_size[1]} -> "
                f"{out_size[0]}x{out_size[1]}, {count}{result.model}, {seconds:.2f} s{first_only})", markup=False,
            )
        self.record(input=job.input_label, output=job.output_label, status="ok", error=None, input_size=in_size,
                   output_size=out_size, seconds=seconds, bytes=outcome.saved, frames=frames,
                   frames_in_file=loaded.frames, model=result.model)
        self._advance()

    def failed(self, outcome, reason: str) -> None:
        self.counts["failed"] += 1
        reason = _reason_line(reason)
        job = outcome.job
        self.console.print(f"error: {shown(job.input_label)}: {reason}", markup=False)
        loaded = outcome.loaded
        self.record(input=job.input_label, output=None, status="failed", error=reason,
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
        self._frame, self._frames = 0, 1
        if self._progress is not None:
            assert self._files is not None and self._tiles is not None  # added with the progress
            self._name = f"{shown(job.input_label)} ({loaded.width}x{loaded.height} -> {size[1]}x{size[0]})"
            self._progress.update(self._files, name=self._name)
            self._progress.update(self._tiles, visible=False, completed=0)

    def frame(self, index: int, count: int) -> None:
        """Frame ``index`` (from 0) of ``count`` of the current image (an animation or pages) starts: named on the
        files bar, which has moved on by the frames done, and by each frame's tiles as they are done."""
        self._frame, self._frames = index, count
        if self._progress is not None:
            assert self._files is not None and self._tiles is not None  # added with the progress
            self._progress.update(self._files, name=f"{self._name} frame {index + 1}/{count}",
                                  completed=self._files_done + index / count)  # fmt: skip
            self._progress.update(self._tiles, visible=False, completed=0)

    def tile(self, done: int, total: int) -> None:
        """``done`` of ``total`` tiles of the current image: the tile bar, and the files bar moved on by that share
        of an image, so that its estimate starts with the first tile rather than the first whole image."""
        if self._progress is not None and total > 1:
            assert self._files is not None and self._tiles is not None  # added with the progress
            self._progress.update(self._tiles, visible=True, completed=done, total=total)
            share = (self._frame + done / total) / self._frames
            self._progress.update(self._files, completed=self._files_done + share)

    def shrink(self, new_tile: int) -> None:
        if not self._shrunk:
            self.info(f"out of memory: retrying with smaller tiles ({new_tile} px)")
            self._shrunk = True

    def _advance(self) -> None:
        self._files_done += 1
        if self._progress is not None:
            assert self._files is not None and self._tiles is not None  # added with the progress
            self._progress.update(self._files, completed=self._files_done)
            self._progress.update(self._tiles, visible=False)
