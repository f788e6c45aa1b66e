"""Batch planning and execution: sources -> jobs (input path, output path) -> load / upscale / save, overlapped.

Planning is pure: :func:`drcn_cli.io.inputs.expand_inputs` turns the command line's INPUT... into sources;
:func:`plan_jobs` names each output; :func:`shard` gives one torchrun rank its share.

Execution (:func:`run_pipelined`) keeps the device busy: images are read ahead in a thread pool while the
current one is upscaled, and written behind in another. Every job ends in one :class:`JobOutcome` that
carries its result or its exception; an error in one job never stops the others and is never dropped.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from .. import errors
from ..processes import processes
from .atomic import non_regular_reason
from .formats import FORMAT_EXTENSIONS, format_from_path, normalize_format, written_by_drcn
from .inputs import STDIO, Source
from .naming import _real, name_problem

__all__ = [
    "Job",
    "JobOutcome",
    "OutputPlan",
    "default_suffix",
    "distributed_rank",
    "plan_jobs",
    "run_pipelined",
    "scale_label",
    "shard",
]


@dataclass(frozen=True)
class Job:
    """One image to upscale: where from, where to (None: stdout), in which format; ``error`` if refused at planning.

    ``skip`` is set when the output exists and --skip-existing was given; ``exists`` when it exists and neither
    --skip-existing nor --overwrite was (``error`` says so).
    """

    source: Source
    output: Path | None
    fmt: str
    error: str | None = None
    skip: bool = False
    exists: bool = False

    @property
    def input_label(self) -> str:
        return self.source.label

    @property
    def output_label(self) -> str | None:
        if self.error is not None:
            return None
        return STDIO if self.output is None else str(self.output)


@dataclass(frozen=True)
class OutputPlan:
    """How outputs are named.

    output: -o as typed (None: next to each input; "-": stdout).
    suffix: added to each output's stem; None = the default (see :func:`default_suffix`).
    fmt: --format (None: from -o's extension, else the input's, else PNG).
    scale_label: what the default suffix says, e.g. "x3", "w1920", "1920x1080".
    overwrite / skip_existing: what to do when an output exists.
    """

    output: str | None = None
    suffix: str | None = None
    fmt: str | None = None
    scale_label: str = "x2"
    overwrite: bool = False
    skip_existing: bool = False


def default_suffix(plan: OutputPlan, next_to_input: bool) -> str:
    """No suffix when writing into another folder (same names there); ``_x3`` etc. when writing beside the inputs."""
    if plan.suffix is not None:
        return plan.suffix
    return f"_{plan.scale_label}" if next_to_input else ""


def scale_label(scale: float | None, width: int | None, height: int | None) -> str:
    """'x3', 'x2.5', 'w1920', 'h1080' or '1920x1080': what the default suffix says about the size asked for."""
    if scale is not None:
        return f"x{scale:g}"
    if width and height:
        return f"{width}x{height}"
    return f"w{width}" if width else f"h{height}"


# --------------------------------------------------------------------------------------------- outputs


def _extension_for(fmt: str, source_suffix: str) -> str:
    # Keep the input's own spelling (.jpeg, .TIF) when it already names the format.
    if source_suffix.lower() in FORMAT_EXTENSIONS[fmt]:
        return source_suffix
    return FORMAT_EXTENSIONS[fmt][0]


def _same_file(a: Path, b: Path) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _in_nested_output(source: Source, out: Path) -> bool:
    """True for an image found under a folder input that lies inside OUT, itself inside that folder."""
    if source.root is None or source.path is None:
        return False
    out_resolved = _real(out)
    return out_resolved != _real(source.root) and _real(source.path).is_relative_to(out_resolved)


def _output_format(plan: OutputPlan, source: Source) -> str:
    if plan.fmt is not None:
        return normalize_format(plan.fmt)
    if source.path is not None:
        fmt = format_from_path(source.path)
        # A GIF input gets PNG (APNG for an animation) unless GIF is asked for: an upscale makes colours that GIF's
        # 256 would have to lose.
        return fmt if fmt not in (None, "GIF") else "PNG"
    return "PNG"


def plan_jobs(sources: list[Source], plan: OutputPlan) -> list[Job]:
    """Name the output of every source; raise UsageError for a combination that cannot work.

    Rules:
      * ``-o -`` (or stdin with no -o) writes to stdout: one input only.
      * One input and -o that is not an existing folder, does not end in a slash and has an extension (or
        exists, or the input is stdin): -o is the file. A new name without an extension is a folder.
      * Otherwise -o is a folder; each output is ``OUT/<path under its input folder>/<stem><suffix><ext>``
        (the tree under a folder input is mirrored); images found inside OUT itself are left out, and so are
        images found in a folder or by a glob that drcn wrote (its mark) when their output would go into their
        own folder (a folder written into itself: earlier outputs are not inputs). With no -o, outputs go
        beside their inputs; a folder input then needs -o.
      * Refused per job (``Job.error``): an output name the file system cannot hold (:func:`name_problem`), an
        output that is an input, two inputs with one output name, a folder, FIFO or symbolic link where the output
        would go, an existing output without ``overwrite`` (with ``skip_existing`` the job is marked ``skip``
        instead).
      * An empty -o (or one with a NUL byte) names nothing: UsageError.
    """
    if plan.overwrite and plan.skip_existing:
        raise errors.UsageError("--overwrite and --skip-existing contradict each other: give one")
    if plan.output == "" or "\0" in (plan.output or ""):
        # Path("") would be ".", the current folder: an empty -o (an unset shell variable) names nothing.
        raise errors.UsageError(
            "-o names nothing (an empty name or a NUL byte): give a file or folder, or - for stdout"
        )
    fmt_given = normalize_format(plan.fmt) if plan.fmt is not None else None
    to_stdout = plan.output == STDIO or (plan.output is None and any(s.path is None for s in sources))
    if to_stdout and len(sources) > 1:
        raise errors.UsageError("only one input can be written to stdout")
    out = Path(plan.output).expanduser() if plan.output not in (None, STDIO) else None
    single_file = _names_one_file(out, plan.output, sources)
    _check_destination(sources, out, to_stdout, single_file)
    if out is not None and not single_file:
        # Images already inside the output folder (a previous run's results) are not inputs.
        sources = [s for s in sources if not _in_nested_output(s, out)]
    if single_file:
        assert out is not None
        _check_file_format(out, fmt_given, plan.fmt)

    if to_stdout:
        return [Job(source, None, fmt_given or _output_format(plan, source)) for source in sources]
    if single_file:
        assert out is not None
        planned = [Job(source, out, fmt_given or format_from_path(out) or "PNG") for source in sources]
    else:
        planned = [job for job in (_job_in_folder(source, out, plan) for source in sources) if not _own_output(job)]
    jobs: list[Job] = []
    taken: dict[Path, str] = {}
    inputs = {_real(job.source.path) for job in planned if job.source.path is not None}
    for job in planned:
        jobs.append(_check_target(job, plan, taken, inputs))
    return jobs


def _own_output(job: Job) -> bool:
    """True for an image found in a folder or by a glob (not named) that drcn wrote (formats.written_by_drcn: the
    mark every output carries) and whose output would go into its own folder: an output of an earlier run into
    that folder, which is not an input of this one (else each run would upscale the last one's outputs again).
    Outputs of drcn written elsewhere stay inputs: upscaling a result again into another folder is asked for."""
    source = job.source
    if source.path is None or (source.root is None and source.base is None) or job.output is None:
        return False
    if _real(job.output.parent) != _real(source.path.parent):
        return False
    return written_by_drcn(source.path)


def _names_one_file(out: Path | None, typed: str | None, sources: list[Source]) -> bool:
    """Whether -o (``out``, ``typed`` as given) is the one output file rather than a folder (plan_jobs' rules)."""
    return (
        out is not None
        and len(sources) == 1
        and sources[0].root is None
        and not os.path.isdir(out)
        and not str(typed).endswith(("/", os.sep))
        # A new name without an extension (`-o outdir`) is a folder to create, unless the input is stdin.
        and (out.suffix != "" or os.path.lexists(out) or sources[0].path is None)
    )


def _check_destination(sources: list[Source], out: Path | None, to_stdout: bool, single_file: bool) -> None:
    """UsageError for inputs that cannot go where -o says."""
    if any(s.path is None for s in sources) and out is not None and not single_file:
        raise errors.UsageError("stdin needs a file name with -o (or none, for stdout)")
    if out is None and not to_stdout and any(s.root is not None for s in sources):
        # Outputs beside the inputs of a folder would be taken as inputs by the next run.
        raise errors.UsageError("a folder input needs an output folder: add -o OUT")


def _check_file_format(out: Path, fmt_given: str | None, typed_fmt: str | None) -> None:
    """UsageError when -o FILE's extension names no format and --format is not given, or the two disagree."""
    by_extension = format_from_path(out)
    if fmt_given is None and by_extension is None:
        raise errors.UsageError(
            f"cannot tell the format from {out.name!r}: use .png, .jpg, .webp, .tif or .gif, or --format"
        )
    if fmt_given is not None and by_extension is not None and by_extension != fmt_given:
        raise errors.UsageError(f"-o {out.name} does not match --format {typed_fmt}")


def _job_in_folder(source: Source, out: Path | None, plan: OutputPlan) -> Job:
    """The job of a source whose output goes into the folder ``out`` (None: beside the source), under the
    same path as the source below its input folder or glob base."""
    assert source.path is not None
    fmt = _output_format(plan, source)
    beside = out is None or _real(out) == _real(source.path.parent)
    suffix = default_suffix(plan, next_to_input=beside)
    name = f"{source.path.stem}{suffix}{_extension_for(fmt, source.path.suffix)}"
    if out is None:
        target = source.path.parent / name
    elif source.root is not None:
        target = out / source.path.parent.relative_to(source.root) / name
    elif source.base is not None and source.path.parent.is_relative_to(source.base):
        target = out / source.path.parent.relative_to(source.base) / name
    else:
        target = out / name
    return Job(source, target, fmt)


def _check_target(job: Job, plan: OutputPlan, taken: dict[Path, str], inputs: set[Path]) -> Job:
    target = job.output
    assert target is not None
    if (why := name_problem(target)) is not None:
        return replace(job, error=f"cannot write the output: {why} (give a shorter -o or --suffix)")
    resolved = _real(target)
    if resolved in inputs or (job.source.path is not None and _same_file(job.source.path, target)):
        return replace(job, error=f"output {target} is an input file: never overwritten (give -o or --suffix)")
    if resolved in taken:
        return replace(job, error=f"output {target} is also the output of {taken[resolved]}")
    taken[resolved] = job.input_label
    if plan.skip_existing and os.path.exists(target):
        return replace(job, skip=True)
    if (why := non_regular_reason(target)) is not None:
        return replace(job, error=why)  # a link, folder, FIFO ... where the output would go: never replaced
    if os.path.exists(target) and not plan.overwrite:
        return replace(job, error=f"output {target} exists (use --overwrite or --skip-existing)", exists=True)
    return job


# --------------------------------------------------------------------------------------------- ranks


def distributed_rank(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) from torchrun's RANK and WORLD_SIZE (drcn_cli.processes); (0, 1) outside torchrun.

    Raises ConfigError (a ValueError) when they are set but not a valid pair.
    """
    procs = processes(environ)
    return procs.rank, procs.world


T = TypeVar("T")


def shard(jobs: list[T], rank: int, world_size: int) -> list[T]:
    """This rank's share: every world_size-th job starting at rank, so ranks get neighbours of similar size (image
    jobs and video jobs alike)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not within world size {world_size}")
    return jobs[rank::world_size]


# --------------------------------------------------------------------------------------------- running


@dataclass
class JobOutcome:
    """What became of one job. ``stage`` says where it failed: "read", "upscale" or "write"."""

    job: Job
    loaded: Any = None
    processed: Any = None
    saved: Any = None
    error: BaseException | None = None
    stage: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def run_pipelined(
    jobs: Iterable[Job],
    load: Callable[[Job], Any],
    process: Callable[[Job, Any], Any],
    save: Callable[[Job, Any], Any],
    *,
    read_ahead: int = 2,
    writers: int = 2,
) -> Iterator[JobOutcome]:
    """Run load -> process -> save for every job; load and save in background threads, process in this one.

    Up to ``read_ahead`` images are loaded ahead and up to ``writers`` saves run behind, so memory stays
    bounded. Yields one JobOutcome per job, in the order they finish. An exception (``Exception``) in any
    stage ends that job only and is carried in its outcome. KeyboardInterrupt and the like propagate: loads not
    yet started are cancelled; images already handed to a writer are written first (atomically), unreported.
    """
    read_ahead = max(1, read_ahead)
    writers = max(1, writers)
    loader = ThreadPoolExecutor(read_ahead, thread_name_prefix="drcn-read")
    saver = ThreadPoolExecutor(writers, thread_name_prefix="drcn-write")
    reads = _ReadAhead(iter(jobs), load, loader, read_ahead)
    pending_saves: deque[tuple[JobOutcome, Future]] = deque()
    completed = False
    try:
        reads.refill()
        while reads.pending:
            job, future = reads.take()
            outcome = _read_and_process(job, future, process)
            if not outcome.ok:
                yield outcome
                continue
            while len(pending_saves) >= writers:  # every writer busy: wait for the oldest save
                yield _saved(*pending_saves.popleft())
            pending_saves.append((outcome, saver.submit(_timed, save, job, outcome.processed)))
            while pending_saves and pending_saves[0][1].done():
                yield _saved(*pending_saves.popleft())
        while pending_saves:
            yield _saved(*pending_saves.popleft())
        completed = True
    finally:
        # Interrupted: reads not yet started are dropped; upscaled images already handed to a writer are
        # still written (each write is atomic), so no finished work is thrown away.
        loader.shutdown(wait=completed, cancel_futures=not completed)
        saver.shutdown(wait=True)


@dataclass
class _ReadAhead:
    """The loads submitted ahead, oldest first: up to ``limit`` of them, for the jobs taken from ``jobs``."""

    jobs: Iterator[Job]
    load: Callable[[Job], Any]
    loader: ThreadPoolExecutor
    limit: int
    pending: deque[tuple[Job, Future]] = field(default_factory=deque)

    def refill(self) -> None:
        while len(self.pending) < self.limit:
            job = next(self.jobs, None)
            if job is None:
                return
            self.pending.append((job, self.loader.submit(_timed, self.load, job)))

    def take(self) -> tuple[Job, Future]:
        """The oldest load; the next job's load is submitted in its place."""
        item = self.pending.popleft()
        self.refill()
        return item


def _read_and_process(job: Job, loaded: Future, process: Callable[[Job, Any], Any]) -> JobOutcome:
    """Wait for the job's load, then process it here; a failure of either ends in the outcome (its ``stage``)."""
    outcome = JobOutcome(job)
    try:
        outcome.loaded, outcome.timings["read"] = loaded.result()
    except Exception as exc:
        outcome.error, outcome.stage = exc, "read"
        return outcome
    try:
        outcome.processed, outcome.timings["upscale"] = _timed(process, job, outcome.loaded)
    except Exception as exc:
        outcome.error, outcome.stage = exc, "upscale"
    return outcome


def _saved(outcome: JobOutcome, future: Future) -> JobOutcome:
    """The outcome once its save has ended (waits for it), with the save's result or its error."""
    try:
        outcome.saved, outcome.timings["write"] = future.result()
    except Exception as exc:
        outcome.error, outcome.stage = exc, "write"
    return outcome
